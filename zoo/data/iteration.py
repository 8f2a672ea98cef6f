"""Deterministic, resumable iteration on Grain, shared by every task.

Every split is one *global* stream of rows, the same whatever the number of processes: global
batch ``N`` is rows ``[N*G, (N+1)*G)`` of it, and process ``i`` of ``n`` yields rows
``[N*G + i*b, N*G + (i+1)*b)`` with ``b = G / n``. So 2 processes train on exactly the batches
1 process trains on, and an iterator state (a Grain iterator's state: how many batches were
read, plus a packer's position inside a document) means the same thing on every process: a
run resumes on any process count with the same global batch size.

The stream is a Grain ``MapDataset`` (epoch ``e`` reads the records in a permutation seeded by
``[seed, e]``); batching, process slicing, thread prefetch and iterator checkpointing are
Grain's. The tasks' own
transforms (tokenise, pack, mask, augment, bucket) are plain functions of a record and a
``np.random.Generator`` seeded by ``[seed, epoch, record]``, so a row depends on nothing that
is not in the state.

Three shapes of stream, by how much of the global stream a process must compute:

* :func:`example_dataset`: one record -> one row. Each process computes only its own rows.
* :func:`row_dataset`: rows that depend on their neighbours (packing: a document continues in
  the next row). Every process computes the whole global stream (cheap next to a train step)
  and keeps its slice of each global batch.
* :func:`batch_dataset`: global batches computed as a whole (length bucketing sorts a window
  of global batches), sliced per process.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grain
import numpy as np

Batch = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Layout:
  """Which records, in which order, and which rows of each global batch this process keeps.

  Attributes:
    num_records: records in the split.
    seed: the permutation of each epoch and every example's randomness.
    shuffle: permute the records (each epoch anew) rather than reading them in order.
    repeat: loop forever (train) rather than one pass (eval).
    global_batch_size: rows of one global batch, over all processes.
    process_index: this process.
    process_count: processes sharing each global batch.
    read_threads: Grain prefetch threads (0 = read in the calling thread).
    prefetch: elements each thread reads ahead.
  """

  num_records: int
  seed: int
  shuffle: bool
  repeat: bool
  global_batch_size: int
  process_index: int = 0
  process_count: int = 1
  read_threads: int = 1
  prefetch: int = 4

  def __post_init__(self):
    if self.num_records <= 0:
      raise ValueError("the dataset split has no records: nothing to iterate over.")

  @property
  def batch_size(self) -> int:
    """Rows this process yields per batch."""
    return self.global_batch_size // self.process_count

  def records(self) -> grain.MapDataset:
    """``(stream position, record index)`` for every position of the split (2**50 of them if
    ``repeat``).

    Epoch ``e`` reads ``np.random.default_rng([seed, e]).permutation(num_records)`` (computed
    once per epoch, per process): the order zoo has always used, so that a single-process run
    reproduces earlier runs and the figures measured with them bit for bit.
    """
    r = self.num_records
    total = max(1, 2**50 // r) * r if self.repeat else r
    positions = grain.MapDataset.range(total)
    if not self.shuffle:
      return positions.map(lambda k: (k, k % r))
    return positions.map(lambda k: (k, int(self._permutation(k // r)[k % r])))

  @functools.lru_cache(maxsize=2)  # noqa: B019 - one Layout per dataset, two epochs at a time
  def _permutation(self, epoch: int) -> np.ndarray:
    dtype = np.int32 if self.num_records < 2**31 else np.int64
    return np.random.default_rng([self.seed, epoch]).permutation(self.num_records).astype(dtype)

  def rng(self, position: int, record: int) -> np.random.Generator:
    """The randomness of the example built from ``record`` at stream ``position``."""
    return np.random.default_rng([self.seed, position // self.num_records, record])

  def local_rows(self, rows: Sequence[Batch], empty: Callable[[], Batch]) -> Batch:
    """This process's rows of one global batch (padded with ``empty()`` rows at the end of an
    eval pass), stacked."""
    b, i = self.batch_size, self.process_index
    mine = list(rows[i * b : (i + 1) * b])
    mine += [empty() for _ in range(b - len(mine))]
    return stack(mine)

  def read(self, ds: grain.MapDataset) -> grain.IterDataset:
    """An iterable (checkpointable) view of ``ds`` with the configured prefetch."""
    return ds.to_iter_dataset(
        grain.ReadOptions(num_threads=self.read_threads, prefetch_buffer_size=self.prefetch)
    )

class Dataset:
  """Batches of numpy arrays for one process, with an exact, JSON-serialisable state.

  ``iter(ds)`` continues from the current state on a repeating (train) split; on a
  non-repeating (eval) split each ``iter(ds)`` is one full pass from the beginning (or from a
  state given to ``set_state``). One live iterator at a time.

  Attributes:
    info: dict describing the data (vocab_size, pad_id, tokenizer, num_classes, ...).
    batch_size: rows per batch on this process.
  """

  def __init__(
      self,
      batches: grain.IterDataset,
      *,
      layout: Layout,
      info: dict[str, Any],
      tag: dict[str, Any],
      num_batches: Callable[[], int] | None = None,
  ):
    self.layout = layout
    self.batch_size = layout.batch_size
    self.repeat = layout.repeat
    self.info = info
    self._batches = batches
    self._count = num_batches
    self._num_batches: int | None = None
    # Everything that decides the global stream; not the process layout (the stream is the
    # same for any number of processes).
    self._fingerprint = {
        **tag,
        "num_records": layout.num_records,
        "seed": layout.seed,
        "global_batch_size": layout.global_batch_size,
    }
    self._iterator: grain.DatasetIterator | None = None
    self._resume: dict | None = None

  def _fresh(self, state: dict | None) -> grain.DatasetIterator:
    it = iter(self._batches)
    if state is not None:
      it.set_state(state)
    return it

  def __iter__(self) -> Iterator[Batch]:
    if self.repeat:
      if self._iterator is None:
        self._iterator = self._fresh(self._resume)
        self._resume = None
      return self._iterator
    self._iterator = self._fresh(self._resume)
    self._resume = None
    return self._iterator

  def get_state(self) -> dict:
    """The position after the last yielded batch (JSON: goes into a checkpoint)."""
    if self._iterator is not None:
      grain_state = self._iterator.get_state()
    elif self._resume is not None:
      grain_state = self._resume
    else:
      grain_state = self._fresh(None).get_state()
    return {"grain": grain_state, "fingerprint": dict(self._fingerprint)}

  def set_state(self, state: dict) -> None:
    """Continue from a ``get_state()`` of an identically configured dataset (on any number
    of processes: the state is one of the global stream).

    Raises:
      ValueError: the state was saved by a dataset with another split, seed, global batch
        size or number of records (it would not resume the same stream).
    """
    saved = dict(state.get("fingerprint", {}))
    diff = {k: (saved.get(k), v) for k, v in self._fingerprint.items() if saved.get(k) != v}
    if diff:
      detail = ", ".join(f"{k}: saved {a!r} vs now {b!r}" for k, (a, b) in diff.items())
      raise ValueError(
          f"data iterator state does not match this dataset ({detail}); resume with the "
          "same data config, seed and global batch size."
      )
    if not isinstance(state.get("grain"), dict):
      raise ValueError(
          f"data iterator state has no Grain iterator state (keys {sorted(state)}): it was "
          "written by an older zoo; start a fresh --workdir."
      )
    self._resume = dict(state["grain"])
    self._iterator = None

  def num_batches(self) -> int | None:
    """Batches in one pass of a non-repeating split (None when repeating)."""
    if self.repeat:
      return None
    if self._num_batches is None:
      self._num_batches = self._count()
    return self._num_batches


def example_dataset(
    *,
    make_example: Callable[[int, np.random.Generator], Batch],
    empty_example: Callable[[], Batch],
    layout: Layout,
    info: dict[str, Any],
    tag: dict[str, Any],
) -> Dataset:
  """One record -> one fixed-shape example; each process builds only its own rows.

  An eval pass is padded with ``empty_example()`` rows to whole global batches, so every
  process yields the same number of batches.
  """
  g, r = layout.global_batch_size, layout.num_records
  if layout.repeat:
    positions = layout.records()
  else:
    total = -(-r // g) * g
    base = layout.records()
    positions = grain.MapDataset.range(total).map(lambda k: base[k] if k < r else (k, None))

  def example(item):
    k, record = item
    if record is None:
      return empty_example()
    return make_example(record, layout.rng(k, record))

  rows = positions.map(example).batch(layout.batch_size, batch_fn=stack)
  # Global batch N is local chunks N*n .. N*n + n - 1: this process takes chunk N*n + i.
  mine = rows[layout.process_index :: layout.process_count]
  return Dataset(
      layout.read(mine), layout=layout, info=info, tag=tag,
      num_batches=lambda: -(-r // g),
  )


def row_dataset(
    rows: grain.IterDataset, *, empty_row: Callable[[], Batch], layout: Layout,
    info: dict[str, Any], tag: dict[str, Any],
) -> Dataset:
  """Rows of the global stream (computed on every process) -> this process's batches."""
  batches = rows.batch(
      layout.global_batch_size, batch_fn=lambda group: layout.local_rows(group, empty_row)
  )

  def count() -> int:
    return sum(1 for _ in batches)

  return Dataset(batches, layout=layout, info=info, tag=tag, num_batches=count)


def batch_dataset(
    global_batches: grain.MapDataset, *, empty_row: Callable[[Batch], Batch], layout: Layout,
    info: dict[str, Any], tag: dict[str, Any],
) -> Dataset:
  """Global batches (lists of rows, all padded to one shape) -> this process's batches.

  ``empty_row(like)`` is a padding row shaped like the row ``like``.
  """

  def local(rows):
    return layout.local_rows(rows, lambda: empty_row(rows[0]))

  mine = global_batches.map(local)
  return Dataset(
      layout.read(mine), layout=layout, info=info, tag=tag,
      num_batches=lambda: len(mine),
  )


class PackedRows(grain.IterDataset):
  """Concatenate-then-split packing of a document stream into fixed-length rows.

  Elements of ``parent`` are documents as int arrays ``[BOS] tokens [EOS]``; each row holds
  ``length`` (input, target) pairs. Documents are laid end to end, each a segment (ids 1, 2,
  ... within the row, 0 = padding) whose positions restart at 0; a document that does not fit
  the rest of a row continues as a new segment in the next row. The iterator state is the
  parent's position at the current document plus the pairs already placed from it.
  """

  def __init__(self, parent: grain.IterDataset, *, length: int, pad_id: int):
    super().__init__(parent)
    self.length, self.pad_id = length, pad_id

  def __iter__(self) -> grain.DatasetIterator:
    return _PackedRowsIterator(self._parent.__iter__(), self.length, self.pad_id)


def empty_lm_row(length: int, pad_id: int, packed: bool) -> Batch:
  row = {
      "input_ids": np.full(length, pad_id, np.int32),
      "targets": np.full(length, pad_id, np.int32),
      "weights": np.zeros(length, np.float32),
  }
  if packed:
    row["positions"] = np.zeros(length, np.int32)
    row["segment_ids"] = np.zeros(length, np.int32)
  return row


class DocumentRows(grain.DatasetIterator):
  """Rows of ``length`` cut from a stream of int-array documents laid end to end; resumable
  mid-document.

  Subclasses say what a row is (:meth:`row`, from the pieces :meth:`pieces` yields) and how
  many tokens at a document's end start no piece (``overlap``: 1 for (input, target) pairs).
  The state is the parent's state at the current document, the document's tokens already
  used and the rows made so far.
  """

  overlap = 0

  def __init__(self, parent: grain.DatasetIterator, length: int):
    super().__init__(parent)
    self.length = length
    self._doc: np.ndarray | None = None
    self._doc_state = parent.get_state()  # the parent's state before the current document
    self._offset = 0  # tokens of the current document already placed
    self._count = 0  # rows made
    self._done = False

  def _document(self) -> np.ndarray | None:
    if self._doc is None and not self._done:
      self._doc_state = self._parent.get_state()
      try:
        self._doc = next(self._parent)
      except StopIteration:
        self._done = True
    return self._doc

  def pieces(self) -> Iterator[tuple[np.ndarray, int, int, int]]:
    """``(document, offset, fill, take)`` until a row is full or the stream ends: the row's
    positions ``fill : fill + take`` come from ``document[offset : offset + take]``."""
    fill = 0
    while fill < self.length and (doc := self._document()) is not None:
      take = min(len(doc) - self.overlap - self._offset, self.length - fill)
      if take > 0:
        yield doc, self._offset, fill, take
        fill, self._offset = fill + take, self._offset + take
      if self._offset >= len(doc) - self.overlap:
        self._doc, self._offset = None, 0

  def row(self) -> Any:
    """The next row from :meth:`pieces`, or None when the stream has no token left."""
    raise NotImplementedError

  def __next__(self) -> Any:
    out = self.row()
    if out is None:
      raise StopIteration
    self._count += 1
    return out

  def get_state(self) -> dict:
    parent = self._doc_state if self._doc is not None else self._parent.get_state()
    return {"parent": parent, "offset": self._offset, "count": self._count}

  def set_state(self, state: dict) -> None:
    self._parent.set_state(state["parent"])
    self._doc, self._done = None, False
    self._doc_state = state["parent"]
    self._offset, self._count = int(state["offset"]), int(state.get("count", 0))


class _PackedRowsIterator(DocumentRows):
  overlap = 1  # a document of n tokens gives n - 1 (input, target) pairs

  def __init__(self, parent: grain.DatasetIterator, length: int, pad_id: int):
    super().__init__(parent, length)
    self.pad_id = pad_id

  def row(self) -> Batch | None:
    row, seg = empty_lm_row(self.length, self.pad_id, True), 0
    for t, off, fill, take in self.pieces():
      seg += 1
      sl = slice(fill, fill + take)
      row["input_ids"][sl] = t[off : off + take]
      row["targets"][sl] = t[off + 1 : off + 1 + take]
      row["weights"][sl] = 1.0
      row["positions"][sl] = np.arange(take)
      row["segment_ids"][sl] = seg
    return row if seg else None


def stack(rows: Sequence[Batch]) -> Batch:
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def pad_to(ids: list[int], length: int, pad: int, dtype=np.int32) -> np.ndarray:
  """``ids`` truncated or right-padded with ``pad`` to ``length``."""
  out = np.full(length, pad, dtype)
  n = min(len(ids), length)
  out[:n] = ids[:n]
  return out

