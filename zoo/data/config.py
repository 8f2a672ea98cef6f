"""``default_config(task)``: every data key of a task, and their validation.

The keys every task has are here; a task adds its own (``Task.data_defaults``) and checks them
(``Task.check_data``).
"""

from __future__ import annotations

from typing import Any

import ml_collections

from zoo import registry

SOURCES = ("offline", "tfds")
_POSITIVE = ("seq_len", "src_len", "tgt_len", "image_size", "max_number")


def default_config(task: str, **overrides) -> ml_collections.ConfigDict:
  """All data keys of ``task`` with their defaults, and ``overrides`` of some of them.

  ``source`` switches offline <-> TFDS.

  Common keys: ``task``; ``source`` ("offline" or "tfds"); ``path`` (offline: a file/folder
  to use instead of the built-in corpus); ``offline_eval_fraction`` (share of offline records
  held out as "validation"); ``tfds_name``, ``data_dir`` (None = TFDS default
  ~/tensorflow_datasets), ``manual_dir`` (manual downloads, default
  <data_dir>/downloads/manual), ``download`` (let TFDS download and prepare: network, and
  often TensorFlow); ``train_split`` / ``eval_split`` (TFDS split strings; None = the
  dataset's usual ones); ``shuffle`` (train split only); ``read_threads`` and ``prefetch``
  (Grain threads reading ahead, elements each). Text tasks add ``tokenizer`` ("byte", "bpe",
  "sentencepiece" or a tokenizer.json / vocab.txt / .model path), ``vocab_size`` and
  ``tokenizer_train_examples`` (for trained vocabularies), ``tokenizer_dir`` (their cache)
  and ``text_keys`` (TFDS text fields; None = automatic); see each task's module for the rest.
  """
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
  c.update(registry.task(task).data_defaults())
  for key in overrides:
    if key not in c:
      raise registry.unknown(key, c, f"data config key for task {task!r}:")
  c.update(overrides)
  return ml_collections.ConfigDict(c)


def resolve(data_cfg) -> ml_collections.ConfigDict:
  """``data_cfg`` (ConfigDict or dict, possibly partial) over the task defaults, checked."""
  given = data_cfg.to_dict() if hasattr(data_cfg, "to_dict") else dict(data_cfg)
  if "task" not in given:
    raise ValueError(
        f"the data config needs a `task` key: one of {', '.join(registry.task_names())}."
    )
  cfg = default_config(given["task"])
  for key, value in given.items():
    if key not in cfg:
      raise registry.unknown(key, cfg.keys(), f"data config key for task {given['task']!r}:")
    try:
      cfg[key] = value
    except TypeError as e:
      raise ValueError(f"data config key {key!r}: {e}") from None
  _validate(cfg)
  return cfg


def _validate(cfg) -> None:
  if cfg.source not in SOURCES:
    raise registry.unknown(cfg.source, SOURCES, "data source")
  for key in _POSITIVE:
    if key in cfg and (not isinstance(cfg[key], int) or cfg[key] < 4):
      raise ValueError(f"{key} must be an integer >= 4; got {cfg[key]!r}.")
  for key, low in (("read_threads", 0), ("prefetch", 1)):
    if not isinstance(cfg[key], int) or isinstance(cfg[key], bool) or cfg[key] < low:
      raise ValueError(f"{key} must be an integer >= {low}; got {cfg[key]!r}.")
  if not 0.0 < cfg.offline_eval_fraction < 1.0:
    raise ValueError(f"offline_eval_fraction must be in (0, 1); got {cfg.offline_eval_fraction}.")
  registry.task(cfg.task).check_data(cfg)
