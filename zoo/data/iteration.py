"""Deterministic, resumable, index-based iteration shared by every task.

A process reads an infinite (train) or single-pass (eval) *stream of positions*. Position ``p``
of process ``i`` of ``n`` maps to a record index: epoch ``e = p // per_epoch`` draws a seeded
permutation of all records (the same on every process), and the process takes every ``n``-th
entry from its own offset ``i``, so shards are disjoint and together cover the epoch (the
``num_records % n`` leftovers of a shuffled epoch are skipped, so every process has the same
number of positions). The iterator state is the stream position (plus, for packed language
modelling, how far into the current document it got), so ``get_state`` is a few integers and a
restored iterator recomputes exactly the batches an uninterrupted one yields. Randomness used to
build an example (MLM masking, NSP partners, augmentation) comes from
``np.random.default_rng([seed, epoch, record_index])``: it depends on nothing that is not in the
state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

Batch = dict[str, np.ndarray]


class ShardOrder:
  """Maps stream positions of one process to record indices."""

  def __init__(
      self,
      num_records: int,
      *,
      seed: int,
      shuffle: bool,
      repeat: bool,
      process_index: int,
      process_count: int,
  ):
    if num_records <= 0:
      raise ValueError("the dataset split has no records: nothing to iterate over.")
    self.num_records = num_records
    self.seed, self.shuffle, self.repeat = seed, shuffle, repeat
    self.process_index, self.process_count = process_index, process_count
    if repeat:
      self.per_epoch = num_records // process_count
      if self.per_epoch == 0:
        raise ValueError(
            f"{num_records} records cannot be shared by {process_count} processes: every "
            "process needs at least one; use a bigger split or fewer processes."
        )
      self.padded_len = None
    else:
      self.per_epoch = len(range(process_index, num_records, process_count))
      # Every process runs the same number of positions (collectives must line up); the
      # extra ones are padding.
      self.padded_len = -(-num_records // process_count)
    self._cached: tuple[int, np.ndarray] | None = None

  def epoch(self, position: int) -> int:
    return position // self.per_epoch if self.per_epoch else 0

  def _perm(self, epoch: int) -> np.ndarray:
    if self._cached is None or self._cached[0] != epoch:
      rng = np.random.default_rng([self.seed, epoch])
      dtype = np.int32 if self.num_records < 2**31 else np.int64
      self._cached = (epoch, rng.permutation(self.num_records).astype(dtype))
    return self._cached[1]

  def record(self, position: int) -> int | None:
    """The record read at ``position``, or None for an eval padding position."""
    if not self.repeat and position >= self.per_epoch:
      return None
    epoch, i = divmod(position, self.per_epoch)
    k = self.process_index + i * self.process_count
    return int(self._perm(epoch)[k]) if self.shuffle else k

  def rng(self, position: int, record: int) -> np.random.Generator:
    return np.random.default_rng([self.seed, self.epoch(position), record])


class Dataset:
  """Batches of numpy arrays for one process, with an exact, JSON-serialisable state.

  ``iter(ds)`` continues from the current state on a repeating (train) split; on a
  non-repeating (eval) split each ``iter(ds)`` is one full pass from the beginning (or from a
  state given to ``set_state``). One live iterator at a time.

  Attributes:
    info: dict describing the data (vocab_size, pad_id, tokenizer, num_classes, ...).
  """

  def __init__(self, *, order: ShardOrder, batch_size: int, info: dict[str, Any], tag: dict):
    self.order = order
    self.batch_size = batch_size
    self.repeat = order.repeat
    self.info = info
    self._fingerprint = {
        **tag,
        "num_records": order.num_records,
        "seed": order.seed,
        "process_index": order.process_index,
        "process_count": order.process_count,
        "batch_size": batch_size,
    }
    self._state = self._initial_state()
    self._resume: dict | None = None

  # Subclasses: the stream of (batch, state after that batch).
  def _batches(self, state: dict) -> Iterator[tuple[Batch, dict]]:
    raise NotImplementedError

  def _initial_state(self) -> dict:
    return {"position": 0}

  def __iter__(self) -> Iterator[Batch]:
    if self.repeat:
      state = self._state
    else:
      state, self._resume = self._resume or self._initial_state(), None
    for batch, after in self._batches(dict(state)):
      self._state = after
      yield batch
    self._state = self._initial_state()

  def get_state(self) -> dict:
    """The position after the last yielded batch (ints only: goes into a checkpoint)."""
    return {**self._state, "fingerprint": dict(self._fingerprint)}

  def set_state(self, state: dict) -> None:
    """Continue from a ``get_state()`` of an identically configured dataset.

    Raises:
      ValueError: the state was saved by a dataset with another split, seed, batch size,
        process layout or number of records (it would not resume the same stream).
    """
    saved = dict(state.get("fingerprint", {}))
    diff = {k: (saved.get(k), v) for k, v in self._fingerprint.items() if saved.get(k) != v}
    if diff:
      detail = ", ".join(f"{k}: saved {a!r} vs now {b!r}" for k, (a, b) in diff.items())
      raise ValueError(
          f"data iterator state does not match this dataset ({detail}); resume with the "
          "same data config, seed, global batch size and process count."
      )
    clean = {k: v for k, v in state.items() if k != "fingerprint"}
    if set(clean) != set(self._initial_state()):
      raise ValueError(
          f"data iterator state keys {sorted(clean)} are not {sorted(self._initial_state())}."
      )
    self._state = {k: int(v) for k, v in clean.items()}
    if not self.repeat:
      self._resume = dict(self._state)

  def num_batches(self) -> int | None:
    """Batches in one pass of a non-repeating split (None when repeating)."""
    if self.repeat:
      return None
    return -(-self.order.padded_len // self.batch_size)


class ExampleDataset(Dataset):
  """One record -> one fixed-shape example; a batch stacks ``batch_size`` of them."""

  def __init__(
      self,
      *,
      make_example: Callable[[int, np.random.Generator], Batch],
      empty_example: Callable[[], Batch],
      **kwargs,
  ):
    super().__init__(**kwargs)
    self.make_example = make_example
    self.empty_example = empty_example

  def example_at(self, position: int) -> Batch:
    record = self.order.record(position)
    if record is None:
      return self.empty_example()
    return self.make_example(record, self.order.rng(position, record))

  def _batches(self, state):
    pos = state["position"]
    while self.repeat or pos < self.order.padded_len:
      rows = [self.example_at(pos + k) for k in range(self.batch_size)]
      pos += self.batch_size
      yield stack(rows), {"position": pos}


def stack(rows: list[Batch]) -> Batch:
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def pad_to(ids: list[int], length: int, pad: int, dtype=np.int32) -> np.ndarray:
  """``ids`` truncated or right-padded with ``pad`` to ``length``."""
  out = np.full(length, pad, dtype)
  n = min(len(ids), length)
  out[:n] = ids[:n]
  return out
