"""T5's span-corruption batches (Raffel et al. 2020, §3.1.4 and §3.3).

Documents are tokenized, laid end to end with EOS after each (the global stream, as for LM
packing) and cut into chunks of ``tokens_length`` tokens. In each chunk ``round(length *
noise_density)`` tokens, in ``round(num_noise / mean_noise_span_length)`` spans, are noise
(:func:`noise_mask`, T5's ``random_spans_noise_mask``). The inputs are the other tokens with
each noise span replaced by one sentinel (``<extra_id_0>``, ``<extra_id_1>``, ... in order),
then EOS; the targets are each sentinel followed by its span's tokens, then EOS.
``tokens_length`` and ``targets_length`` come from the inputs length
(:func:`random_spans_lengths`, T5's ``random_spans_helper``) so that a full chunk fills both
rows exactly: inputs_length 512 -> 568 tokens, 114 targets.

Batch (translation's keys, so every encoder-decoder trains on it): ``src_ids [B, S]``
(``S = src_len``), ``tgt_in_ids`` (decoder start + targets shifted right), ``tgt_out_ids``,
``weights [B, T]`` (``T = targets_length``). The mask of chunk ``n`` of the global stream is
drawn from ``np.random.default_rng([seed, n])``, so rows are the same on any process count.
"""

from __future__ import annotations

from collections.abc import Sequence

import grain
import ml_collections
import numpy as np

from zoo.data import offline
from zoo.data import tfds_sources as tfds_src
from zoo.data.iteration import Batch, Dataset, DocumentRows, Layout, row_dataset
from zoo.data.tokenizers import sentinel_ids

SENTINEL = "<extra_id_{}>"


def sentinel_tokens(n: int) -> tuple[str, ...]:
  """``("<extra_id_0>", ..., "<extra_id_{n-1}>")``."""
  return tuple(SENTINEL.format(i) for i in range(n))


def _counts(tokens_length: int, noise_density: float, mean_noise_span_length: float):
  noise = int(round(tokens_length * noise_density))
  return noise, int(round(noise / mean_noise_span_length))


def random_spans_lengths(
    inputs_length: int, noise_density: float, mean_noise_span_length: float
) -> tuple[int, int]:
  """``(tokens_length, targets_length)``: the longest chunk whose corrupted inputs (one
  sentinel per span, EOS) fit ``inputs_length``, and its targets' length (T5's
  ``random_spans_helper`` with one extra token per span on each side).

  Raises:
    ValueError: ``noise_density`` outside (0, 1) or ``mean_noise_span_length`` below 1.
  """
  _check_rates(noise_density, mean_noise_span_length)

  def lengths(tokens_length: int) -> tuple[int, int]:
    noise, spans = _counts(tokens_length, noise_density, mean_noise_span_length)
    return tokens_length - noise + spans + 1, noise + spans + 1

  tokens_length = inputs_length - 1
  while lengths(tokens_length + 1)[0] <= inputs_length:
    tokens_length += 1
  targets_length = lengths(tokens_length)[1]
  if noise_density == 0.5 and targets_length > inputs_length:  # T5's: keep targets <= inputs
    tokens_length, targets_length = tokens_length - 1, targets_length - 1
  return tokens_length, targets_length


def _check_rates(noise_density: float, mean_noise_span_length: float) -> None:
  if not 0.0 < noise_density < 1.0:
    raise ValueError(
        f"noise_density must be in (0, 1): the share of tokens that are noise (T5: 0.15); got "
        f"{noise_density}."
    )
  if mean_noise_span_length < 1.0:
    raise ValueError(
        f"mean_noise_span_length must be >= 1 token (T5: 3.0); got {mean_noise_span_length}."
    )


def span_counts(length: int, noise_density: float, mean_noise_span_length: float):
  """``(num_noise_tokens, num_noise_spans)`` of a chunk of ``length`` tokens (length >= 2): at
  least one noise and one non-noise token, at least one span, no more spans than either."""
  noise, spans = _counts(length, noise_density, mean_noise_span_length)
  noise = min(max(noise, 1), length - 1)
  return noise, min(max(spans, 1), noise, length - noise)


def _segment(num_items: int, num_segments: int, rng: np.random.Generator) -> np.ndarray:
  """A uniformly random split of ``num_items`` into ``num_segments`` positive lengths."""
  cuts = np.sort(rng.choice(num_items - 1, num_segments - 1, replace=False)) + 1
  return np.diff(np.concatenate([[0], cuts, [num_items]]))


def noise_mask(
    length: int, noise_density: float, mean_noise_span_length: float, rng: np.random.Generator
) -> np.ndarray:
  """T5's ``random_spans_noise_mask``: bool ``[length]``, True on noise.

  Noise and non-noise span lengths are random segmentations of their token counts
  (:func:`span_counts`); spans alternate, non-noise first, so the chunk ends with noise. A
  chunk of one token (the end of an evaluation pass) has no noise.
  """
  if length < 2:
    return np.zeros(length, bool)
  noise, spans = span_counts(length, noise_density, mean_noise_span_length)
  noise_lengths = _segment(noise, spans, rng)
  other_lengths = _segment(length - noise, spans, rng)
  interleaved = np.stack([other_lengths, noise_lengths], axis=1).reshape(-1)
  return np.repeat(np.arange(2 * spans) % 2 == 1, interleaved)


def corrupt(
    tokens: np.ndarray, mask: np.ndarray, sentinels: Sequence[int], eos_id: int
) -> tuple[np.ndarray, np.ndarray]:
  """``(inputs, targets)`` of a chunk: noise span ``k`` becomes ``sentinels[k]`` in the inputs;
  the targets are ``sentinels[k]`` + span ``k`` for every span; both end with ``eos_id``."""
  tokens = np.asarray(tokens, np.int32)
  starts = mask & ~np.concatenate([[False], mask[:-1]])
  k = int(starts.sum())
  if k > len(sentinels):
    raise ValueError(f"a chunk has {k} noise spans but there are only {len(sentinels)} sentinels.")
  ids = np.asarray(sentinels[:k], np.int32)
  inputs = tokens.copy()
  inputs[starts] = ids
  inputs = inputs[~mask | starts]
  targets = np.insert(tokens[mask], np.flatnonzero(starts[mask]), ids)
  eos = np.asarray([eos_id], np.int32)
  return np.concatenate([inputs, eos]), np.concatenate([targets, eos]).astype(np.int32)


# ----------------------------------------------------------------------------------------------
# Records and checks.


def documents(cfg, split: str) -> Sequence[str]:
  """Text documents: the standard library's source blocks offline (the ``lm`` corpus), or a
  TFDS text field (``c4/en``'s ``text`` unless ``text_keys`` says otherwise)."""
  if cfg.source == "offline":
    return offline.lm_documents(cfg.path, split, cfg.offline_eval_fraction)
  if not cfg.get("text_keys"):
    cfg = ml_collections.ConfigDict({**cfg.to_dict(), "text_keys": ("text",)})
  return tfds_src.documents(cfg, split)


def check_lengths(
    src_len: int, noise_density: float, mean_noise_span_length: float,
    targets_length: int | None = None,
) -> tuple[int, int, int]:
  """``(tokens_length, targets_length, num_noise_spans)`` of a full chunk, or a ValueError
  saying which value leaves no room for the sentinels and what to change."""
  tokens_length, needed = random_spans_lengths(src_len, noise_density, mean_noise_span_length)
  noise, spans = _counts(tokens_length, noise_density, mean_noise_span_length)
  what = (f"src_len={src_len}, noise_density={noise_density}, "
          f"mean_noise_span_length={mean_noise_span_length}")
  if spans < 1:
    raise ValueError(
        f"{what} give chunks of {tokens_length} tokens with {noise} noise tokens in 0 spans: "
        "nothing to predict. Raise noise_density or src_len, or lower mean_noise_span_length."
    )
  if tokens_length < src_len:
    raise ValueError(
        f"{what} give chunks of {tokens_length} tokens, fewer than the {src_len} inputs (a "
        f"sentinel for each of {spans} spans of {noise} noise tokens): raise "
        "mean_noise_span_length."
    )
  if spans > tokens_length - noise:
    raise ValueError(
        f"{what} give {spans} noise spans but only {tokens_length - noise} other tokens to "
        "separate them: lower noise_density or raise mean_noise_span_length."
    )
  if targets_length is not None and targets_length < needed:
    raise ValueError(
        f"targets_length={targets_length} cannot hold the targets of a chunk: {what} give "
        f"{spans} sentinels + {noise} noise tokens + EOS = {needed}. Leave targets_length None "
        f"(computed) or set it >= {needed}."
    )
  return tokens_length, needed if targets_length is None else targets_length, spans


def _check_tokenizer(tok, spans: int) -> tuple[int, ...]:
  have = sentinel_ids(tok)
  if len(have) < spans or tok.eos_id is None:
    lacking = f"has {len(have)} sentinel tokens (<extra_id_N>) but needs {spans}"
    if tok.eos_id is None:
      lacking = "has no EOS token"
    raise ValueError(
        f"span corruption: tokenizer {getattr(tok, 'name', tok)!r} {lacking} (one per noise "
        "span of a chunk). Use tokenizer='sentencepiece' or 'bpe' (trained with num_sentinels "
        "<extra_id_N> tokens) or a T5 tokenizer (100 sentinels)."
    )
  return have


# ----------------------------------------------------------------------------------------------
# The global stream of chunks.


class TokenChunks(grain.IterDataset):
  """Documents (int arrays ending in EOS) laid end to end and cut into ``length``-token chunks.

  Yields ``(n, chunk)``, ``n`` the chunk's index in the stream; the last chunk of a finite
  stream may be shorter. The state is the parent's at the current document, the tokens of it
  already used and ``n``.
  """

  def __init__(self, parent: grain.IterDataset, *, length: int):
    super().__init__(parent)
    self.length = length

  def __iter__(self) -> grain.DatasetIterator:
    return _ChunksIterator(self._parent.__iter__(), self.length)


class _ChunksIterator(DocumentRows):
  def row(self) -> tuple[int, np.ndarray] | None:
    parts = [doc[off : off + take] for doc, off, _, take in self.pieces()]
    return (self._count, np.concatenate(parts)) if parts else None


def build(docs: Sequence[str], tok, *, cfg, layout: Layout, info: dict, tag: dict) -> Dataset:
  """Span-corruption rows of ``docs`` (see the module docstring); adds the lengths, the
  decoder start and the sentinel ids to ``info``."""
  src_len, rates = cfg.src_len, (cfg.noise_density, cfg.mean_noise_span_length)
  tokens_length, tgt_len, spans = check_lengths(src_len, *rates, cfg.targets_length)
  sentinels = _check_tokenizer(tok, spans)
  eos, pad = tok.eos_id, tok.pad_id
  start = tok.bos_id if tok.bos_id is not None else pad  # T5 starts decoding from pad
  info.update(src_len=src_len, tgt_len=tgt_len, tokens_length=tokens_length,
              num_noise_spans=spans, decoder_start_id=start, sentinel_ids=sentinels)

  def encode(item) -> np.ndarray:
    return np.asarray([*tok.encode(docs[item[1]]), eos], np.int32)

  def row(item) -> Batch:
    n, chunk = item
    mask = noise_mask(len(chunk), *rates, np.random.default_rng([layout.seed, n]))
    inputs, targets = corrupt(chunk, mask, sentinels, eos)
    return _row(inputs, targets, start, pad, src_len, tgt_len)

  chunks = TokenChunks(layout.read(layout.records().map(encode)), length=tokens_length)
  return row_dataset(
      chunks.map(row), empty_row=lambda: _row([], [], start, pad, src_len, tgt_len),
      layout=layout, info=info, tag=tag,
  )


def _row(inputs, targets, start: int, pad: int, src_len: int, tgt_len: int) -> Batch:
  t = len(targets)
  out = {
      "src_ids": np.full(src_len, pad, np.int32),
      "tgt_in_ids": np.full(tgt_len, pad, np.int32),
      "tgt_out_ids": np.full(tgt_len, pad, np.int32),
      "weights": (np.arange(tgt_len) < t).astype(np.float32),
  }
  out["src_ids"][: len(inputs)] = inputs
  out["tgt_out_ids"][:t] = targets
  out["tgt_in_ids"][:t] = [start, *targets[:-1]] if t else []
  return out
