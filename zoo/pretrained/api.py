"""``from_pretrained`` / ``save_pretrained``: Hugging Face folders, zoo checkpoints, ViT ``.npz``.

Each supported architecture has a converter module (``gpt2``, ``bert``, ``vit``, ``marian``)
with the same small interface: ``FAMILY``, ``MODEL_TYPE``, ``ARCHITECTURES``, ``PREFIX``,
``config_from_hf(hf, arch)``, ``config_to_hf(cfg)``, ``entries(cfg, arch)``,
``ignore(hf, arch)`` and ``describe(cfg)``. This module finds the converter, builds the zoo
model, runs the key map and places the parameters (on one device, or straight into their
shardings on a mesh).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import warnings
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import serialization, traverse_util
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import zoo
from zoo import sharding as sh
from zoo.layers.stack import scan_params, unscan_params
from zoo.pretrained import keymap as km
from zoo.pretrained.checkpoint_io import SAFETENSORS, TensorStore, save_safetensors

_CONVERTERS = ("gpt2", "bert", "vit", "marian")
_FAMILY_CONVERTER = {"gpt": "gpt2", "bert": "bert", "vit": "vit", "transformer": "marian"}
ZOO_CONFIG = "zoo_config.json"
ZOO_PARAMS = "params.msgpack"


def converter(name: str):
  return importlib.import_module(f"zoo.pretrained.{name}")


def supported_architectures() -> dict[str, str]:
  """``{Hugging Face architecture: converter module}`` for every supported architecture."""
  out = {}
  for name in _CONVERTERS:
    for arch in converter(name).ARCHITECTURES:
      out[arch] = name
  return out


def _pick_converter(hf: dict[str, Any], where: str):
  """``(architecture, converter module)`` from ``config.json``'s architectures / model_type."""
  table = supported_architectures()
  archs = hf.get("architectures") or []
  for arch in archs:
    if arch in table:
      return arch, converter(table[arch])
  model_type = hf.get("model_type")
  if not archs:  # a bare config: the model type's first (default) architecture
    for name in _CONVERTERS:
      conv = converter(name)
      if conv.MODEL_TYPE == model_type:
        return conv.ARCHITECTURES[0], conv
  raise ValueError(
      f"{where}: architecture {archs} (model_type {model_type!r}) is not supported; zoo "
      f"converts {sorted(table)}."
  )


def _read_json(path: str) -> dict[str, Any]:
  with open(path) as f:
    return json.load(f)


# ----------------------------------------------------------------------------------------------
# Placement.


def _fit_rules(rules: Sequence, mesh: Mesh):
  """Drop mesh axes the mesh does not have, so the default rules work on any mesh."""
  fitted = []
  for logical, axes in rules:
    if axes is not None:
      axes = tuple(a for a in ((axes,) if isinstance(axes, str) else axes) if a in mesh.shape)
      axes = axes or None
    fitted.append((logical, axes))
  return tuple(fitted)


def param_shardings(model: nn.Module, mesh: Mesh, rules: Sequence | None = None) -> dict:
  """``NamedSharding`` per parameter of ``model`` from its logical axis names and ``rules``.

  A dimension that the mesh axes do not divide evenly is replicated instead (JAX arrays
  cannot be sharded unevenly), e.g. GPT-2's 50257-row embedding over an even ``tensor`` axis.
  """
  rules = _fit_rules(sh.DEFAULT_RULES if rules is None else rules, mesh)
  shapes, specs = km.abstract_params(model, zoo.family_module(zoo.family_of(model)))
  out = {}
  for path, logical in specs.items():
    mesh_spec = nn.logical_to_mesh_axes(logical, rules)
    dims = []
    for dim, axes in zip(shapes[path], tuple(mesh_spec) + (None,) * len(shapes[path])):
      names = (axes,) if isinstance(axes, str) else tuple(axes or ())
      size = int(np.prod([mesh.shape[a] for a in names])) if names else 1
      dims.append(axes if names and dim % size == 0 else None)
    out[path] = NamedSharding(mesh, PartitionSpec(*dims))
  return traverse_util.unflatten_dict(out, sep="/")


def place(params: dict, model: nn.Module, mesh: Mesh | None, rules: Sequence | None = None):
  """Host arrays -> device arrays: one device, or each straight into its mesh sharding."""
  if mesh is None:
    return jax.tree.map(jnp.asarray, params)
  return jax.device_put(params, param_shardings(model, mesh, rules))


def _finish(model, flat: dict[str, np.ndarray], mesh, rules) -> dict:
  """Flat loop-layout host arrays -> the model's (possibly scanned) placed param tree."""
  cfg = model.config
  param_dtype = jnp.dtype(getattr(cfg, "param_dtype", jnp.float32))
  tree = traverse_util.unflatten_dict(
      {k: np.asarray(v).astype(param_dtype) for k, v in flat.items()}, sep="/"
  )
  if getattr(cfg, "scan_layers", False):
    tree = jax.tree.map(np.asarray, scan_params(tree))
  return place(tree, model, mesh, rules)


def _loop_model(model):
  """The same model with looped layers: key maps name ``layers_i``."""
  if getattr(model.config, "scan_layers", False):
    return type(model)(dataclasses.replace(model.config, scan_layers=False))
  return model


def _config_fields(cfg_cls, fields: dict, dtype, overrides: dict, where: str):
  known = {f.name for f in dataclasses.fields(cfg_cls)}
  for key in overrides:
    if key not in known:
      raise zoo._unknown(key, known, f"{cfg_cls.__name__} field (from_pretrained override)")
  fields = {k: v for k, v in fields.items() if k in known}
  if dtype is not None:
    fields["dtype"] = fields["param_dtype"] = jnp.dtype(dtype)
  fields.update(overrides)
  try:
    return cfg_cls(**fields)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{where}: cannot build {cfg_cls.__name__}: {e}") from e


# ----------------------------------------------------------------------------------------------
# Hugging Face folders.


def load_hf(
    path: str,
    *,
    dtype: Any = None,
    mesh: Mesh | None = None,
    rules: Sequence | None = None,
    strict: bool = True,
    **overrides,
):
  """A Hugging Face folder -> ``(model, params)``; see :func:`from_pretrained`."""
  hf = _read_json(os.path.join(path, "config.json"))
  arch, conv = _pick_converter(hf, os.path.join(path, "config.json"))
  store = TensorStore(path)
  cfg_cls, model_cls = zoo.family_classes(conv.FAMILY)
  fields = conv.config_from_hf(hf, arch, store.keys())
  config = _config_fields(cfg_cls, fields, dtype, overrides, path)
  # The weights are read for the checkpoint's own config ("native"); fields a converter can
  # adapt (a ViT's image_size) are applied afterwards by its resize().
  resizable = getattr(conv, "RESIZE_FIELDS", ())
  native = _config_fields(
      cfg_cls, fields, dtype, {k: v for k, v in overrides.items() if k not in resizable}, path
  )
  native = dataclasses.replace(native, scan_layers=False) if hasattr(native, "scan_layers") else native
  shapes, _ = km.abstract_params(model_cls(native), zoo.family_module(conv.FAMILY))
  flat, unused = km.load_entries(
      conv.entries(native, arch),
      store,
      shapes,
      prefix=conv.PREFIX,
      ignore=conv.ignore(hf, arch),
      strict=strict,
      what=f"{path} ({arch})",
      describe=f"config.json {conv.describe(native)}",
  )
  if unused:
    warnings.warn(f"{path}: {len(unused)} tensors unused: {unused[:10]}", stacklevel=3)
  if resizable:
    flat = conv.resize(flat, native, config)
  model = model_cls(config)
  return model, _finish(model, flat, mesh, rules)


def _host_flat(params) -> dict[str, np.ndarray]:
  params = nn.unbox(params)
  if "params" in params and len(params) == 1:
    params = params["params"]
  params = jax.device_get(params)
  return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(params, sep="/").items()}


def save_hf(model: nn.Module, params, path: str) -> None:
  """``(model, params)`` -> a Hugging Face folder; see :func:`save_pretrained`."""
  family = zoo.family_of(model)
  conv = converter(_FAMILY_CONVERTER[family])
  cfg = model.config
  hf = conv.config_to_hf(cfg)
  arch = hf["architectures"][0]
  flat = _host_flat(params)
  if getattr(cfg, "scan_layers", False):
    flat = _host_flat(unscan_params(traverse_util.unflatten_dict(flat, sep="/")))
  tensors = km.export_entries(conv.entries(_loop_model(model).config, arch), flat)
  dtypes = {v.dtype for v in tensors.values()}
  hf.setdefault("torch_dtype", str(dtypes.pop()) if len(dtypes) == 1 else "float32")
  hf["dtype"] = hf["torch_dtype"]
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(hf, f, indent=2, sort_keys=True)
  save_safetensors(tensors, os.path.join(path, SAFETENSORS))


# ----------------------------------------------------------------------------------------------
# zoo checkpoints: zoo_config.json (family + config fields) + params.msgpack.


def config_to_json(cfg) -> dict[str, Any]:
  """A zoo config as JSON: dtype fields by name, everything else as is."""
  out = {}
  for f in dataclasses.fields(cfg):
    v = getattr(cfg, f.name)
    out[f.name] = jnp.dtype(v).name if f.name.endswith("dtype") else v
  return {"family": zoo.family_of(cfg), "config": out}


def config_from_json(data: dict[str, Any], **overrides):
  cfg_cls, _ = zoo.family_classes(data["family"])
  fields = {}
  for k, v in data["config"].items():
    fields[k] = jnp.dtype(v) if k.endswith("dtype") else tuple(v) if isinstance(v, list) else v
  return _config_fields(cfg_cls, fields, None, overrides, data["family"])


def save_zoo(model: nn.Module, params, path: str) -> None:
  """Write ``zoo_config.json`` + ``params.msgpack`` (looped-layer layout) under ``path``."""
  os.makedirs(path, exist_ok=True)
  flat = _host_flat(params)
  tree = traverse_util.unflatten_dict(flat, sep="/")
  if getattr(model.config, "scan_layers", False):
    tree = jax.device_get(unscan_params(tree))
  with open(os.path.join(path, ZOO_CONFIG), "w") as f:
    json.dump(config_to_json(model.config), f, indent=2)
  with open(os.path.join(path, ZOO_PARAMS), "wb") as f:
    f.write(serialization.msgpack_serialize(tree))


def load_zoo(path: str, *, dtype=None, mesh=None, rules=None, **overrides):
  """A folder written by :func:`save_zoo` -> ``(model, params)``."""
  data = _read_json(os.path.join(path, ZOO_CONFIG))
  if dtype is not None:
    overrides = {"dtype": jnp.dtype(dtype), "param_dtype": jnp.dtype(dtype), **overrides}
  config = config_from_json(data, **overrides)
  _, model_cls = zoo.family_classes(data["family"])
  model = model_cls(config)
  with open(os.path.join(path, ZOO_PARAMS), "rb") as f:
    tree = serialization.msgpack_restore(f.read())
  flat = {k: np.asarray(v) for k, v in traverse_util.flatten_dict(tree, sep="/").items()}
  shapes, _ = km.abstract_params(_loop_model(model), zoo.family_module(data["family"]))
  for k in sorted(set(shapes) | set(flat)):
    if k not in flat or k not in shapes or flat[k].shape != shapes[k]:
      raise ValueError(
          f"{path}: parameter {k} has shape {flat[k].shape if k in flat else 'missing'} but "
          f"{ZOO_CONFIG} implies {shapes.get(k, 'no such parameter')}."
      )
  return model, _finish(model, flat, mesh, rules)


# ----------------------------------------------------------------------------------------------
# Public entry points.


def from_pretrained(
    path: str | os.PathLike,
    *,
    dtype: Any = None,
    mesh: Mesh | None = None,
    rules: Sequence | None = None,
    strict: bool = True,
    **overrides,
):
  """Load pretrained weights into a zoo model: ``model, params = from_pretrained(path)``.

  Args:
    path: a Hugging Face folder (``config.json`` + ``model.safetensors`` or
      ``pytorch_model.bin``, possibly sharded), a zoo checkpoint folder (``zoo_config.json``
      + ``params.msgpack``), or a google-research / big_vision ViT ``.npz`` file.
    dtype: compute and parameter dtype (e.g. ``jnp.bfloat16``); None keeps float32.
    mesh: place every parameter directly into its ``NamedSharding`` on this mesh, from the
      model's logical axis names and ``rules``.
    rules: logical -> mesh axis rules; default :data:`zoo.sharding.DEFAULT_RULES`.
    strict: checkpoint tensors the model does not use are an error (else a warning).
    **overrides: zoo config fields to change, e.g. ``scan_layers=True``,
      ``dropout_rate=0.1``, or for a ViT ``.npz`` ``image_size=384``.

  Returns:
    ``(model, params)``: the linen module and its ``params`` tree (use
    ``model.apply({"params": params}, ...)``).
  """
  path = os.fspath(path)
  if path.endswith(".npz"):
    from zoo.pretrained import vit_npz

    return vit_npz.load(path, dtype=dtype, mesh=mesh, rules=rules, strict=strict, **overrides)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{path} is not a folder (nor a ViT .npz file).")
  if os.path.exists(os.path.join(path, ZOO_CONFIG)):
    return load_zoo(path, dtype=dtype, mesh=mesh, rules=rules, **overrides)
  if not os.path.exists(os.path.join(path, "config.json")):
    raise FileNotFoundError(f"{path} has neither config.json (Hugging Face) nor {ZOO_CONFIG}.")
  return load_hf(path, dtype=dtype, mesh=mesh, rules=rules, strict=strict, **overrides)


def save_pretrained(model: nn.Module, params, path: str | os.PathLike) -> None:
  """Write ``config.json`` + ``model.safetensors`` in the Hugging Face layout.

  ``transformers.AutoModel*.from_pretrained(path)`` then loads the model (GPT ->
  ``GPT2LMHeadModel``, BERT -> the ``BertFor*`` class of its head, ViT ->
  ``ViTForImageClassification`` / ``ViTModel``, Transformer -> ``MarianMTModel``). A config
  with no Hugging Face equivalent (RoPE, RMSNorm, ...) is a ValueError naming the fields.
  """
  save_hf(model, params, os.fspath(path))
