"""The train state and its sharded creation.

The state is built in three moves, so no parameter is ever materialised on one device and
then moved: ``jax.eval_shape`` of the initialiser gives shapes and logical axis names, the
names become ``NamedSharding``\\ s through the rules, and ``jax.jit(init, out_shardings=...)``
creates every shard where it lives.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from flax import struct
from jax.sharding import Mesh, NamedSharding

from zoo.training import mesh as mesh_lib
from zoo.training import trainable as trainable_lib


class TrainState(struct.PyTreeNode):
  """Step counter, float32 parameters and optimizer state; model and optimizer are static."""

  step: jax.Array
  params: Any
  opt_state: Any
  apply_fn: Callable = struct.field(pytree_node=False)
  tx: optax.GradientTransformation = struct.field(pytree_node=False)

  def apply_gradients(self, grads: Any) -> TrainState:
    updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
    params = optax.apply_updates(self.params, updates)
    return self.replace(step=self.step + 1, params=params, opt_state=opt_state)


def _init_fn(
    model: nn.Module, tx, init_args: tuple, init_kwargs: dict, boxed: bool, trainable=None
):
  # ``tx`` already covers only the trainable leaves (``trainable.wrap_optimizer``).
  trainable = trainable or trainable_lib.Trainable()

  def init(rng):
    params = model.init(rng, *init_args, **init_kwargs)["params"]
    if trainable.lora_rank:  # adapters beside their kernels, from a key of their own
      params = trainable_lib.add_adapters(params, trainable, jax.random.fold_in(rng, 1))
    params = trainable_lib.quantize_frozen(params, trainable)  # QLoRA: a quantized base
    if not boxed:
      params = nn.unbox(params)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(nn.unbox(params)),
        apply_fn=trainable_lib.wrap_apply(model.apply, trainable),
        tx=tx,
    )

  return init


def _path_names(path) -> tuple:
  return tuple(getattr(k, "key", getattr(k, "name", getattr(k, "idx", None))) for k in path)


def state_shardings(abstract_state: TrainState, params_shardings: Any, mesh: Mesh) -> TrainState:
  """Shardings of a whole state: optimizer moments follow the parameter they belong to.

  An optimizer-state leaf whose tree path ends with a parameter's path and has its shape
  (Adam's ``mu`` / ``nu``) gets that parameter's sharding; scalars (counts) are replicated.
  """
  by_path = {}
  for path, s in jax.tree_util.tree_leaves_with_path(params_shardings):
    by_path[_path_names(path)] = s
  shapes = {
      _path_names(p): x.shape for p, x in jax.tree_util.tree_leaves_with_path(abstract_state.params)
  }
  rep = mesh_lib.replicated(mesh)

  def opt_leaf(path, leaf):
    names = _path_names(path)
    for n in range(len(names)):
      suffix = names[n:]
      if suffix in by_path and shapes[suffix] == leaf.shape:
        return by_path[suffix]
    return rep

  opt = jax.tree_util.tree_map_with_path(opt_leaf, abstract_state.opt_state)
  return abstract_state.replace(step=rep, params=params_shardings, opt_state=opt)


def abstract_state(
    model: nn.Module, tx, init_args: tuple, init_kwargs: dict, mesh: Mesh, rules, trainable=None
) -> tuple[TrainState, TrainState]:
  """``(abstract_state, shardings)``: shapes/dtypes (with ``.sharding``) and the shardings.

  ``trainable`` (a :class:`zoo.training.trainable.Trainable`) adds LoRA adapters and limits
  the optimizer to the trainable leaves.
  """
  rng = jax.random.PRNGKey(0)
  boxed = jax.eval_shape(_init_fn(model, tx, init_args, init_kwargs, True, trainable), rng)
  p_shardings = mesh_lib.param_shardings(boxed.params, mesh, rules)
  plain = jax.eval_shape(_init_fn(model, tx, init_args, init_kwargs, False, trainable), rng)
  shardings = state_shardings(plain, p_shardings, mesh)
  with_sharding = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), plain, shardings
  )
  return with_sharding, shardings


def make_init(
    model: nn.Module,
    tx,
    init_args: tuple,
    init_kwargs: dict,
    shardings: TrainState,
    compiler_options: dict | None = None,
    trainable=None,
):
  """``jit(init, out_shardings=shardings)``: ``rng -> state`` created directly in its shards.

  Call it under ``jax.set_mesh(mesh)`` and ``nn.logical_axis_rules(rules)`` (activation
  constraints inside the model need them while tracing).
  """
  return jax.jit(
      _init_fn(model, tx, init_args, init_kwargs, False, trainable),
      out_shardings=shardings,
      compiler_options=compiler_options,
  )


def is_sharded_like(state: TrainState, shardings: TrainState) -> bool:
  """True when every array of ``state`` has the matching ``NamedSharding`` (for tests)."""
  arrays, targets = jax.tree.leaves(state), jax.tree.leaves(shardings)
  return len(arrays) == len(targets) and all(
      isinstance(s, NamedSharding) and x.sharding.is_equivalent_to(s, x.ndim)
      for x, s in zip(arrays, targets, strict=True)
  )
