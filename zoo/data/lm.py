"""Language-model batches: documents -> [BOS] tokens [EOS], packed into fixed-length rows.

Packed rows (``packing=True``): documents are laid end to end; each one becomes a segment
(``segment_ids`` 1, 2, ... within the row, 0 for padding) with ``positions`` restarting at 0,
so with a segment mask no token attends across documents. A document that does not fit the
rest of a row continues as a new segment at the start of the next row: no token is dropped
and rows are full except the last one of an eval pass. Unpacked rows hold one document each,
truncated to ``seq_len + 1`` tokens and right-padded (``weights`` 0 on padding).

Batch: ``input_ids``, ``targets`` ``[B, L]`` int32, ``weights`` ``[B, L]`` float32, and when
packed ``positions``, ``segment_ids`` ``[B, L]`` int32.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from zoo.data.iteration import Dataset, ExampleDataset


def document_tokens(doc: str, tok) -> np.ndarray:
  ids = tok.encode(doc)
  ends = (
      [tok.bos_id] if tok.bos_id is not None else [],
      [tok.eos_id] if tok.eos_id is not None else [],
  )
  return np.asarray(ends[0] + ids + ends[1], np.int32)


def _empty_row(seq_len: int, pad_id: int, packed: bool) -> dict[str, np.ndarray]:
  row = {
      "input_ids": np.full(seq_len, pad_id, np.int32),
      "targets": np.full(seq_len, pad_id, np.int32),
      "weights": np.zeros(seq_len, np.float32),
  }
  if packed:
    row["positions"] = np.zeros(seq_len, np.int32)
    row["segment_ids"] = np.zeros(seq_len, np.int32)
  return row


class PackedLMDataset(Dataset):
  """Packed language-model rows; state = (document position, tokens already consumed of it)."""

  def __init__(self, *, docs: Sequence[str], tokenizer, seq_len: int, **kwargs):
    super().__init__(**kwargs)
    self.docs, self.tok, self.seq_len = docs, tokenizer, seq_len
    self._cache: tuple[int, np.ndarray] | None = None
    self._eval_total: int | None = None

  def _initial_state(self):
    return {"position": 0, "offset": 0, "batch": 0}

  def _tokens(self, position: int) -> np.ndarray | None:
    record = self.order.record(position)
    if record is None:
      return None
    if self._cache is None or self._cache[0] != record:
      self._cache = (record, document_tokens(self.docs[record], self.tok))
    return self._cache[1]

  def _fill_row(self, pos: int, off: int):
    row, fill, seg = _empty_row(self.seq_len, self.tok.pad_id, True), 0, 0
    while fill < self.seq_len:
      t = self._tokens(pos)
      if t is None:  # end of an eval pass
        break
      left = len(t) - 1 - off  # (input, target) pairs still to place
      take = min(left, self.seq_len - fill)
      if take > 0:
        seg += 1
        sl = slice(fill, fill + take)
        row["input_ids"][sl] = t[off : off + take]
        row["targets"][sl] = t[off + 1 : off + 1 + take]
        row["weights"][sl] = 1.0
        row["positions"][sl] = np.arange(take)
        row["segment_ids"][sl] = seg
        fill, off = fill + take, off + take
      if off >= len(t) - 1:
        pos, off = pos + 1, 0
    return row, pos, off, fill

  def _batches(self, state):
    pos, off, batch = state["position"], state["offset"], state["batch"]
    while True:
      rows, real = [], 0
      for _ in range(self.batch_size):
        row, pos, off, fill = self._fill_row(pos, off)
        rows.append(row)
        real += fill
      if not self.repeat and real == 0:
        break
      batch += 1
      yield _stack(rows), {"position": pos, "offset": off, "batch": batch}
    # Other processes may hold more eval tokens: pad to the common number of batches.
    if self.order.process_count > 1:
      empty = [_empty_row(self.seq_len, self.tok.pad_id, True)] * self.batch_size
      while batch < self.num_batches():
        batch += 1
        yield _stack(empty), {"position": pos, "offset": off, "batch": batch}

  def num_batches(self) -> int | None:
    """Eval batches per process in one pass (tokenises the whole split once)."""
    if self.repeat:
      return None
    if self._eval_total is None:
      n, count = self.order.num_records, self.order.process_count
      pairs = [0] * count
      for r in range(n):
        pairs[r % count] += len(document_tokens(self.docs[r], self.tok)) - 1
      rows = [-(-p // self.seq_len) for p in pairs]
      self._eval_total = max(-(-r // self.batch_size) for r in rows)
    return self._eval_total


def _stack(rows):
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def build(docs: Sequence[str], tokenizer, *, seq_len: int, packing: bool, **kwargs) -> Dataset:
  if packing:
    return PackedLMDataset(docs=docs, tokenizer=tokenizer, seq_len=seq_len, **kwargs)

  def make(record, rng):
    t = document_tokens(docs[record], tokenizer)[: seq_len + 1]
    n = len(t) - 1
    row = _empty_row(seq_len, tokenizer.pad_id, False)
    row["input_ids"][:n], row["targets"][:n], row["weights"][:n] = t[:-1], t[1:], 1.0
    return row

  return ExampleDataset(
      make_example=make, empty_example=lambda: _empty_row(seq_len, tokenizer.pad_id, False),
      **kwargs,
  )

