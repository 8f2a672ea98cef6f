"""Compiled generation for decoder-only models: prefill, then cached one-token steps.

Any family that registers a :class:`zoo.registry.CausalLM` (GPT and its Llama configurations)
decodes here: the capability allocates and applies the KV cache and says how long a context
the model's positions allow.

One jitted program per (batch size, prompt bucket, max_new_tokens, sampling switches; the
temperature, k, p, repetition penalty, stop ids and pad values are traced, so changing them
reuses it): the prompt is left-padded to a power-of-two bucket and run through the model once
(prefill, filling the KV cache), then a ``lax.while_loop`` feeds one token at a time until every
row has emitted a stop id or ``max_new_tokens`` tokens exist. :func:`stream` yields the same
tokens step by step from a host loop over a compiled prefill and a compiled step.

Left padding keeps every row's last prompt token in the same slot, so one step serves the
whole batch. Pad slots are hidden by an ``attention_mask`` over the cache and real tokens get
positions ``0..n-1`` whatever their slot, so a padded row computes exactly what it would alone.

Shapes: B batch, P prompt bucket, N max_new_tokens, S = P + N cache slots, V vocabulary.
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from zoo import registry
from zoo.generate.sampling import Sampling, next_token, repetition_penalty

Array = jax.Array

# Traces of each compiled generation function, by name: a test counts compilations with it.
TRACE_COUNTS: collections.Counter = collections.Counter()


def until_eos(ids, eos_id: int | Sequence[int] | None) -> list[int]:
  """The tokens before the first ``eos_id`` (or any of several ids; all tokens when none)."""
  ids = [int(t) for t in ids]
  stops = set() if eos_id is None else {eos_id} if isinstance(eos_id, (int, np.integer)) else {
      int(t) for t in eos_id}
  cut = next((j for j, t in enumerate(ids) if t in stops), len(ids))
  return ids[:cut]


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


def check_rows(rows: list[list[int]], vocab_size: int, max_length: int | None, name: str) -> None:
  """Non-empty batch, non-empty rows, ids in the vocabulary, no row longer than ``max_length``
  (None = any length)."""
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
    if max_length is not None and len(row) > max_length:
      raise ValueError(
          f"{name}[{i}] has {len(row)} tokens but the model's context is {max_length}; truncate "
          "it (e.g. keep the last tokens)."
      )


def left_pad(rows: list[list[int]], length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """``[B, length]`` int32 ids with each row at the right end, and its bool validity mask."""
  ids = np.full((len(rows), length), pad_id, np.int32)
  valid = np.zeros((len(rows), length), bool)
  for i, row in enumerate(rows):
    ids[i, length - len(row):] = row
    valid[i, length - len(row):] = True
  return ids, valid


def stop_array(eos_id) -> np.ndarray:
  """``eos_id`` (None, an id, or several ids) -> int32 ids padded with -1 to a power of two
  (at least 4), so one to four stop ids share one compiled program."""
  ids = [] if eos_id is None else [eos_id] if isinstance(eos_id, (int, np.integer)) else eos_id
  ids = [int(t) for t in ids]
  out = np.full(bucket_length(len(ids), 4), -1, np.int32)
  out[: len(ids)] = ids
  return out


def _check_args(lm: registry.CausalLM, cfg, max_new_tokens, eos_id, pad_id, rows) -> None:
  if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be an int >= 1; got {max_new_tokens!r}.")
  vocab_size = lm.vocab_size(cfg)
  stops = [] if eos_id is None else [eos_id] if isinstance(eos_id, (int, np.integer)) else eos_id
  for name, value in [("pad_id", pad_id)] + [("eos_id", v) for v in stops]:
    if value is not None and not 0 <= value < vocab_size:
      raise ValueError(f"{name}={value} is outside the vocabulary (size {vocab_size}).")
  check_rows(rows, vocab_size, lm.longest_prompt(cfg), "prompts")
  longest = max(len(r) for r in rows)
  context = lm.context_length(cfg)
  # The last new token is never fed back, so positions reach longest + max_new_tokens - 2.
  if context is not None and longest + max_new_tokens - 1 > context:
    raise ValueError(
        f"the longest prompt ({longest} tokens) plus max_new_tokens={max_new_tokens} runs past "
        f"the model's {context} positions (its context length); use max_new_tokens <= "
        f"{context - longest + 1} or a shorter prompt."
    )


def _inputs(lm, model, prompts, *, max_new_tokens, eos_id, pad_id, sampling, seed, min_bucket,
            repetition_penalty):
  """Checked arguments -> the traced inputs of :func:`_generate` / :func:`_prefill`."""
  if not repetition_penalty > 0:
    raise ValueError(
        f"repetition_penalty must be > 0 (1 = off, > 1 discourages repeats); got "
        f"{repetition_penalty!r}."
    )
  rows = as_rows(prompts)
  _check_args(lm, model.config, max_new_tokens, eos_id, pad_id, rows)
  ids, valid = left_pad(rows, bucket_length(max(len(r) for r in rows), min_bucket), pad_id)
  traced = (
      jnp.asarray(ids), jnp.asarray(valid), jax.random.key(seed), *sampling.values(),
      jnp.asarray(repetition_penalty, jnp.float32), jnp.asarray(stop_array(eos_id)),
      jnp.asarray(pad_id, jnp.int32),
  )
  return traced, (*sampling.static(), repetition_penalty != 1.0)


def generate(
    model,
    params,
    prompts,
    *,
    max_new_tokens: int,
    eos_id: int | Sequence[int] | None = None,
    pad_id: int = 0,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
    seed: int = 0,
    min_bucket: int = 8,
) -> np.ndarray:
  """Continue each prompt with up to ``max_new_tokens`` tokens.

  Args:
    model: a model whose family offers a :class:`zoo.registry.CausalLM` (``zoo.models.gpt.GPT``).
    params: its parameters (``variables["params"]``).
    prompts: token ids: a list of lists (lengths may differ), or a ``[B, L]`` / ``[L]`` array.
    max_new_tokens: tokens to generate per row.
    eos_id: a row stops after emitting this id (or any of these ids: Llama 3 has several
      stop tokens); None = never stop early.
    pad_id: emitted by finished rows (and used to pad prompts; never attended).
    do_sample: sample (with the filters below) instead of taking the argmax.
    temperature: logits / temperature before sampling.
    top_k: sample among the k most likely tokens; 0 = all.
    top_p: sample from the nucleus of mass top_p; 1 = all.
    repetition_penalty: Hugging Face's penalty on tokens of the prompt and output so far
      (:func:`zoo.generate.sampling.repetition_penalty`); 1 = off.
    seed: PRNG seed; the same seed gives the same samples.
    min_bucket: the smallest prompt bucket (prompts pad to a power of two >= this).

  Returns:
    ``[B, max_new_tokens]`` int32 numpy array of new tokens (``pad_id`` after EOS).
  """
  lm = registry.causal_lm(model, "generate")  # first: the wrong model is the error to report
  sampling = Sampling(do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p)
  traced, static = _inputs(
      lm, model, prompts, max_new_tokens=max_new_tokens, eos_id=eos_id, pad_id=pad_id,
      sampling=sampling, seed=seed, min_bucket=min_bucket, repetition_penalty=repetition_penalty,
  )
  out = _generate(params, *traced, model=model, max_new_tokens=max_new_tokens, static=static)
  return np.asarray(out)


def stream(
    model,
    params,
    prompts,
    *,
    max_new_tokens: int,
    eos_id: int | Sequence[int] | None = None,
    pad_id: int = 0,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
    seed: int = 0,
    min_bucket: int = 8,
) -> Iterator[np.ndarray]:
  """:func:`generate`, one step at a time: yields each ``[B]`` int32 step of new tokens.

  The same arguments and the same tokens as :func:`generate` (finished rows yield ``pad_id``),
  from a host loop over two compiled programs (prefill, one cached step), so a caller can
  print tokens as they come or stop early (stop strings): close the generator to stop.
  """
  lm = registry.causal_lm(model, "stream")
  sampling = Sampling(do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p)
  traced, static = _inputs(
      lm, model, prompts, max_new_tokens=max_new_tokens, eos_id=eos_id, pad_id=pad_id,
      sampling=sampling, seed=seed, min_bucket=min_bucket, repetition_penalty=repetition_penalty,
  )
  prompt_BxP, valid_BxP, rng, *values, stops, pad = traced
  state = _prefill(params, prompt_BxP, valid_BxP, model=model, max_new_tokens=max_new_tokens,
                   static=static)
  for i in range(max_new_tokens):
    token_B, state = _stream_step(params, jnp.asarray(i, jnp.int32), state, rng, *values, stops,
                                  pad, model=model, static=static)
    token_B = np.asarray(token_B)
    yield token_B
    if bool(np.asarray(state["done"]).all()):
      return


# ----------------------------------------------------------------------------------------------
# The compiled programs: one while_loop for generate, prefill + one step for stream.


def _apply(model, params, cache, tokens_BxL, positions_BxL, valid_BxS):
  lm = registry.causal_lm(model, "generate")
  logits, cache = lm.apply_cached(model, params, cache, tokens_BxL, positions_BxL, valid_BxS)
  return logits[:, -1].astype(jnp.float32), cache


def _start(params, prompt_BxP, valid_BxP, *, model, max_new_tokens, static):
  """Prefill: the state after the prompt (last logits, cache, which tokens were seen)."""
  b, p = prompt_BxP.shape
  num_slots = p + max_new_tokens
  cache = registry.causal_lm(model, "generate").init_cache(model, b, num_slots)
  # Generated tokens always fill the slots after the bucket; only prompt padding is hidden.
  valid_BxS = jnp.concatenate([valid_BxP, jnp.ones((b, max_new_tokens), bool)], axis=1)
  positions_BxP = jnp.maximum(jnp.cumsum(valid_BxP, axis=1, dtype=jnp.int32) - 1, 0)
  logits_BxV, cache = _apply(model, params, cache, prompt_BxP, positions_BxP, valid_BxS)
  state = dict(
      logits=logits_BxV, cache=cache, valid=valid_BxS,
      lengths=jnp.sum(valid_BxP, axis=1, dtype=jnp.int32), done=jnp.zeros((b,), bool),
  )
  if static[3]:  # repetition penalty: the prompt's real tokens count as seen
    seen = jnp.zeros_like(logits_BxV, bool)
    rows = jnp.broadcast_to(jnp.arange(b)[:, None], prompt_BxP.shape)
    state["seen"] = seen.at[rows, prompt_BxP].max(valid_BxP)
  return state


def _advance(params, i, state, rng, temperature, top_k, top_p, penalty, stops, pad_id, *,
             model, static):
  """One step: choose token ``i`` of every row from the state, then run it through the model."""
  logits_BxV = state["logits"]
  if static[3]:
    logits_BxV = repetition_penalty(logits_BxV, state["seen"], penalty)
  token_B = next_token(
      jax.random.fold_in(rng, i), logits_BxV, temperature, top_k, top_p, static=static[:3]
  )
  token_B = jnp.where(state["done"], pad_id, token_B)
  state = dict(state, done=state["done"] | jnp.any(token_B[:, None] == stops[None, :], axis=1))
  if static[3]:
    state["seen"] = state["seen"].at[jnp.arange(token_B.shape[0]), token_B].set(True)
  logits_BxV, cache = _apply(model, params, state["cache"], token_B[:, None],
                             (state["lengths"] + i)[:, None], state["valid"])
  return token_B, dict(state, logits=logits_BxV, cache=cache)


_prefill = functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "static"))(
    _start
)


@functools.partial(jax.jit, static_argnames=("model", "static"))
def _stream_step(params, i, state, rng, *values, model, static):
  # The last step also runs its token through the model, as generate's loop does: one
  # program for every step rather than a second one for the last.
  TRACE_COUNTS["stream"] += 1
  return _advance(params, i, state, rng, *values, model=model, static=static)


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
    penalty: Array,
    stops: Array,
    pad_id: Array,
    *,
    model,
    max_new_tokens: int,
    static: tuple[bool, bool, bool, bool],
) -> Array:
  TRACE_COUNTS["decoder"] += 1
  b = prompt_BxP.shape[0]
  state = _start(params, prompt_BxP, valid_BxP, model=model, max_new_tokens=max_new_tokens,
                 static=static)
  out_BxN = jnp.full((b, max_new_tokens), pad_id, jnp.int32)
  values = (temperature, top_k, top_p, penalty, stops, pad_id)

  def cond(carry):
    i, _, state = carry
    return (i < max_new_tokens) & ~jnp.all(state["done"])

  def body(carry):
    i, out_BxN, state = carry
    token_B, state = _advance(params, i, state, rng, *values, model=model, static=static)
    return i + 1, out_BxN.at[:, i].set(token_B), state

  return jax.lax.while_loop(cond, body, (jnp.array(0, jnp.int32), out_BxN, state))[1]
