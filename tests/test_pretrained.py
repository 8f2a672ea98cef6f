"""zoo.pretrained against Hugging Face PyTorch models built locally with random weights.

Every architecture: build a tiny random transformers model, save it, load it with
``zoo.from_pretrained``, compare outputs on the same (padded) inputs; then ``save_pretrained``
-> transformers loads it -> same outputs, and zoo -> HF -> zoo is the identity on params.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from jax.sharding import PartitionSpec as P
from reference import randomize

import zoo
from zoo.layers.positional import interpolate_table
from zoo.pretrained import api, checkpoint_io
from zoo.pretrained import keymap as km
from zoo.pretrained.converter import converters

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

ATOL = 1e-4
D, N, F, V = 16, 4, 32, 99


def _flat(params):
  return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(params, sep="/").items()}


def _assert_same_params(a, b):
  fa, fb = _flat(a), _flat(b)
  assert sorted(fa) == sorted(fb)
  for k in fa:
    np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)


def _max_diff(a, b):
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def _run(model, params, *args, **kwargs):
  """``model.apply``, eagerly: op compilations are cached across tests that share the tiny
  shapes below (B=2, L=12, D=16), which costs less CPU than one jit compile per test."""
  return model.apply({"params": params}, *args, **kwargs)


def _hf_save(model, path, **kwargs):
  model.save_pretrained(str(path), **kwargs)
  return str(path)


# ----------------------------------------------------------------------------------------------
# GPT-2.


def _gpt2(tie=True, cls=None, seed=0):
  cfg = transformers.GPT2Config(
      vocab_size=V, n_positions=32, n_embd=D, n_layer=2, n_head=N, n_inner=F,
      bos_token_id=0, eos_token_id=0, tie_word_embeddings=tie,
  )
  return randomize((cls or transformers.GPT2LMHeadModel)(cfg), seed)


IDS = np.random.RandomState(0).randint(0, V, (2, 12))


def test_gpt2_matches_hf_and_round_trips(tmp_path):
  hf = _gpt2()
  model, params = zoo.from_pretrained(_hf_save(hf, tmp_path / "hf"))
  assert model.config.tie_embeddings and model.config.activation == "gelu_tanh"
  ref = hf(torch.tensor(IDS)).logits.detach().numpy()
  out = _run(model, params, IDS)
  assert out.dtype == jnp.float32 and _max_diff(out, ref) < ATOL

  zoo.save_pretrained(model, params, tmp_path / "zoo2hf")
  back = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "zoo2hf")).eval()
  assert type(back).__name__ == "GPT2LMHeadModel"
  assert _max_diff(back(torch.tensor(IDS)).logits.detach().numpy(), ref) < ATOL
  _, params2 = zoo.from_pretrained(tmp_path / "zoo2hf")
  _assert_same_params(params, params2)


def test_gpt2_untied_head_from_pytorch_bin_and_base_model(tmp_path):
  hf = _gpt2(tie=False, seed=1)
  path = str(tmp_path / "bin")  # the legacy torch.save layout
  hf.config.save_pretrained(path)
  torch.save(hf.state_dict(), os.path.join(path, "pytorch_model.bin"))
  model, params = zoo.from_pretrained(path)
  assert not model.config.tie_embeddings and "lm_head" in params
  ref = hf(torch.tensor(IDS)).logits.detach().numpy()
  assert _max_diff(_run(model, params, IDS), ref) < ATOL

  # GPT2Model: keys without the "transformer." prefix, no head; zoo's tied logits are the
  # hidden states against the token table.
  base = _gpt2(cls=transformers.GPT2Model, seed=2)
  model, params = zoo.from_pretrained(_hf_save(base, tmp_path / "base"))
  hidden = base(torch.tensor(IDS)).last_hidden_state
  ref = (hidden @ base.wte.weight.T).detach().numpy()
  assert _max_diff(_run(model, params, IDS), ref) < ATOL


def test_sharded_load_scan_layers_and_bfloat16(tmp_path):
  path = _hf_save(_gpt2(), tmp_path / "hf")
  model, params = zoo.from_pretrained(path)
  want = _run(model, params, IDS)

  mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"),
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)
  _, sparams = zoo.from_pretrained(path, mesh=mesh)
  q = sparams["decoder"]["layers_0"]["attn"]["query"]["kernel"]
  assert q.sharding.spec == P("fsdp", "tensor", None) and len(q.sharding.device_set) == 8
  assert q.addressable_shards[0].data.shape == (D // 2, N // 2, D // N)
  # 99 vocabulary rows do not split over tensor=2: that axis is replicated, embed still sharded.
  assert sparams["wte"]["embedding"].sharding.spec == P(None, "fsdp")
  _assert_same_params(sparams, params)

  scanned, sc_params = zoo.from_pretrained(path, scan_layers=True)
  assert sc_params["decoder"]["layers"]["attn"]["query"]["kernel"].shape == (2, D, N, D // N)
  np.testing.assert_allclose(_run(scanned, sc_params, IDS), want, atol=1e-5)
  zoo.save_pretrained(scanned, sc_params, tmp_path / "from_scan")
  _assert_same_params(zoo.from_pretrained(tmp_path / "from_scan")[1], params)

  bf_model, bf_params = zoo.from_pretrained(path, dtype=jnp.bfloat16)
  assert {x.dtype for x in jax.tree.leaves(bf_params)} == {jnp.dtype(jnp.bfloat16)}
  zoo.save_pretrained(bf_model, bf_params, tmp_path / "bf16")
  back = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "bf16"), dtype="auto")
  assert back.transformer.wte.weight.dtype == torch.bfloat16
  _assert_same_params(zoo.from_pretrained(tmp_path / "bf16", dtype=jnp.bfloat16)[1], bf_params)


# ----------------------------------------------------------------------------------------------
# BERT.

BERT_HEADS = {
    "BertModel": None,
    "BertForPreTraining": None,
    "BertForMaskedLM": None,
    "BertForSequenceClassification": 3,
    "BertForTokenClassification": 5,
}


def _bert(arch, seed):
  kwargs = dict(
      vocab_size=V, hidden_size=D, num_hidden_layers=2, num_attention_heads=N,
      intermediate_size=F, max_position_embeddings=32, type_vocab_size=2, pad_token_id=0,
  )
  if BERT_HEADS[arch]:
    kwargs["num_labels"] = BERT_HEADS[arch]
  return randomize(getattr(transformers, arch)(transformers.BertConfig(**kwargs)), seed)


def _bert_inputs():
  rng = np.random.RandomState(1)
  ids = rng.randint(1, V, IDS.shape)
  mask = np.ones_like(ids)
  mask[1, 7:] = 0  # a padded row
  ids = np.where(mask == 1, ids, 0)
  types = np.zeros_like(ids)
  types[:, 4:] = 1
  return ids, types, mask


def _bert_outputs(hf, arch, ids, types, mask):
  with torch.no_grad():
    o = hf(input_ids=torch.tensor(ids), token_type_ids=torch.tensor(types),
           attention_mask=torch.tensor(mask))
  if arch == "BertModel":
    return {"last_hidden_state": o.last_hidden_state, "pooled": o.pooler_output}
  if arch == "BertForPreTraining":
    return {"mlm_logits": o.prediction_logits, "nsp_logits": o.seq_relationship_logits}
  if arch == "BertForMaskedLM":
    return {"mlm_logits": o.logits}
  return {"logits": o.logits}


@pytest.mark.parametrize("arch", list(BERT_HEADS))
def test_bert_matches_hf_with_padding_and_round_trips(arch, tmp_path):
  hf = _bert(arch, seed=len(arch))
  model, params = zoo.from_pretrained(_hf_save(hf, tmp_path / "hf"))
  assert model.config.norm_eps == 1e-12 and model.config.pooler == (
      arch not in ("BertForMaskedLM", "BertForTokenClassification"))
  ids, types, mask = _bert_inputs()
  ref = _bert_outputs(hf, arch, ids, types, mask)
  out = _run(model, params, ids, token_type_ids=types, attention_mask=mask)
  valid = mask.astype(bool)
  for key, want in ref.items():
    want = want.numpy()
    got = np.asarray(out[key])
    if got.ndim == 3:  # per-token outputs: padded positions are nobody's business
      got, want = got[valid], want[valid]
    assert _max_diff(got, want) < ATOL, key

  zoo.save_pretrained(model, params, tmp_path / "zoo2hf")
  back = getattr(transformers, arch).from_pretrained(str(tmp_path / "zoo2hf")).eval()
  for key, want in _bert_outputs(back, arch, ids, types, mask).items():
    assert _max_diff(want.numpy(), ref[key].numpy()) < ATOL, key
  _assert_same_params(zoo.from_pretrained(tmp_path / "zoo2hf")[1], params)


# ----------------------------------------------------------------------------------------------
# ViT.


def _vit_config(**kw):
  return transformers.ViTConfig(
      image_size=32, patch_size=8, num_channels=3, hidden_size=D, num_hidden_layers=2,
      num_attention_heads=N, intermediate_size=F, **kw,
  )


def _images(size, seed=0):
  return np.random.RandomState(seed).randn(2, size, size, 3).astype(np.float32)


def _hf_vit(hf, images, **kw):
  with torch.no_grad():
    return hf(pixel_values=torch.tensor(images.transpose(0, 3, 1, 2)), **kw)


def test_vit_classifier_matches_hf_at_native_and_other_sizes(tmp_path):
  hf = randomize(transformers.ViTForImageClassification(_vit_config(num_labels=5)), 3)
  path = _hf_save(hf, tmp_path / "hf")
  model, params = zoo.from_pretrained(path)
  assert model.config.num_classes == 5 and model.config.norm_eps == 1e-12
  images = _images(32)
  ref = _hf_vit(hf, images).logits.numpy()
  assert _max_diff(_run(model, params, images), ref) < ATOL

  # Another resolution: the table is resized at load time like interpolate_pos_encoding.
  big, big_params = zoo.from_pretrained(path, image_size=48)
  assert big_params["pos_embedding"].shape == (1, 1 + 6 * 6, D)
  ref = _hf_vit(hf, _images(48, 1), interpolate_pos_encoding=True).logits.numpy()
  assert _max_diff(_run(big, big_params, _images(48, 1)), ref) < ATOL

  zoo.save_pretrained(model, params, tmp_path / "zoo2hf")
  back = transformers.ViTForImageClassification.from_pretrained(str(tmp_path / "zoo2hf"))
  assert _max_diff(
      _hf_vit(back.eval(), images).logits.numpy(), _hf_vit(hf, images).logits.numpy()
  ) < ATOL
  _assert_same_params(zoo.from_pretrained(tmp_path / "zoo2hf")[1], params)


def test_vit_model_pooler_is_representation_layer(tmp_path):
  hf = randomize(transformers.ViTModel(_vit_config()), 4)
  model, params = zoo.from_pretrained(_hf_save(hf, tmp_path / "hf"))
  assert model.config.num_classes == 0 and model.config.representation_size == D
  images = _images(32)
  ref = _hf_vit(hf, images).pooler_output.numpy()
  assert _max_diff(_run(model, params, images), ref) < ATOL
  zoo.save_pretrained(model, params, tmp_path / "zoo2hf")
  back = transformers.ViTModel.from_pretrained(str(tmp_path / "zoo2hf")).eval()
  assert _max_diff(_hf_vit(back, images).pooler_output.numpy(), ref) < ATOL


def test_torch_bicubic_resize_matches_torch():
  table = np.random.RandomState(0).randn(1, 1 + 16, 8).astype(np.float32)
  for new in ((6, 6), (3, 5), (4, 4)):
    grid = torch.tensor(table[0, 1:].reshape(1, 4, 4, 8)).permute(0, 3, 1, 2)
    ref = torch.nn.functional.interpolate(grid, size=new, mode="bicubic", align_corners=False)
    ref = ref.permute(0, 2, 3, 1).reshape(-1, 8).numpy()
    out = interpolate_table(table, (4, 4), new, num_prefix=1)
    np.testing.assert_allclose(out[0, 1:], ref, atol=1e-5)
    np.testing.assert_array_equal(out[0, :1], table[0, :1])


def _vision_transformer_npz(hf_dir, path, big_vision=False):
  """A saved HF ViT's tensors under the published google-research/vision_transformer names
  (``big_vision=True``: the newer big_vision names, one scanned ``encoderblock``)."""
  store = checkpoint_io.TensorStore(hf_dir)
  sd = {k: store.get(k) for k in store.keys()}
  n, h = N, D // N
  lin = lambda name: sd[name].T  # noqa: E731
  out = {
      "embedding/kernel": (
          sd["vit.embeddings.patch_embeddings.projection.weight"].transpose(2, 3, 1, 0)
      ),
      "embedding/bias": sd["vit.embeddings.patch_embeddings.projection.bias"],
      "cls": sd["vit.embeddings.cls_token"],
      "Transformer/posembed_input/pos_embedding": sd["vit.embeddings.position_embeddings"],
      "Transformer/encoder_norm/scale": sd["vit.layernorm.weight"],
      "Transformer/encoder_norm/bias": sd["vit.layernorm.bias"],
      "head/kernel": lin("classifier.weight"),
      "head/bias": sd["classifier.bias"],
  }
  attn, ln0, ln2, mlp = "MultiHeadDotProductAttention_1", "LayerNorm_0", "LayerNorm_2", "MlpBlock_3"
  if big_vision:
    attn, ln2, mlp = "MultiHeadDotProductAttention_0", "LayerNorm_1", "MlpBlock_0"
  blocks = []
  for i in range(2):
    s = f"vit.encoder.layer.{i}."
    b = {
        f"{ln0}/scale": sd[s + "layernorm_before.weight"],
        f"{ln0}/bias": sd[s + "layernorm_before.bias"],
        f"{ln2}/scale": sd[s + "layernorm_after.weight"],
        f"{ln2}/bias": sd[s + "layernorm_after.bias"],
        f"{attn}/out/kernel": lin(s + "attention.output.dense.weight").reshape(n, h, D),
        f"{attn}/out/bias": sd[s + "attention.output.dense.bias"],
        f"{mlp}/Dense_0/kernel": lin(s + "intermediate.dense.weight"),
        f"{mlp}/Dense_0/bias": sd[s + "intermediate.dense.bias"],
        f"{mlp}/Dense_1/kernel": lin(s + "output.dense.weight"),
        f"{mlp}/Dense_1/bias": sd[s + "output.dense.bias"],
    }
    for name in ("query", "key", "value"):
      b[f"{attn}/{name}/kernel"] = lin(s + f"attention.attention.{name}.weight").reshape(D, n, h)
      b[f"{attn}/{name}/bias"] = sd[s + f"attention.attention.{name}.bias"].reshape(n, h)
    blocks.append(b)
  if big_vision:
    for k in blocks[0]:
      out[f"Transformer/encoderblock/{k}"] = np.stack([b[k] for b in blocks])
    # big_vision adds positions to the patches only: no class-token row.
    out["pos_embedding"] = out.pop("Transformer/posembed_input/pos_embedding")[:, 1:]
  else:
    for i, b in enumerate(blocks):
      out.update({f"Transformer/encoderblock_{i}/{k}": v for k, v in b.items()})
  np.savez(path, **out)
  return str(path)


@pytest.mark.parametrize("big_vision", [False, True])
def test_vit_npz_matches_hf(big_vision, tmp_path):
  cfg = _vit_config(num_labels=5, layer_norm_eps=1e-6)  # vision_transformer's LayerNorm eps
  hf = randomize(transformers.ViTForImageClassification(cfg), 5)
  if big_vision:  # its class token has no position embedding
    with torch.no_grad():
      hf.vit.embeddings.position_embeddings[:, 0] = 0.0
  path = _vision_transformer_npz(_hf_save(hf, tmp_path / "hf"), tmp_path / "vit.npz", big_vision)
  model, params = zoo.from_pretrained(path)
  c = model.config
  assert (
      c.image_size, c.patch_size, c.d_model, c.num_heads, c.num_layers, c.mlp_dim, c.num_classes
  ) == (32, 8, D, N, 2, F, 5)
  assert c.activation == "gelu_tanh"  # flax nn.gelu, what the original code ran
  # HF ViT uses the erf GELU: compare with the same activation.
  model, params = zoo.from_pretrained(path, activation="gelu")
  images = _images(32)
  assert _max_diff(_run(model, params, images), _hf_vit(hf, images).logits.numpy()) < ATOL
  big, big_params = zoo.from_pretrained(path, activation="gelu", image_size=48)
  ref = _hf_vit(hf, _images(48), interpolate_pos_encoding=True).logits.numpy()
  assert _max_diff(_run(big, big_params, _images(48)), ref) < ATOL


# ----------------------------------------------------------------------------------------------
# Marian.

PAD = V - 1


def _marian(seed=6, **kw):
  cfg = transformers.MarianConfig(
      vocab_size=V, d_model=D, encoder_layers=2, decoder_layers=2, encoder_attention_heads=N,
      decoder_attention_heads=N, encoder_ffn_dim=F, decoder_ffn_dim=F,
      max_position_embeddings=32, pad_token_id=PAD, decoder_start_token_id=PAD, eos_token_id=0,
      activation_function="swish", scale_embedding=True,  # what the Opus-MT models use
      **kw,
  )
  return randomize(transformers.MarianMTModel(cfg), seed)


# (share_encoder_decoder_embeddings, tie_word_embeddings): Opus-MT's default, then the layouts
# where transformers keeps separate encoder / decoder tables (and an unused model.shared).
MARIAN_LAYOUTS = [(True, True), (True, False), (False, False)]


@pytest.mark.parametrize("share,tie", MARIAN_LAYOUTS)
def test_marian_matches_hf_with_padding_and_round_trips(tmp_path, share, tie):
  hf = _marian(share_encoder_decoder_embeddings=share, tie_word_embeddings=tie)
  if not tie:  # random tables that differ, so a table read from the wrong place shows
    assert not torch.equal(
        hf.model.encoder.embed_tokens.weight, hf.model.decoder.embed_tokens.weight
    )
  model, params = zoo.from_pretrained(_hf_save(hf, tmp_path / "hf"))
  c = model.config
  assert (c.sinusoid_layout, c.activation, c.pad_id, c.final_logits_bias) == (
      "split", "silu", PAD, True
  )
  rng = np.random.RandomState(2)
  src = rng.randint(0, PAD, IDS.shape)
  src[1, 5:] = PAD  # a padded source
  tgt = np.concatenate([np.full((2, 1), PAD), rng.randint(0, PAD, (2, IDS.shape[1] - 1))], axis=1)

  def hf_logits(m):
    with torch.no_grad():
      return m(input_ids=torch.tensor(src), attention_mask=torch.tensor(src != PAD),
               decoder_input_ids=torch.tensor(tgt)).logits.numpy()

  ref = hf_logits(hf)
  assert _max_diff(_run(model, params, src, tgt), ref) < ATOL
  zoo.save_pretrained(model, params, tmp_path / "zoo2hf")
  back = transformers.MarianMTModel.from_pretrained(str(tmp_path / "zoo2hf")).eval()
  assert _max_diff(hf_logits(back), ref) < ATOL
  _assert_same_params(zoo.from_pretrained(tmp_path / "zoo2hf")[1], params)


# ----------------------------------------------------------------------------------------------
# Errors, CLI, zoo checkpoints.


def _rewrite(path, fn):
  store = checkpoint_io.TensorStore(path)
  tensors = {k: store.get(k) for k in store.keys()}
  checkpoint_io.save_safetensors(fn(tensors), os.path.join(path, "model.safetensors"))


def test_legacy_and_sharded_layouts_load_the_same_params(tmp_path):
  # The original "gpt2" files: base-model names without "transformer.", causal-mask buffers.
  path = _hf_save(_gpt2(), tmp_path / "gpt2")
  _, want = zoo.from_pretrained(path)
  _rewrite(path, lambda t: {
      **{k.removeprefix("transformer."): v for k, v in t.items()},
      "h.0.attn.bias": np.tril(np.ones((1, 1, 32, 32), bool)),
      "h.0.attn.masked_bias": np.array(-1e4, np.float32),
  })
  assert "wte.weight" in checkpoint_io.TensorStore(path).keys()
  _assert_same_params(zoo.from_pretrained(path)[1], want)

  # TF-converted BERT names LayerNorm weights gamma / beta; HF shards big checkpoints.
  hf = _bert("BertForPreTraining", 8)
  path = _hf_save(hf, tmp_path / "bert")
  _, want = zoo.from_pretrained(path)
  _rewrite(path, lambda t: {
      (k.replace("LayerNorm.weight", "LayerNorm.gamma")
       .replace("LayerNorm.bias", "LayerNorm.beta")): v
      for k, v in t.items()})
  _assert_same_params(zoo.from_pretrained(path)[1], want)
  sharded = _hf_save(hf, tmp_path / "sharded", max_shard_size="10KB")
  assert os.path.exists(os.path.join(sharded, "model.safetensors.index.json"))
  _assert_same_params(zoo.from_pretrained(sharded)[1], want)


def test_errors_name_the_tensor_and_shapes(tmp_path):
  path = _hf_save(_gpt2(), tmp_path / "hf")
  cfg = json.load(open(os.path.join(path, "config.json")))

  bad = tmp_path / "falcon"
  bad.mkdir()
  json.dump({**cfg, "architectures": ["FalconForCausalLM"], "model_type": "falcon"},
            open(bad / "config.json", "w"))
  with pytest.raises(ValueError, match=r"FalconForCausalLM.*not supported.*GPT2LMHeadModel"):
    zoo.from_pretrained(bad)

  _rewrite(path, lambda t: {k: v for k, v in t.items() if k != "transformer.h.1.ln_2.bias"})
  with pytest.raises(ValueError, match=r"lacks tensor 'transformer\.h\.1\.ln_2\.bias' "
                     r"of shape \(16\).*decoder/layers_1/mlp_norm/bias"):
    zoo.from_pretrained(path)

  path = _hf_save(_gpt2(), tmp_path / "hf2")
  _rewrite(path, lambda t: {
      **t, "transformer.h.0.attn.c_attn.weight": np.zeros((16, 60), np.float32)})
  with pytest.raises(ValueError, match=r"'transformer\.h\.0\.attn\.c_attn\.weight'.*"
                     r"shape \(16, 60\).*expects \(16, 48\).*n_embd=16.*query/kernel"):
    zoo.from_pretrained(path)

  path = _hf_save(_gpt2(), tmp_path / "hf3")
  _rewrite(path, lambda t: {**t, "transformer.h.0.extra.weight": np.zeros((3, 2), np.float32)})
  with pytest.raises(ValueError, match=r"1 tensors the zoo model does not use: "
                     r"transformer\.h\.0\.extra\.weight \(3, 2\)"):
    zoo.from_pretrained(path)
  with pytest.warns(UserWarning, match=r"1 tensors unused: \['transformer\.h\.0\.extra\.weight'\]"):
    model, params = zoo.from_pretrained(path, strict=False)

  with pytest.raises(ValueError, match=r"unknown GPTConfig field.*'num_layer'.*num_layers"):
    zoo.from_pretrained(path, num_layer=3)

  rope = zoo.build(zoo.get_config("gpt2-small", position="rope", d_model=D, num_heads=N,
                                  num_layers=1, mlp_dim=F, vocab_size=V))
  with pytest.raises(ValueError, match=r"position='rope'.*learned position table"):
    zoo.save_pretrained(rope, params, tmp_path / "x")


def test_cli_converts_both_ways_and_copies_tokenizer(tmp_path, capsys):
  from zoo.pretrained.__main__ import main

  hf = _bert("BertForMaskedLM", 7)
  src = _hf_save(hf, tmp_path / "hf")
  with open(os.path.join(src, "vocab.txt"), "w") as f:
    f.write("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world"]))
  assert main(["convert", src, str(tmp_path / "zoo")]) == 0
  assert sorted(os.listdir(tmp_path / "zoo")) == ["params.msgpack", "vocab.txt", "zoo_config.json"]
  zmodel, zparams = zoo.from_pretrained(tmp_path / "zoo")
  model, params = zoo.from_pretrained(src)
  assert zmodel.config == model.config
  _assert_same_params(zparams, params)
  assert zoo.load_tokenizer(tmp_path / "zoo").encode("hello world") == [2, 5, 6, 3]

  assert main(["convert", str(tmp_path / "zoo"), str(tmp_path / "back")]) == 0
  assert "Hugging Face folder" in capsys.readouterr().out
  orig, back = checkpoint_io.TensorStore(src), checkpoint_io.TensorStore(str(tmp_path / "back"))
  assert sorted(orig.keys()) == sorted(back.keys())
  for k in orig.keys():
    np.testing.assert_array_equal(orig.get(k), back.get(k), err_msg=k)

  assert main(["info", str(tmp_path / "back")]) == 0
  assert "Bert (" in capsys.readouterr().out


@pytest.mark.filterwarnings("ignore:Recommended. pip install sacremoses")
def test_marian_tokenizer_matches_transformers(tmp_path):
  import io

  import sentencepiece as spm

  src_text = ["the cat sat on the mat", "a dog ran in the park", "hello world, how are you?"]
  tgt_text = ["die Katze sass auf der Matte", "ein Hund lief im Park", "hallo Welt, wie geht es?"]
  pieces = ["</s>", "<unk>"]
  for name, lines in (("source", src_text), ("target", tgt_text)):
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines * 5), model_writer=buf, vocab_size=30, minloglevel=2,
        hard_vocab_limit=False,
    )
    (tmp_path / f"{name}.spm").write_bytes(buf.getvalue())
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / f"{name}.spm"))
    pieces += [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
  vocab = {}
  for piece in pieces + ["<pad>"]:
    vocab.setdefault(piece, len(vocab))
  (tmp_path / "vocab.json").write_text(json.dumps(vocab))
  ref = transformers.MarianTokenizer(
      str(tmp_path / "source.spm"), str(tmp_path / "target.spm"), str(tmp_path / "vocab.json"))
  ref.save_pretrained(str(tmp_path / "tok"))

  tok = zoo.load_tokenizer(tmp_path / "tok")
  assert tok.kind == "marian" and tok.pad_id == ref.pad_token_id
  for text in src_text + ["unseen words: zebra!"]:
    assert tok.encode(text) == ref(text)["input_ids"]
  for text in tgt_text:
    ids = ref(text_target=text)["input_ids"]
    assert tok.encode(text, target=True) == ids
    assert tok.decode(ids) == ref.decode(ids, skip_special_tokens=True)
  batch = tok(src_text)
  for row, text in enumerate(src_text):
    ids = ref(text)["input_ids"]
    assert batch["input_ids"][row, : len(ids)].tolist() == ids
    assert (batch["input_ids"][row, len(ids) :] == ref.pad_token_id).all()
    assert batch["attention_mask"][row].sum() == len(ids)


def test_gpt2_bpe_tokenizer_matches_transformers(tmp_path):
  import tokenizers

  bpe = tokenizers.ByteLevelBPETokenizer()
  bpe.train_from_iterator(["hello world, a tiny corpus for byte-level BPE"] * 10, vocab_size=300,
                          special_tokens=["<|endoftext|>"])
  bpe.save_model(str(tmp_path))
  ref = transformers.GPT2Tokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))
  tok = zoo.load_tokenizer(tmp_path)
  assert tok.kind == "bpe"
  for text in ("hello world", "Hello, tiny bytes! ünïcode"):
    assert tok.encode(text) == ref(text)["input_ids"]
    assert tok.decode(tok.encode(text)) == text
  (tmp_path / "empty").mkdir()
  assert zoo.load_tokenizer(tmp_path / "empty", required=False) is None


def test_supported_architectures_are_the_registered_converters_and_cover_the_issue():
  supported = api.supported_architectures()
  declared = {arch: conv.name for family in zoo.registry.families()
              for conv in converters(family) for arch in conv.architectures}
  assert supported == declared
  assert set(supported) >= {
      "GPT2LMHeadModel", "GPT2Model", "BertModel", "BertForPreTraining", "BertForMaskedLM",
      "BertForSequenceClassification", "BertForTokenClassification", "ViTModel",
      "ViTForImageClassification", "MarianMTModel", "LlamaForCausalLM", "MistralForCausalLM",
      "Qwen2ForCausalLM",
  }


def _exported_activation(module, hf, activation):
  conv = module.CONVERTER
  fields = conv.config_from_hf(hf, conv.architectures[0])
  out = conv.config_to_hf(conv.config_cls(**{**fields, "activation": activation}))
  return out.get("hidden_act", out.get("activation_function"))


def test_one_activation_table_exports_each_models_own_names():
  from zoo.pretrained import bert, gpt2, marian, vit

  for name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
    assert km.activation_from_hf(name) == "gelu_tanh"
  assert km.activation_from_hf("swish") == km.activation_from_hf("silu") == "silu"
  bert_hf = dict(vocab_size=V, hidden_size=D, num_attention_heads=N, num_hidden_layers=1,
                 intermediate_size=F)
  with pytest.raises(ValueError, match=r"hidden_act 'tanh' is not supported; known: .*gelu_new"):
    bert.config_from_hf({**bert_hf, "hidden_act": "tanh"}, "BertModel")
  with pytest.raises(ValueError, match=r"'swiglu' is not supported; known: \['gelu', 'gelu_tanh'"):
    km.activation_to_hf("swiglu")
  marian_hf = dict(vocab_size=V, d_model=D, encoder_attention_heads=N, decoder_attention_heads=N,
                   encoder_layers=1, decoder_layers=1, encoder_ffn_dim=F, decoder_ffn_dim=F)
  gpt2_hf = dict(vocab_size=V, n_positions=16, n_embd=D, n_head=N, n_layer=1)
  # The names transformers writes for each model: ViT's configs say "gelu_pytorch_tanh" where
  # BERT and GPT-2 say "gelu_new", and Marian's say "swish" for SiLU.
  for conv, hf, gelu_tanh, silu in (
      (bert, bert_hf, "gelu_new", "silu"),
      (vit, {}, "gelu_pytorch_tanh", "silu"),
      (gpt2, gpt2_hf, "gelu_new", "silu"),
      (marian, marian_hf, "gelu_new", "swish"),
  ):
    assert _exported_activation(conv, hf, "gelu_tanh") == gelu_tanh, conv.__name__
    assert _exported_activation(conv, hf, "silu") == silu, conv.__name__
    assert _exported_activation(conv, hf, "gelu") == "gelu", conv.__name__


def test_read_json_names_the_file_line_and_column(tmp_path):
  (tmp_path / "config.json").write_text('{"a": 1}')
  assert checkpoint_io.read_json(tmp_path / "config.json") == {"a": 1}
  with pytest.raises(FileNotFoundError, match="missing.json does not exist"):
    checkpoint_io.read_json(tmp_path / "missing.json")
  assert checkpoint_io.read_json(str(tmp_path / "missing.json"), missing_ok=True) == {}
  (tmp_path / "bad.json").write_text('{\n  "a": 1,\n  "b": \n}')
  where = r"bad\.json is not valid JSON: Expecting value at line 4, column 1"
  with pytest.raises(ValueError, match=where):
    checkpoint_io.read_json(tmp_path / "bad.json")
  # The tokenizer's optional files go through it too: a broken one is named, not skipped.
  (tmp_path / "tok").mkdir()
  (tmp_path / "tok" / "vocab.txt").write_text("[PAD]\n[UNK]\nhello\n")
  (tmp_path / "tok" / "tokenizer_config.json").write_text('{"do_lower_case": tru}')
  where = r"tokenizer_config\.json is not valid JSON: .* at line 1, column 19"
  with pytest.raises(ValueError, match=where):
    zoo.load_tokenizer(tmp_path / "tok")


# ----------------------------------------------------------------------------------------------
# Fresh heads on base checkpoints (fine-tuning).


def test_base_bert_gets_a_fresh_classifier_and_keeps_every_backbone_tensor(tmp_path):
  path = _hf_save(_bert("BertModel", 11), tmp_path / "base")
  _, base = zoo.from_pretrained(path)
  with pytest.warns(UserWarning,
                    match=r"no weights for \['classifier/bias', 'classifier/kernel'\]"):
    model, params = zoo.from_pretrained(path, head="sequence_classification", num_labels=9)
  assert model.config.head == "sequence_classification" and model.config.num_labels == 9
  flat, want = _flat(params), _flat(base)
  assert set(flat) - set(want) == {"classifier/bias", "classifier/kernel"}
  for k in want:
    np.testing.assert_array_equal(flat[k], want[k], err_msg=k)  # bit for bit
  assert flat["classifier/kernel"].shape == (D, 9) and np.any(flat["classifier/kernel"] != 0)
  ids, types, mask = _bert_inputs()
  logits = _run(model, params, ids, token_type_ids=types, attention_mask=mask)["logits"]
  assert logits.shape == (2, 9) and np.all(np.isfinite(logits))
  # Another seed, another head; the same backbone.
  _, other = zoo.from_pretrained(path, head="sequence_classification", num_labels=9, seed=1)
  assert not np.array_equal(_flat(other)["classifier/kernel"], flat["classifier/kernel"])


def test_heads_of_another_task_are_dropped_and_reshaped_heads_are_new(tmp_path):
  # Pretraining heads (MLM, NSP) are not used by a tagger, nor is the pooler (transformers'
  # BertForTokenClassification has none, so the export matches it).
  path = _hf_save(_bert("BertForPreTraining", 12), tmp_path / "pre")
  fitted = api.load(path, head="token_classification", num_labels=4)
  assert fitted.new == ["classifier/bias", "classifier/kernel"]
  assert {p.split("/")[0] for p in fitted.dropped} == {"mlm", "nsp", "pooler"}
  assert fitted.model.config.pooler is False
  # A ViT head with another number of classes is new, and every other tensor is loaded.
  vit_path = _hf_save(
      randomize(transformers.ViTForImageClassification(_vit_config(num_labels=5)), 3),
      tmp_path / "vit")
  fitted = api.load(vit_path, num_classes=10, image_size=48)
  assert (fitted.new == ["head/bias", "head/kernel"]
          and fitted.dropped == ["head/bias", "head/kernel"])
  assert fitted.flat["pos_embedding"].shape == (1, (48 // 8) ** 2 + 1, D)  # resized positions


def test_overrides_that_contradict_the_weights_are_refused(tmp_path):
  path = _hf_save(_bert("BertModel", 13), tmp_path / "base")
  with pytest.raises(ValueError, match=r"needs .* of shape .*\{'d_model': 64\} contradict"):
    zoo.from_pretrained(path, d_model=64, num_heads=N)
  with pytest.raises(ValueError, match=r"unknown BertConfig field .*'num_label'.*num_labels"):
    zoo.from_pretrained(path, num_label=3)


def test_a_shorter_context_keeps_the_first_rows_of_the_position_table(tmp_path):
  path = _hf_save(_gpt2(), tmp_path / "gpt2")
  _, full = zoo.from_pretrained(path)
  model, short = zoo.from_pretrained(path, max_len=16)
  assert model.config.max_len == 16
  np.testing.assert_array_equal(_flat(short)["wpe/embedding"], _flat(full)["wpe/embedding"][:16])
  with pytest.raises(ValueError, match="contradict"):
    zoo.from_pretrained(path, max_len=64)  # longer than the table: no rows to read
