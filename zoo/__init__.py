"""zoo: Flax linen Transformers (encoder-decoder, GPT, BERT, ViT) with one training loop.

Top-level API: :func:`list_models`, :func:`get_config`, :func:`build`, :func:`param_count`,
:func:`from_pretrained`, :func:`save_pretrained`, :func:`load_tokenizer`.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
from typing import Any

import jax
import numpy as np
from flax import linen as nn

from zoo.presets import FAMILIES, PRESETS, PUBLISHED_PARAMS

__all__ = [
    "list_models", "get_config", "build", "param_count", "PRESETS", "PUBLISHED_PARAMS",
    "from_pretrained", "save_pretrained", "load_tokenizer",
]


def list_models(family: str | None = None) -> list[str]:
  """Preset names, optionally only those of one family."""
  return [n for n, (f, _) in PRESETS.items() if family is None or f == family]


def family_module(family: str):
  """The ``zoo.models.<family>`` module."""
  if family not in FAMILIES:
    raise ValueError(f"unknown family {family!r}; known: {sorted(FAMILIES)}.")
  return importlib.import_module(FAMILIES[family][0])


def family_classes(family: str) -> tuple[type, type]:
  """``(ConfigClass, ModelClass)`` of a family."""
  mod = family_module(family)
  _, cfg_name, model_name = FAMILIES[family]
  return getattr(mod, cfg_name), getattr(mod, model_name)


def family_of(config_or_model: Any) -> str:
  """The family name of a config or model instance."""
  config = getattr(config_or_model, "config", config_or_model)
  for family, (module, cfg_name, _) in FAMILIES.items():
    if type(config).__module__ == module and type(config).__name__ == cfg_name:
      return family
  raise ValueError(f"{type(config).__name__} is not a zoo model config.")


def _unknown(name: str, known, what: str) -> ValueError:
  close = difflib.get_close_matches(name, list(known), n=3)
  hint = f" Did you mean {', '.join(close)}?" if close else ""
  return ValueError(f"unknown {what} {name!r}.{hint}")


def get_config(name: str, **overrides) -> Any:
  """The frozen config dataclass of preset ``name`` with ``overrides`` applied."""
  if name not in PRESETS:
    raise _unknown(name, PRESETS, "model (see zoo.list_models())")
  family, fields = PRESETS[name]
  cfg_cls, _ = family_classes(family)
  known = {f.name for f in dataclasses.fields(cfg_cls)}
  for key in overrides:
    if key not in known:
      raise _unknown(key, known, f"{cfg_cls.__name__} field")
  return cfg_cls(**{**fields, **overrides})


def build(name_or_config: Any, **overrides) -> nn.Module:
  """A linen Module from a preset name (``zoo.build("gpt2-small", dropout_rate=0.1)``) or config."""
  if isinstance(name_or_config, str):
    config = get_config(name_or_config, **overrides)
  else:
    config = dataclasses.replace(name_or_config, **overrides) if overrides else name_or_config
  _, model_cls = family_classes(family_of(config))
  return model_cls(config)


def param_count(name_or_model: Any, **overrides) -> int:
  """Number of parameters, from shapes only (``jax.eval_shape``: nothing is allocated)."""
  model = name_or_model if isinstance(name_or_model, nn.Module) else build(name_or_model, **overrides)
  mod = family_module(family_of(model))
  args, kwargs = mod.dummy_inputs(model.config)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *args, **kwargs))
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(nn.unbox(shapes["params"]))))


def from_pretrained(path, **kwargs):
  """``model, params`` from a Hugging Face folder, zoo checkpoint or ViT ``.npz``.

  See :func:`zoo.pretrained.from_pretrained` (keywords ``dtype``, ``mesh``, config overrides).
  """
  from zoo import pretrained  # lazy: keeps `import zoo` free of safetensors/tokenizers

  return pretrained.from_pretrained(path, **kwargs)


def save_pretrained(model, params, path) -> None:
  """Write ``config.json`` + ``model.safetensors`` that transformers loads."""
  from zoo import pretrained

  pretrained.save_pretrained(model, params, path)


def load_tokenizer(path):
  """The tokenizer stored next to pretrained weights (None if there is none)."""
  from zoo import pretrained

  return pretrained.load_tokenizer(path)
