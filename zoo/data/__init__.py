"""Data for every zoo task: offline defaults with real data, TFDS by name, one iterator protocol.

``default_config(task)`` gives every key of a task; ``build_dataset(cfg, split=..., ...)``
returns a :class:`~zoo.data.iteration.Dataset`: ``.info`` (vocab_size, pad_id, tokenizer,
num_classes, ...), ``iter()`` yielding this process's numpy batches (infinitely on "train"),
and ``get_state()`` / ``set_state()`` for exact resume. See zoo/data/README.md.
"""

from __future__ import annotations

import platform
from typing import TYPE_CHECKING, Any

from zoo import registry
from zoo.data import offline
from zoo.data.batch import IGNORE_INDEX
from zoo.data.config import default_config, resolve
from zoo.data.tfds_sources import DataError
from zoo.data.tokenizers import ByteTokenizer, tokenizer_from_file, train_tokenizer

if TYPE_CHECKING:
  from zoo.data.iteration import Dataset

__all__ = ["IGNORE_INDEX", "DataError", "build_dataset", "default_config", "make_tokenizer"]


def make_tokenizer(data_cfg):
  """The tokenizer a text data config names (training and caching a vocabulary if asked)."""
  cfg = resolve(data_cfg)
  kind = cfg.tokenizer
  if kind == "byte":
    return ByteTokenizer()
  if kind in ("bpe", "sentencepiece"):
    name = (cfg.tfds_name if cfg.source == "tfds"
            else f"offline:{cfg.path or platform.python_version()}")
    task = registry.task(cfg.task)
    extra = task.tokenizer_key(cfg)
    key = f"{cfg.task}|{name}|{cfg.train_split}|{extra}|{cfg.tokenizer_train_examples}"

    def corpus():  # a generator: the train split is only opened when nothing is cached
      records = _records(task, cfg, "train")[0]
      for i in range(min(cfg.tokenizer_train_examples, len(records))):
        yield from task.texts(records[i])

    return train_tokenizer(
        kind,
        corpus(),
        vocab_size=cfg.vocab_size,
        cache_dir=cfg.tokenizer_dir,
        cache_key=key,
        extra_specials=task.special_tokens(cfg),
    )
  return tokenizer_from_file(kind)


def build_dataset(
    data_cfg,
    *,
    split: str,
    global_batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
) -> Dataset:
  """This process's batches of ``split`` ("train" repeats forever, shuffled per epoch).

  Args:
    data_cfg: a ``default_config(task)`` (possibly edited) or a partial dict with ``task``.
    split: "train" or "validation" (TFDS sources also take any split string, e.g. "test").
    global_batch_size: rows over all processes; each yields ``global_batch_size //
      process_count`` of them, the same global batches whatever the process count.
    seed: shuffling and per-example randomness (masking, augmentation).
    process_index: this process (``jax.process_index()``).
    process_count: ``jax.process_count()``.

  Returns:
    A Dataset; see the batch layouts in zoo/data/README.md.

  Raises:
    ValueError: unknown task, key, source or dataset; a missing or unprepared dataset
      (``DataError``); an empty corpus; a batch that does not divide over the processes.
  """
  from zoo.data.iteration import Layout  # noqa: PLC0415 - Grain only once data is built

  cfg = resolve(data_cfg)
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} is not in [0, process_count={process_count}).")
  if global_batch_size < 1 or global_batch_size % process_count:
    raise ValueError(
        f"global_batch_size={global_batch_size} must be a positive multiple of "
        f"process_count={process_count}: every process yields the same number of rows."
    )
  if not isinstance(seed, int) or seed < 0:
    raise ValueError(f"seed must be a non-negative int; got {seed!r}.")
  train = split == "train"
  task = registry.task(cfg.task)
  records, meta = _records(task, cfg, split)
  layout = Layout(
      len(records), seed=seed, shuffle=train and cfg.shuffle, repeat=train,
      global_batch_size=global_batch_size, process_index=process_index,
      process_count=process_count, read_threads=cfg.read_threads, prefetch=cfg.prefetch,
  )
  batch_size = layout.batch_size
  info: dict[str, Any] = {
      "task": cfg.task, "split": split, "source": cfg.source, "num_records": len(records),
      "global_batch_size": global_batch_size, "batch_size": batch_size, "tokenizer": None,
      **meta,
  }
  common = dict(layout=layout, info=info, tag={"task": cfg.task, "split": split})
  tok = None
  if "tokenizer" in cfg:
    tok = make_tokenizer(cfg)
    info.update(tokenizer=tok, vocab_size=tok.vocab_size, pad_id=tok.pad_id, bos_id=tok.bos_id,
                eos_id=tok.eos_id, cls_id=tok.cls_id, sep_id=tok.sep_id, mask_id=tok.mask_id)
  return task.dataset(records, tok, cfg=cfg, info=info, meta=meta, train=train, common=common)


def _records(task, cfg, split: str) -> tuple[Any, dict[str, Any]]:
  """The raw records of a split and what is known about them (label names, languages)."""
  if cfg.source == "offline":
    offline.check_split(split)
  return task.records(cfg, split)
