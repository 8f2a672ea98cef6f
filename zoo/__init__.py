"""zoo: Flax linen Transformers (encoder-decoder, GPT, BERT, ViT) with one training loop.

Top-level API: :func:`list_models`, :func:`get_config`, :func:`build`, :func:`param_count`,
:func:`from_pretrained`, :func:`save_pretrained`, :func:`load_tokenizer`, :func:`quantize`.
``import zoo.nnx`` for ``zoo.nnx.from_linen`` (a zoo model as an ``nnx.Module``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
from flax import linen as nn

from zoo import registry
from zoo.models.common import count
from zoo.presets import PRESETS, PUBLISHED_PARAMS
from zoo.quantize import quantize  # weight-only PTQ through qwix (imported lazily)

__all__ = [
    "list_models", "get_config", "build", "param_count", "PRESETS", "PUBLISHED_PARAMS",
    "from_pretrained", "save_pretrained", "load_tokenizer", "registry", "quantize",
]


def list_models(family: str | None = None) -> list[str]:
  """Preset names, optionally only those of one family (``"gpt"``, ``"bert"`` ...)."""
  if family is not None:
    registry.get(family)  # an unknown family name is an error, not an empty list
  return [n for n, (f, _) in PRESETS.items() if family is None or f == family]


def get_config(name: str, **overrides) -> Any:
  """The frozen config dataclass of preset ``name`` with ``overrides`` applied."""
  if name not in PRESETS:
    raise registry.unknown(name, PRESETS, "model (see zoo.list_models())")
  family_name, fields = PRESETS[name]
  family = registry.get(family_name)
  known = registry.field_names(family.config_cls)
  for key in overrides:
    if key not in known:
      raise registry.unknown(key, known, f"{family.config_cls.__name__} field")
  return family.config_cls(**{**fields, **overrides})


def build(name_or_config: Any, **overrides) -> nn.Module:
  """A linen Module from a preset name (``zoo.build("gpt2-small", dropout_rate=0.1)``) or config."""
  if isinstance(name_or_config, str):
    config = get_config(name_or_config, **overrides)
  else:
    config = dataclasses.replace(name_or_config, **overrides) if overrides else name_or_config
  return registry.build(config)


def param_count(name_or_model: Any, **overrides) -> int:
  """Number of parameters, from shapes only (``jax.eval_shape``: nothing is allocated)."""
  model = (
      name_or_model if isinstance(name_or_model, nn.Module) else build(name_or_model, **overrides)
  )
  args, kwargs = registry.family_of(model).dummy_inputs(model.config)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *args, **kwargs))
  return count(shapes["params"])


def from_pretrained(path, **kwargs):
  """``model, params`` from a Hugging Face folder, zoo checkpoint or ViT ``.npz``.

  See :func:`zoo.pretrained.from_pretrained` (keywords ``dtype``, ``mesh``, config overrides).
  """
  from zoo import pretrained  # lazy: keeps `import zoo` free of safetensors/tokenizers

  return pretrained.from_pretrained(path, **kwargs)


def save_pretrained(model, params, path, extra: dict | None = None) -> None:
  """Write ``config.json`` + ``model.safetensors`` that transformers loads.

  ``extra``: keys to add to ``config.json`` (``id2label``, special token ids ...).
  """
  from zoo import pretrained

  pretrained.save_pretrained(model, params, path, extra)


def load_tokenizer(path, *, required: bool = True):
  """The tokenizer stored next to pretrained weights.

  A folder without tokenizer files is a ValueError naming the files looked for; with
  ``required=False`` it gives None instead. See :func:`zoo.pretrained.load_tokenizer`.
  """
  from zoo import pretrained

  return pretrained.load_tokenizer(pretrained.api.resolve(path), required=required)
