"""GPT: causality, caching, padding, packing, scan/remat equivalence, overfitting, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

import zoo
from zoo.layers.stack import scan_params
from zoo.models.gpt import GPT, GPTConfig

TINY = dict(vocab_size=61, max_len=16, d_model=32, num_heads=4, num_layers=2, mlp_dim=64)


def tiny(**kw) -> GPT:
  return GPT(GPTConfig(**{**TINY, **kw}))


def init(model, ids, seed=0):
  return nn.unbox(jax.jit(model.init)(jax.random.PRNGKey(seed), ids)["params"])


@pytest.fixture(scope="module")
def ids():
  return jax.random.randint(jax.random.PRNGKey(42), (2, 10), 1, TINY["vocab_size"])


@pytest.mark.parametrize("scan", [False, True])
def test_causal_by_gradient(ids, scan):
  # With learned positions, x_j = wte[id_j] + wpe[j] and wpe[j] is used at position j only, so
  # d logits_t / d wpe[j] is exactly the gradient with respect to the input embedding at j.
  model = tiny(scan_layers=scan)
  params = init(model, ids)
  t = 4

  def out_t(wpe):
    p = {**params, "wpe": {"embedding": wpe}}
    return model.apply({"params": p}, ids)[:, t].sum()

  grad = jax.jit(jax.grad(out_t))(params["wpe"]["embedding"])
  assert np.all(np.asarray(grad[t + 1 :]) == 0.0), "future positions influence the past"
  assert np.abs(np.asarray(grad[: t + 1])).sum(axis=-1).min() > 0.0, "past must matter"


def test_jit_equals_no_jit(ids):
  model = tiny()
  params = init(model, ids)
  eager = model.apply({"params": params}, ids)
  jitted = jax.jit(model.apply)({"params": params}, ids)
  assert eager.dtype == jnp.float32 and eager.shape == (2, 10, TINY["vocab_size"])
  np.testing.assert_allclose(eager, jitted, atol=1e-5, rtol=1e-5)


def test_scan_equals_loop_and_remat_equals_plain(ids):
  loop = tiny()
  params = init(loop, ids)
  ref = jax.jit(loop.apply)({"params": params}, ids)
  scanned = tiny(scan_layers=True)
  out = jax.jit(scanned.apply)({"params": scan_params(params)}, ids)
  np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)

  def loss(model, p):
    return jnp.mean(model.apply({"params": p}, ids) ** 2)

  g_ref = jax.jit(jax.grad(lambda p: loss(loop, p)))(params)
  for policy in ("full", "save_attn_mlp"):
    remat = tiny(remat_policy=policy)
    np.testing.assert_allclose(jax.jit(remat.apply)({"params": params}, ids), ref, atol=1e-6)
    g = jax.jit(jax.grad(lambda p, m=remat: loss(m, p)))(params)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)):
      np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(
    "kw", [dict(), dict(position="rope", num_kv_heads=2), dict(scan_layers=True, num_kv_heads=1)]
)
def test_cached_decoding_equals_full_forward(ids, kw):
  model = tiny(**kw)
  params = init(model, ids)
  full = jax.jit(model.apply)({"params": params}, ids)
  cache = model.init(jax.random.PRNGKey(0), jnp.zeros((2, 16), jnp.int32), decode=True)["cache"]
  step = jax.jit(
      lambda c, tok: model.apply(
          {"params": params, "cache": c}, tok, decode=True, mutable=["cache"]
      )
  )
  logits, mut = step(cache, ids[:, :3])  # prefill a chunk, then one token at a time
  outs = [logits]
  for t in range(3, ids.shape[1]):
    logits, mut = step(mut["cache"], ids[:, t : t + 1])
    outs.append(logits)
  np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full, atol=1e-5, rtol=1e-5)


def test_left_padding_with_mask_and_positions(ids):
  model = tiny()
  params = init(model, ids)
  apply = jax.jit(model.apply)
  row = ids[:1, :6]
  alone = apply({"params": params}, row)
  pad = 3
  padded = jnp.concatenate([jnp.full((1, pad), 7), row], axis=1)
  valid = jnp.arange(pad + 6)[None] >= pad
  positions = jnp.maximum(jnp.arange(pad + 6)[None] - pad, 0)
  out = apply({"params": params}, padded, attention_mask=valid, positions=positions)
  np.testing.assert_allclose(out[:, pad:], alone, atol=1e-5, rtol=1e-5)


def test_packed_segments_equal_separate_rows(ids):
  model = tiny()
  params = init(model, ids)
  a, b = ids[0, :4], ids[1, :6]
  packed = jnp.concatenate([a, b])[None]
  seg = jnp.array([[1] * 4 + [2] * 6])
  pos = jnp.array([list(range(4)) + list(range(6))])
  apply = jax.jit(model.apply)
  out = apply({"params": params}, packed, segment_ids=seg, positions=pos)
  np.testing.assert_allclose(out[0, :4], apply({"params": params}, a[None])[0], atol=1e-5)
  np.testing.assert_allclose(out[0, 4:], apply({"params": params}, b[None])[0], atol=1e-5)


def test_untied_head_and_sinusoidal_positions(ids):
  for kw in (dict(tie_embeddings=False), dict(position="sinusoidal")):
    model = tiny(**kw)
    params = init(model, ids)
    assert ("lm_head" in params) == (not kw.get("tie_embeddings", True))
    assert np.isfinite(jax.jit(model.apply)({"params": params}, ids)).all()


def test_tiny_gpt_overfits_one_batch():
  model = tiny()
  rng = np.random.default_rng(0)
  batch = jnp.asarray(rng.integers(1, TINY["vocab_size"], (4, 12)), jnp.int32)
  params = init(model, batch)
  opt = optax.adam(3e-3)
  opt_state = opt.init(params)

  def loss_fn(p):
    logits = model.apply({"params": p}, batch[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch[:, 1:]).mean()

  @jax.jit
  def step(p, s):
    loss, g = jax.value_and_grad(loss_fn)(p)
    updates, s = opt.update(g, s, p)
    return optax.apply_updates(p, updates), s, loss

  first = None
  for _ in range(100):
    params, opt_state, loss = step(params, opt_state)
    first = float(loss) if first is None else first
  assert first > 3.5  # ~log(61) at init
  assert float(loss) < 0.1 * first, (first, float(loss))


def test_bad_input_is_a_clear_value_error(ids):
  model = tiny()
  params = init(model, ids)
  with pytest.raises(ValueError, match=r"ids in \[.*61.*\].*61 entries"):
    model.apply({"params": params}, ids.at[0, 0].set(61))
  with pytest.raises(ValueError, match="length 17 but the model's max_len is 16"):
    model.apply({"params": params}, jnp.ones((1, 17), jnp.int32))
  with pytest.raises(ValueError, match="rank 2"):
    model.apply({"params": params}, ids[0])
  # The same checks, registered with the family, need no model or parameters.
  validate = zoo.registry.get("gpt").validate
  validate(model.config, {"input_ids": ids, "decode": False})
  with pytest.raises(ValueError, match=r"ids in \[.*61.*\].*61 entries"):
    validate(model.config, {"input_ids": ids.at[0, 0].set(61)})
  with pytest.raises(ValueError, match=r"positions must be \[B, L\]"):
    validate(model.config, {"input_ids": ids, "positions": ids[:, :3]})
  with pytest.raises(ValueError, match="not divisible by num_heads=5"):
    GPTConfig(**{**TINY, "num_heads": 5})
  with pytest.raises(ValueError, match="num_kv_heads=3"):
    GPTConfig(**{**TINY, "num_kv_heads": 3})
  with pytest.raises(ValueError, match="remat_policy"):
    GPTConfig(**{**TINY, "remat_policy": "everything"})


def test_build_and_unknown_names():
  model = zoo.build("gpt2-small", num_layers=1)
  assert model.config.d_model == 768 and model.config.num_layers == 1
  with pytest.raises(ValueError, match="Did you mean num_layers"):
    zoo.build("gpt2-small", num_layer=1)
  with pytest.raises(ValueError, match="Did you mean gpt2-small"):
    zoo.build("gpt2-smal")
  assert "gpt3-175b" in zoo.list_models("gpt")
