"""Tests of the encoder-decoder Transformer: properties on tiny configs."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

import zoo
from zoo.layers.stack import scan_params, unscan_params
from zoo.models.transformer import Transformer, TransformerConfig, dummy_inputs, init_cache

# One encoder and one decoder layer: every property below is per layer or about the wiring
# around the stacks, and compiling is what costs time on CPU. The jitted helpers take the
# config as a static argument, so each (function, config) pair compiles once for the file;
# eager calls share their per-op compilations at the SRC/TGT shapes.
TINY = TransformerConfig(
    vocab_size=40,
    d_model=16,
    num_heads=2,
    num_encoder_layers=1,
    num_decoder_layers=1,
    mlp_dim=32,
    max_len=16,
    dropout_rate=0.0,
)
SRC = np.array([[5, 6, 7, 8, 9, 0, 0], [11, 12, 13, 0, 0, 0, 0]], np.int32)  # right-padded
TGT = np.array([[1, 21, 22, 23, 24], [1, 31, 32, 33, 0]], np.int32)
TGT_OUT = np.array([[21, 22, 23, 24, 2], [31, 32, 33, 2, 0]], np.int32)


@functools.lru_cache
def _params(cfg: TransformerConfig = TINY):
  model = Transformer(cfg)
  # Eager: the per-op compilations are shared with every other eager call at these shapes.
  return nn.unbox(model.init(jax.random.PRNGKey(0), SRC, TGT)["params"])


def _init(cfg=TINY):
  return Transformer(cfg), _params(cfg)


@functools.partial(jax.jit, static_argnums=0)
def _forward(cfg, params, src, tgt):
  return Transformer(cfg).apply({"params": params}, src, tgt)


def _loss(cfg, params, delta, src, tgt_in, tgt_out, weights):
  """Weighted cross-entropy; ``delta`` [B, T, D] is added to the target token embeddings.

  The gradient with respect to ``delta`` is the gradient with respect to the decoder's input
  embeddings (causality test); with ``delta = 0`` this is the training loss.
  """
  model = Transformer(cfg)
  encoded = model.apply({"params": params}, src, method="encode")
  embeds = jnp.take(params["shared"]["embedding"], tgt_in, axis=0) + delta
  logits = model.apply(
      {"params": params}, tgt_in, encoded, src, tgt_embeds=embeds, method="decode"
  )
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, tgt_out)
  return (ce * weights).sum() / weights.sum()


_loss_and_grads = jax.jit(jax.value_and_grad(_loss, argnums=(1, 2)), static_argnums=0)
ZERO_DELTA = np.zeros((*TGT.shape, TINY.d_model), np.float32)
ALL = np.ones(TGT.shape, np.float32)


@functools.partial(jax.jit, static_argnums=0)
def _decode_step(cfg, params, cache, tok, encoded, src):
  return Transformer(cfg).apply(
      {"params": params, "cache": cache}, tok, encoded, src, decode=True, method="decode",
      mutable=["cache"],
  )


def _assert_trees_close(a, b, atol=1e-5, rtol=1e-5):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=atol, rtol=rtol), a, b)


# ----------------------------------------------------------------------------------------------
# Structure and size.


def _expected_count(cfg: TransformerConfig) -> int:
  """Parameter count from the architecture, written out by hand."""
  d, f, v = cfg.d_model, cfg.mlp_dim, cfg.vocab_size
  attn = 4 * d * d + 4 * d  # q, k, v, out kernels and biases
  mlp = 2 * d * f + f + d
  norm = 2 * d
  enc = cfg.num_encoder_layers * (attn + mlp + 2 * norm)
  dec = cfg.num_decoder_layers * (2 * attn + mlp + 3 * norm)
  emb = v * d * (1 if cfg.share_embeddings else 2)
  extra = 0
  if cfg.position == "learned":
    extra += 2 * cfg.max_len * d
  if cfg.norm_position == "pre":
    extra += 2 * norm
  if not cfg.tie_output:
    extra += d * v
  if cfg.final_logits_bias:
    extra += v
  return enc + dec + emb + extra


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        dict(share_embeddings=False, tie_output=False, final_logits_bias=True),
        dict(position="learned", norm_position="pre"),
    ],
)
def test_param_count_matches_formula(overrides):
  cfg = dataclasses.replace(TINY, **overrides)
  assert zoo.param_count(Transformer(cfg)) == _expected_count(cfg)


def test_base_preset_count_is_the_architecture():
  # 65M in Table 3 is not reachable with a 37000-token shared table (44.1M + 512 * 37000 =
  # 63.1M); the count must be what the architecture gives, not tuned to the paper.
  cfg = zoo.get_config("transformer-base")
  assert zoo.param_count("transformer-base") == _expected_count(cfg) == 63_082_496


def test_param_tree_names():
  cfg = dataclasses.replace(
      TINY, share_embeddings=False, tie_output=False, final_logits_bias=True,
      position="learned", norm_position="pre", embedding_norm=True,
  )
  params = _shapes(cfg)
  assert set(params) == {
      "encoder_embed", "decoder_embed", "encoder_positions", "decoder_positions",
      "encoder_embedding_norm", "decoder_embedding_norm", "encoder", "decoder",
      "encoder_norm", "decoder_norm", "lm_head", "final_logits_bias",
  }
  assert set(params["decoder"]["layers_0"]) == {
      "attn", "attn_norm", "cross_attn", "cross_norm", "mlp", "mlp_norm"
  }
  assert set(params["encoder"]["layers_0"]) == {"attn", "attn_norm", "mlp", "mlp_norm"}
  assert set(_shapes(TINY)) == {"shared", "encoder", "decoder"}


def _shapes(cfg):
  args, kwargs = dummy_inputs(cfg)
  init = lambda: Transformer(cfg).init(jax.random.PRNGKey(0), *args, **kwargs)
  return nn.unbox(jax.eval_shape(init)["params"])


def test_tied_output_equals_untied_head_holding_the_table():
  params = _params()
  tied = Transformer(TINY).apply({"params": params}, SRC, TGT)
  bias = jnp.linspace(-1.0, 1.0, TINY.vocab_size)
  untied = {
      **params,
      "lm_head": {"kernel": params["shared"]["embedding"].T},
      "final_logits_bias": bias,
  }
  cfg = dataclasses.replace(TINY, tie_output=False, final_logits_bias=True)
  got = Transformer(cfg).apply({"params": untied}, SRC, TGT)
  np.testing.assert_allclose(got, tied + bias, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# Masks: causality and padding.


def test_decoder_causal_by_gradient():
  params = _params()
  b, t = TGT.shape
  for row in range(b):
    for pos in range(t):
      weights = np.zeros(TGT.shape, np.float32)
      weights[row, pos] = 1.0  # the loss of one target position
      _, (_, g_delta) = _loss_and_grads(TINY, params, ZERO_DELTA, SRC, TGT, TGT_OUT, weights)
      influence = np.abs(np.asarray(g_delta)).sum(-1)  # [B, T]
      assert np.all(influence[row, pos + 1 :] == 0.0), (row, pos, influence)
      assert np.all(influence[row, : pos + 1] > 0.0), (row, pos, influence)
      assert np.all(influence[1 - row] == 0.0), (row, pos, influence)  # rows are independent


def test_encoder_and_decoder_ignore_source_padding():
  model, params = _init()
  v = {"params": params}
  real = SRC != 0
  enc = model.apply(v, SRC, method="encode")
  logits = model.apply(v, TGT, enc, SRC, method="decode")

  # Less padding: row 0 has none left, row 1 keeps two pads.
  short = SRC[:, :5]
  enc_short = model.apply(v, short, method="encode")
  np.testing.assert_allclose(
      np.asarray(enc_short)[real[:, :5]], np.asarray(enc)[real], atol=1e-5, rtol=1e-5
  )
  np.testing.assert_allclose(
      model.apply(v, TGT, enc_short, short, method="decode"), logits, atol=1e-5, rtol=1e-5
  )

  # Different content behind the mask: random vectors instead of the pad embedding.
  embeds = jnp.take(params["shared"]["embedding"], SRC, axis=0)
  noise = 5.0 * np.random.default_rng(3).normal(size=embeds.shape).astype(np.float32)
  embeds_noisy = jnp.where(real[..., None], embeds, noise)
  np.testing.assert_allclose(
      model.apply(v, SRC, src_embeds=embeds, method="encode"), enc, atol=1e-6
  )
  enc_noisy = model.apply(v, SRC, src_embeds=embeds_noisy, method="encode")
  np.testing.assert_allclose(np.asarray(enc_noisy)[real], np.asarray(enc)[real], atol=1e-5)
  np.testing.assert_allclose(
      model.apply(v, TGT, enc_noisy, SRC, method="decode"), logits, atol=1e-5, rtol=1e-5
  )

  # The same change at real positions does reach the outputs (the test can fail).
  changed = model.apply(v, SRC, src_embeds=embeds + noise, method="encode")
  assert np.abs(np.asarray(changed)[real] - np.asarray(enc)[real]).max() > 1e-2


def test_packed_rows_equal_separate_rows():
  model, params = _init()
  v = {"params": params}
  # Row 0 packs source [5 6 7] with [8 9] and target [1 21 22] with [1 31].
  src_seg = np.array([[1, 1, 1, 2, 2, 0, 0], [1, 1, 1, 0, 0, 0, 0]], np.int32)
  src_pos = np.array([[0, 1, 2, 0, 1, 0, 0], np.arange(7)], np.int32)
  tgt = np.array([[1, 21, 22, 1, 31], TGT[1]], np.int32)
  tgt_seg = np.array([[1, 1, 1, 2, 2], [1, 1, 1, 1, 1]], np.int32)
  tgt_pos = np.array([[0, 1, 2, 0, 1], np.arange(5)], np.int32)
  enc = model.apply(v, SRC, src_positions=src_pos, src_segment_ids=src_seg, method="encode")
  logits = model.apply(v, tgt, enc, SRC, positions=tgt_pos, tgt_segment_ids=tgt_seg,
                       src_segment_ids=src_seg, method="decode")

  sep_src = np.array([[5, 6, 7, 0, 0, 0, 0], [8, 9, 0, 0, 0, 0, 0]], np.int32)
  sep_tgt = np.array([[1, 21, 22, 0, 0], [1, 31, 0, 0, 0]], np.int32)
  sep_enc = model.apply(v, sep_src, method="encode")
  sep_logits = model.apply(v, sep_tgt, sep_enc, sep_src, method="decode")
  np.testing.assert_allclose(enc[0, :3], sep_enc[0, :3], atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(enc[0, 3:5], sep_enc[1, :2], atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(logits[0, :3], sep_logits[0, :3], atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(logits[0, 3:], sep_logits[1, :2], atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# Transformations: jit, scan, remat.


def test_jit_equals_no_jit():
  params = _params()
  eager = Transformer(TINY).apply({"params": params}, SRC, TGT)
  np.testing.assert_allclose(_forward(TINY, params, SRC, TGT), eager, atol=1e-5, rtol=1e-5)


def test_dropout_traces_in_training_mode():
  # Shapes only: compiling dropout's random bits is slow on CPU (and jit == no-jit is above).
  cfg = dataclasses.replace(TINY, dropout_rate=0.2, attention_dropout_rate=0.1,
                            mlp_dropout_rate=0.1)
  model = Transformer(cfg)
  logits = jax.eval_shape(
      lambda p: model.apply({"params": p}, SRC, TGT, deterministic=False,
                            rngs={"dropout": jax.random.PRNGKey(0)}),
      _shapes(cfg),
  )
  assert logits.shape == (2, 5, 40) and logits.dtype == jnp.float32
  with pytest.raises(Exception, match="dropout"):  # flax: no "dropout" PRNG key given
    jax.eval_shape(
        lambda p: model.apply({"params": p}, SRC, TGT, deterministic=False), _shapes(cfg)
    )


def _two_layers(params):
  """TINY's params with a second, different layer in each stack."""
  rng = np.random.default_rng(0)
  second = lambda tree, k: jax.tree.map(  # noqa: E731
      lambda x: x + 0.1 * rng.normal(size=x.shape).astype(np.float32), tree
  )
  out = dict(params)
  for k, name in enumerate(("encoder", "decoder")):
    out[name] = {
        "layers_0": params[name]["layers_0"], "layers_1": second(params[name]["layers_0"], k)
    }
  return out


def test_scan_layers_equals_loop():
  cfg = dataclasses.replace(TINY, num_encoder_layers=2, num_decoder_layers=2)
  looped = _two_layers(_params())
  scanned = scan_params(looped)
  scan_cfg = dataclasses.replace(cfg, scan_layers=True)
  assert jax.tree.map(jnp.shape, _shapes(scan_cfg)) == jax.tree.map(jnp.shape, scanned)
  assert scanned["decoder"]["layers"]["mlp"]["wi"]["kernel"].shape == (2, 16, 32)
  loop_logits = Transformer(cfg).apply({"params": looped}, SRC, TGT)
  np.testing.assert_allclose(
      _forward(scan_cfg, scanned, SRC, TGT), loop_logits,
      atol=1e-5, rtol=1e-5,
  )
  # Both layers matter (a scan that reused layer 0 would fail above).
  one = Transformer(TINY).apply({"params": _params()}, SRC, TGT)
  assert np.abs(np.asarray(one) - np.asarray(loop_logits)).max() > 1e-3
  _assert_trees_close(unscan_params(scanned), looped, atol=0, rtol=0)


def test_remat_equals_plain():
  params = _params()
  loss, grads = _loss_and_grads(TINY, params, ZERO_DELTA, SRC, TGT, TGT_OUT, ALL)
  remat = dataclasses.replace(TINY, remat_policy="full")
  r_loss, r_grads = _loss_and_grads(remat, params, ZERO_DELTA, SRC, TGT, TGT_OUT, ALL)
  np.testing.assert_allclose(r_loss, loss, rtol=1e-6)
  _assert_trees_close(r_grads, grads)
  assert np.abs(
      np.asarray(grads[0]["decoder"]["layers_0"]["cross_attn"]["key"]["kernel"])
  ).max() > 0
  # The loss helper (embeddings passed in) is the model's own forward.
  logits = Transformer(TINY).apply({"params": params}, SRC, TGT)
  want = optax.softmax_cross_entropy_with_integer_labels(logits, TGT_OUT).mean()
  np.testing.assert_allclose(loss, want, rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# Cached decoding.


@pytest.mark.parametrize(
    "overrides, prompt",
    [({}, 2), (dict(position="learned", norm_position="pre"), 1), (dict(position="rope"), 1)],
)
def test_cached_decoding_equals_full_forward(overrides, prompt):
  cfg = dataclasses.replace(TINY, **overrides)
  # RoPE adds no parameters: TINY's serve (and skip an init).
  model, params = Transformer(cfg), _params(TINY if cfg.position == "rope" else cfg)
  encoded = model.apply({"params": params}, SRC, method="encode")
  full = model.apply({"params": params}, TGT, encoded, SRC, method="decode")
  b, t = TGT.shape
  cache = init_cache(cfg, b, 8)
  # The same cache as allocating it through model.init with decode=True.
  via_init = jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), SRC, jnp.zeros((b, 8), jnp.int32), decode=True)
  )
  assert jax.tree.map(jnp.shape, via_init["cache"]) == jax.tree.map(jnp.shape, cache)
  assert cache["decoder"]["layers_0"]["attn"]["cached_key"].shape[:2] == (b, 8)

  # A prompt, then one token at a time; positions continue from the cache counter.
  out, mut = _decode_step(cfg, params, cache, TGT[:, :prompt], encoded, SRC)
  pieces = [out]
  for i in range(prompt, t):
    out, mut = _decode_step(cfg, params, mut["cache"], TGT[:, i : i + 1], encoded, SRC)
    pieces.append(out)
  assert int(mut["cache"]["position"]) == t
  np.testing.assert_allclose(jnp.concatenate(pieces, axis=1), full, atol=1e-5, rtol=1e-5)


def test_cache_rows_reorder_like_the_batch():
  # Beam search gathers cache rows: decoding a permuted batch with a permuted cache must give
  # permuted logits.
  model, params = _init()
  encoded = model.apply({"params": params}, SRC, method="encode")
  full = model.apply({"params": params}, TGT, encoded, SRC, method="decode")
  _, mut = _decode_step(TINY, params, init_cache(TINY, 2, 8), TGT[:, :2], encoded, SRC)
  perm = np.array([1, 0])
  cache = jax.tree.map(lambda x: x[perm] if x.ndim else x, mut["cache"])
  out, _ = _decode_step(TINY, params, cache, TGT[perm, 2:3], encoded[perm], SRC[perm])
  np.testing.assert_allclose(out[:, 0], full[perm, 2], atol=1e-5, rtol=1e-5)
  # Without the reordering the rows would disagree (the test can fail).
  wrong, _ = _decode_step(TINY, params, mut["cache"], TGT[perm, 2:3], encoded[perm], SRC[perm])
  assert np.abs(np.asarray(wrong[:, 0]) - np.asarray(full[perm, 2])).max() > 1e-3


# ----------------------------------------------------------------------------------------------
# Training and variants.


def test_overfits_one_batch():
  params = _params()
  opt = optax.adam(1e-2)

  @jax.jit
  def update(grads, opt_state, params):
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  opt_state = opt.init(params)
  losses = []
  for _ in range(100):
    loss, (grads, _) = _loss_and_grads(TINY, params, ZERO_DELTA, SRC, TGT, TGT_OUT, ALL)
    params, opt_state = update(grads, opt_state, params)
    losses.append(float(loss))
  assert losses[0] > 3.0  # about ln(40)
  assert losses[-1] < 0.05 * losses[0], losses[::10]


@pytest.mark.parametrize(
    "overrides",
    [
        dict(position="rope", norm="rmsnorm", activation="silu", num_kv_heads=1),
        dict(share_embeddings=False, src_vocab_size=50, tgt_vocab_size=45, final_logits_bias=True,
             sinusoid_layout="split", embedding_norm=True),
        dict(position="learned", position_offset=2, scale_embeddings=False, use_bias=False),
        dict(dtype=jnp.bfloat16, norm_position="pre", scan_layers=True, remat_policy="dots"),
    ],
)
def test_variants_trace(overrides):
  # Shapes and dtypes only (numbers of these paths are checked above): logits stay float32.
  cfg = dataclasses.replace(TINY, **overrides)
  model = Transformer(cfg)
  params = _shapes(cfg)
  logits = jax.eval_shape(lambda p: model.apply({"params": p}, SRC, TGT), params)
  assert logits.shape == (2, 5, cfg.tgt_vocab) and logits.dtype == jnp.float32
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))


# ----------------------------------------------------------------------------------------------
# Bad input.


def test_bad_inputs_raise_before_tracing():
  cfg = dataclasses.replace(
      TINY, position="learned", share_embeddings=False, src_vocab_size=40, tgt_vocab_size=34
  )
  model = Transformer(cfg)
  # Checks run before any computation, so placeholder parameters are enough.
  v = {"params": jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), _shapes(cfg))}
  with pytest.raises(ValueError, match=r"src_ids holds ids in \[0, 40\].*40 entries"):
    model.apply(v, np.where(SRC == 5, 40, SRC), TGT)
  with pytest.raises(ValueError, match=r"tgt_in_ids holds ids in \[0, 35\].*34 entries"):
    model.apply(v, SRC, np.where(TGT == 31, 35, TGT))
  with pytest.raises(ValueError, match="max_len is 16"):
    model.apply(v, np.ones((1, 17), np.int32), TGT[:1])
  with pytest.raises(ValueError, match="max_len is 16"):
    model.apply(v, SRC, np.ones((2, 17), np.int32))
  with pytest.raises(ValueError, match="rank 2"):
    model.apply(v, SRC[0], TGT)
  with pytest.raises(ValueError, match="rank 2"):
    model.apply(v, SRC, TGT[None])
  with pytest.raises(ValueError, match="encoded"):
    model.apply(v, TGT, np.zeros((2, 3, 16)), SRC, method="decode")
  with pytest.raises(ValueError, match="src_positions must be"):
    model.apply(v, SRC, src_positions=np.zeros((2, 3), np.int32), method="encode")
  with pytest.raises(ValueError, match="reach index 16"):
    model.apply(v, SRC, src_positions=np.full((2, 7), 16, np.int32), method="encode")
  # The same checks, registered with the family, need no model or parameters: the
  # arguments of __call__, encode or decode (those with "encoded"), by name.
  validate = zoo.registry.get("transformer").validate
  validate(cfg, {"src_ids": SRC, "tgt_in_ids": TGT})
  with pytest.raises(ValueError, match=r"tgt_in_ids holds ids in \[0, 35\].*34 entries"):
    validate(cfg, {"src_ids": SRC, "tgt_in_ids": np.where(TGT == 31, 35, TGT)})
  encoded = np.zeros((*SRC.shape, cfg.d_model), np.float32)
  with pytest.raises(ValueError, match="src_segment_ids, or neither"):
    validate(cfg, {"tgt_ids": TGT, "encoded": encoded, "src_ids": SRC, "src_segment_ids": SRC})


def test_bad_configs_raise():
  with pytest.raises(ValueError, match="share_embeddings"):
    TransformerConfig(src_vocab_size=100, tgt_vocab_size=200)
  with pytest.raises(ValueError, match="not divisible by num_heads"):
    TransformerConfig(d_model=30, num_heads=4)
  with pytest.raises(ValueError, match="position must be"):
    TransformerConfig(position="alibi")
  with pytest.raises(ValueError, match="norm_position"):
    TransformerConfig(norm_position="sandwich")
  with pytest.raises(ValueError, match="remat_policy"):
    TransformerConfig(remat_policy="some")
