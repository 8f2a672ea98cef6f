"""The run config shared by every family, and the one place it becomes a model config.

``configs/<family>.py`` files start from :func:`base_config` and fill in the model preset,
data and optimizer. :func:`model_config` turns ``config.model`` (a preset name plus
overrides) and the dataset's facts (vocabulary size, number of labels, image size) into the
frozen dataclass of the family.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
from typing import Any

import jax.numpy as jnp
import ml_collections

import zoo
from zoo import registry
from zoo import sharding as sh
from zoo.presets import PRESETS
from zoo.training import tasks as tasks_lib

log = logging.getLogger(__name__)

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def base_config(task: str, model: str) -> ml_collections.ConfigDict:
  """Every key the loop reads, with defaults; ``task`` and ``model`` (a preset) filled in.

  ``config.data`` comes from ``zoo.data.default_config(task)``.
  """
  if task not in tasks_lib.TASKS:
    raise ValueError(f"unknown task {task!r}; known tasks: {tasks_lib.TASKS}.")
  c = ml_collections.ConfigDict()
  c.task = task
  c.seed = 0
  c.label_smoothing = 0.0  # epsilon of the token/class cross entropy

  c.model = ml_collections.ConfigDict()
  c.model.name = model  # a zoo preset (zoo.list_models())
  # Fields of the family's config dataclass to change. Any field can also be set from the
  # command line (--config.model.overrides.d_model=256): train.py adds it here.
  c.model.overrides = ml_collections.ConfigDict()
  c.model.compute_dtype = "float32"  # "bfloat16" = mixed precision (params stay float32)
  # Take vocabulary size, pad id, labels, image size from the dataset (training from scratch
  # with the dataset's tokenizer). Explicit overrides still win.
  c.model.match_data = True

  c.data = _data_config(task)

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 64  # global batch, summed over all devices and hosts
  c.train.num_steps = 10_000
  c.train.grad_accum_steps = 1  # micro-batches per step (same update, less activation memory)
  c.train.log_every = 50  # steps between JSONL/TensorBoard rows
  c.train.checkpoint_every = 1000
  c.train.keep_checkpoints = 3
  c.train.progress_bar = True
  c.train.plot = True  # loss curve PNG in the workdir at the end
  # XLA options for the compiled init/train/eval programs, e.g. xla_backend_optimization_level.
  c.train.compiler_options = ml_collections.ConfigDict()

  c.eval = ml_collections.ConfigDict()
  c.eval.every = 1000  # steps; 0 = only at the end; -1 = never
  c.eval.split = "validation"
  c.eval.num_batches = 20  # at most this many batches per evaluation; 0 = the whole split
  c.eval.batch_size = 0  # 0 = train.batch_size

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "adamw"
  c.optim.lr = 3e-4  # peak learning rate
  c.optim.schedule = "cosine"
  c.optim.warmup_steps = 100
  c.optim.end_lr_ratio = 0.1
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.eps = 1e-8
  c.optim.weight_decay = 0.01
  c.optim.clip_norm = 1.0
  c.optim.momentum = 0.9  # sgd only

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # -1 = all devices not used by the other axes
  c.mesh.fsdp = 1
  c.mesh.tensor = 1
  c.sharding_rules = sh.DEFAULT_RULES

  c.sample = ml_collections.ConfigDict()  # lm only: text generated at the end of the run
  c.sample.prompt = ""
  c.sample.num_tokens = 0  # 0 = no sample
  c.sample.temperature = 0.8
  c.sample.top_k = 40
  return c


def _data_config(task: str) -> ml_collections.ConfigDict:
  import zoo.data as data_lib  # noqa: PLC0415 - keeps `import zoo.training` light

  return data_lib.default_config(task)


def choose(arg: str | None, family: str, default: str, variants: tuple[str, ...]) -> str:
  """Validate the ``:arg`` of a config file: a preset of ``family`` or one of ``variants``."""
  arg = arg or default
  known = [*variants, *zoo.list_models(family)]
  if arg not in known:
    close = difflib.get_close_matches(arg, known, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ValueError(f"unknown config argument {arg!r}.{hint} Choose one of: {', '.join(known)}.")
  return arg


def _field_names(cls) -> set[str]:
  return {f.name for f in dataclasses.fields(cls)}


def family_of_preset(name: str) -> str:
  if name not in PRESETS:
    close = difflib.get_close_matches(name, list(PRESETS), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ValueError(f"unknown model preset config.model.name={name!r}.{hint}")
  return PRESETS[name][0]


def model_config(config: ml_collections.ConfigDict, info: dict | None = None) -> Any:
  """The frozen model dataclass of a run: preset < task/data facts < explicit overrides."""
  name = config.model.name
  cfg_cls = registry.get(family_of_preset(name)).config_cls
  fields = _field_names(cfg_cls)
  values: dict[str, Any] = {}
  if config.model.match_data and info is not None:
    task = tasks_lib.get_task(config.task)
    implied = {k: v for k, v in task.model_overrides(info).items() if k in fields}
    values.update(implied)
  explicit = dict(config.model.overrides)
  for key, value in explicit.items():
    if key not in fields:
      close = difflib.get_close_matches(key, sorted(fields), n=3)
      hint = f" Did you mean {', '.join(close)}?" if close else ""
      raise ValueError(f"config.model.overrides.{key}: {cfg_cls.__name__} has no field {key!r}.{hint}")
    if key in values and values[key] != value:
      log.warning("model.overrides.%s=%r replaces %r taken from the data", key, value, values[key])
  values.update(explicit)
  for key in ("dtype", "param_dtype"):
    if isinstance(values.get(key), str):
      values[key] = _dtype(values[key], f"model.overrides.{key}")
  if "dtype" not in explicit:
    values["dtype"] = _dtype(config.model.compute_dtype, "model.compute_dtype")
  if info is not None and "vocab_size" in values and info.get("vocab_size"):
    if values["vocab_size"] < int(info["vocab_size"]):
      raise ValueError(
          f"model vocab_size={values['vocab_size']} is smaller than the tokenizer's "
          f"{info['vocab_size']}; drop model.overrides.vocab_size or make it larger."
      )
  return zoo.get_config(name, **values)


def _dtype(name: str, key: str):
  if name not in DTYPES:
    raise ValueError(f"{key}={name!r}; choose one of {sorted(DTYPES)}.")
  return DTYPES[name]


def fingerprint(model_cfg: Any, task: str) -> dict[str, Any]:
  """What must match for a checkpoint to be resumed: task and architecture.

  Compute dtype, attention implementation, remat and dropout may change between runs.
  """
  runtime = {"dtype", "attention_impl", "remat_policy"}
  out = {"task": task, "model": type(model_cfg).__name__}
  for f in dataclasses.fields(model_cfg):
    if f.name in runtime or "dropout" in f.name:
      continue
    value = getattr(model_cfg, f.name)
    out[f"model.{f.name}"] = value if isinstance(value, (int, float, str, bool, type(None))) else str(value)
  return out


def fingerprint_diff(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
  """Human-readable ``key: checkpoint X, this run Y`` for every difference."""
  keys = sorted(set(saved) | set(current))
  return [
      f"{k}: checkpoint {saved.get(k, '<absent>')!r}, this run {current.get(k, '<absent>')!r}"
      for k in keys
      if saved.get(k) != current.get(k)
  ]
