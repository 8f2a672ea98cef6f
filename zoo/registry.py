"""The families of zoo models, each a typed record registered by the family's own module.

A family (``zoo/models/gpt.py`` ...) ends with ``registry.register(Family(...))``: its config
and model classes, how to make dummy inputs, how many FLOPs a training step costs, which
training tasks it serves, which converter modules under ``zoo.pretrained`` read and write its
checkpoints, and how it checks its inputs. Everything else asks this module; nothing outside
a family compares family names.

Records are keyed by the config class (``family_of(config)`` is a dictionary lookup); the
short name (``"gpt"``) is what presets and saved configs use to point at a family.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import types
from collections.abc import Callable, Mapping
from typing import Any

import jax.numpy as jnp

Shapes = Mapping[str, tuple[int, ...]]


@dataclasses.dataclass(frozen=True)
class Family:
  """What the rest of zoo needs to know about one family of models.

  Attributes:
    name: short name used by presets and saved configs (``"gpt"``).
    config_cls: the frozen config dataclass.
    model_cls: the linen Module, built as ``model_cls(config)``.
    dummy_inputs: ``config -> (args, kwargs)`` for ``model.init`` (only shapes matter).
    train_flops: ``(config, params, batch_shapes) -> {"full": F, "causal_half": F}``: training
      FLOPs of one step on a batch of those shapes (``params`` may be shapes only).
    tasks: the ``zoo.training.tasks`` names this family can be trained on.
    converters: modules under ``zoo.pretrained`` that import/export its checkpoints.
    validate: ``(config, inputs)`` -> None, raising ValueError on bad model inputs (a dict of
      the model's call arguments); None when the family checks inside its ``__call__`` only.
  """

  name: str
  config_cls: type
  model_cls: type
  dummy_inputs: Callable[[Any], tuple[tuple, dict]]
  train_flops: Callable[[Any, Any, Shapes], dict[str, float]]
  tasks: tuple[str, ...]
  converters: tuple[str, ...] = ()
  validate: Callable[[Any, Mapping[str, Any]], None] | None = None


_BY_CONFIG: dict[type, Family] = {}
_BY_NAME: dict[str, Family] = {}
# The modules that register the built-in families. A new family adds its module here.
FAMILY_MODULES = (
    "zoo.models.transformer",
    "zoo.models.gpt",
    "zoo.models.bert",
    "zoo.models.vit",
)
_loaded = False


def register(family: Family) -> Family:
  """Add ``family`` (called once, at the bottom of the family's module)."""
  if family.name in _BY_NAME and _BY_NAME[family.name].config_cls is not family.config_cls:
    raise ValueError(f"a family named {family.name!r} is already registered.")
  _BY_CONFIG[family.config_cls] = family
  _BY_NAME[family.name] = family
  return family


def _load() -> None:
  global _loaded
  if not _loaded:
    _loaded = True
    for module in FAMILY_MODULES:
      importlib.import_module(module)


def families() -> list[Family]:
  """Every registered family, in registration order."""
  _load()
  return list(_BY_NAME.values())


def did_you_mean(name: Any, known, *, listing: bool = True) -> str:
  """`` Did you mean a, b?`` for the closest ``known`` spellings of ``name``; when none is close,
  `` Known: ...`` (or ``""`` without ``listing``). The one "did you mean" of zoo."""
  known = sorted(map(str, known))
  close = difflib.get_close_matches(str(name), known, n=3)
  if close:
    return f" Did you mean {', '.join(close)}?"
  return f" Known: {', '.join(known)}." if listing else ""


def unknown(name: Any, known, what: str) -> ValueError:
  """A ValueError for an unknown ``name`` that lists the closest ``known`` spellings."""
  return ValueError(f"unknown {what} {name!r}.{did_you_mean(name, known)}")


def scanned(config: Any) -> bool:
  """Whether a model config stacks its layers with ``nn.scan`` (params carry a layer axis)."""
  return bool(getattr(config, "scan_layers", False))


def get(name: str) -> Family:
  """The family called ``name`` (as presets and saved configs name it)."""
  _load()
  if name not in _BY_NAME:
    raise unknown(name, _BY_NAME, "model family")
  return _BY_NAME[name]


def family_of(config_or_model: Any) -> Family:
  """The family of a config, a model (``model.config``) or a config class."""
  _load()
  config = getattr(config_or_model, "config", config_or_model)
  cls = config if isinstance(config, type) else type(config)
  if cls not in _BY_CONFIG:
    raise ValueError(
        f"{cls.__name__} is not a zoo model config; zoo models are built from "
        f"{', '.join(c.__name__ for c in _BY_CONFIG)}."
    )
  return _BY_CONFIG[cls]


def build(config: Any):
  """``model_cls(config)`` of the config's family."""
  return family_of(config).model_cls(config)


def converter_modules(family: Family | None = None) -> list[types.ModuleType]:
  """The ``zoo.pretrained`` converter modules of ``family`` (default: of every family), imported."""
  chosen = families() if family is None else [family]
  return [importlib.import_module(m) for f in chosen for m in f.converters]


# ----------------------------------------------------------------------------------------------
# Config fields and JSON.


def field_names(config_cls: type) -> tuple[str, ...]:
  return tuple(f.name for f in dataclasses.fields(config_cls))


def is_dtype_field(name: str) -> bool:
  return name == "dtype" or name.endswith("_dtype")


DTYPES = ("float32", "bfloat16", "float16", "float64")


def dtype_from_name(name: Any, where: str) -> Any:
  """``"bfloat16"`` -> ``jnp.bfloat16`` (dtypes pass through); a clear error otherwise."""
  if not isinstance(name, str):
    return jnp.dtype(name)
  if name not in DTYPES:
    raise ValueError(f"{where}={name!r} is not a dtype zoo computes in; choose one of {DTYPES}.")
  return jnp.dtype(name)


def config_to_json(config: Any) -> dict[str, Any]:
  """``{"family": name, "config": {field: value}}`` with dtypes by name and tuples as lists."""
  family = family_of(config)
  fields = {}
  for name in field_names(family.config_cls):
    value = getattr(config, name)
    if is_dtype_field(name) and value is not None:
      value = jnp.dtype(value).name
    elif isinstance(value, tuple):
      value = list(value)
    fields[name] = value
  return {"family": family.name, "config": fields}


def config_from_json(data: Mapping[str, Any], where: str = "config", **overrides) -> Any:
  """The config :func:`config_to_json` wrote, with ``overrides`` (config fields) applied."""
  if not isinstance(data, Mapping) or "family" not in data or "config" not in data:
    raise ValueError(f"{where}: expected {{'family': ..., 'config': {{...}}}}; got {data!r:.200}.")
  family = get(data["family"])
  fields = dict(data["config"])
  known = set(field_names(family.config_cls))
  for key in overrides:
    if key not in known:
      raise unknown(key, known, f"{family.config_cls.__name__} field")
  fields = {k: v for k, v in fields.items() if k in known}
  fields.update(overrides)
  return make_config(family, fields, where)


def make_config(family: Family, fields: Mapping[str, Any], where: str) -> Any:
  """``family.config_cls(**fields)``: dtype names resolved, lists as tuples, errors with
  ``where``."""
  values = {}
  for key, value in fields.items():
    if is_dtype_field(key) and value is not None:
      value = dtype_from_name(value, f"{where}.{key}")
    elif isinstance(value, list):
      value = tuple(value)
    values[key] = value
  try:
    return family.config_cls(**values)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{where}: cannot build {family.config_cls.__name__}: {e}") from e
