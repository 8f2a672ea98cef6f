"""T5 against transformers' T5 built locally with random weights, and T5's properties.

References: ``T5ForConditionalGeneration`` (1.0: ReLU, tied and scaled output; v1.1: gated-GELU,
untied head) and ``T5EncoderModel`` with the weights copied by a small key map written here,
``T5Attention._relative_position_bucket``, transformers' beam search, the released checkpoints'
parameter counts. Properties: causality by gradient, source padding invariance, cached decoding
== full forward, scan == loop, remat == plain, per-layer tables equal to one shared table.
"""

import dataclasses
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from flax import traverse_util
from reference import randomize

import zoo
from zoo.generate import translate_ids
from zoo.layers.stack import scan_params
from zoo.models import t5_config
from zoo.models.t5 import T5, T5Config, init_cache, position_buckets, relative_position_bucket

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

ATOL = 1e-4
# d_kv * heads (12) differs from d_model (16); 8 buckets reaching 10 positions, and sources of
# 14 tokens, so exact, log-spaced and capped buckets all occur in both stacks.
TINY = T5Config(
    vocab_size=96, d_model=16, num_heads=2, head_dim=6, mlp_dim=32, num_encoder_layers=2,
    num_decoder_layers=2, relative_attention_num_buckets=8, relative_attention_max_distance=10,
    dropout_rate=0.0,
)
LAYOUTS = {
    "1.0": dict(activation="relu", gated_mlp=False, tie_word_embeddings=True),
    "v1.1": dict(activation="gelu_tanh", gated_mlp=True, tie_word_embeddings=False),
}
_rng = np.random.default_rng(0)
SRC = _rng.integers(2, 96, size=(2, 14)).astype(np.int32)
SRC[1, 9:] = 0  # right padding
TGT = np.concatenate([np.zeros((2, 1), np.int32), _rng.integers(2, 96, size=(2, 8))], axis=1)
TGT = TGT.astype(np.int32)


def _config(layout="1.0", **overrides):
  return dataclasses.replace(TINY, **{**LAYOUTS[layout], **overrides})


def _max_diff(a, b):
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


# ----------------------------------------------------------------------------------------------
# The Hugging Face reference and a local key map (the converter proper is zoo.pretrained.t5).


def _hf_config(cfg: T5Config):
  return transformers.T5Config(
      vocab_size=cfg.vocab_size, d_model=cfg.d_model, d_kv=cfg.head_dim, d_ff=cfg.mlp_dim,
      num_layers=cfg.num_encoder_layers, num_decoder_layers=cfg.num_decoder_layers,
      num_heads=cfg.num_heads, relative_attention_num_buckets=cfg.relative_attention_num_buckets,
      relative_attention_max_distance=cfg.relative_attention_max_distance, dropout_rate=0.0,
      feed_forward_proj=t5_config.feed_forward_proj(cfg),
      tie_word_embeddings=cfg.tie_word_embeddings, pad_token_id=0, eos_token_id=1,
      decoder_start_token_id=0, attn_implementation="eager",
  )


@functools.cache
def _hf(layout: str):
  """``(T5ForConditionalGeneration, zoo config)`` with random weights."""
  cfg = _config(layout)
  torch.manual_seed(0)
  hf = randomize(transformers.T5ForConditionalGeneration(_hf_config(cfg)))
  if not cfg.tie_word_embeddings:  # transformers 5 ties the head in memory: untie it
    g = torch.Generator().manual_seed(1)
    hf.lm_head.weight = torch.nn.Parameter(0.3 * torch.randn(hf.lm_head.weight.shape, generator=g))
    hf.config.scale_decoder_outputs = False
  return hf.eval(), cfg


def _zoo_params(sd, cfg: T5Config):
  """Hugging Face state dict -> zoo params (looped layers)."""
  sd = {k: v.detach().numpy() for k, v in sd.items()}
  d, n, h = cfg.d_model, cfg.num_heads, cfg.head_dim

  def attention(prefix):
    heads = lambda w: w.T.reshape(d, n, h)  # noqa: E731 - [N*H, D] -> [D, N, H]
    return {
        "query": {"kernel": heads(sd[prefix + "q.weight"])},
        "key": {"kernel": heads(sd[prefix + "k.weight"])},
        "value": {"kernel": heads(sd[prefix + "v.weight"])},
        "out": {"kernel": sd[prefix + "o.weight"].T.reshape(n, h, d)},
    }

  def mlp(prefix):
    out = {"wo": {"kernel": sd[prefix + "wo.weight"].T}}
    if cfg.gated_mlp:
      out["gate"] = {"kernel": sd[prefix + "wi_0.weight"].T}
      out["wi"] = {"kernel": sd[prefix + "wi_1.weight"].T}
    else:
      out["wi"] = {"kernel": sd[prefix + "wi.weight"].T}
    return out

  def stack(side, num_layers):
    layers = {}
    for i in range(num_layers):
      p = f"{side}.block.{i}.layer."
      layer = {"attn": attention(p + "0.SelfAttention."),
               "attn_norm": {"scale": sd[p + "0.layer_norm.weight"]}}
      last = 1
      if side == "decoder":
        layer["cross_attn"] = attention(p + "1.EncDecAttention.")
        layer["cross_norm"] = {"scale": sd[p + "1.layer_norm.weight"]}
        last = 2
      layer["mlp"] = mlp(f"{p}{last}.DenseReluDense.")
      layer["mlp_norm"] = {"scale": sd[f"{p}{last}.layer_norm.weight"]}
      layers[f"layers_{i}"] = layer
    bias = sd[f"{side}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
    return {side: layers, f"{side}_relpos": {"embedding": bias},
            f"{side}_norm": {"scale": sd[f"{side}.final_layer_norm.weight"]}}

  params = {"shared": {"embedding": sd["shared.weight"]}}
  params.update(stack("encoder", cfg.num_encoder_layers))
  if not cfg.encoder_only:
    params.update(stack("decoder", cfg.num_decoder_layers))
    if not cfg.tie_word_embeddings:
      params["lm_head"] = {"kernel": sd["lm_head.weight"].T}
  return jax.tree.map(jnp.asarray, params)


def _shapes(cfg):
  args = zoo.registry.get("t5").dummy_inputs(cfg)[0]
  init = lambda: T5(cfg).init(jax.random.PRNGKey(0), *args)  # noqa: E731
  return nn.unbox(jax.eval_shape(init)["params"])


@functools.cache
def _params(layout="1.0"):
  hf, cfg = _hf(layout)
  return _zoo_params(hf.state_dict(), cfg)


def _hf_logits(hf, src, tgt):
  with torch.no_grad():
    out = hf(input_ids=torch.tensor(src, dtype=torch.long),
             attention_mask=torch.tensor(src != 0, dtype=torch.long),
             decoder_input_ids=torch.tensor(tgt, dtype=torch.long))
  return out.logits.numpy()


@functools.partial(jax.jit, static_argnums=0)
def _forward(cfg, params, src, tgt):
  return T5(cfg).apply({"params": params}, src, tgt)


@functools.partial(jax.jit, static_argnums=0)
def _decode_step(cfg, params, cache, tok, encoded, src):
  return T5(cfg).apply(
      {"params": params, "cache": cache}, tok, encoded, src, decode=True, method="decode",
      mutable=["cache"],
  )


# ----------------------------------------------------------------------------------------------
# Parity with transformers.


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_logits_equal_transformers_on_a_padded_batch(layout):
  hf, cfg = _hf(layout)
  params = _params(layout)
  # The key map's tree is exactly the model's.
  assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, _shapes(cfg))
  got = _forward(cfg, params, SRC, TGT)
  want = _hf_logits(hf, SRC, TGT)
  diff = _max_diff(got, want)
  print(f"T5 {layout} logits max |zoo - transformers| = {diff:.2e}")
  assert diff <= ATOL
  assert np.abs(want).max() > 1.0  # not trivially small


def test_encoder_only_equals_t5_encoder_model():
  hf_full, cfg = _hf("1.0")
  hf = transformers.T5EncoderModel(_hf_config(cfg)).eval()
  missing, _ = hf.load_state_dict(hf_full.state_dict(), strict=False)
  assert not [k for k in missing if "embed_tokens" not in k]
  enc_cfg = dataclasses.replace(cfg, encoder_only=True)
  params = _zoo_params(hf_full.state_dict(), enc_cfg)
  assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, _shapes(enc_cfg))
  got = T5(enc_cfg).apply({"params": params}, SRC)
  with torch.no_grad():
    want = hf(input_ids=torch.tensor(SRC, dtype=torch.long),
              attention_mask=torch.tensor(SRC != 0, dtype=torch.long)).last_hidden_state.numpy()
  diff = _max_diff(got, want)  # padded positions included: keys-only mask, as transformers
  print(f"T5 encoder-only last_hidden_state max |zoo - transformers| = {diff:.2e}")
  assert got.shape == (2, 14, 16) and diff <= ATOL
  # The text-encoder capability reads the same states; attention_mask 0 is padding.
  hidden = zoo.registry.get("t5").text_encoder.hidden_states(
      T5(enc_cfg), params, {"input_ids": np.where(SRC == 0, 7, SRC), "attention_mask": SRC != 0}
  )
  np.testing.assert_allclose(np.asarray(hidden)[SRC != 0], np.asarray(got)[SRC != 0], atol=1e-5)


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("num_buckets,max_distance", [
    (32, 128), (8, 10), (4, 3), (5, 7), (16, 20), (33, 100), (64, 1000),
])
def test_buckets_equal_transformers(bidirectional, num_buckets, max_distance):
  rel = np.arange(-1500, 1501)
  want = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket(
      torch.tensor(rel), bidirectional=bidirectional, num_buckets=num_buckets,
      max_distance=max_distance,
  ).numpy()
  got = relative_position_bucket(
      rel, bidirectional=bidirectional, num_buckets=num_buckets, max_distance=max_distance
  )
  np.testing.assert_array_equal(got, want)
  assert len(np.unique(got)) > 2
  # The [T, S] matrix a stack uses, queries offset as when decoding from a cache counter.
  matrix = position_buckets(jnp.arange(3, 7), 12, 12, bidirectional=bidirectional,
                            num_buckets=num_buckets, max_distance=max_distance)
  rel_TS = np.arange(12)[None, :] - np.arange(3, 7)[:, None]
  np.testing.assert_array_equal(matrix, want[rel_TS + 1500])


def test_beam_search_equals_transformers_generate():
  hf, cfg = _hf("v1.1")
  params = _params("v1.1")
  model = T5(cfg)
  got = translate_ids(model, params, SRC, max_new_tokens=6, decoder_start_id=0, eos_id=1,
                      num_beams=3)
  with torch.no_grad():
    out = hf.generate(
        input_ids=torch.tensor(SRC, dtype=torch.long),
        attention_mask=torch.tensor(SRC != 0, dtype=torch.long), num_beams=3, max_new_tokens=6,
        do_sample=False, early_stopping=False, length_penalty=1.0, decoder_start_token_id=0,
        eos_token_id=1, pad_token_id=0,
    ).numpy()[:, 1:]
  want = np.zeros_like(got)
  want[:, : out.shape[1]] = out
  np.testing.assert_array_equal(got, want)


# ----------------------------------------------------------------------------------------------
# Decoding.


@pytest.mark.parametrize("overrides", [{}, dict(relative_bias_per_layer=True),
                                       dict(scan_layers=True)])
def test_cached_decoding_equals_full_forward(overrides):
  cfg = _config("1.0", **overrides)
  params = _params("1.0")
  if cfg.relative_bias_per_layer:
    params = _per_layer(params, cfg, spread=0.5)
  if cfg.scan_layers:
    params = scan_params(params)
  model = T5(cfg)
  encoded = model.apply({"params": params}, SRC, method="encode")
  full = model.apply({"params": params}, TGT, encoded, SRC, method="decode")
  b, t = TGT.shape
  cache = init_cache(cfg, b, 12)  # longer than T: unwritten slots stay hidden
  out, mut = _decode_step(cfg, params, cache, TGT[:, :2], encoded, SRC)  # a prompt, then 1 by 1
  pieces = [out]
  for i in range(2, t):
    out, mut = _decode_step(cfg, params, mut["cache"], TGT[:, i : i + 1], encoded, SRC)
    pieces.append(out)
  assert int(mut["cache"]["position"]) == t
  diff = _max_diff(jnp.concatenate(pieces, axis=1), full)
  assert diff <= 1e-5, diff


def test_greedy_translate_ids_equals_a_greedy_loop_over_the_full_model():
  cfg = _config("1.0")
  params = _params("1.0")
  model = T5(cfg)
  steps = 7
  got = translate_ids(model, params, SRC, max_new_tokens=steps, decoder_start_id=0, eos_id=1)
  # The full model on the whole prefix each step, no cache. One [2, steps] target (one compile):
  # by causality (tested below) position i reads only the tokens up to i.
  tgt = np.zeros((2, steps), np.int32)
  done = np.zeros(2, bool)
  want = np.zeros((2, steps), np.int32)
  for i in range(steps):
    logits = np.asarray(_forward(cfg, params, SRC, tgt))
    token = np.where(done, 0, np.argmax(logits[:, i], axis=-1))
    want[:, i] = token
    done |= token == 1
    if i + 1 < steps:
      tgt[:, i + 1] = token
  np.testing.assert_array_equal(got, want)
  assert len(np.unique(want)) > 2  # a non-trivial sequence


# ----------------------------------------------------------------------------------------------
# Masks: causality and padding.


def test_decoder_is_causal_by_gradient():
  cfg = _config("v1.1")
  params = _params("v1.1")
  model = T5(cfg)
  encoded = model.apply({"params": params}, SRC, method="encode")
  embeds = jnp.take(params["shared"]["embedding"], TGT, axis=0)
  w = jnp.asarray(np.random.default_rng(1).normal(size=cfg.vocab_size), jnp.float32)

  @jax.jit
  def influence(pos):
    def f(delta):
      logits = model.apply({"params": params}, TGT, encoded, SRC, tgt_embeds=embeds + delta,
                           method="decode")
      return jnp.sum(logits[:, pos] @ w)
    return jnp.abs(jax.grad(f)(jnp.zeros_like(embeds))).sum(-1)  # [B, T]

  for pos in range(TGT.shape[1]):
    g = np.asarray(influence(pos))
    assert np.all(g[:, pos + 1 :] == 0.0), (pos, g)
    assert np.all(g[:, : pos + 1] > 0.0), (pos, g)


def test_source_padding_changes_nothing():
  cfg = _config("1.0")
  params = _params("1.0")
  longer = np.concatenate([SRC, np.zeros((2, 3), np.int32)], axis=1)  # three more pads
  np.testing.assert_allclose(_forward(cfg, params, longer, TGT), _forward(cfg, params, SRC, TGT),
                             atol=1e-5, rtol=1e-5)
  model = T5(cfg)
  real = SRC != 0
  enc = np.asarray(model.apply({"params": params}, SRC, method="encode"))
  enc_long = np.asarray(model.apply({"params": params}, longer, method="encode"))
  np.testing.assert_allclose(enc_long[:, :14][real], enc[real], atol=1e-5, rtol=1e-5)
  # A real token does matter (the test can fail).
  changed = SRC.copy()
  changed[1, 3] += 1
  base = _forward(cfg, params, SRC, TGT)
  assert _max_diff(_forward(cfg, params, changed, TGT)[1], base[1]) > 1e-3


# ----------------------------------------------------------------------------------------------
# Layer layouts: scan, remat, per-layer tables.


def _per_layer(params, cfg, spread=0.0):
  """Shared-table params -> per-layer tables: layer i's is the shared one times
  ``1 + spread * i`` (a constant added would change no softmax)."""
  out = dict(params)
  for side in ("encoder", "decoder"):
    table = out.pop(f"{side}_relpos")["embedding"]
    out[side] = {k: {**v, "relpos": {"embedding": table * (1.0 + spread * i)}}
                 for i, (k, v) in enumerate(sorted(params[side].items()))}
  return out


def test_per_layer_tables_equal_to_the_shared_one_give_the_shared_output():
  cfg = _config("1.0")
  params = _params("1.0")
  per_cfg = dataclasses.replace(cfg, relative_bias_per_layer=True)
  per = _per_layer(params, per_cfg)
  assert jax.tree.map(jnp.shape, per) == jax.tree.map(jnp.shape, _shapes(per_cfg))
  shared = _forward(cfg, params, SRC, TGT)
  np.testing.assert_allclose(_forward(per_cfg, per, SRC, TGT), shared, atol=1e-5, rtol=1e-5)
  # Each layer reads its own table (different tables change the output).
  assert _max_diff(_forward(per_cfg, _per_layer(params, per_cfg, 0.5), SRC, TGT), shared) > 1e-3


@pytest.mark.parametrize("per_layer", [False, True])
def test_scan_layers_equals_loop(per_layer):
  cfg = _config("v1.1", relative_bias_per_layer=per_layer)
  looped = _params("v1.1")
  if per_layer:
    looped = _per_layer(looped, cfg, spread=0.5)
  scanned = scan_params(looped)
  scan_cfg = dataclasses.replace(cfg, scan_layers=True)
  assert jax.tree.map(jnp.shape, _shapes(scan_cfg)) == jax.tree.map(jnp.shape, scanned)
  assert scanned["decoder"]["layers"]["mlp"]["gate"]["kernel"].shape == (2, 16, 32)
  np.testing.assert_allclose(_forward(scan_cfg, scanned, SRC, TGT), _forward(cfg, looped, SRC, TGT),
                             atol=1e-5, rtol=1e-5)


def _loss(cfg, params):
  logits = T5(cfg).apply({"params": params}, SRC, TGT[:, :-1])
  return optax.softmax_cross_entropy_with_integer_labels(logits, TGT[:, 1:]).mean()


def test_remat_equals_plain():
  cfg = _config("1.0", relative_bias_per_layer=True)
  params = _per_layer(_params("1.0"), cfg, spread=0.5)
  remat = dataclasses.replace(cfg, remat_policy="full")
  both = jax.jit(lambda p: [jax.value_and_grad(functools.partial(_loss, c))(p)  # one compile
                            for c in (cfg, remat)])
  (loss, grads), (r_loss, r_grads) = both(params)
  np.testing.assert_allclose(r_loss, loss, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5), r_grads, grads)
  assert np.abs(np.asarray(grads["decoder"]["layers_1"]["relpos"]["embedding"])).max() > 0


# ----------------------------------------------------------------------------------------------
# Size, init, sharding.


RELEASED = {  # transformers' T5ForConditionalGeneration parameter counts (+ V*D when untied)
    "t5-small": 60_506_624, "t5-base": 222_903_552, "t5-large": 737_668_096,
    "t5-v1_1-small": 76_961_152, "t5-v1_1-base": 247_577_856, "flan-t5-base": 247_577_856,
    "mt5-small": 300_176_768,
}


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_presets_have_the_released_parameter_counts(name):
  assert zoo.param_count(name, scan_layers=True) == RELEASED[name] == zoo.PUBLISHED_PARAMS[name]


def test_tiny_count_equals_transformers():
  for layout in LAYOUTS:
    hf, cfg = _hf(layout)
    want = sum(p.numel() for p in hf.parameters())  # the untied head is its own Parameter here
    assert zoo.param_count(T5(cfg)) == want


def test_fresh_init_follows_t5():
  cfg = T5Config(vocab_size=100, d_model=128, num_heads=4, head_dim=64, mlp_dim=512,
                 num_encoder_layers=1, num_decoder_layers=1, tie_word_embeddings=False)
  args = zoo.registry.get("t5").dummy_inputs(cfg)[0]
  params = nn.unbox(jax.jit(T5(cfg).init)(jax.random.PRNGKey(0), *args)["params"])
  attn = params["encoder"]["layers_0"]["attn"]
  std = lambda x: float(np.std(np.asarray(x)))  # noqa: E731
  np.testing.assert_allclose(std(attn["key"]["kernel"]), 128**-0.5, rtol=0.03)
  # T5 folds the 1/sqrt(H) logits scale into the query's init.
  np.testing.assert_allclose(std(attn["query"]["kernel"]), (128 * 64) ** -0.5, rtol=0.03)
  np.testing.assert_allclose(std(params["encoder"]["layers_0"]["mlp"]["wo"]["kernel"]), 512**-0.5,
                             rtol=0.03)
  np.testing.assert_allclose(std(params["shared"]["embedding"]), 1.0, rtol=0.05)
  np.testing.assert_allclose(std(params["lm_head"]["kernel"]), 128**-0.5, rtol=0.03)


@pytest.mark.parametrize("overrides", [{}, dict(scan_layers=True, relative_bias_per_layer=True)])
def test_every_parameter_has_logical_axis_names(overrides):
  cfg = _config("v1.1", **overrides)
  init = lambda: T5(cfg).init(jax.random.PRNGKey(0), SRC, TGT)  # noqa: E731
  boxed = jax.eval_shape(init)["params"]
  specs = traverse_util.flatten_dict(nn.get_partition_spec(boxed), sep="/")
  shapes = traverse_util.flatten_dict(nn.unbox(boxed), sep="/")
  assert set(specs) == set(shapes)
  for path, spec in specs.items():
    assert len(spec) == len(shapes[path].shape), (path, spec)
  assert tuple(specs["shared/embedding"]) == ("vocab", "embed")
  if cfg.scan_layers:
    assert tuple(specs["encoder/layers/relpos/embedding"]) == ("layers", None, "heads")
  else:
    assert tuple(specs["encoder_relpos/embedding"]) == (None, "heads")
    assert tuple(specs["lm_head/kernel"]) == ("embed", "vocab")


# ----------------------------------------------------------------------------------------------
# Bad input.


@pytest.mark.parametrize("overrides,message", [
    (dict(relative_attention_num_buckets=1), "relative_attention_num_buckets=1 is too few: it "
                                             "must be >= 4 (T5 uses 32)"),
    (dict(relative_attention_num_buckets=3), "relative_attention_num_buckets=3 is too few"),
    (dict(relative_attention_max_distance=4), "relative_attention_max_distance=4 must exceed the "
                                              "exact-bucket range 4"),
    (dict(activation="swish"), "T5Config.activation must be one of"),
    (dict(head_dim=0), "T5Config.head_dim=0 must be >= 1"),
    (dict(eos_id=96), "T5Config.eos_id=96 must be a token id in [0, vocab_size=96)"),
    (dict(initializer_factor=0.0), "initializer_factor must be > 0"),
])
def test_bad_configs_raise(overrides, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    dataclasses.replace(TINY, **overrides)


def test_feed_forward_names():
  assert t5_config.from_feed_forward_proj("gated-gelu") == dict(activation="gelu_tanh",
                                                                gated_mlp=True)
  assert t5_config.feed_forward_proj(_config("1.0")) == "relu"
  with pytest.raises(ValueError, match=r"feed_forward_proj='gated-swish' is not a T5 feed-forward"):
    t5_config.from_feed_forward_proj("gated-swish")


def test_bad_inputs_raise_before_tracing():
  cfg = _config("1.0")
  model = T5(cfg)
  v = {"params": jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), _shapes(cfg))}
  with pytest.raises(ValueError, match=r"src_ids holds ids in \[0, 96\].*96 entries"):
    model.apply(v, np.where(SRC == SRC[0, 0], 96, SRC), TGT)
  with pytest.raises(ValueError, match=r"tgt_in_ids holds ids in \[-1, "):
    model.apply(v, SRC, np.where(TGT == 0, -1, TGT))
  with pytest.raises(ValueError, match="T5 needs tgt_in_ids"):
    model.apply(v, SRC)
  with pytest.raises(ValueError, match="encoded"):
    model.apply(v, TGT, np.zeros((2, 3, 16)), SRC, method="decode")
  enc_cfg = dataclasses.replace(cfg, encoder_only=True)
  with pytest.raises(ValueError, match=r"encoder-only \(encoder_only=True\): it has no decoder"):
    zoo.registry.get("t5").validate(enc_cfg, {"src_ids": SRC, "tgt_in_ids": TGT})


def test_train_flops_and_dropout_trace():
  cfg = _config("1.0", dropout_rate=0.1)
  flops = zoo.registry.get("t5").train_flops(cfg, _shapes(cfg), {"src_ids": SRC.shape,
                                                                 "tgt_in_ids": TGT.shape})
  assert 0 < flops["causal_half"] < flops["full"]
  logits = jax.eval_shape(
      lambda p: T5(cfg).apply({"params": p}, SRC, TGT, deterministic=False,
                              rngs={"dropout": jax.random.PRNGKey(0)}), _shapes(cfg))
  assert logits.shape == (2, 9, 96) and logits.dtype == jnp.float32
  bf16 = dataclasses.replace(cfg, dtype=jnp.bfloat16, scan_layers=True, remat_policy="dots")
  logits = jax.eval_shape(lambda p: T5(bf16).apply({"params": p}, SRC, TGT), _shapes(bf16))
  assert logits.dtype == jnp.float32  # logits stay float32 in a bfloat16 model


def test_a_fresh_model_overfits_one_batch():
  cfg = _config("v1.1", num_encoder_layers=1, num_decoder_layers=1)  # a smaller program
  args = zoo.registry.get("t5").dummy_inputs(cfg)[0]
  params = nn.unbox(T5(cfg).init(jax.random.PRNGKey(1), *args)["params"])
  opt = optax.adam(1e-2)

  @jax.jit
  def step(params, opt_state):
    loss, grads = jax.value_and_grad(functools.partial(_loss, cfg))(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  opt_state, losses = opt.init(params), []
  for _ in range(60):
    params, opt_state, loss = step(params, opt_state)
    losses.append(float(loss))
  assert 3.0 < losses[0] < 6.0  # about ln(96) = 4.6 from T5's init
  assert losses[-1] < 0.05 * losses[0], losses[::10]
