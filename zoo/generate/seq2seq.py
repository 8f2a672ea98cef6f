"""Greedy and beam search for encoder-decoders (the Transformer, imported Marian models).

Any family that registers a :class:`zoo.registry.Seq2Seq` decodes here: the capability runs
the encoder, steps the decoder over its KV cache, allocates that cache and says how many
source and target positions the model has, its ids and its vocabularies.

The encoder runs once; the decoder runs one token at a time over its KV cache inside a
``lax.while_loop``, the whole search one jitted program per (batch size, source bucket,
max_new_tokens, beams, switches).

Beam search is Hugging Face's (``transformers`` ``GenerationMixin._beam_search``), step for
step: per batch row, the 2K best continuations of the K running beams; those ending in EOS
among the top K become finished hypotheses scored ``sum log p / length ** length_penalty``;
the K best others keep running; the search stops when no running beam can beat the worst
finished one (``early_stopping=False``: judged at the current length; ``True``: as soon as K
hypotheses are finished; ``"never"``: judged at ``max_new_tokens`` when the penalty is
positive), when every candidate stopped, or at ``max_new_tokens``.

Shapes: B batch, K beams, S source bucket, N max_new_tokens, V vocabulary, D width.
"""

from __future__ import annotations

import functools
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from zoo import registry
from zoo.generate import cache as kv
from zoo.generate.decoder import TRACE_COUNTS, as_rows, bucket_length, check_rows

Array = jax.Array
EarlyStopping = bool | Literal["never"]

# Hugging Face's constants: a dead beam's score, and the value of a token a logits processor
# removes (-inf there too; it is only compared and added to finite numbers, never subtracted
# from itself, so no NaN can appear).
_DEAD = -1.0e9
_REMOVED = -jnp.inf


def _right_pad(rows: list[list[int]], length: int, pad_id: int) -> np.ndarray:
  ids = np.full((len(rows), length), pad_id, np.int32)
  for i, row in enumerate(rows):
    ids[i, : len(row)] = row
  return ids


def generate(
    model,
    params,
    sources,
    *,
    max_new_tokens: int,
    decoder_start_id: int,
    eos_id: int | None,
    num_beams: int = 1,
    length_penalty: float = 1.0,
    early_stopping: EarlyStopping = False,
    suppress_ids: tuple[int, ...] = (),
    forced_eos: bool = False,
    forced_bos_id: int | None = None,
    min_length: int = 0,
    no_repeat_ngram_size: int = 0,
    min_bucket: int = 8,
) -> np.ndarray:
  """Translate: the best target sequence for each source, greedy or by beam search.

  Args:
    model: a model whose family offers a :class:`zoo.registry.Seq2Seq`
      (``zoo.models.transformer.Transformer``).
    params: its parameters.
    sources: source token ids (lists of different lengths, or a ``[B, S]`` / ``[S]`` array);
      entries equal to the capability's ``pad_id`` are padding.
    max_new_tokens: the longest target, not counting the decoder start token.
    decoder_start_id: the first decoder input (Marian: the pad id; zoo: BOS).
    eos_id: ends a hypothesis; None = run to ``max_new_tokens``.
    num_beams: 1 = greedy search.
    length_penalty: finished beams score ``sum log p / length ** length_penalty``.
    early_stopping: beam-search stopping rule (``False``, ``True`` or ``"never"``, as in
      Hugging Face).
    suppress_ids: token ids never generated (Hugging Face ``bad_words_ids`` of single tokens;
      Marian suppresses its pad id).
    forced_eos: the last allowed token is EOS (Hugging Face ``forced_eos_token_id``).
    forced_bos_id: the first generated token (Hugging Face ``forced_bos_token_id``: BART's
      ``<s>``, mBART-50's target language code).
    min_length: EOS is barred while the target, decoder start token included, is shorter
      (Hugging Face ``min_length``).
    no_repeat_ngram_size: no n-gram of this size occurs twice in a target, decoder start
      token included (Hugging Face ``no_repeat_ngram_size``); 0 = off.
    min_bucket: smallest source bucket (sources pad to a power of two >= this).

  Returns:
    ``[B, max_new_tokens]`` int32 numpy array of target tokens (without the start token),
    ``pad_id`` after EOS.
  """
  s2s, cfg = registry.seq2seq(model, "translate_ids"), model.config
  _check_options(
      s2s, cfg, max_new_tokens=max_new_tokens, decoder_start_id=decoder_start_id,
      eos_id=eos_id, num_beams=num_beams, early_stopping=early_stopping,
      suppress_ids=suppress_ids, forced_eos=forced_eos, forced_bos_id=forced_bos_id,
      min_length=min_length, no_repeat_ngram_size=no_repeat_ngram_size,
  )
  src_BxS = _source_batch(s2s, cfg, sources, min_bucket)
  out = _search(
      params,
      src_BxS,
      jnp.asarray(length_penalty, jnp.float32),
      jnp.asarray(decoder_start_id, jnp.int32),
      jnp.asarray(-1 if eos_id is None else eos_id, jnp.int32),
      jnp.asarray(early_stopping is True),
      jnp.asarray(early_stopping == "never"),
      model=model,
      max_new_tokens=max_new_tokens,
      num_beams=num_beams,
      processors=Processors(
          suppress_ids=tuple(int(s) for s in suppress_ids),
          forced_eos=jnp.asarray(bool(forced_eos)),
          forced_bos_id=jnp.asarray(-1 if forced_bos_id is None else forced_bos_id, jnp.int32),
          min_length=jnp.asarray(0 if eos_id is None else min_length, jnp.int32),
          no_repeat_ngram_size=int(no_repeat_ngram_size),
      ),
  )
  return np.asarray(out)


def _check_options(
    s2s: registry.Seq2Seq,
    cfg,
    *,
    max_new_tokens: int,
    decoder_start_id: int,
    eos_id: int | None,
    num_beams: int,
    early_stopping: EarlyStopping,
    suppress_ids: tuple[int, ...],
    forced_eos: bool,
    forced_bos_id: int | None = None,
    min_length: int = 0,
    no_repeat_ngram_size: int = 0,
) -> None:
  """Checks :func:`generate`'s search options against the model, before anything is traced."""
  if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be an int >= 1; got {max_new_tokens!r}.")
  # The decoder start token takes a position too: target_length - 1 new tokens fit.
  target_length = s2s.target_length(cfg)
  if target_length is not None and max_new_tokens > target_length - 1:
    raise ValueError(
        f"max_new_tokens={max_new_tokens} exceeds the decoder's {target_length} positions (one "
        f"of them for the start token); lower it to {target_length - 1} or less."
    )
  if not isinstance(num_beams, int) or num_beams < 1:
    raise ValueError(f"num_beams must be an int >= 1; got {num_beams!r}.")
  if not (early_stopping is True or early_stopping is False or early_stopping == "never"):
    raise ValueError(f"early_stopping must be True, False or 'never'; got {early_stopping!r}.")
  if forced_eos and eos_id is None:
    raise ValueError("forced_eos=True needs an eos_id.")
  for name, value in (("min_length", min_length), ("no_repeat_ngram_size", no_repeat_ngram_size)):
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
      raise ValueError(f"{name} must be an int >= 0 (0 = off); got {value!r}.")
  tgt_vocab = s2s.target_vocab(cfg)
  for name, value in (("decoder_start_id", decoder_start_id), ("eos_id", eos_id),
                      ("forced_bos_id", forced_bos_id),
                      *(("suppress_ids", s) for s in suppress_ids)):
    if value is not None and not 0 <= value < tgt_vocab:
      raise ValueError(f"{name}={value} is outside the target vocabulary (size {tgt_vocab}).")


def _source_batch(s2s: registry.Seq2Seq, cfg, sources, min_bucket: int) -> Array:
  """Checked sources, right-padded to their bucket: ``[B, S]`` int32."""
  rows = as_rows(sources, "sources")
  context = s2s.source_length(cfg)
  check_rows(rows, s2s.source_vocab(cfg), context, "sources")
  longest = max(len(r) for r in rows)
  bucket = bucket_length(longest, min_bucket)
  if context is not None:
    bucket = min(bucket, context)  # padding past the source positions would be rejected
  return jnp.asarray(_right_pad(rows, bucket, s2s.pad_id(cfg)))


@struct.dataclass
class Processors:
  """Hugging Face's logits processors a search applies; the ids and the n-gram size are part
  of the compiled program, the rest are traced (changing them compiles nothing)."""

  forced_eos: Array  # bool: only EOS at the last step
  forced_bos_id: Array  # int32: the only first token; -1 = off
  min_length: Array  # int32: EOS barred below this length (start token counted); 0 = off
  suppress_ids: tuple[int, ...] = struct.field(pytree_node=False, default=())
  no_repeat_ngram_size: int = struct.field(pytree_node=False, default=0)


def _banned_ngrams(scores_RxV: Array, seq_RxL: Array, length: Array, n: int) -> Array:
  """``scores`` with every token that would repeat an n-gram of ``seq[:, :length]`` removed.

  An n-gram starting at ``j`` is repeated when its first ``n - 1`` tokens equal the last
  ``n - 1`` of the sequence; its last token is then banned.
  """
  r, total = seq_RxL.shape
  starts = jnp.arange(total - n + 1)
  tail_RxM = jax.lax.dynamic_slice_in_dim(
      jnp.pad(seq_RxL, ((0, 0), (n, 0))), length + 1, n - 1, axis=1)  # seq[length-n+1:length]
  same = jnp.ones((r, starts.size), bool)
  for k in range(n - 1):
    same &= seq_RxL[:, starts + k] == tail_RxM[:, k:k + 1]
  same &= (starts + n <= length)[None]
  banned_RxJ = seq_RxL[:, starts + n - 1]
  fill = jnp.where(same, _REMOVED, jnp.inf).astype(scores_RxV.dtype)
  return scores_RxV.at[jnp.arange(r)[:, None], banned_RxJ].min(fill)


def _process(scores_RxV: Array, step: Array, seq_RxL: Array, p: Processors, *, eos_id, last):
  """Hugging Face's logits processors, in its order: no-repeat n-grams, suppressed ids (its
  single-token ``bad_words_ids``), min length, forced BOS, forced EOS.

  ``step`` tokens are generated; ``seq_RxL`` is the decoder start token followed by them
  (entries past ``step + 1`` are ignored).
  """
  length = step + 1  # transformers' cur_len counts the decoder start token
  if p.no_repeat_ngram_size:
    scores_RxV = _banned_ngrams(scores_RxV, seq_RxL, length, p.no_repeat_ngram_size)
  if p.suppress_ids:
    scores_RxV = scores_RxV.at[:, jnp.asarray(p.suppress_ids)].set(_REMOVED)
  barred = scores_RxV.at[:, jnp.maximum(eos_id, 0)].set(_REMOVED)
  scores_RxV = jnp.where(length < p.min_length, barred, scores_RxV)
  only_bos = jnp.full_like(scores_RxV, _REMOVED).at[:, jnp.maximum(p.forced_bos_id, 0)].set(0.0)
  scores_RxV = jnp.where((step == 0) & (p.forced_bos_id >= 0), only_bos, scores_RxV)
  only_eos = jnp.full_like(scores_RxV, _REMOVED).at[:, jnp.maximum(eos_id, 0)].set(0.0)
  scores_RxV = jnp.where((step == last) & p.forced_eos, only_eos, scores_RxV)
  return scores_RxV


@functools.partial(
    jax.jit,
    static_argnames=(
        "model", "max_new_tokens", "num_beams",
    ),
)
def _search(
    params,
    src_BxS: Array,
    length_penalty: Array,
    start_id: Array,
    eos_id: Array,
    stop_when_full: Array,
    never_stop_early: Array,
    *,
    model,
    max_new_tokens: int,
    num_beams: int,
    processors: Processors,
) -> Array:
  TRACE_COUNTS["seq2seq"] += 1
  b, k, n = src_BxS.shape[0], num_beams, max_new_tokens
  s2s = registry.seq2seq(model, "translate_ids")
  pad_id = s2s.pad_id(model.config)
  encoded_B = s2s.encode(model, params, src_BxS)
  # Rows are batch-major: row r is beam r % K of sentence r // K.
  src_RxS = jnp.repeat(src_BxS, k, axis=0)
  encoded_R = jax.tree.map(lambda x: jnp.repeat(x, k, axis=0), encoded_B)

  def cache_fn(rows):  # one extra slot: the last token is fed once more, its logits unused
    return s2s.init_cache(model, rows, n + 1)

  def decoder_step(cache, tokens_R):
    logits, cache = s2s.decode_step(model, params, cache, tokens_R[:, None], encoded_R, src_RxS)
    return logits[:, -1].astype(jnp.float32), cache

  cache = cache_fn(b * k)
  logits_RxV, cache = decoder_step(cache, jnp.full((b * k,), start_id, jnp.int32))
  def process(scores_RxV, i, generated_RxN):
    seq = jnp.concatenate([jnp.full((generated_RxN.shape[0], 1), start_id), generated_RxN], 1)
    return _process(scores_RxV, i, seq, processors, eos_id=eos_id, last=n - 1)

  if k == 1:
    return _greedy(logits_RxV, cache, decoder_step, process, n=n, eos_id=eos_id, pad_id=pad_id)
  axes = kv.batch_axes(cache_fn)
  return _beam(
      logits_RxV, cache, decoder_step, process, axes, length_penalty,
      b=b, k=k, n=n, eos_id=eos_id, pad_id=pad_id, stop_when_full=stop_when_full,
      never_stop_early=never_stop_early,
  )


def _greedy(logits_BxV, cache, decoder_step, process, *, n, eos_id, pad_id):
  """Argmax decoding; rows that emitted EOS emit ``pad_id``; stops when all rows are done."""
  b = logits_BxV.shape[0]

  def cond(state):
    i, _, _, _, done_B = state
    return (i < n) & ~jnp.all(done_B)

  def body(state):
    i, logits_BxV, cache, out_BxN, done_B = state
    token_B = jnp.argmax(process(logits_BxV, i, out_BxN), axis=-1).astype(jnp.int32)
    token_B = jnp.where(done_B, pad_id, token_B)
    out_BxN = out_BxN.at[:, i].set(token_B)
    done_B = done_B | (token_B == eos_id)
    logits_BxV, cache = decoder_step(cache, token_B)
    return i + 1, logits_BxV, cache, out_BxN, done_B

  state = (
      jnp.array(0, jnp.int32), logits_BxV, cache,
      jnp.full((b, n), pad_id, jnp.int32), jnp.zeros((b,), bool),
  )
  return jax.lax.while_loop(cond, body, state)[3]


def _gather(x_BxC, idx_BxJ):
  """``x[b, idx[b, j]]`` over the candidate axis 1 (trailing axes carried along)."""
  idx = idx_BxJ.reshape(idx_BxJ.shape + (1,) * (x_BxC.ndim - 2))
  return jnp.take_along_axis(x_BxC, idx, axis=1)


def _beam(logits_RxV, cache, decoder_step, process, axes, length_penalty, *,
          b, k, n, eos_id, pad_id, stop_when_full, never_stop_early):
  """Hugging Face's vectorised beam search (``GenerationMixin._beam_search``) as a while_loop.

  ``stop_when_full`` is ``early_stopping=True``, ``never_stop_early`` is ``"never"``.
  """
  v = logits_RxV.shape[-1]
  first_k = jnp.arange(2 * k) < k  # only the top K candidates may finish a hypothesis
  batch_offset_Bx1 = (jnp.arange(b) * k)[:, None]

  def cond(state):
    return state["keep_going"]

  def body(s):
    i = s["i"]  # tokens generated so far; the candidates of this step have length i + 1
    log_probs = process(jax.nn.log_softmax(s["logits"], axis=-1), i,
                        s["running_seqs"].reshape(b * k, n))
    scores_BxKV = (log_probs.reshape(b, k, v) + s["running_scores"][:, :, None]).reshape(b, k * v)
    top_scores_BxC, top_idx_BxC = jax.lax.top_k(scores_BxKV, 2 * k)  # C = 2K candidates
    from_beam_BxC = top_idx_BxC // v
    token_BxC = (top_idx_BxC % v).astype(jnp.int32)
    seqs_BxCxN = _gather(s["running_seqs"], from_beam_BxC).at[:, :, i].set(token_BxC)
    stops_BxC = (token_BxC == eos_id) | (i + 1 >= n)

    # The K best candidates that did not stop keep running.
    running_BxC = top_scores_BxC + stops_BxC * _DEAD
    keep_BxK = jax.lax.top_k(running_BxC, k)[1]
    running_seqs = _gather(seqs_BxCxN, keep_BxK)
    running_scores = _gather(running_BxC, keep_BxK)
    rows_R = (_gather(from_beam_BxC, keep_BxK) + batch_offset_Bx1).reshape(-1)

    # Candidates that stopped among the top K compete with the finished hypotheses.
    finished_now_BxC = stops_BxC & first_k[None]
    scored_BxC = top_scores_BxC / ((i + 1).astype(jnp.float32) ** length_penalty)
    full_Bx1 = jnp.all(s["finished"], axis=-1, keepdims=True) & stop_when_full
    scored_BxC = scored_BxC + full_Bx1 * _DEAD
    scored_BxC = scored_BxC + (~s["improvable"]) * _DEAD
    scored_BxC = scored_BxC + (~finished_now_BxC) * _DEAD
    merged_scores = jnp.concatenate([s["scores"], scored_BxC], axis=1)
    best_BxK = jax.lax.top_k(merged_scores, k)[1]
    seqs = _gather(jnp.concatenate([s["seqs"], seqs_BxCxN], axis=1), best_BxK)
    scores = _gather(merged_scores, best_BxK)
    finished = _gather(jnp.concatenate([s["finished"], finished_now_BxC], axis=1), best_BxK)

    # Could a running beam still beat the worst finished hypothesis?
    best_length = jnp.where(
        never_stop_early & (length_penalty > 0.0), float(n), (i + 1).astype(jnp.float32)
    )
    best_possible_Bx1 = running_scores[:, :1] / best_length**length_penalty
    worst_BxK = jnp.where(finished, jnp.min(scores, axis=1, keepdims=True), _DEAD)
    improvable = s["improvable"] & jnp.any(best_possible_Bx1 > worst_BxK, axis=-1, keepdims=True)
    keep_going = (
        jnp.any(improvable)
        & ~(jnp.all(finished) & stop_when_full)
        & ~jnp.all(stops_BxC)
    )

    tokens_R = running_seqs[:, :, i].reshape(-1)
    logits, cache = decoder_step(kv.take_rows(s["cache"], axes, rows_R), tokens_R)
    return dict(
        i=i + 1, logits=logits, cache=cache, running_seqs=running_seqs,
        running_scores=running_scores, seqs=seqs, scores=scores, finished=finished,
        improvable=improvable, keep_going=keep_going,
    )

  running_scores = jnp.full((b, k), _DEAD, jnp.float32).at[:, 0].set(0.0)
  state = dict(
      i=jnp.array(0, jnp.int32),
      logits=logits_RxV,
      cache=cache,
      running_seqs=jnp.full((b, k, n), pad_id, jnp.int32),
      running_scores=running_scores,
      seqs=jnp.full((b, k, n), pad_id, jnp.int32),
      scores=jnp.full((b, k), _DEAD, jnp.float32),
      finished=jnp.zeros((b, k), bool),
      improvable=jnp.ones((b, 1), bool),
      keep_going=jnp.array(True),
  )
  return jax.lax.while_loop(cond, body, state)["seqs"][:, 0]
