"""Translation batches: ``src_ids`` = source + [EOS]; ``tgt_in_ids`` = [BOS] + target;
``tgt_out_ids`` = target + [EOS]; ``weights`` 1 on real target positions.

Sources longer than ``src_len`` and targets longer than ``tgt_len`` are truncated (EOS is kept).
Rows are padded to ``[B, src_len]`` / ``[B, tgt_len]``. With ``bucket_window = W > 0`` the
examples of each window of ``W`` batches are sorted by length and cut into ``W`` batches (in a
seeded random order on the train split), each padded only to its longest row rounded up to a
multiple of ``pad_to_multiple``: less padding, at the price of a few distinct shapes (one
compilation each).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from zoo.data.iteration import Dataset, ExampleDataset, pad_to


def _encode(pair, tok, src_len: int, tgt_len: int) -> tuple[list[int], list[int]]:
  src, tgt = pair
  s = tok.encode(src)[: src_len - 1] + [tok.eos_id]
  t = tok.encode(tgt)[: tgt_len - 1]
  return s, t


def _row(s: list[int], t: list[int], tok, src_len: int, tgt_len: int) -> dict[str, np.ndarray]:
  return {
      "src_ids": pad_to(s, src_len, tok.pad_id),
      "tgt_in_ids": pad_to([tok.bos_id] + t, tgt_len, tok.pad_id),
      "tgt_out_ids": pad_to(t + [tok.eos_id], tgt_len, tok.pad_id),
      "weights": (np.arange(tgt_len) < len(t) + 1).astype(np.float32),
  }


def _check(tok) -> None:
  if tok.bos_id is None or tok.eos_id is None:
    raise ValueError(
        f"translation needs BOS and EOS tokens; tokenizer {getattr(tok, 'name', tok)!r} lacks "
        "one (use tokenizer='byte', 'bpe' or 'sentencepiece')."
    )


class BucketedDataset(Dataset):
  """Length-bucketed translation batches; state = (window start, batches done in it)."""

  def __init__(self, *, pairs, tokenizer, src_len, tgt_len, window, multiple, **kwargs):
    super().__init__(**kwargs)
    self.pairs, self.tok = pairs, tokenizer
    self.src_len, self.tgt_len, self.window, self.multiple = src_len, tgt_len, window, multiple

  def _initial_state(self):
    return {"position": 0, "batch": 0}

  def _round(self, n: int, cap: int) -> int:
    return min(cap, -(-max(n, 1) // self.multiple) * self.multiple)

  def _batches(self, state):
    pos, first = state["position"], state["batch"]
    b, span = self.batch_size, self.window * self.batch_size
    while self.repeat or pos < self.order.padded_len:
      end = pos + span if self.repeat else min(pos + span, self.order.padded_len)
      items = []
      for p in range(pos, end):
        r = self.order.record(p)
        if r is not None:
          items.append(_encode(self.pairs[r], self.tok, self.src_len, self.tgt_len))
      items.sort(key=lambda st: (len(st[1]), len(st[0])))
      n_batches = -(-(end - pos) // b)
      groups = [items[k * b : (k + 1) * b] for k in range(n_batches)]
      if self.repeat:
        groups = [
            groups[k] for k in np.random.default_rng([self.order.seed, pos]).permutation(n_batches)
        ]
      for k in range(first, n_batches):
        group = groups[k]
        s_len = self._round(max((len(s) for s, _ in group), default=1), self.src_len)
        t_len = self._round(max((len(t) + 1 for _, t in group), default=1), self.tgt_len)
        rows = [_row(s, t, self.tok, s_len, t_len) for s, t in group]
        rows += [
            _row([], [], self.tok, s_len, t_len) | {"weights": np.zeros(t_len, np.float32)}
        ] * (b - len(rows))
        last = k + 1 == n_batches
        yield (
            {key: np.stack([r[key] for r in rows]) for key in rows[0]},
            {"position": end if last else pos, "batch": 0 if last else k + 1},
        )
      pos, first = end, 0


def build(pairs: Sequence[tuple[str, str]], tok, *, cfg, **kwargs) -> Dataset:
  _check(tok)
  src_len, tgt_len = cfg.src_len, cfg.tgt_len
  if cfg.bucket_window:
    return BucketedDataset(
        pairs=pairs, tokenizer=tok, src_len=src_len, tgt_len=tgt_len,
        window=cfg.bucket_window, multiple=cfg.pad_to_multiple, **kwargs,
    )

  def make(record, rng):
    return _row(*_encode(pairs[record], tok, src_len, tgt_len), tok, src_len, tgt_len)

  def empty():
    return _row([], [], tok, src_len, tgt_len) | {"weights": np.zeros(tgt_len, np.float32)}

  return ExampleDataset(make_example=make, empty_example=empty, **kwargs)
