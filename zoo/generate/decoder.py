"""Compiled generation for decoder-only models (GPT): prefill, then cached one-token steps.

One jitted program per (batch size, prompt bucket, max_new_tokens, sampling switches; the
temperature, k, p, EOS and pad values are traced, so changing them reuses it): the
prompt is left-padded to a power-of-two bucket and run through the model once (prefill,
filling the KV cache), then a ``lax.while_loop`` feeds one token at a time until every row
has emitted EOS or ``max_new_tokens`` tokens exist.

Left padding keeps every row's last prompt token in the same slot, so one step serves the
whole batch. Pad slots are hidden by an ``attention_mask`` over the cache and real tokens get
positions ``0..n-1`` whatever their slot, so a padded row computes exactly what it would alone.

Shapes: B batch, P prompt bucket, N max_new_tokens, S = P + N cache slots, V vocabulary.
"""

from __future__ import annotations

import collections
import functools

import jax
import jax.numpy as jnp
import numpy as np

from zoo.generate import cache as kv
from zoo.generate.sampling import Sampling, next_token

Array = jax.Array

# Traces of each compiled generation function, by name: a test counts compilations with it.
TRACE_COUNTS: collections.Counter = collections.Counter()


def until_eos(ids, eos_id: int | None) -> list[int]:
  """The tokens before the first ``eos_id`` (all of them when there is none)."""
  ids = [int(t) for t in ids]
  return ids[: ids.index(eos_id)] if eos_id is not None and eos_id in ids else ids


def bucket_length(length: int, min_bucket: int = 8) -> int:
  """The prompt bucket: the smallest power of two >= ``length`` (at least ``min_bucket``)."""
  bucket = max(1, min_bucket)
  while bucket < length:
    bucket *= 2
  return bucket


def as_rows(prompts, name: str = "prompts") -> list[list[int]]:
  """A ragged batch of token id lists from lists, a 1-D array (one row) or a 2-D array."""
  if isinstance(prompts, (np.ndarray, jax.Array)):
    arr = np.asarray(prompts)
    if arr.ndim == 1:
      arr = arr[None]
    if arr.ndim != 2:
      raise ValueError(f"{name} must be [batch, length] token ids; got shape {arr.shape}.")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
      raise ValueError(f"{name} must be integer token ids; got dtype {arr.dtype}.")
    return [list(map(int, row)) for row in arr]
  if isinstance(prompts, (str, bytes)) or (
      isinstance(prompts, (list, tuple)) and any(isinstance(r, (str, bytes)) for r in prompts)
  ):
    raise ValueError(
        f"{name} must be token ids (a list of int lists); got text {prompts!r:.60}. Encode it "
        "first (zoo.load_tokenizer(path).encode(text)), or use python -m zoo.generate --prompt."
    )
  rows = list(prompts)
  if rows and all(isinstance(t, (int, np.integer)) for t in rows):
    rows = [rows]  # a single prompt given as a flat list
  ints = (int, np.integer)
  if not all(
      isinstance(r, (list, tuple, np.ndarray)) and all(
          isinstance(t, ints) and not isinstance(t, bool) for t in r
      ) for r in rows
  ):
    raise ValueError(
        f"{name} must be token ids: a list of int lists, or a [batch, length] int array; got "
        f"{prompts!r:.80}."
    )
  return [list(map(int, r)) for r in rows]


def check_family(model, family: str, use: str) -> None:
  """``model`` is of the registered ``family`` (else a ValueError saying what to use)."""
  from zoo import registry  # noqa: PLC0415

  config = getattr(model, "config", None)
  try:
    got = registry.family_of(config).name
  except (KeyError, TypeError, ValueError):
    got = None
  if got != family:
    raise ValueError(
        f"{use} decodes {family} models; got {type(model).__name__}"
        + (f" (family {got!r})" if got else "")
        + ". GPT models: zoo.generate.generate; encoder-decoder Transformers: "
        "zoo.generate.translate_ids; BERT and ViT do not generate text."
    )


def check_rows(rows: list[list[int]], vocab_size: int, max_len: int | None, name: str) -> None:
  """Non-empty batch, non-empty rows, ids in the vocabulary, no row longer than ``max_len``."""
  if not rows:
    raise ValueError(f"{name} is an empty batch; give at least one sequence of token ids.")
  for i, row in enumerate(rows):
    if not row:
      raise ValueError(
          f"{name}[{i}] is empty: generation needs at least one token to condition on (for GPT-2 "
          "start from the <|endoftext|> id, 50256)."
      )
    lo, hi = min(row), max(row)
    if lo < 0 or hi >= vocab_size:
      raise ValueError(
          f"{name}[{i}] holds ids in [{lo}, {hi}] but the vocabulary has {vocab_size} entries; "
          "check the tokenizer matches the model."
      )
    if max_len is not None and len(row) > max_len:
      raise ValueError(
          f"{name}[{i}] has {len(row)} tokens but the model's context is {max_len} "
          "(max_len); truncate it (e.g. keep the last tokens)."
      )


def left_pad(rows: list[list[int]], length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """``[B, length]`` int32 ids with each row at the right end, and its bool validity mask."""
  ids = np.full((len(rows), length), pad_id, np.int32)
  valid = np.zeros((len(rows), length), bool)
  for i, row in enumerate(rows):
    ids[i, length - len(row):] = row
    valid[i, length - len(row):] = True
  return ids, valid


def generate(
    model,
    params,
    prompts,
    *,
    max_new_tokens: int,
    eos_id: int | None = None,
    pad_id: int = 0,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    min_bucket: int = 8,
) -> np.ndarray:
  """Continue each prompt with up to ``max_new_tokens`` tokens.

  Args:
    model: a decoder-only zoo model (``zoo.models.gpt.GPT``).
    params: its parameters (``variables["params"]``).
    prompts: token ids: a list of lists (lengths may differ), or a ``[B, L]`` / ``[L]`` array.
    max_new_tokens: tokens to generate per row.
    eos_id: a row stops after emitting this id; None = never stop early.
    pad_id: emitted by finished rows (and used to pad prompts; never attended).
    do_sample: sample (with the filters below) instead of taking the argmax.
    temperature: logits / temperature before sampling.
    top_k: sample among the k most likely tokens; 0 = all.
    top_p: sample from the nucleus of mass top_p; 1 = all.
    seed: PRNG seed; the same seed gives the same samples.
    min_bucket: the smallest prompt bucket (prompts pad to a power of two >= this).

  Returns:
    ``[B, max_new_tokens]`` int32 numpy array of new tokens (``pad_id`` after EOS).
  """
  check_family(model, "gpt", "generate")
  sampling = Sampling(do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p)
  if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be an int >= 1; got {max_new_tokens!r}.")
  cfg = model.config
  for name, value in (("pad_id", pad_id), ("eos_id", eos_id)):
    if value is not None and not 0 <= value < cfg.vocab_size:
      raise ValueError(f"{name}={value} is outside the vocabulary (size {cfg.vocab_size}).")
  rows = as_rows(prompts)
  check_rows(rows, cfg.vocab_size, cfg.max_len, "prompts")
  longest = max(len(r) for r in rows)
  # The last new token is never fed back, so positions reach longest + max_new_tokens - 2.
  if cfg.position == "learned" and longest + max_new_tokens - 1 > cfg.max_len:
    raise ValueError(
        f"the longest prompt ({longest} tokens) plus max_new_tokens={max_new_tokens} runs past "
        f"the learned position table (max_len={cfg.max_len}); use max_new_tokens <= "
        f"{cfg.max_len - longest + 1} or a shorter prompt."
    )
  ids, valid = left_pad(rows, bucket_length(longest, min_bucket), pad_id)
  out = _generate(
      params,
      jnp.asarray(ids),
      jnp.asarray(valid),
      jax.random.key(seed),
      *sampling.values(),
      jnp.asarray(-1 if eos_id is None else eos_id, jnp.int32),
      jnp.asarray(pad_id, jnp.int32),
      model=model,
      max_new_tokens=max_new_tokens,
      static=sampling.static(),
  )
  return np.asarray(out)


@functools.partial(
    jax.jit, static_argnames=("model", "max_new_tokens", "static")
)
def _generate(
    params,
    prompt_BxP: Array,
    valid_BxP: Array,
    rng: Array,
    temperature: Array,
    top_k: Array,
    top_p: Array,
    eos_id: Array,
    pad_id: Array,
    *,
    model,
    max_new_tokens: int,
    static: tuple[bool, bool, bool],
) -> Array:
  TRACE_COUNTS["decoder"] += 1
  b, p = prompt_BxP.shape
  num_slots = p + max_new_tokens
  cache = kv.zeros_cache(
      lambda n: model.init(jax.random.key(0), jnp.zeros((n, num_slots), jnp.int32), decode=True), b
  )
  # Generated tokens always fill the slots after the bucket; only prompt padding is hidden.
  valid_BxS = jnp.concatenate([valid_BxP, jnp.ones((b, max_new_tokens), bool)], axis=1)
  lengths_B = jnp.sum(valid_BxP, axis=1, dtype=jnp.int32)
  positions_BxP = jnp.maximum(jnp.cumsum(valid_BxP, axis=1, dtype=jnp.int32) - 1, 0)

  def step(cache, tokens_BxL, positions_BxL):
    logits, mutated = model.apply(
        {"params": params, "cache": cache},
        tokens_BxL,
        positions=positions_BxL,
        attention_mask=valid_BxS,
        decode=True,
        mutable=["cache"],
    )
    return logits[:, -1].astype(jnp.float32), mutated["cache"]

  logits_BxV, cache = step(cache, prompt_BxP, positions_BxP)
  out_BxN = jnp.full((b, max_new_tokens), pad_id, jnp.int32)
  done_B = jnp.zeros((b,), bool)

  def cond(state):
    i, _, _, _, done_B = state
    return (i < max_new_tokens) & ~jnp.all(done_B)

  def body(state):
    i, logits_BxV, cache, out_BxN, done_B = state
    token_B = next_token(
        jax.random.fold_in(rng, i), logits_BxV, temperature, top_k, top_p, static=static
    )
    token_B = jnp.where(done_B, pad_id, token_B)
    out_BxN = out_BxN.at[:, i].set(token_B)
    done_B = done_B | (token_B == eos_id)
    logits_BxV, cache = step(cache, token_B[:, None], (lengths_B + i)[:, None])
    return i + 1, logits_BxV, cache, out_BxN, done_B

  state = (jnp.array(0, jnp.int32), logits_BxV, cache, out_BxN, done_B)
  return jax.lax.while_loop(cond, body, state)[3]
