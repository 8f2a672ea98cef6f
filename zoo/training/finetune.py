"""Fine-tuning set-up: a run that starts from pretrained weights (``config.init.path``).

:func:`pretrained_config` reads the checkpoint and points the data at its tokenizer;
:func:`fit_pretrained` fits its weights to the run's model config (fresh heads, dropped
tensors); :func:`with_pretrained` puts them into the fresh sharded parameters;
:func:`trainable_spec` says what trains (freeze, LoRA; fresh heads always train).
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import traverse_util

from zoo import quantize_base as qb
from zoo import registry
from zoo.layers.stack import scan_params
from zoo.training import trainable


def with_pretrained(params, fitted):
  """``params`` (fresh, sharded) with every leaf the checkpoint provides replaced by its value
  (a quantized base kernel: by its codes and scales).

  Each leaf is built in its own sharding from the host copy every process holds
  (``make_array_from_callback``), so nothing is gathered on one device.
  """
  tree = traverse_util.unflatten_dict(fitted.flat, sep="/")
  if registry.scanned(fitted.model.config):
    tree = scan_params(tree)
  loaded = traverse_util.flatten_dict(tree, sep="/")
  flat = traverse_util.flatten_dict(params, sep="/")
  out = {}
  for path, leaf in flat.items():
    kernel, _, part = path.rpartition("/")
    if part in (qb.CODES, qb.SCALE) and kernel in loaded:  # QLoRA: quantize it as it comes in
      if part == qb.CODES:
        out.update(_quantized_leaves(kernel, loaded[kernel], flat))
    elif path in loaded:
      host = np.asarray(loaded[path]).astype(leaf.dtype)
      out[path] = jax.make_array_from_callback(host.shape, leaf.sharding, lambda i, h=host: h[i])
    else:
      out[path] = leaf  # a fresh head, or a LoRA adapter
  return traverse_util.unflatten_dict(out, sep="/")


def _quantized_leaves(kernel: str, host, flat) -> dict:
  """The checkpoint's kernel as the codes and scale of a quantized base, in their shardings."""
  codes, scale = flat[f"{kernel}/{qb.CODES}"], flat[f"{kernel}/{qb.SCALE}"]
  last_in = qb.last_in_axis(codes.shape, scale.shape)
  scheme = qb.scheme_of(codes.shape, scale.shape)
  q = qb.quantize_kernel(np.asarray(host, np.float32), scheme, last_in)
  out = {}
  for part, fresh in ((qb.CODES, codes), (qb.SCALE, scale)):
    h = np.asarray(q[part]).astype(fresh.dtype)
    out[f"{kernel}/{part}"] = jax.make_array_from_callback(h.shape, fresh.sharding,
                                                           lambda i, h=h: h[i])
  return out


def pretrained_config(config) -> tuple[ml_collections.ConfigDict, Any]:
  """``(config, weights)``: for ``config.init.path``, its weights and a config whose data reads
  the checkpoint's tokenizer (and image statistics); ``(config, None)`` without one."""
  if not config.get("init") or not config.init.path:
    return config, None
  from zoo import pretrained  # noqa: PLC0415
  from zoo.data.tokenizers import tokenizer_file  # noqa: PLC0415

  path = pretrained.api.resolve(config.init.path)
  weights = pretrained.api.read(path, step=config.init.step)
  config = config.copy_and_resolve_references()
  source = weights.info.get("tokenizer_path") or (path if os.path.isdir(path) else None)
  has_tokenizer = source and (os.path.isfile(source) or tokenizer_file(source) is not None)
  if "tokenizer" in config.data and config.init.get("tokenizer", True) and has_tokenizer:
    config.data.tokenizer = source
  registry.task(config.task).checkpoint_data(config.data, path)
  return config, weights


def fit_pretrained(weights, model_cfg):
  """The checkpoint's weights for ``model_cfg``: loaded, new (fresh heads) and dropped; the
  fitted model's config adds what the head implies (``assemble.fit``)."""
  from zoo.pretrained import assemble  # noqa: PLC0415

  base = weights.config
  changed = {
      n: getattr(model_cfg, n) for n in registry.field_names(type(model_cfg))
      if getattr(model_cfg, n) != getattr(base, n)
  }
  return assemble.fit(weights, None, changed)


def trainable_spec(config, fitted) -> trainable.Trainable:
  """The run's :class:`Trainable`; fresh heads train even when the backbone is frozen."""
  spec = trainable.Trainable.from_config(config)
  if fitted is not None and fitted.new and spec.active:
    heads = sorted({p.split("/")[0] for p in fitted.new})
    fresh = "^(" + "|".join(re.escape(h) for h in heads) + ")/"
    keep = f"{spec.always_train}|{fresh}" if spec.always_train else fresh
    spec = dataclasses.replace(spec, always_train=keep)
  return spec


def notes(fitted, spec, params) -> list[str]:
  """What the start of a fine-tuning run says: tensors loaded / new / dropped, what trains."""
  out = []
  if fitted is not None:
    out.append(
        f"init: {len(fitted.flat)} tensors loaded, {len(fitted.new)} new"
        + (f" ({', '.join(fitted.new)})" if fitted.new else "")
        + f", {len(fitted.dropped)} dropped"
        + (f" ({', '.join(fitted.dropped)})" if fitted.dropped else "")
    )
  if spec.active:
    n = trainable.counts(params, spec)
    out.append(
        f"trainable: {n['trainable'] / 1e6:.3f}M of {n['total'] / 1e6:.3f}M parameters "
        f"({n['frozen'] / 1e6:.3f}M frozen, {n['adapters'] / 1e6:.3f}M LoRA adapters)"
    )
  return out
