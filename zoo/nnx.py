"""zoo models inside NNX code: a linen model and its params as an ``nnx.Module``, and back.

:func:`from_linen` wraps a model with Flax's linen -> NNX bridge (``nnx.bridge.ToNNX``) and
fills it with given parameters (no initialiser runs): each one becomes an ``nnx.Param`` that
keeps its logical axis names as ``out_sharding`` metadata (Flax's name for what older releases
called ``sharding`` / ``sharding_names``), so ``nnx.get_partition_spec`` under
``nn.logical_axis_rules`` gives mesh specs and :func:`shard` places the module as the loop places
its state. A call of the module is the linen ``apply`` (dropout from the ``nnx.Rngs`` it is given);
:func:`to_linen_params` gives the params tree back; :func:`task_loss` is the loop's objective of a
batch, for NNX training steps (``nnx.Optimizer`` with the loop's optax transform).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import nnx
from flax.core import meta
from flax.nnx.bridge import variables as bridge_vars

from zoo import registry

__all__ = ["from_linen", "to_linen_params", "shard", "task_loss"]


def _is_box(x: Any) -> bool:
  return isinstance(x, meta.AxisMetadata)


def _path_str(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def _boxed(model: nn.Module, params: Any) -> Any:
  """``params`` with the logical-axis boxes ``model.init`` gives (from shapes only)."""
  if any(_is_box(x) for x in jax.tree.leaves(params, is_leaf=_is_box)):
    return params
  args, kwargs = registry.family_of(model).dummy_inputs(model.config)
  abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *args, **kwargs))["params"]
  want = {_path_str(p): x.shape for p, x in jax.tree_util.tree_leaves_with_path(nn.unbox(abstract))}
  got = {_path_str(p): jnp.shape(x) for p, x in jax.tree_util.tree_leaves_with_path(params)}
  if want != got:
    missing = sorted(set(want) - set(got))[:5]
    extra = sorted(set(got) - set(want))[:5]
    shapes = [f"{k}: {got[k]} vs {want[k]}" for k in sorted(set(want) & set(got))
              if got[k] != want[k]][:5]
    raise ValueError(
        f"params do not fit {type(model).__name__}: missing {missing}, unexpected {extra}, "
        f"shapes (given vs model) {shapes}. Pass the model's own params tree (the 'params' "
        "collection of model.init, or from zoo.from_pretrained) with the same config."
    )
  return jax.tree.map(lambda box, x: box.replace_boxed(x), abstract, params, is_leaf=_is_box)


def _to_param(leaf: Any) -> nnx.Param:
  """An ``nnx.Param`` with the box's metadata (logical names as ``out_sharding``)."""
  if not _is_box(leaf):
    return nnx.Param(leaf, eager_sharding=False)
  # A copy first: LogicallyPartitioned.to_nnx_metadata pops fields from the box's own __dict__.
  metadata = leaf.replace_boxed(leaf.unbox(apply_constraint=False)).to_nnx_metadata()
  value = metadata.pop("value")
  # eager_sharding=False: the values stay where they are; shard() places them on a mesh.
  return nnx.Param(value, eager_sharding=False, linen_meta_type=type(leaf), **metadata)


def from_linen(model: nn.Module, params: Any, *, rngs: nnx.Rngs | None = None) -> nnx.Module:
  """An ``nnx.Module`` whose call is ``model.apply({"params": params}, ...)``.

  Args:
    model: a zoo linen model (``zoo.build``, ``zoo.from_pretrained``).
    params: its ``params`` tree, plain arrays or boxed with logical axis names; plain arrays get
      the names ``model.init`` gives them (from shapes: nothing is initialised).
    rngs: the default ``nnx.Rngs`` of calls (a call's own ``rngs=`` wins); a ``dropout`` stream
      with ``deterministic=False`` turns dropout on.

  Returns:
    An ``nnx.bridge.ToNNX`` module; ``nnx.state(module, nnx.Param)`` holds the parameters under
    the linen paths, each with ``out_sharding`` = its logical axis names.
  """
  module = nnx.bridge.ToNNX(model, rngs=rngs)
  variables = jax.tree.map(_to_param, _boxed(model, params), is_leaf=_is_box)
  for name, tree in variables.items():
    setattr(module, name, nnx.data(tree))
  return module


def to_linen_params(module: nnx.Module, *, boxed: bool = False) -> dict[str, Any]:
  """The linen ``params`` tree of a :func:`from_linen` module (current values).

  ``boxed=True`` gives ``nn.LogicallyPartitioned`` leaves (what ``model.init`` gives), from the
  variables' metadata.
  """
  out: dict[str, Any] = {}
  for path, var in nnx.to_flat_state(nnx.state(module, nnx.Param)):
    leaf = bridge_vars.to_linen_var(var) if boxed else var.get_value()
    node = out
    for key in path[:-1]:
      node = node.setdefault(str(key), {})
    node[str(path[-1])] = leaf
  return out


def shard(module: nnx.Module, mesh: jax.sharding.Mesh, rules=None) -> nnx.Module:
  """Place the module's parameters on ``mesh`` as the loop places its state (in place).

  The shardings come from the variables' logical names through ``rules`` (default
  ``zoo.sharding.DEFAULT_RULES``), by ``zoo.training.mesh.param_shardings``: a dimension that a
  mesh axis does not divide stays whole. Call the module under ``jax.set_mesh(mesh)`` and
  ``nn.logical_axis_rules(rules)`` afterwards, as the loop traces its steps.
  """
  from zoo.training import mesh as mesh_lib  # noqa: PLC0415 - keeps `import zoo.nnx` light

  rules = mesh_lib.rules_from_config(None) if rules is None else rules
  shardings = mesh_lib.param_shardings(to_linen_params(module, boxed=True), mesh, rules)
  flat = {tuple(_path_str([k]) for k in p): s
          for p, s in jax.tree_util.tree_leaves_with_path(shardings)}
  for path, var in nnx.to_flat_state(nnx.state(module, nnx.Param)):
    var.set_value(jax.device_put(var.get_value(), flat[tuple(str(k) for k in path)]))
  return module


def task_loss(
    module: nnx.Module, batch: dict[str, jax.Array], task: Any, *, rngs: nnx.Rngs | None = None
) -> tuple[jax.Array, dict[str, tuple[jax.Array, jax.Array]]]:
  """``(loss, stats)`` of the loop's objective on a batch, computed by the NNX module.

  The same model inputs, fused loss switch and normalisation (each term's sum over its
  weight total) as ``zoo.training.steps.train_step``; dropout on when ``rngs`` is given.

  Args:
    module: a :func:`from_linen` module.
    batch: a batch of ``task`` (``zoo.registry.task(name)``).
    task: the task record.
    rngs: an ``nnx.Rngs`` with a ``dropout`` stream, or None (deterministic).
  """
  dropout = rngs

  def apply_fn(variables, *args, rngs=None, **kwargs):
    del variables, rngs  # the module holds the parameters; its dropout keys come from NNX
    return module(*args, rngs=dropout, **kwargs)

  outputs = task.apply(apply_fn, None, batch, rng=None, train=dropout is not None)
  stats = task.stats(outputs, batch)
  totals = {t: jnp.sum(w) for t, w in task.loss_weights(batch).items()}
  loss = sum(stats[t][0] / jnp.maximum(totals[t], 1e-12) for t in task.loss_terms)
  return loss, stats
