"""What every checkpoint reader shares: the config from a checkpoint's fields, the parameter
shapes a config implies, and placing host arrays on one device or straight into a mesh.

``api.py`` (Hugging Face folders, zoo checkpoints) and ``vit_npz.py`` (big_vision ``.npz``)
both build their models through these functions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import traverse_util
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from zoo import registry
from zoo import sharding as sh
from zoo.layers.stack import scan_params, unscan_params
from zoo.pretrained import keymap as km


def make_config(
    family: registry.Family, fields: Mapping[str, Any], dtype: Any, overrides: Mapping[str, Any],
    where: str,
) -> Any:
  """The family's config from a checkpoint's ``fields``, ``dtype`` and user ``overrides``.

  Fields the config class does not have are dropped (converters may report extra facts);
  an override that names no field is an error listing the closest field names.
  """
  check_names(family, overrides)
  known = set(registry.field_names(family.config_cls))
  values = {k: v for k, v in fields.items() if k in known}
  if dtype is not None:
    values["dtype"] = values["param_dtype"] = jnp.dtype(dtype)
  values.update(overrides)
  return registry.make_config(family, values, where)


def check_names(family: registry.Family, overrides) -> None:
  """Every override names a field of the family's config (else the closest names)."""
  known = set(registry.field_names(family.config_cls))
  for key in overrides:
    if key not in known:
      raise registry.unknown(
          key, known, f"{family.config_cls.__name__} field (from_pretrained override)"
      )


def check_params_fit(model: nn.Module, params) -> None:
  """``params`` have exactly the names and shapes of ``model``'s parameters.

  Raises:
    ValueError: naming the missing, unexpected or mis-shaped parameters (typically another
      model's parameters passed with this model).
  """
  tree = params.get("params", params) if isinstance(params, Mapping) else params
  tree = nn.meta.unbox(tree)
  want, _ = param_shapes(loop_model(model))
  try:
    got = {k: tuple(np.shape(v)) for k, v in traverse_util.flatten_dict(
        scan_unstacked(model, tree), sep="/").items()}
  except (AttributeError, TypeError, ValueError):
    raise ValueError(
        f"params must be the nested dict of arrays that {type(model).__name__}.init returns; "
        f"got {type(params).__name__}."
    ) from None
  missing = sorted(set(want) - set(got))
  extra = sorted(set(got) - set(want))
  wrong = sorted(k for k in set(want) & set(got) if tuple(want[k]) != got[k])
  if missing or extra or wrong:
    detail = "; ".join(
        f"{what} {', '.join(names[:4])}{' ...' if len(names) > 4 else ''}"
        for what, names in (("missing", missing), ("unexpected", extra), ("mis-shaped", wrong))
        if names
    )
    raise ValueError(
        f"these params do not belong to this {type(model).__name__} "
        f"({_describe_config(model.config)}): {detail}. Pass the params the same model "
        "produced (model.init or from_pretrained), or build the model their config describes."
    )


def _describe_config(cfg) -> str:
  keys = [k for k in ("vocab_size", "d_model", "num_layers", "num_heads") if hasattr(cfg, k)]
  return ", ".join(f"{k}={getattr(cfg, k)}" for k in keys)


def scan_unstacked(model: nn.Module, tree):
  """``tree`` with scanned layers unstacked when ``model`` scans them (key maps name layers)."""
  if registry.scanned(model.config):
    return unscan_params(tree)
  return tree


def loop_model(model: nn.Module) -> nn.Module:
  """The same model with looped layers: key maps name ``layers_i``."""
  if registry.scanned(model.config):
    return type(model)(dataclasses.replace(model.config, scan_layers=False))
  return model


def param_shapes(model: nn.Module) -> tuple[dict, dict]:
  """``(shapes, logical specs)`` of ``model``'s parameters, flattened by ``/``, from shapes only."""
  return km.abstract_params(model, registry.family_of(model))


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
  shapes, specs = param_shapes(model)
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


def place_lazy(
    flat: dict[str, Any], model: nn.Module, mesh: Mesh, rules: Sequence | None, dtype: Any
) -> dict:
  """Flat loop-layout parameters -> placed tree, reading each device's block on its own.

  A :class:`zoo.pretrained.keymap.Lazy` parameter is read block by block: for every device of
  this process, only the slice it holds (``addressable_devices_indices_map``) is read from the
  checkpoint, cast, and put on that device before the next is read, so the host never holds
  more than one block of a sharded tensor. Other (eager) values are placed as usual.
  """
  shardings = traverse_util.flatten_dict(param_shardings(model, mesh, rules), sep="/")
  out = {}
  for path, value in flat.items():
    sharding = shardings[path]
    if not isinstance(value, km.Lazy):
      out[path] = jax.device_put(np.asarray(value).astype(dtype), sharding)
      continue
    blocks, by_index = [], {}
    for device, index in sharding.addressable_devices_indices_map(value.shape).items():
      key = tuple((s.start, s.stop) for s in index)
      if key not in by_index:  # a replicated block is read once, then copied device to device
        by_index[key] = jax.device_put(np.asarray(value[index]).astype(dtype), device)
        blocks.append(by_index[key])
      else:
        blocks.append(jax.device_put(by_index[key], device))
    out[path] = jax.make_array_from_single_device_arrays(value.shape, sharding, blocks)
  return traverse_util.unflatten_dict(out, sep="/")


def finish(model: nn.Module, flat: dict[str, np.ndarray], mesh, rules) -> dict:
  """Flat loop-layout host arrays -> the model's (possibly scanned) placed param tree.

  :class:`zoo.pretrained.keymap.Lazy` values are read per device when placed on a mesh
  (:func:`place_lazy`); without a mesh, or with scanned layers, they are read whole.
  """
  cfg = model.config
  param_dtype = jnp.dtype(getattr(cfg, "param_dtype", jnp.float32))
  if mesh is not None and not registry.scanned(cfg):
    return place_lazy(flat, model, mesh, rules, param_dtype)
  tree = traverse_util.unflatten_dict(
      {k: np.asarray(v).astype(param_dtype) for k, v in flat.items()}, sep="/"
  )
  if registry.scanned(cfg):
    tree = jax.tree.map(np.asarray, scan_params(tree))
  return place(tree, model, mesh, rules)


def host_flat(params) -> dict[str, np.ndarray]:
  """A (boxed, device, possibly ``{"params": ...}``-wrapped) tree -> flat ``/`` host arrays."""
  params = nn.unbox(params)
  if "params" in params and len(params) == 1:
    params = params["params"]
  params = jax.device_get(params)
  return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(params, sep="/").items()}


# ----------------------------------------------------------------------------------------------
# A checkpoint's weights into the model a caller asks for: loaded, new (fresh heads), dropped.


@dataclasses.dataclass
class Weights:
  """A checkpoint read into zoo's layout, before any override is applied.

  Attributes:
    config: the checkpoint's own config (looped layers).
    flat: ``/``-joined loop-layout paths -> host arrays, every parameter of ``config``.
    where: the checkpoint, for messages.
    heads: top-level parameter names that belong to task heads: created fresh when the
      requested model has them but the checkpoint does not (or with another shape), dropped
      when the checkpoint has them but the requested model does not.
    resize: ``(flat, native_config, target_config) -> flat`` for fields a converter adapts
      (a ViT's position table to another ``image_size``); None when nothing resizes.
    implied: ``overrides -> extra overrides`` they imply (a BERT classification head needs
      the pooler); None when there are none.
    info: for a train.py workdir, the data facts saved with the checkpoint (label names,
      special token ids, tokenizer path); empty otherwise.
  """

  config: Any
  flat: dict[str, np.ndarray]
  where: str
  heads: tuple[str, ...] = ()
  resize: Any = None
  implied: Any = None
  info: dict = dataclasses.field(default_factory=dict)  # a train.py run's data facts


@dataclasses.dataclass
class Fitted:
  """The requested model and what of it the checkpoint provides.

  ``flat`` holds the loaded parameters (loop layout, host arrays); ``new`` names the
  parameters the checkpoint lacks (fresh task heads), ``dropped`` the checkpoint tensors the
  model does not use (a head of another task).
  """

  model: nn.Module
  flat: dict[str, np.ndarray]
  new: list[str]
  dropped: list[str]


def _top(path: str) -> str:
  return path.split("/", 1)[0]


def _shorter_table(value, shape, native, config) -> bool:
  """A learned position table read for a smaller ``max_len`` than the checkpoint's."""
  old, new = getattr(native, "max_len", None), getattr(config, "max_len", None)
  have = tuple(np.shape(value))
  return (
      old is not None and new is not None and new < old and len(have) == len(shape) == 2
      and have[0] == old and shape[0] == new and have[1:] == tuple(shape[1:])
  )


def fit(weights: Weights, dtype: Any, overrides: Mapping[str, Any]) -> Fitted:
  """``weights`` into ``weights.config`` + ``overrides``; strict about every backbone tensor."""
  family = registry.family_of(weights.config)
  overrides = dict(overrides)
  if weights.implied is not None:
    overrides = {**weights.implied(overrides), **overrides}
  fields = {n: getattr(weights.config, n) for n in registry.field_names(family.config_cls)}
  config = make_config(family, fields, dtype, overrides, weights.where)
  flat = weights.flat
  if weights.resize is not None:
    flat = weights.resize(flat, weights.config, config)
  model = family.model_cls(config)
  shapes, _ = param_shapes(loop_model(model))
  heads = set(weights.heads)
  loaded, new = {}, []
  for path, shape in shapes.items():
    if path in flat and _shorter_table(flat[path], shape, weights.config, config):
      loaded[path] = flat[path][: shape[0]]  # a shorter context: the first rows of the table
    elif path in flat and tuple(np.shape(flat[path])) == tuple(shape):
      loaded[path] = flat[path]
    elif _top(path) in heads:
      new.append(path)
    else:
      have = f"shape {tuple(np.shape(flat[path]))}" if path in flat else "no such tensor"
      changed = {k: v for k, v in overrides.items() if fields.get(k, v) != v}
      raise ValueError(
          f"{weights.where}: the model asked for needs {path} of shape {tuple(shape)} but the "
          f"checkpoint has {have}; the overrides {changed} contradict the checkpoint's weights. "
          "Drop them (architecture fields come from the checkpoint), or train from scratch."
      )
  dropped = sorted(p for p in flat if p not in loaded)
  backbone = [p for p in dropped if _top(p) not in heads]
  if backbone:
    raise ValueError(
        f"{weights.where}: the model asked for does not use the checkpoint's {backbone[:5]}; "
        f"the overrides {overrides} contradict the checkpoint's architecture."
    )
  return Fitted(model, loaded, sorted(new), dropped)


def fresh(model: nn.Module, paths: Sequence[str], seed: int = 0) -> dict[str, np.ndarray]:
  """Freshly initialised values of ``paths`` (loop layout), as the model's own init draws them.

  Only those leaves are returned from the jitted init, so XLA does not compute the others.
  """
  if not paths:
    return {}
  model = loop_model(model)
  args, kwargs = registry.family_of(model).dummy_inputs(model.config)

  def init(rng):
    flat = traverse_util.flatten_dict(nn.unbox(model.init(rng, *args, **kwargs)["params"]), sep="/")
    return {p: flat[p] for p in paths}

  return {
      k: np.asarray(v) for k, v in jax.device_get(jax.jit(init)(jax.random.PRNGKey(seed))).items()
  }
