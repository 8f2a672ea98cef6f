"""Translation batches: ``src_ids`` = source + [EOS]; ``tgt_in_ids`` = [BOS] + target;
``tgt_out_ids`` = target + [EOS]; ``weights`` 1 on real target positions.

``build(..., start_id=)`` replaces BOS as the decoder start (T5's vocabularies have no BOS: its
decoder starts from pad); the summarization task builds its batches here too.

Sources longer than ``src_len`` and targets longer than ``tgt_len`` are truncated (EOS is kept).
Rows are padded to ``[B, src_len]`` / ``[B, tgt_len]``. With ``bucket_window = W > 0`` the
examples of each window of ``W`` global batches are sorted by length and cut into ``W`` global
batches (in a seeded random order on the train split), each padded only to its longest row
rounded up to a multiple of ``pad_to_multiple``: less padding, at the price of a few distinct
shapes (one compilation each); every process's slice of a global batch has its shape.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import grain
import numpy as np

from zoo.data.iteration import Dataset, Layout, batch_dataset, example_dataset, pad_to


def _encode(pair, tok, src_len: int, tgt_len: int) -> tuple[list[int], list[int]]:
  src, tgt = pair
  s = tok.encode(src)[: src_len - 1] + [tok.eos_id]
  t = tok.encode(tgt)[: tgt_len - 1]
  return s, t


def _row(s: list[int], t: list[int], tok, src_len: int, tgt_len: int,
         start: int) -> dict[str, np.ndarray]:
  return {
      "src_ids": pad_to(s, src_len, tok.pad_id),
      "tgt_in_ids": pad_to([start] + t, tgt_len, tok.pad_id),
      "tgt_out_ids": pad_to(t + [tok.eos_id], tgt_len, tok.pad_id),
      "weights": (np.arange(tgt_len) < len(t) + 1).astype(np.float32),
  }


def _check(tok, start: int | None) -> None:
  if start is None or tok.eos_id is None:
    raise ValueError(
        f"translation needs BOS and EOS tokens; tokenizer {getattr(tok, 'name', tok)!r} lacks "
        "one (use tokenizer='byte', 'bpe' or 'sentencepiece')."
    )


def bucketed(pairs, tok, *, src_len, tgt_len, window, multiple, layout: Layout, start: int,
             **kwargs) -> Dataset:
  """Length-bucketed global batches: each window of ``window`` global batches is sorted by
  length and cut into batches (in a seeded random order on the train split), each padded to
  its longest row."""
  g = layout.global_batch_size
  span = window * g
  windows = layout.records().batch(span, batch_fn=list)

  def rounded(n: int, cap: int) -> int:
    return min(cap, -(-max(n, 1) // multiple) * multiple)

  @functools.lru_cache(maxsize=2)
  def groups(w: int) -> list[list[tuple[list[int], list[int]]]]:
    items = [_encode(pairs[r], tok, src_len, tgt_len) for _, r in windows[w]]
    items.sort(key=lambda st: (len(st[1]), len(st[0])))
    out = [items[k * g : (k + 1) * g] for k in range(-(-len(items) // g))]
    if layout.repeat:
      out = [out[k] for k in np.random.default_rng([layout.seed, w * span]).permutation(len(out))]
    return out

  def global_batch(n: int):
    w, k = divmod(n, window)
    group = groups(w)[k]
    s_len = rounded(max(len(s) for s, _ in group), src_len)
    t_len = rounded(max(len(t) + 1 for _, t in group), tgt_len)
    return [_row(s, t, tok, s_len, t_len, start) for s, t in group]

  if layout.repeat:
    total = len(windows) * window
  else:
    last = layout.num_records - (len(windows) - 1) * span
    total = (len(windows) - 1) * window + -(-last // g)

  def empty(like):
    s_len, t_len = len(like["src_ids"]), len(like["tgt_in_ids"])
    return _row([], [], tok, s_len, t_len, start) | {"weights": np.zeros(t_len, np.float32)}

  return batch_dataset(
      grain.MapDataset.range(total).map(global_batch), empty_row=empty, layout=layout, **kwargs
  )


def build(pairs: Sequence[tuple[str, str]], tok, *, cfg, start_id: int | None = None,
          **kwargs) -> Dataset:
  """The batches of ``(source, target)`` text pairs; ``start_id`` (None = BOS) begins every
  ``tgt_in_ids`` row."""
  start = tok.bos_id if start_id is None else start_id
  _check(tok, start)
  src_len, tgt_len = cfg.src_len, cfg.tgt_len
  if cfg.bucket_window:
    return bucketed(
        pairs, tok, src_len=src_len, tgt_len=tgt_len, window=cfg.bucket_window,
        multiple=cfg.pad_to_multiple, start=start, **kwargs,
    )

  def make(record, rng):
    return _row(*_encode(pairs[record], tok, src_len, tgt_len), tok, src_len, tgt_len, start)

  def empty():
    return _row([], [], tok, src_len, tgt_len, start) | {"weights": np.zeros(tgt_len, np.float32)}

  return example_dataset(make_example=make, empty_example=empty, **kwargs)
