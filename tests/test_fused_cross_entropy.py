"""The fused linear + cross entropy (zoo/layers/fused_cross_entropy.py) equals the plain loss on
the full logits, in value and gradient, alone and through every task and family wired to it;
sharded over 8 simulated CPU devices it equals the unsharded run; and a GPT-2-shaped train step
compiles to less temporary memory with it than without."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from jax.sharding import NamedSharding, PartitionSpec

from zoo import registry
from zoo.data.batch import IGNORE_INDEX
from zoo.layers import fused_cross_entropy as fce
from zoo.models.bert import Bert, BertConfig
from zoo.models.gpt import GPT, GPTConfig
from zoo.models.t5 import T5, T5Config
from zoo.models.transformer import Transformer, TransformerConfig
from zoo.tasks import losses
from zoo.training import config as config_lib
from zoo.training import mesh as mesh_lib
from zoo.training import steps

B, L, D, V = 3, 10, 16, 53


def _data(seed=0, dtype=jnp.float32):
  """Hidden states, a kernel, a bias, labels with IGNORE_INDEX entries and weights with zeros
  (padded rows)."""
  k = jax.random.split(jax.random.key(seed), 5)
  hidden = jax.random.normal(k[0], (B, L, D), dtype)
  kernel = 0.5 * jax.random.normal(k[1], (D, V))
  bias = jax.random.normal(k[2], (V,))
  labels = jax.random.randint(k[3], (B, L), 0, V)
  labels = labels.at[0, 2].set(IGNORE_INDEX).at[1, 7:].set(IGNORE_INDEX)
  weights = jax.random.uniform(k[4], (B, L)).at[2, 5:].set(0.0)  # a padded tail
  return hidden, kernel, bias, labels, losses.label_weights(labels, weights)


def _reference_logits(hidden, weight, bias, scale, transposed, dtype=jnp.float32):
  """The logits written out with plain jnp, independently of the module under test."""
  h = hidden.astype(dtype) * (1.0 if scale is None else jnp.asarray(scale, dtype))
  w = (weight.T if transposed else weight).astype(dtype)
  logits = jnp.einsum("...D,DV->...V", h, w, preferred_element_type=jnp.float32)
  return logits if bias is None else logits + bias


def _objective(per_row, weights):
  """Uses all of loss and nll, so both cotangents reach the backward."""
  loss, nll, correct = per_row
  return jnp.sum(loss * weights) + 0.37 * jnp.sum(nll * weights), (loss, nll, correct)


def _both(labels, weights, *, eps=0.0, z=0.0, scale=None, transposed=False, block=None,
          dtype=jnp.float32):
  """``(fused, plain)`` functions of ``(hidden, weight, bias)`` -> ``(objective, rows)``."""

  def fused(h, w, b):
    return _objective(fce.linear_cross_entropy(
        h, w, labels, bias=b, scale=scale, transposed=transposed, dtype=dtype,
        label_smoothing=eps, z_loss=z, block_size=block,
    ), weights)

  def plain(h, w, b):
    logits = _reference_logits(h, w, b, scale, transposed, dtype)
    loss, nll, correct = losses.cross_entropy(logits, labels, eps)
    loss = loss + z * jnp.square(jax.nn.logsumexp(logits, axis=-1))  # PaLM's z-loss
    return _objective((loss, nll, correct), weights)

  return fused, plain


def _value_and_grads(fn, *args):
  return jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2), has_aux=True))(*args)


def _value_and_grads_traced(fn, *args):
  return jax.value_and_grad(fn, argnums=(0, 1, 2), has_aux=True)(*args)


def _pair_value_and_grads(fns, *args):
  """``_value_and_grads`` of each of ``fns``, compiled as one program."""
  vg = [jax.value_and_grad(fn, argnums=(0, 1, 2), has_aux=True) for fn in fns]
  return jax.jit(lambda *a: tuple(f(*a) for f in vg))(*args)


@pytest.mark.parametrize(
    "eps,z,scale,transposed,bias,block",
    [
        (0.0, 0.0, None, False, False, 4),  # untied kernel; blocks of 4 do not divide L=10
        (0.1, 0.0, None, True, True, 5),  # tied table + bias; blocks divide L
        (0.1, 1e-2, 0.25, False, True, 3),  # T5's scale, z-loss
        (0.0, 1e-2, 0.25, True, False, None),  # automatic block (one block here)
        (0.1, 0.0, None, False, True, 1),  # one position per block
    ],
)
def test_equals_plain_cross_entropy_in_value_and_gradient(eps, z, scale, transposed, bias, block):
  hidden, kernel, b, labels, weights = _data()
  weight = kernel.T if transposed else kernel
  b = b if bias else None
  top = jnp.argmax(_reference_logits(hidden, weight, b, scale, transposed), axis=-1)
  labels = labels.at[2, :4].set(top[2, :4])  # argmax hits, so accuracy is tested too
  fused, plain = _both(labels, weights, eps=eps, z=z, scale=scale, transposed=transposed,
                       block=block)
  ((got, rows), grads), ((want, want_rows), want_grads) = _pair_value_and_grads(
      (fused, plain), hidden, weight, b)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  valid = np.asarray(labels != IGNORE_INDEX)
  for g, w in zip(rows, want_rows, strict=True):
    assert g.dtype == jnp.float32 and g.shape == (B, L)
    np.testing.assert_allclose(np.asarray(g)[valid], np.asarray(w)[valid], rtol=1e-6, atol=1e-6)
    assert not np.any(np.asarray(g)[~valid])  # IGNORE_INDEX rows give 0
  assert float(jnp.sum(rows[2] * valid)) >= 4
  for g, w in zip(grads, want_grads, strict=True):
    if w is None:
      assert g is None
      continue
    assert g.shape == w.shape and g.dtype == w.dtype
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_ignored_and_padded_rows_get_no_gradient():
  hidden, kernel, b, labels, weights = _data()
  fused, _ = _both(labels, weights, block=4)
  _, (d_hidden, _, _) = _value_and_grads(fused, hidden, kernel, b)
  dead = np.asarray(weights == 0)
  assert dead.sum() >= 5
  assert not np.any(np.asarray(d_hidden)[dead])
  assert np.all(np.any(np.asarray(d_hidden)[~dead] != 0, axis=-1))


def test_z_loss_adds_lse_squared_to_the_loss_only():
  hidden, kernel, b, labels, _ = _data()
  base = fce.linear_cross_entropy(hidden, kernel, labels, bias=b, block_size=4)
  with_z = fce.linear_cross_entropy(hidden, kernel, labels, bias=b, z_loss=1e-3, block_size=4)
  lse = jax.nn.logsumexp(_reference_logits(hidden, kernel, b, None, False), axis=-1)
  valid = labels != IGNORE_INDEX
  np.testing.assert_allclose(with_z[0], jnp.where(valid, base[0] + 1e-3 * lse**2, 0), rtol=1e-6)
  np.testing.assert_array_equal(with_z[1], base[1])


def test_bfloat16_compute_keeps_float32_statistics():
  hidden, kernel, b, labels, weights = _data(dtype=jnp.bfloat16)
  fused, plain = _both(labels, weights, eps=0.1, dtype=jnp.bfloat16, block=3, transposed=True)
  ((got, rows), grads), ((want, _), want_grads) = _pair_value_and_grads(
      (fused, plain), hidden, kernel.T, b)
  assert all(r.dtype == jnp.float32 for r in rows)
  np.testing.assert_allclose(got, want, rtol=1e-5)  # same bf16 matmul, float32 after it
  assert grads[0].dtype == jnp.bfloat16 and grads[1].dtype == jnp.float32
  for g, w in zip(grads, want_grads, strict=True):
    scale = float(jnp.max(jnp.abs(w.astype(jnp.float32))))
    np.testing.assert_allclose(g.astype(jnp.float32), w.astype(jnp.float32), atol=2e-2 * scale)


def test_the_compiled_backward_holds_one_block_of_logits():
  """Temporary memory of the gradient: under the [N, V] logits, about a block's worth."""
  n, d, v, block = 4096, 32, 1000, 256
  hidden = jax.ShapeDtypeStruct((n, d), jnp.float32)
  kernel = jax.ShapeDtypeStruct((d, v), jnp.float32)
  labels = jax.ShapeDtypeStruct((n,), jnp.int32)

  def temp(loss_fn):
    grad = jax.jit(jax.grad(lambda h, w, y: jnp.sum(loss_fn(h, w, y)[0]), argnums=(0, 1)))
    return grad.lower(hidden, kernel, labels).compile().memory_analysis().temp_size_in_bytes

  fused = temp(lambda h, w, y: fce.linear_cross_entropy(h, w, y, block_size=block))
  plain = temp(lambda h, w, y: losses.cross_entropy(h @ w, y))
  logits_bytes = n * v * 4
  assert plain >= logits_bytes
  assert fused < 4 * block * v * 4 + 4 * n * d * 4 < logits_bytes


def test_bad_arguments_are_named_before_tracing():
  hidden, kernel, b, labels, _ = _data()
  with pytest.raises(ValueError, match=r"transposed=True for the other layout"):
    fce.linear_cross_entropy(hidden, kernel.T, labels)
  with pytest.raises(ValueError, match=r"labels \(3, 9\) must be hidden's shape"):
    fce.linear_cross_entropy(hidden, kernel, labels[:, :9])
  with pytest.raises(ValueError, match=r"bias must be \[V\] = \(53,\)"):
    fce.linear_cross_entropy(hidden, kernel, labels, bias=b[:5])
  with pytest.raises(ValueError, match="block_size=0 must be a positive int"):
    fce.linear_cross_entropy(hidden, kernel, labels, block_size=0)
  with pytest.raises(ValueError, match=r"label_smoothing=1.0 must be in \[0, 1\)"):
    fce.linear_cross_entropy(hidden, kernel, labels, label_smoothing=1.0)
  with pytest.raises(ValueError, match="z_loss=-1 must be >= 0"):
    fce.linear_cross_entropy(hidden, kernel, labels, z_loss=-1)
  with pytest.raises(ValueError, match="labels must be integer ids"):
    fce.linear_cross_entropy(hidden, kernel, labels.astype(jnp.float32))
  with pytest.raises(ValueError, match="encoder_only=True"):
    T5(dataclasses.replace(T5_TINY, encoder_only=True)).init(
        jax.random.key(0), jnp.ones((1, 3), jnp.int32), return_projection=True
    )


def test_ignore_index_is_the_datas():
  assert fce.IGNORE_INDEX == IGNORE_INDEX


# ----------------------------------------------------------------------------------------------
# Through the tasks: stats and gradients equal with the fused loss on and off.

# One layer each (two where layers are scanned): the head's loss does not depend on depth.
GPT_TINY = dict(vocab_size=97, max_len=16, d_model=32, num_heads=4, num_layers=1, mlp_dim=64)
LLAMA = dict(position="rope", norm="rmsnorm", gated_mlp=True, activation="silu", use_bias=False,
             tie_embeddings=False, num_kv_heads=2)
SEQ2SEQ_TINY = dict(vocab_size=89, d_model=16, num_heads=2, num_encoder_layers=1,
                    num_decoder_layers=1, mlp_dim=32, dropout_rate=0.0)
BERT_TINY = dict(vocab_size=91, max_len=16, d_model=32, num_heads=4, num_layers=1, mlp_dim=64,
                 head="pretraining")
T5_TINY = T5Config(vocab_size=89, d_model=16, num_heads=2, head_dim=8, mlp_dim=32,
                   num_encoder_layers=1, num_decoder_layers=1, relative_attention_num_buckets=8,
                   relative_attention_max_distance=10, dropout_rate=0.0)

CASES = {  # GPT-2's tied head: the scanned, rematerialised case (the head is the same unscanned)
    "llama_untied": (lambda: GPT(GPTConfig(**GPT_TINY, **LLAMA)), "lm", 0.1),
    "gpt2_tied_scan_remat": (
        lambda: GPT(GPTConfig(**{**GPT_TINY, "num_layers": 2}, scan_layers=True,
                              remat_policy="full")), "lm", 0.0
    ),
    "transformer_tied": (
        lambda: Transformer(TransformerConfig(**SEQ2SEQ_TINY, max_len=16)), "translation", 0.1
    ),
    "transformer_untied_bias": (
        lambda: Transformer(TransformerConfig(
            **SEQ2SEQ_TINY, max_len=16, tie_output=False, final_logits_bias=True,
            norm_position="pre",
        )),
        "summarization", 0.0,
    ),
    "t5_tied_scaled": (lambda: T5(T5_TINY), "span_corruption", 0.0),
    "t5_untied_bf16": (
        lambda: T5(dataclasses.replace(
            T5_TINY, tie_word_embeddings=False, gated_mlp=True, dtype=jnp.bfloat16
        )),
        "translation", 0.1,
    ),
    "bert_gathered": (lambda: Bert(BertConfig(**BERT_TINY)), "mlm_nsp", 0.1),
    "bert_all_positions": (lambda: Bert(BertConfig(**BERT_TINY)), "mlm_nsp", 0.0),
}


def _mlm_batch(rng, ids, gathered: bool) -> dict[str, np.ndarray]:
  """BERT's layout: masked positions [B, P] with IGNORE_INDEX and weight-0 slots, or (not
  ``gathered``) mlm_targets [B, L] only."""
  b, t = ids.shape
  positions = np.stack([rng.permutation(t)[:5] for _ in range(b)]).astype(np.int32)
  labels = rng.integers(2, 90, positions.shape).astype(np.int32)
  labels[0, 3], labels[2, 4] = IGNORE_INDEX, IGNORE_INDEX
  weights = (labels != IGNORE_INDEX).astype(np.float32)
  weights[1, 2] = 0.0  # a real id that must not count
  targets = np.full(ids.shape, IGNORE_INDEX, np.int32)
  for r in range(b):
    targets[r, positions[r][weights[r] > 0]] = labels[r][weights[r] > 0]
  batch = dict(input_ids=ids, token_type_ids=(np.arange(t)[None] >= 6).repeat(b, 0).astype(
      np.int32), attention_mask=np.ones_like(ids), mlm_targets=targets,
      nsp_labels=np.array([0, 1, 1, IGNORE_INDEX], np.int32))
  if gathered:
    batch.update(masked_positions=positions, masked_labels=labels, masked_weights=weights)
  return batch


def _batch(name, model, seed=1) -> dict[str, np.ndarray]:
  """A batch of the model's task layout with IGNORE_INDEX targets and zero-weight rows."""
  rng = np.random.default_rng(seed)
  vocab, b, t = model.config.vocab_size, 4, 12
  ids = rng.integers(2, vocab, (b, t)).astype(np.int32)
  if name.startswith("bert"):
    return _mlm_batch(rng, ids, gathered=name == "bert_gathered")
  targets = rng.integers(2, vocab, (b, t)).astype(np.int32)
  targets[1, 8:] = IGNORE_INDEX
  weights = np.ones((b, t), np.float32)
  weights[3, 5:] = 0.0
  if registry.family_of(model.config).inputs == "source_target":
    src = rng.integers(2, vocab, (b, 9)).astype(np.int32)
    src[2, 6:] = 0  # padding
    return dict(src_ids=src, tgt_in_ids=ids, tgt_out_ids=targets, weights=weights)
  return dict(input_ids=ids, targets=targets, weights=weights)


def _random_params(model, args, kwargs, seed=2):
  """Random parameters of the model's tree, drawn on the host (no eager init): norm scales
  1 + N(0, 0.05), the rest N(0, 0.1), so no bias is zero (a zero final-logits bias would test
  nothing)."""
  init = functools.partial(model.init, **kwargs)
  shapes = nn.unbox(jax.eval_shape(init, jax.random.key(0), *args)["params"])
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    scale = jax.tree_util.keystr(path).endswith("['scale']")
    return jnp.asarray(rng.normal(float(scale), 0.05 if scale else 0.1, leaf.shape), leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def _loss_fn(task, model, batch):
  def loss_fn(params):
    outputs = task.apply(model.apply, params, batch, rng=None, train=False)
    stats = task.stats(outputs, batch)
    return sum(stats[t][0] / stats[t][1] for t in task.loss_terms), (stats, outputs)
  return loss_fn


@functools.cache
def _case(name):
  make, task_name, eps = CASES[name]
  model = make()
  batch = _batch(name, model)
  args, kwargs = registry.task(task_name).inputs(batch)
  params = _random_params(model, args, kwargs)
  return name, model, registry.task(task_name, eps), batch, params


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
  return _case(request.param)


def test_tasks_give_the_same_stats_and_gradients_fused_or_not(case):
  name, model, task, batch, params = case
  assert task.fused_loss and task.projection_loss
  plain_task = dataclasses.replace(task, fused_loss=False)
  both = jax.jit(lambda p: tuple(  # one compile for the two losses
      jax.value_and_grad(_loss_fn(t, model, batch), has_aux=True)(p) for t in (task, plain_task)))
  ((loss, (stats, out)), grads), ((want, (want_stats, want_out)), want_grads) = both(params)
  if isinstance(out, dict):  # BERT: the MLM head's record in place of its logits
    out, want_out = out["mlm_logits"], want_out["mlm_logits"]
  assert isinstance(out, fce.Projection) and out.shape == want_out.shape
  bf16 = model.config.dtype == jnp.bfloat16
  rtol, atol = (2e-3, 2e-4) if bf16 else (1e-5, 1e-6)
  np.testing.assert_allclose(out.logits(), want_out, rtol=rtol, atol=atol)
  np.testing.assert_allclose(loss, want, rtol=rtol)
  assert set(stats) == set(want_stats)
  for k in stats:
    np.testing.assert_allclose(stats[k], want_stats[k], rtol=rtol, err_msg=k)
  flat, want_flat = (jax.tree_util.tree_leaves_with_path(g) for g in (grads, want_grads))
  for (path, g), (_, w) in zip(flat, want_flat, strict=True):
    bound = atol + rtol * 10 * float(jnp.max(jnp.abs(w)))
    np.testing.assert_allclose(g, w, atol=bound, err_msg=f"{name} {jax.tree_util.keystr(path)}")


@pytest.mark.parametrize("name", ["llama_untied", "bert_gathered"])
def test_eval_step_reads_the_projection_too(name):
  _, model, task, batch, params = _case(name)
  state = type("S", (), dict(apply_fn=model.apply, params=params))
  stats, _ = steps.eval_step(state, batch, task=task)
  want, _ = steps.eval_step(state, batch, task=dataclasses.replace(task, fused_loss=False))
  for k in stats:
    np.testing.assert_allclose(stats[k], want[k], rtol=2e-3, err_msg=k)


def test_run_config_switch_defaults_on():
  assert config_lib.base_config("lm", "gpt2-small").train.fused_loss is True
  assert registry.task("lm").fused_loss is True
  assert not registry.task("classification").projection_loss


def test_run_config_switch_reaches_the_loop(tmp_path):
  """``config.train.fused_loss`` picks the loss of ``train.py`` runs; both train alike."""
  import importlib.util  # noqa: PLC0415
  import pathlib  # noqa: PLC0415

  from zoo.training import loop  # noqa: PLC0415

  path = pathlib.Path(__file__).parents[1] / "configs" / "gpt.py"
  spec = importlib.util.spec_from_file_location("zoo_gpt_config_fused", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  losses_by = {}
  for fused in (True, False):
    config = module.get_config("smoke")
    config.model.update(num_layers=1)  # the smoke model, one layer: the switch is the head's
    config.train.update(num_steps=2, log_every=1, checkpoint_every=100, plot=False,
                        progress_bar=False, fused_loss=fused)
    config.eval.every = -1
    run = loop.build_run(config, str(tmp_path / f"run-{fused}"), devices=jax.devices()[:1])
    assert run.task.fused_loss is fused
    losses_by[fused] = run.run().losses
  assert losses_by[True].keys() == losses_by[False].keys() == {1, 2}
  for step in (1, 2):  # step 2's loss is after an update made with each loss's gradient
    np.testing.assert_allclose(losses_by[True][step], losses_by[False][step], rtol=1e-4)


# ----------------------------------------------------------------------------------------------
# Sharded over 8 simulated CPU devices (tests/conftest.py sets XLA_FLAGS before jax loads).


def test_sharded_vocabulary_and_batch_equal_unsharded():
  """Batch over data x fsdp, D over fsdp, V over tensor (2 x 2 x 2): values and gradients."""
  assert jax.device_count() >= 8
  mesh = mesh_lib.make_mesh(dict(data=2, fsdp=2, tensor=2), jax.devices()[:8])
  k = jax.random.split(jax.random.key(3), 4)
  hidden = jax.random.normal(k[0], (4, 6, D))
  kernel = 0.5 * jax.random.normal(k[1], (D, 64))
  bias = jax.random.normal(k[2], (64,))
  labels = jax.random.randint(k[3], (4, 6), 0, 64).at[1, 2].set(IGNORE_INDEX)
  weights = losses.label_weights(labels)
  # Both layouts in one program: the kernel [D, V] and the tied table [V, D].
  fns = [_both(labels, weights, eps=0.1, transposed=t, block=4)[0] for t in (False, True)]

  def run(h, w, w_t, b):
    return [_value_and_grads_traced(f, h, x, b) for f, x in zip(fns, (w, w_t), strict=True)]

  run = jax.jit(run)
  want = run(hidden, kernel, kernel.T, bias)
  placed = (
      jax.device_put(hidden, NamedSharding(mesh, PartitionSpec(("data", "fsdp")))),
      jax.device_put(kernel, NamedSharding(mesh, PartitionSpec("fsdp", "tensor"))),
      jax.device_put(kernel.T, NamedSharding(mesh, PartitionSpec("tensor", "fsdp"))),
      jax.device_put(bias, NamedSharding(mesh, PartitionSpec("tensor"))),
  )
  got = run(*placed)
  for transposed in (0, 1):
    assert len(got[transposed][1][1].sharding.device_set) == 8
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def _one_step(model_cfg, task, mesh_shape, batch):
  """Metrics and ``params - gradient`` (plain SGD, lr 1) of one step of the loop's program."""
  mesh = mesh_lib.make_mesh(mesh_shape, jax.devices()[: int(np.prod(list(mesh_shape.values())))])
  rules = mesh_lib.rules_from_config(None)
  optim = config_lib.base_config("lm", "gpt2-small").optim
  optim.update(name="sgd", lr=1.0, schedule="constant", warmup_steps=0, weight_decay=0.0,
               clip_norm=0.0, momentum=0.0)
  prog = steps.program_for(model_cfg, task, optim, num_steps=4, mesh=mesh, rules=rules)
  rng = jax.random.PRNGKey(0)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    state = steps.init_state(prog, mesh, rules, rng)
    state, metrics = prog.step(state, mesh_lib.place_batch(batch, mesh), rng)
  return jax.device_get(metrics), jax.device_get(state.params)


def test_sharded_train_step_equals_unsharded_and_unfused():
  """The loop's own train step on data x fsdp x tensor = (2, 2, 2), untied Llama-style head."""
  cfg = GPTConfig(**GPT_TINY, **LLAMA)
  batch = _batch("llama", GPT(cfg), seed=4)
  batch = {k: np.concatenate([v, v[::-1]]) for k, v in batch.items()}  # 8 rows, 8 devices
  task = registry.task("lm", 0.1)
  mesh8 = dict(data=2, fsdp=2, tensor=2)
  runs = {
      "fused_8": _one_step(cfg, task, mesh8, batch),
      "fused_1": _one_step(cfg, task, dict(data=1, fsdp=1, tensor=1), batch),
      "plain_8": _one_step(cfg, dataclasses.replace(task, fused_loss=False), mesh8, batch),
  }
  ref_metrics, ref_params = runs["fused_8"]
  for name, (metrics, params) in runs.items():
    for k in ("loss", "nll", "accuracy", "grad_norm"):
      np.testing.assert_allclose(metrics[k], ref_metrics[k], rtol=1e-5, err_msg=f"{name} {k}")
    for g, w in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params), strict=True):
      np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6, err_msg=name)


# ----------------------------------------------------------------------------------------------
# Compiled memory of a GPT-2-shaped train step (shapes only: nothing is run).


def step_temp_bytes(model_cfg, fused: bool, batch_size: int, length: int) -> int:
  """``temp_size_in_bytes`` of the loop's compiled train step (one device), from shapes."""
  task = dataclasses.replace(registry.task("lm"), fused_loss=fused)
  mesh = mesh_lib.make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
  rules = mesh_lib.rules_from_config(None)
  optim = config_lib.base_config("lm", "gpt2-small").optim
  prog = steps.program_for(model_cfg, task, optim, num_steps=10, mesh=mesh, rules=rules)
  batch_sh = mesh_lib.batch_sharding(mesh)
  batch = {k: jax.ShapeDtypeStruct((batch_size, length), dtype, sharding=batch_sh)
           for k, dtype in (("input_ids", jnp.int32), ("targets", jnp.int32),
                            ("weights", jnp.float32))}
  rng = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=mesh_lib.replicated(mesh))
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    compiled = prog.step.lower(prog.abstract, batch, rng).compile()
  return int(compiled.memory_analysis().temp_size_in_bytes)


def test_gpt2_train_step_needs_less_temporary_memory_fused():
  # GPT-2 small's V = 50257, D = 768 and length, one scanned layer (the head's memory does not
  # depend on depth; a smaller program to compile).
  cfg = GPTConfig(scan_layers=True, num_layers=1)
  fused = step_temp_bytes(cfg, True, 8, 1024)
  plain = step_temp_bytes(cfg, False, 8, 1024)
  logits_bytes = 8 * 1024 * cfg.vocab_size * 4
  assert fused < plain
  assert plain - fused > logits_bytes  # at least the logits or their gradient is gone
