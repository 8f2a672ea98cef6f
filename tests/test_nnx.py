"""zoo.nnx: a zoo model as an ``nnx.Module`` (Flax's linen -> NNX bridge) equals the linen model.

References: the linen ``apply`` of the same model and params (forward, dropout with the same
key), the linen boxed params' logical names and the loop's shardings (``param_shardings``), and
the loop's own compiled train step (``zoo.training.steps.program_for``) for one NNX update.
"""

import functools
import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import linen as nn
from flax import nnx

import zoo
import zoo.nnx
from zoo import registry
from zoo.models.bert import BertConfig
from zoo.models.gpt import GPTConfig
from zoo.models.vit import ViTConfig
from zoo.training import mesh as mesh_lib
from zoo.training import steps

LLAMA = GPTConfig(
    vocab_size=96, max_len=16, d_model=32, num_heads=4, num_kv_heads=2, num_layers=2, mlp_dim=64,
    position="rope", norm="rmsnorm", activation="silu", gated_mlp=True, use_bias=False,
    tie_embeddings=False,
)
BERT = BertConfig(vocab_size=91, max_len=16, d_model=32, num_heads=4, num_layers=2, mlp_dim=64,
                  head="pretraining")
VIT = ViTConfig(image_size=16, patch_size=8, num_channels=3, d_model=32, num_heads=4,
                num_layers=2, mlp_dim=64, num_classes=5)


def _inputs(name):
  rng = np.random.default_rng(0)
  if name == "vit":
    return (rng.normal(size=(2, 16, 16, 3)).astype(np.float32),), {}
  ids = rng.integers(1, 90, size=(2, 8)).astype(np.int32)
  if name == "bert":
    return (ids,), {"token_type_ids": (np.arange(8) >= 4).astype(np.int32)[None].repeat(2, 0)}
  return (ids,), {}


@functools.cache
def _case(name):
  """``(model, boxed params)`` of a tiny model, initialised once per test run."""
  cfg = {"llama": LLAMA, "bert": BERT, "vit": VIT}[name]
  model = zoo.build(cfg)
  args, kwargs = registry.family_of(model).dummy_inputs(cfg)
  return model, jax.jit(model.init)(jax.random.PRNGKey(1), *args, **kwargs)["params"]


def _close(got, want, atol=1e-6):
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=0, atol=atol)


@pytest.mark.parametrize("name", ["llama", "bert", "vit"])
def test_forward_equals_linen_apply(name):
  model, boxed = _case(name)
  params = nn.unbox(boxed)
  args, kwargs = _inputs(name)
  module = zoo.nnx.from_linen(model, params)
  want = jax.jit(functools.partial(model.apply, deterministic=True))({"params": params}, *args,
                                                                     **kwargs)
  got = nnx.jit(lambda m, a, kw: m(*a, deterministic=True, **kw))(module, args, kwargs)
  assert jax.tree.structure(got) == jax.tree.structure(want)
  _close(got, want, atol=1e-5)


@pytest.mark.parametrize("name", ["llama", "bert", "vit"])
def test_logical_names_are_nnx_metadata_and_round_trip(name):
  model, boxed = _case(name)
  params = nn.unbox(boxed)
  module = zoo.nnx.from_linen(model, params)
  want_names = {jax.tree_util.keystr(p): tuple(s) for p, s in jax.tree_util.tree_leaves_with_path(
      nn.get_partition_spec(boxed), is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))}
  got_names = {}
  for path, var in nnx.to_flat_state(nnx.state(module, nnx.Param)):
    got_names[jax.tree_util.keystr(tuple(jax.tree_util.DictKey(k) for k in path))] = (
        var.get_metadata()["out_sharding"])
  assert got_names == want_names
  # Round trip: the same tree, the same arrays; boxed, the same logical names.
  back = zoo.nnx.to_linen_params(module)
  assert jax.tree.structure(back) == jax.tree.structure(params)
  for b, p in zip(jax.tree.leaves(back), jax.tree.leaves(params), strict=True):
    np.testing.assert_array_equal(b, p)
  assert nn.get_partition_spec(zoo.nnx.to_linen_params(module, boxed=True)) == (
      nn.get_partition_spec(boxed))
  # Boxed params in: the same module.
  again = zoo.nnx.to_linen_params(zoo.nnx.from_linen(model, boxed))
  _close(again, params, atol=0)


def test_nnx_partition_specs_follow_the_rules_and_shard_on_8_devices():
  model, boxed = _case("llama")
  params = nn.unbox(boxed)
  rules = mesh_lib.rules_from_config(None)
  module = zoo.nnx.from_linen(model, params)
  with nn.logical_axis_rules(rules):
    specs = nnx.to_pure_dict(nnx.get_partition_spec(nnx.state(module, nnx.Param)))
  want = nn.logical_to_mesh(nn.get_partition_spec(boxed), rules)
  assert jax.tree.leaves(specs) == jax.tree.leaves(want) and jax.tree.leaves(want)
  mesh = mesh_lib.make_mesh(dict(data=2, fsdp=2, tensor=2), jax.devices()[:8])
  args, _ = _inputs("llama")
  ref = model.apply({"params": params}, *args, deterministic=True)
  zoo.nnx.shard(module, mesh, rules)
  placed = zoo.nnx.to_linen_params(module)
  shardings = mesh_lib.param_shardings(boxed, mesh, rules)
  for x, s in zip(jax.tree.leaves(placed), jax.tree.leaves(shardings), strict=True):
    assert x.sharding.is_equivalent_to(s, x.ndim), (x.sharding, s)
  assert any(len(x.sharding.device_set) == 8 and not x.sharding.is_fully_replicated
             for x in jax.tree.leaves(placed))
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    got = nnx.jit(lambda m, x: m(x, deterministic=True))(module, *args)
  _close(got, ref, atol=1e-5)


def test_dropout_draws_from_the_nnx_rngs():
  model = zoo.build(LLAMA, dropout_rate=0.3)
  params = nn.unbox(_case("llama")[1])
  args, _ = _inputs("llama")
  module = zoo.nnx.from_linen(model, params)
  rngs = nnx.Rngs(dropout=7)
  call = nnx.jit(lambda m, r, x: m(x, deterministic=False, rngs=r))
  first = call(module, rngs, *args)
  second = call(module, rngs, *args)  # nnx.jit carries the stream's count out of the call
  apply = jax.jit(model.apply, static_argnames="deterministic")
  # The bridge draws each call's key from the stream: fold_in(key, call count).
  for count, got in enumerate((first, second)):
    key = jax.random.fold_in(jax.random.key(7), count)
    want = apply({"params": params}, *args, deterministic=False, rngs={"dropout": key})
    _close(got, want, atol=1e-5)
  clean = apply({"params": params}, *args, deterministic=True)
  assert not np.allclose(first, clean, atol=1e-3) and not np.allclose(first, second, atol=1e-3)


def test_params_that_do_not_fit_the_model_are_a_clear_error():
  model, boxed = _case("llama")
  params = nn.unbox(boxed)
  bad = {**params, "lm_head": {"kernel": jnp.zeros((32, 95))}}
  with pytest.raises(ValueError, match=r"lm_head/kernel: \(32, 95\) vs \(32, 96\)"):
    zoo.nnx.from_linen(model, bad)
  with pytest.raises(ValueError, match="missing .'wte/embedding'"):
    zoo.nnx.from_linen(model, {k: v for k, v in params.items() if k != "wte"})


def _lm_batch(seed=0, rows=4, length=8):
  rng = np.random.default_rng(seed)
  ids = rng.integers(0, LLAMA.vocab_size, size=(rows, length + 1)).astype(np.int32)
  weights = np.ones((rows, length), np.float32)
  weights[0, 5:] = 0  # a padded tail: the loss must normalise by the weight total
  return {"input_ids": ids[:, :-1], "targets": ids[:, 1:], "weights": weights}


def test_nnx_optimizer_step_equals_the_loop_train_step():
  """One ``nnx.Optimizer`` update with the loop's optax transform == the loop's compiled step.

  Dropout is off in this model (the Llama preset's rate 0), so the loop's ``train=True`` step
  and the deterministic NNX call compute the same function: the bridge draws its dropout key from
  an ``nnx.Rngs`` stream (``fold_in(key, count)``), not from the loop's
  ``fold_in(rng, state.step)``, so with dropout on their masks would differ by construction.
  """
  task = registry.task("lm", 0.1)
  # A config.optim section (the keys of zoo.training.config.base_config), decay and clipping on.
  optim = ml_collections.ConfigDict(dict(
      name="adamw", lr=3e-2, schedule="cosine", warmup_steps=1, end_lr_ratio=0.1, b1=0.9,
      b2=0.999, eps=1e-8, weight_decay=0.1, clip_norm=0.5, momentum=0.9,
  ))
  mesh = mesh_lib.make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
  rules = mesh_lib.rules_from_config(None)
  prog = steps.program_for(LLAMA, task, optim, num_steps=4, mesh=mesh, rules=rules)
  rng = jax.random.PRNGKey(3)
  batch = _lm_batch()
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    state = steps.init_state(prog, mesh, rules, rng)
    start = jax.device_get(state.params)  # before the step donates the state
    tx = state.tx
    state, metrics = prog.step(state, mesh_lib.place_batch(batch, mesh), rng)
  want_params = jax.device_get(state.params)

  module = zoo.nnx.from_linen(prog.model, start)
  optimizer = nnx.Optimizer(module, tx, wrt=nnx.Param)

  @nnx.jit
  def nnx_step(module, optimizer, batch):
    grad_fn = nnx.value_and_grad(lambda m: zoo.nnx.task_loss(m, batch, task), has_aux=True)
    (loss, _), grads = grad_fn(module)
    optimizer.update(module, grads)
    return loss, optax.tree.norm(grads)

  loss, grad_norm = nnx_step(module, optimizer, jax.tree.map(jnp.asarray, batch))
  np.testing.assert_allclose(loss, metrics["loss"], rtol=0, atol=1e-6)
  np.testing.assert_allclose(grad_norm, metrics["grad_norm"], rtol=1e-6)
  got_params = zoo.nnx.to_linen_params(module)
  moved = max(float(np.abs(w - s).max()) for w, s in
              zip(jax.tree.leaves(want_params), jax.tree.leaves(start), strict=True))
  assert moved > 1e-3  # the step did change the parameters
  _close(got_params, want_params, atol=1e-6)
  assert int(optimizer.step[...]) == 1


def test_readme_example_trains_a_llama_in_an_nnx_loop():
  path = pathlib.Path(__file__).resolve().parents[1] / "examples" / "nnx_train.py"
  spec = importlib.util.spec_from_file_location("nnx_train_example", path)
  example = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(example)
  losses = example.main(["--steps", "12", "--tiny"])
  assert len(losses) == 12 and all(np.isfinite(losses))
  assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.1
