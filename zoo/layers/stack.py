"""A stack of identical blocks: a Python loop or ``nn.scan``, with optional rematerialisation.

Looped parameters live under ``layers_0 ... layers_{L-1}``; scanned ones under ``layers`` with
a leading ``[L]`` axis (logical name ``layers``). :func:`scan_params` and
:func:`unscan_params` convert one layout into the other, so a checkpoint trained either way
loads either way.
"""

from __future__ import annotations

import re
import typing
from typing import Any, Literal

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax.core import meta

from zoo import sharding as sh

RematPolicy = Literal["none", "full", "dots", "dots_no_batch", "save_attn_mlp"]
REMAT_POLICIES = typing.get_args(RematPolicy)


def remat_policy_fn(policy: str):
  """Name -> ``jax.checkpoint`` policy (None means recompute everything)."""
  cp = jax.checkpoint_policies
  table = {
      "full": None,
      "dots": cp.checkpoint_dots,
      "dots_no_batch": cp.dots_with_no_batch_dims_saveable,
      "save_attn_mlp": cp.save_only_these_names("attn_out", "cross_out", "mlp_out"),
  }
  if policy not in table:
    raise ValueError(f"remat_policy must be one of {REMAT_POLICIES}; got {policy!r}.")
  return table[policy]


class Stack(nn.Module):
  """``num_layers`` blocks of ``block_cls(config, **block_kwargs)`` applied in sequence.

  A block is called as ``block(x, inputs, deterministic, decode)`` (see
  ``zoo.layers.blocks``): ``inputs`` is the same pytree for every layer and the two flags are
  Python values, static under remat and broadcast under scan.

  ``inputs`` is the seam for a value a family computes once and gives to every layer (T5's
  relative-position bias, ALiBi's per-head slopes times distance, in ``BlockInputs.bias``): the
  loop passes the same arrays to each layer, ``nn.scan`` broadcasts them (``nn.broadcast``, not
  sliced per layer), remat traces them as an argument; either way the values are the same and
  their gradient is the sum over layers.

  ``per_layer`` is the seam for what differs between layers (a local layer's window, its RoPE
  frequencies: ``zoo.layers.blocks.LayerInputs``): a pytree of ``[L, ...]`` arrays whose
  slice ``i`` reaches layer ``i`` as a fifth argument, indexed in the loop, scanned over by
  ``nn.scan``.
  """

  block_cls: Any
  config: Any
  num_layers: int
  scan: bool = False
  remat_policy: RematPolicy = "none"
  block_kwargs: tuple[tuple[str, Any], ...] = ()

  @nn.compact
  def __call__(
      self, x, inputs, *, deterministic: bool = True, decode: bool = False, per_layer=None
  ):
    """``x`` ``[B, T, D]`` through every layer; ``inputs`` a ``BlockInputs`` record,
    ``per_layer`` None or a pytree of ``[L, ...]`` arrays (one slice per layer)."""
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f"remat_policy must be one of {REMAT_POLICIES}; got {self.remat_policy!r}.")
    block_cls = self.block_cls
    if self.remat_policy != "none":
      # Indices into (self, x, inputs, deterministic, decode): the two flags. They must be
      # non-negative: flax shifts them (-1 for self, +2 for its own leading arguments), which
      # maps a negative index onto the wrong argument.
      block_cls = nn.remat(
          block_cls,
          policy=remat_policy_fn(self.remat_policy),
          prevent_cse=not self.scan,
          static_argnums=(3, 4),
      )
    kwargs = dict(self.block_kwargs)
    args = (inputs, deterministic, decode)
    if self.scan:
      in_axes = (nn.broadcast,) * len(args)
      if per_layer is not None:
        args, in_axes = (*args, per_layer), (*in_axes, 0)
      scanned = nn.scan(
          block_cls,
          variable_axes={"params": 0, "cache": 0, "intermediates": 0},
          split_rngs={"params": True, "dropout": True},
          in_axes=in_axes,
          length=self.num_layers,
          metadata_params={nn.PARTITION_NAME: sh.LAYERS},
      )
      x, _ = scanned(self.config, scanned=True, name="layers", **kwargs)(x, *args)
      return x
    for i in range(self.num_layers):
      extra = () if per_layer is None else (jax.tree.map(lambda a, i=i: a[i], per_layer),)
      x = block_cls(self.config, name=f"layers_{i}", **kwargs)(x, *args, *extra)
    return x


_LOOP_KEY = re.compile(r"^layers_(\d+)$")


def _unbox(tree):
  return jax.tree.map(lambda v: v.unbox() if isinstance(v, meta.AxisMetadata) else v, tree,
                      is_leaf=lambda v: isinstance(v, meta.AxisMetadata))


def scan_params(tree: Any) -> Any:
  """Looped layout (``layers_i``) -> scanned layout (``layers``, stacked on axis 0), recursively."""
  if not isinstance(tree, dict):
    return tree
  tree = _unbox(dict(tree))
  loop_keys = sorted((int(m.group(1)), k) for k in tree if (m := _LOOP_KEY.match(k)))
  out = {k: scan_params(v) for k, v in tree.items() if not _LOOP_KEY.match(k)}
  if loop_keys:
    if [i for i, _ in loop_keys] != list(range(len(loop_keys))):
      raise ValueError(f"layer keys are not 0..L-1: {[k for _, k in loop_keys]}")
    layers = [tree[k] for _, k in loop_keys]
    out["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs), *layers)
  return out


def unscan_params(tree: Any) -> Any:
  """Scanned layout (``layers`` with a leading ``[L]`` axis) -> looped ``layers_i``, recursively."""
  if not isinstance(tree, dict):
    return tree
  tree = _unbox(dict(tree))
  out = {}
  for k, v in tree.items():
    if k == "layers" and isinstance(v, dict):
      n = jax.tree.leaves(v)[0].shape[0]
      for i in range(n):
        out[f"layers_{i}"] = jax.tree.map(lambda a, i=i: a[i], v)
    else:
      out[k] = unscan_params(v)
  return out
