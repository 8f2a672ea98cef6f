"""Data for every zoo task: offline defaults with real data, TFDS by name, one iterator protocol.

``default_config(task)`` gives every key of a task; ``build_dataset(cfg, split=..., ...)``
returns a :class:`~zoo.data.iteration.Dataset`: ``.info`` (vocab_size, pad_id, tokenizer,
num_classes, ...), ``iter()`` yielding this process's numpy batches (infinitely on "train"),
and ``get_state()`` / ``set_state()`` for exact resume. See zoo/data/README.md.
"""

from __future__ import annotations

import platform
from typing import Any

from zoo.data import bert, images, lm, offline, translation
from zoo.data import tfds_sources as tfds_src
from zoo.data.bert import IGNORE_INDEX
from zoo.data.config import TASKS, default_config, resolve
from zoo.data.iteration import Dataset, Layout
from zoo.data.tfds_sources import DataError
from zoo.data.tokenizers import ByteTokenizer, tokenizer_from_file, train_tokenizer

__all__ = [
    "IGNORE_INDEX", "TASKS", "DataError", "Dataset", "build_dataset", "default_config",
    "make_tokenizer",
]


def _records(cfg, split: str) -> tuple[Any, dict[str, Any]]:
  """The raw records of a split and what is known about them (label names, languages)."""
  task, frac, path = cfg.task, cfg.offline_eval_fraction, cfg.path
  if cfg.source == "offline":
    offline.check_split(split)
    if task == "lm":
      return offline.lm_documents(path, split, frac), {}
    if task == "mlm_nsp":
      return offline.mlm_documents(path, split, frac), {}
    if task == "translation":
      langs = (cfg.source_lang, cfg.target_lang or "fr")
      if path:
        return offline.tsv_pairs(path, split, frac), {"languages": langs}
      return offline.number_pairs(cfg.max_number, *langs, split, frac), {"languages": langs}
    fn = {
        "classification": offline.classification_records,
        "tagging": offline.tagging_records,
        "image_classification": offline.image_records,
    }[task]
    recs, names = fn(path, split, frac)
    return recs, {"label_names": names}
  if task in ("lm", "mlm_nsp"):
    return tfds_src.documents(cfg, split), {}
  if task == "translation":
    pairs, langs = tfds_src.translation_pairs(cfg, split)
    return pairs, {"languages": langs}
  fn = {
      "classification": tfds_src.classification_records,
      "tagging": tfds_src.tagging_records,
      "image_classification": tfds_src.image_records,
  }[task]
  recs, names = fn(cfg, split)
  return recs, {"label_names": names}


def _corpus_texts(task: str, records, n: int):
  for i in range(min(n, len(records))):
    r = records[i]
    if task in ("lm", "mlm_nsp"):
      yield r
    elif task == "translation":
      yield from r
    elif task == "classification":
      yield from r[0]
    else:  # tagging: words
      yield " ".join(r[0])


def make_tokenizer(data_cfg):
  """The tokenizer a text data config names (training and caching a vocabulary if asked)."""
  cfg = resolve(data_cfg)
  kind = cfg.tokenizer
  if kind == "byte":
    return ByteTokenizer()
  if kind in ("bpe", "sentencepiece"):
    name = (cfg.tfds_name if cfg.source == "tfds"
            else f"offline:{cfg.path or platform.python_version()}")
    extra = (cfg.source_lang, cfg.target_lang, cfg.max_number) if cfg.task == "translation" else ()
    key = f"{cfg.task}|{name}|{cfg.train_split}|{extra}|{cfg.tokenizer_train_examples}"

    def corpus():  # a generator: the train split is only opened when nothing is cached
      yield from _corpus_texts(cfg.task, _records(cfg, "train")[0], cfg.tokenizer_train_examples)

    return train_tokenizer(
        kind,
        corpus(),
        vocab_size=cfg.vocab_size,
        cache_dir=cfg.tokenizer_dir,
        cache_key=key,
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
  records, meta = _records(cfg, split)
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
  if cfg.task == "image_classification":
    return _images(cfg, records, info, train, common)

  tok = make_tokenizer(cfg)
  info.update(tokenizer=tok, vocab_size=tok.vocab_size, pad_id=tok.pad_id, bos_id=tok.bos_id,
              eos_id=tok.eos_id, cls_id=tok.cls_id, sep_id=tok.sep_id, mask_id=tok.mask_id)
  if cfg.task == "lm":
    info.update(seq_len=cfg.seq_len, packing=cfg.packing)
    return lm.build(records, tok, seq_len=cfg.seq_len, packing=cfg.packing, **common)
  if cfg.task == "translation":
    info.update(src_len=cfg.src_len, tgt_len=cfg.tgt_len, source_lang=meta["languages"][0],
                target_lang=meta["languages"][1])
    return translation.build(records, tok, cfg=cfg, **common)
  info["seq_len"] = cfg.seq_len
  if cfg.task == "mlm_nsp":
    return bert.build_mlm_nsp(records, tok, cfg=cfg, **common)
  names = meta["label_names"]
  if cfg.task == "classification":
    info.update(num_classes=len(names), label_names=names)
    return bert.build_classification(records, tok, seq_len=cfg.seq_len, **common)
  info.update(num_labels=len(names), label_names=names)
  return bert.build_tagging(records, tok, seq_len=cfg.seq_len, **common)


def _images(cfg, records, info, train, common) -> Dataset:
  entry = tfds_src.spec(cfg.tfds_name) if cfg.source == "tfds" else {"flip": False}
  mean = cfg.mean if cfg.mean is not None else entry.get("mean", (0.5,))
  std = cfg.std if cfg.std is not None else entry.get("std", (0.5,))
  flip = cfg.random_flip if cfg.random_flip is not None else entry.get("flip", True)
  names = info["label_names"]
  c = cfg.num_channels
  info.update(num_classes=len(names), label_names=names, image_size=cfg.image_size,
              num_channels=c, mean=tuple(images.channel_stats(mean, c).tolist()),
              std=tuple(images.channel_stats(std, c).tolist()))
  return images.build(records, cfg=cfg, train=train, mean=mean, std=std, flip=flip,
                      variable_size=entry.get("variable_size", False), **common)
