"""``default_config(task)``: every data key of a task, and their validation."""

from __future__ import annotations

import difflib
from typing import Any

import ml_collections

TASKS = ("lm", "translation", "mlm_nsp", "classification", "tagging", "image_classification")
SOURCES = ("offline", "tfds")
TEXT_TASKS = TASKS[:5]


def default_config(task: str) -> ml_collections.ConfigDict:
  """All data keys of ``task`` with their defaults; ``source`` switches offline <-> TFDS.

  Common keys: ``task``; ``source`` ("offline" or "tfds"); ``path`` (offline: a file/folder
  to use instead of the built-in corpus); ``offline_eval_fraction`` (share of offline records
  held out as "validation"); ``tfds_name``, ``data_dir`` (None = TFDS default
  ~/tensorflow_datasets), ``manual_dir`` (manual downloads, default
  <data_dir>/downloads/manual), ``download`` (let TFDS download and prepare: network, and
  often TensorFlow); ``train_split`` / ``eval_split`` (TFDS split strings; None = the
  dataset's usual ones); ``shuffle`` (train split only); ``read_threads`` and ``prefetch``
  (Grain threads reading ahead, elements each). Text tasks add ``tokenizer`` ("byte", "bpe",
  "sentencepiece" or a tokenizer.json /
  vocab.txt / .model path), ``vocab_size`` and ``tokenizer_train_examples`` (for trained
  vocabularies), ``tokenizer_dir`` (their cache) and ``text_keys`` (TFDS text fields; None =
  automatic).
  """
  if task not in TASKS:
    raise _unknown(task, TASKS, "data task")
  c: dict[str, Any] = dict(
      task=task,
      source="offline",
      path=None,
      offline_eval_fraction=0.1,
      tfds_name="",
      data_dir=None,
      manual_dir=None,
      download=False,
      train_split=None,
      eval_split=None,
      shuffle=True,
      read_threads=1,
      prefetch=4,
  )
  if task in TEXT_TASKS:
    c.update(tokenizer="byte", vocab_size=8000, tokenizer_train_examples=20000,
             tokenizer_dir=None, text_keys=None, seq_len=128)
  if task == "lm":
    c.update(tfds_name="tiny_shakespeare", packing=True)
  elif task == "translation":
    del c["seq_len"], c["text_keys"]  # the languages name the text fields
    c.update(tfds_name="wmt14_translate/de-en", tokenizer="bpe", src_len=64, tgt_len=64,
             source_lang="en", target_lang=None, max_number=100000, bucket_window=0,
             pad_to_multiple=8)
  elif task == "mlm_nsp":
    c.update(tfds_name="wikipedia/20230601.en", mask_rate=0.15, mask_token_rate=0.8,
             random_token_rate=0.1, nsp_random_rate=0.5)
  elif task == "classification":
    c.update(tfds_name="glue/sst2", label_key="label")
  elif task == "tagging":
    c.update(tfds_name="conll2003", label_key="ner")
  elif task == "image_classification":
    c.update(tfds_name="cifar10", image_size=32, num_channels=3, augment=True,
             random_flip=None, mean=None, std=None)
  return ml_collections.ConfigDict(c)


def _unknown(name, known, what: str) -> ValueError:
  close = difflib.get_close_matches(str(name), list(known), n=3)
  hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
  return ValueError(f"unknown {what} {name!r}.{hint} Known: {', '.join(known)}.")


def resolve(data_cfg) -> ml_collections.ConfigDict:
  """``data_cfg`` (ConfigDict or dict, possibly partial) over the task defaults, checked."""
  given = data_cfg.to_dict() if hasattr(data_cfg, "to_dict") else dict(data_cfg)
  if "task" not in given:
    raise ValueError(f"the data config needs a `task` key: one of {', '.join(TASKS)}.")
  cfg = default_config(given["task"])
  for key, value in given.items():
    if key not in cfg:
      raise _unknown(key, sorted(cfg.keys()), f"data config key for task {given['task']!r}:")
    try:
      cfg[key] = value
    except TypeError as e:
      raise ValueError(f"data config key {key!r}: {e}") from None
  _validate(cfg)
  return cfg


def _validate(cfg) -> None:
  if cfg.source not in SOURCES:
    raise _unknown(cfg.source, SOURCES, "data source")
  for key in ("seq_len", "src_len", "tgt_len", "image_size", "max_number"):
    if key in cfg and (not isinstance(cfg[key], int) or cfg[key] < 4):
      raise ValueError(f"{key} must be an integer >= 4; got {cfg[key]!r}.")
  for key, low in (("read_threads", 0), ("prefetch", 1)):
    if not isinstance(cfg[key], int) or isinstance(cfg[key], bool) or cfg[key] < low:
      raise ValueError(f"{key} must be an integer >= {low}; got {cfg[key]!r}.")
  if not 0.0 < cfg.offline_eval_fraction < 1.0:
    raise ValueError(f"offline_eval_fraction must be in (0, 1); got {cfg.offline_eval_fraction}.")
  if cfg.task == "mlm_nsp":
    for key in ("mask_rate", "mask_token_rate", "random_token_rate", "nsp_random_rate"):
      if not 0.0 <= cfg[key] <= 1.0:
        raise ValueError(f"{key} must be in [0, 1]; got {cfg[key]}.")
    if cfg.mask_token_rate + cfg.random_token_rate > 1.0:
      raise ValueError(
          f"mask_token_rate + random_token_rate = {cfg.mask_token_rate + cfg.random_token_rate}"
          " > 1: they split the selected tokens (the rest stay unchanged)."
      )
  if cfg.task == "translation" and cfg.bucket_window < 0:
    raise ValueError(f"bucket_window must be >= 0 (0 = off); got {cfg.bucket_window}.")
  if cfg.task == "translation" and cfg.pad_to_multiple < 1:
    raise ValueError(f"pad_to_multiple must be >= 1; got {cfg.pad_to_multiple}.")
