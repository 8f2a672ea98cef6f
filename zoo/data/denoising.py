"""BART's denoising batches (Lewis et al. 2020, §2.2 and §5.1): text infilling and sentence
permutation.

Each record is one document, split into sentences and cut to the longest run of whole
sentences (at least one, truncated) that fits ``src_len - 1`` tokens. The target is that text;
the source is the same sentences in a random order with ``mask_ratio`` (30%) of its tokens
removed in spans whose lengths are Poisson(``poisson_lambda`` = 3) draws, each span replaced by
one ``<mask>`` (a span of length 0 inserts a ``<mask>``): :func:`infill`. Both end with EOS.

Batch (translation's keys, so every encoder-decoder family trains on it): ``src_ids [B, S]``,
``tgt_in_ids`` (decoder start + target shifted right), ``tgt_out_ids``, ``weights [B, T]``,
``S = T = src_len``. The noise of a record comes from the example's own generator (the
layout's seed and the record), so batches are the same on any process count.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from zoo.data import offline
from zoo.data import summarization as summarization_data
from zoo.data import tfds_sources as tfds_src
from zoo.data.iteration import Batch, Dataset, example_dataset


def check_rates(mask_ratio: float, poisson_lambda: float) -> None:
  """ValueErrors naming a rate outside its range and BART's value."""
  if not 0.0 <= mask_ratio < 1.0:
    raise ValueError(f"mask_ratio must be in [0, 1): the share of tokens masked (BART: 0.3); "
                     f"got {mask_ratio!r}.")
  if not poisson_lambda > 0.0:
    raise ValueError(f"poisson_lambda must be > 0: the mean span length (BART: 3.0); got "
                     f"{poisson_lambda!r}.")


def span_lengths(num_masked: int, poisson_lambda: float, rng: np.random.Generator) -> np.ndarray:
  """Poisson span lengths summing to ``num_masked`` (the last one cut to fit)."""
  lengths = []
  while sum(lengths) < num_masked:
    lengths.append(int(rng.poisson(poisson_lambda)))
  if lengths:
    lengths[-1] -= sum(lengths) - num_masked
  return np.asarray(lengths, np.int64)


def infill(tokens: Sequence[int], mask_ratio: float, poisson_lambda: float, mask_id: int,
           rng: np.random.Generator) -> np.ndarray:
  """Text infilling: ``round(len * mask_ratio)`` tokens masked in Poisson-length spans, each
  span (a 0-length one too) becoming one ``mask_id``; the spans' places are uniformly random
  among the non-overlapping layouts."""
  tokens = np.asarray(tokens, np.int32)
  lengths = span_lengths(int(round(len(tokens) * mask_ratio)), poisson_lambda, rng)
  kept = len(tokens) - int(lengths.sum())
  # Stars and bars: the kept tokens split into len(lengths) + 1 gaps (each may be empty).
  cuts = np.sort(rng.integers(0, kept + 1, size=len(lengths)))
  gaps = np.diff(np.concatenate([[0], cuts, [kept]]))
  out, i = [], 0
  for gap, span in zip(gaps[:-1], lengths, strict=True):
    out.extend(tokens[i : i + gap])
    out.append(mask_id)
    i += gap + span
  out.extend(tokens[i:])
  return np.asarray(out, np.int32)


def documents(cfg, split: str) -> Sequence[str]:
  """Prose documents: offline, the bodies of the standard library's docstrings (the
  summarization corpus's documents); TFDS, a text field (``text_keys``, default ``text``)."""
  if cfg.source == "offline":
    return [doc for doc, _ in summarization_data.offline_pairs(split, cfg.offline_eval_fraction)]
  return tfds_src.documents(cfg, split)


def _fit(sentences: list[list[int]], budget: int) -> list[list[int]]:
  """The leading whole sentences within ``budget`` tokens (the first one cut if it alone
  overflows)."""
  out, used = [], 0
  for s in sentences:
    if used + len(s) > budget:
      break
    out.append(s)
    used += len(s)
  return out or [sentences[0][:budget]] if sentences else []


def noised_pair(doc: str, tok, *, cfg, rng: np.random.Generator) -> tuple[list[int], list[int]]:
  """``(source, target)`` token ids of one document (without EOS)."""
  sentences = [tok.encode(s if i == 0 else " " + s)
               for i, s in enumerate(offline.sentences(doc))]
  kept = _fit([s for s in sentences if s], cfg.src_len - 1)
  target = [t for s in kept for t in s]
  order = rng.permutation(len(kept)) if cfg.permute_sentences else range(len(kept))
  permuted = [t for i in order for t in kept[i]]
  source = infill(permuted, cfg.mask_ratio, cfg.poisson_lambda, tok.mask_id, rng)
  return list(source[: cfg.src_len - 1]), target


def _row(source, target, *, eos: int, pad: int, start: int, length: int) -> Batch:
  src = [*source, eos] if target else []
  out = {name: np.full(length, pad, np.int32) for name in ("src_ids", "tgt_in_ids", "tgt_out_ids")}
  out["src_ids"][: len(src)] = src
  t = [*target, eos] if target else []
  out["tgt_out_ids"][: len(t)] = t
  out["tgt_in_ids"][: len(t)] = [start, *t[:-1]] if t else []
  out["weights"] = (np.arange(length) < len(t)).astype(np.float32)
  return out


def build(docs: Sequence[str], tok, *, cfg, info: dict, **common) -> Dataset:
  """Denoising rows of ``docs`` (see the module docstring); adds the lengths, the decoder
  start and the mask id to ``info``."""
  if tok.mask_id is None or tok.eos_id is None:
    raise ValueError(
        f"BART denoising: tokenizer {getattr(tok, 'name', tok)!r} has no "
        f"{'<mask>' if tok.mask_id is None else 'EOS'} token. Use tokenizer='bpe' or "
        "'sentencepiece' (trained with <mask>) or a BART tokenizer.json."
    )
  start = tok.bos_id if tok.bos_id is not None else tok.pad_id
  info.update(src_len=cfg.src_len, tgt_len=cfg.src_len, decoder_start_id=start,
              mask_id=tok.mask_id)
  shape = dict(eos=tok.eos_id, pad=tok.pad_id, start=start, length=cfg.src_len)

  def make(record: int, rng: np.random.Generator) -> Batch:
    return _row(*noised_pair(docs[record], tok, cfg=cfg, rng=rng), **shape)

  return example_dataset(make_example=make, empty_example=lambda: _row([], [], **shape),
                         info=info, **common)
