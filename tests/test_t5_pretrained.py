"""T5 / mT5 checkpoints in and out of zoo, against transformers' models built locally with random
weights, and the T5 SentencePiece tokenizer against transformers' ``T5Tokenizer``.

Layouts: 1.0 (relu, head tied to ``shared``, decoder output scaled by ``d_model**-0.5``), v1.1
(gated-gelu, an untied ``lm_head``, no scale: written by hand with distinct ``shared.weight``
and ``lm_head.weight`` and ``tie_word_embeddings: false``, as the released files are, since
transformers 5 ties the head in memory), mT5 (the same, ``MT5*`` classes) and the encoders.
"""

import io
import json
import os
import pathlib

import jax
import numpy as np
import pytest
from flax import traverse_util
from reference import randomize

import zoo
from zoo.models.t5 import T5, T5Config
from zoo.pretrained import checkpoint_io, t5

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

ATOL = 1e-4
V, D = 128, 32
HF_SIZES = dict(vocab_size=V, d_model=D, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                relative_attention_num_buckets=8, relative_attention_max_distance=16)
ZOO_SIZES = dict(vocab_size=V, d_model=D, head_dim=8, mlp_dim=64, num_encoder_layers=2,
                 num_decoder_layers=2, num_heads=4, relative_attention_num_buckets=8,
                 relative_attention_max_distance=16, dropout_rate=0.0)
RNG = np.random.RandomState(0)
SRC = RNG.randint(2, V, (2, 11))
SRC[1, 6:] = 0  # a padded row (pad id 0)
TGT = np.concatenate([np.zeros((2, 1), int), RNG.randint(2, V, (2, 7))], axis=1)


def _flat(params):
  return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(params, sep="/").items()}


def _assert_same_params(a, b):
  fa, fb = _flat(a), _flat(b)
  assert sorted(fa) == sorted(fb)
  for k in fa:
    np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)


def _max_diff(a, b):
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def zoo_params(model, seed):
  """Freshly initialised host params of a zoo T5 (nested dict of numpy arrays)."""
  boxed = model.init(jax.random.PRNGKey(seed), SRC, TGT)
  return traverse_util.unflatten_dict(zoo.pretrained.assemble.host_flat(boxed), sep="/")


def _hf_logits(m):
  with torch.no_grad():
    return m(input_ids=torch.tensor(SRC), attention_mask=torch.tensor(SRC != 0),
             decoder_input_ids=torch.tensor(TGT)).logits.numpy()


def _hf_hidden(m):
  with torch.no_grad():
    return m(input_ids=torch.tensor(SRC),
             attention_mask=torch.tensor(SRC != 0)).last_hidden_state.numpy()


def _zoo_logits(model, params):
  return np.asarray(model.apply({"params": params}, SRC, TGT))


def _write(folder, tensors, hf_config):
  """A checkpoint folder written by hand: ``config.json`` + one safetensors file."""
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, "config.json"), "w") as f:
    json.dump(hf_config, f)
  checkpoint_io.save_safetensors(
      {k: np.ascontiguousarray(v) for k, v in tensors.items()},
      os.path.join(folder, "model.safetensors"),
  )
  return str(folder)


def _read(folder):
  store = checkpoint_io.TensorStore(str(folder))
  return {k: np.asarray(store.get(k)) for k in store.keys()}


def _untied(cls, config_cls, folder, seed, **kw):
  """A v1.1 / mT5 file: distinct ``shared.weight`` and ``lm_head.weight`` (plus the embedding
  copies), ``tie_word_embeddings: false`` and no ``scale_decoder_outputs`` key."""
  hf = randomize(cls(config_cls(tie_word_embeddings=False, **HF_SIZES, **kw)), seed)
  g = torch.Generator().manual_seed(seed + 100)
  hf.lm_head.weight = torch.nn.Parameter(torch.randn(V, D, generator=g) * 0.3)
  tensors = {k: v.detach().numpy().copy() for k, v in hf.state_dict().items()}
  config = {k: v for k, v in hf.config.to_dict().items() if k != "scale_decoder_outputs"}
  config.update(tie_word_embeddings=False, architectures=[cls.__name__])
  return _write(folder, tensors, config)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
  """``{layout: Hugging Face folder}`` for the 1.0, v1.1 and mT5 layouts."""
  root = tmp_path_factory.mktemp("t5")
  v10 = randomize(transformers.T5ForConditionalGeneration(
      transformers.T5Config(feed_forward_proj="relu", **HF_SIZES)), 0)
  v10.save_pretrained(str(root / "1.0"))
  return {
      "1.0": str(root / "1.0"),
      "v1.1": _untied(transformers.T5ForConditionalGeneration, transformers.T5Config,
                      root / "v1.1", 1, feed_forward_proj="gated-gelu"),
      "mt5": _untied(transformers.MT5ForConditionalGeneration, transformers.MT5Config,
                     root / "mt5", 2),
  }


# (layout, tied, scaled, gated)
LAYOUTS = [("1.0", True, True, False), ("v1.1", False, False, True), ("mt5", False, False, True)]


@pytest.mark.parametrize("layout,tied,scaled,gated", LAYOUTS)
def test_matches_hf_with_padding_and_round_trips(folders, tmp_path, layout, tied, scaled, gated):
  path = folders[layout]
  ref_model = transformers.AutoModelForSeq2SeqLM.from_pretrained(path).eval()
  # transformers itself reads the file as intended: untied where lm_head differs, no scale.
  assert torch.equal(ref_model.lm_head.weight, ref_model.shared.weight) == tied
  ref = _hf_logits(ref_model)

  model, params = zoo.from_pretrained(path)
  c = model.config
  assert (c.tie_word_embeddings, c.scales_outputs, c.gated_mlp) == (tied, scaled, gated)
  assert (c.pad_id, c.eos_id, c.decoder_start_id) == (0, 1, 0)
  assert ("lm_head" in params) == (not tied)
  assert _max_diff(_zoo_logits(model, params), ref) <= ATOL

  zoo.save_pretrained(model, params, tmp_path / "zoo2hf")
  back = transformers.AutoModelForSeq2SeqLM.from_pretrained(str(tmp_path / "zoo2hf")).eval()
  assert type(back).__name__ == "T5ForConditionalGeneration"
  assert _max_diff(_hf_logits(back), ref) <= ATOL
  model2, params2 = zoo.from_pretrained(tmp_path / "zoo2hf")
  assert model2.config == c
  _assert_same_params(params2, params)


@pytest.mark.parametrize("tied,scaled", [(t, s) for t in (True, False) for s in (True, False)])
def test_every_tie_and_scale_exports_to_the_same_logits(tmp_path, tied, scaled):
  # Pairs transformers 4.x could not express (tied unscaled, untied scaled) included.
  cfg = T5Config(**ZOO_SIZES, activation="gelu_tanh", gated_mlp=True, tie_word_embeddings=tied,
                 scale_decoder_outputs=scaled)
  model = T5(cfg)
  params = zoo_params(model, 3)
  want = _zoo_logits(model, params)
  zoo.save_pretrained(model, params, tmp_path)
  hf = json.loads((tmp_path / "config.json").read_text())
  assert hf["tie_word_embeddings"] is scaled and hf["feed_forward_proj"] == "gated-gelu"
  assert ("lm_head.weight" in _read(tmp_path)) == (not tied)
  back = transformers.AutoModelForSeq2SeqLM.from_pretrained(str(tmp_path)).eval()
  assert _max_diff(_hf_logits(back), want) <= ATOL
  model2, params2 = zoo.from_pretrained(tmp_path)
  assert (model2.config.tie_word_embeddings, model2.config.scales_outputs) == (tied, scaled)
  _assert_same_params(params2, params)


@pytest.mark.parametrize("cls,config_cls", [
    (transformers.T5EncoderModel, transformers.T5Config),
    (transformers.MT5EncoderModel, transformers.MT5Config),
])
def test_encoder_model_matches_hf_and_round_trips(tmp_path, cls, config_cls):
  hf = randomize(cls(config_cls(feed_forward_proj="gated-gelu", **HF_SIZES)), 4)
  hf.save_pretrained(str(tmp_path / "hf"))
  ref = _hf_hidden(hf)
  model, params = zoo.from_pretrained(tmp_path / "hf")
  assert model.config.encoder_only and "decoder" not in params and "lm_head" not in params
  assert _max_diff(model.apply({"params": params}, SRC), ref) <= ATOL

  zoo.save_pretrained(model, params, tmp_path / "zoo2hf")
  back = transformers.T5EncoderModel.from_pretrained(str(tmp_path / "zoo2hf")).eval()
  assert _max_diff(_hf_hidden(back), ref) <= ATOL
  _assert_same_params(zoo.from_pretrained(tmp_path / "zoo2hf")[1], params)


def test_sharded_safetensors_load_the_same_params(folders, tmp_path):
  # transformers 5's own save of an untied model: tie_word_embeddings true (it forces it) with
  # scale_decoder_outputs false, lm_head.weight present, seven shards.
  hf = transformers.AutoModelForSeq2SeqLM.from_pretrained(folders["v1.1"])
  hf.save_pretrained(str(tmp_path), max_shard_size="40KB")
  index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
  assert len(set(index["weight_map"].values())) > 1
  model, params = zoo.from_pretrained(tmp_path)
  want_model, want = zoo.from_pretrained(folders["v1.1"])
  assert model.config == want_model.config
  _assert_same_params(params, want)


def _v10_with(folders, tmp_path, changes):
  """The 1.0 file with tensors set (arrays) or removed (None), and transformers' load of it."""
  tensors = _read(folders["1.0"])
  tensors.update(changes)
  tensors = {k: v for k, v in tensors.items() if v is not None}
  config = json.loads(pathlib.Path(folders["1.0"], "config.json").read_text())
  path = _write(tmp_path, tensors, config)
  return path, transformers.AutoModelForSeq2SeqLM.from_pretrained(path).eval()


def test_transformers_copies_and_unused_tensors(folders, tmp_path):
  shared = _read(folders["1.0"])["shared.weight"]
  # t5-small's files: an lm_head.weight equal to shared.weight (tied: transformers ties it),
  # the embed_tokens copies, and the decoder's unused cross-attention bias table.
  path, ref = _v10_with(folders, tmp_path / "copies", {
      "lm_head.weight": shared.copy(),
      "encoder.embed_tokens.weight": shared.copy(),
      "decoder.embed_tokens.weight": shared.copy(),
      "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight":
          RNG.randn(8, 4).astype(np.float32),
  })
  model, params = zoo.from_pretrained(path)  # strict: every other tensor is used
  assert model.config.tie_word_embeddings and model.config.scales_outputs
  assert "lm_head" not in params
  assert _max_diff(_zoo_logits(model, params), _hf_logits(ref)) <= ATOL

  # No shared.weight: the table is encoder.embed_tokens', not the (distinct) lm_head's.
  head = RNG.randn(*shared.shape).astype(np.float32)
  path, ref = _v10_with(folders, tmp_path / "no_shared", {
      "shared.weight": None,
      "lm_head.weight": head,
      "encoder.embed_tokens.weight": shared.copy(),
      "decoder.embed_tokens.weight": shared.copy(),
  })
  model, params = zoo.from_pretrained(path)
  np.testing.assert_array_equal(params["shared"]["embedding"], shared)
  np.testing.assert_array_equal(params["lm_head"]["kernel"], head.T)
  assert _max_diff(_zoo_logits(model, params), _hf_logits(ref)) <= ATOL

  path, _ = _v10_with(folders, tmp_path / "own_table", {"encoder.embed_tokens.weight": head})
  with pytest.raises(ValueError, match="encoder.embed_tokens.weight differs from shared.weight"):
    zoo.from_pretrained(path)


def test_copies_are_compared_block_by_block(folders):
  store = checkpoint_io.TensorStore(folders["v1.1"])
  for rows in (16, 4096):  # blocks of rows, and whole tensors
    assert t5._equal(store, "encoder.embed_tokens.weight", "shared.weight", rows=rows)
    assert not t5._equal(store, "lm_head.weight", "shared.weight", rows=rows)
  view = t5.prepare(store)
  assert sorted(set(store.keys()) - set(view.keys())) == [
      "decoder.embed_tokens.weight", "encoder.embed_tokens.weight"]


def _edit(src, tmp_path, tensors=None, **config):
  """A copy of folder ``src`` with tensors changed by ``tensors(dict)`` and config keys set."""
  hf = json.loads(pathlib.Path(src, "config.json").read_text())
  hf.update(config)
  t = _read(src)
  return _write(tmp_path, tensors(t) if tensors else t, hf)


def _v10_block_in_v11(t):
  """Encoder block 1 in the 1.0 layout inside a v1.1 file."""
  s = "encoder.block.1.layer.1.DenseReluDense."
  t[s + "wi.weight"] = t.pop(s + "wi_1.weight")
  del t[s + "wi_0.weight"]
  return t


def test_ambiguous_layouts_are_refused_with_the_fix(folders, tmp_path):
  with pytest.raises(ValueError, match=r"mix the T5 1.0 feed-forward .*encoder\.block\.1.* and "
                     r"the v1.1 one .*encoder\.block\.0"):
    zoo.from_pretrained(_edit(folders["v1.1"], tmp_path / "mixed", _v10_block_in_v11))
  with pytest.raises(ValueError, match=r"feed_forward_proj='relu' but the weights hold the gated "
                     r".*set feed_forward_proj to the checkpoint's, e.g. 'gated-gelu'"):
    zoo.from_pretrained(_edit(folders["v1.1"], tmp_path / "relu", feed_forward_proj="relu"))
  with pytest.raises(ValueError, match=r"feed_forward_proj='gated-mish' is not a T5 feed-forward "
                     r"zoo reads.*'gated-gelu'"):
    zoo.from_pretrained(_edit(folders["1.0"], tmp_path / "mish", feed_forward_proj="gated-mish"))
  umt5 = T5Config(**ZOO_SIZES, relative_bias_per_layer=True)
  model = T5(umt5)
  params = zoo_params(model, 0)
  with pytest.raises(ValueError, match="relative_bias_per_layer=True"):
    zoo.save_pretrained(model, params, tmp_path / "umt5")


# ----------------------------------------------------------------------------------------------
# The tokenizer.


def train_spiece(folder, lines, vocab_size, extra_ids=100):
  """A SentencePiece unigram model with T5's ids (pad 0, eos 1, unk 2, no bos) saved as
  ``folder/spiece.model`` with a ``tokenizer_config.json`` naming ``extra_ids``."""
  import sentencepiece as spm

  buf = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(lines), model_writer=buf, vocab_size=vocab_size, pad_id=0, eos_id=1,
      unk_id=2, bos_id=-1, model_type="unigram", hard_vocab_limit=False, minloglevel=2,
  )
  folder = pathlib.Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "spiece.model").write_bytes(buf.getvalue())
  (folder / "tokenizer_config.json").write_text(json.dumps({"extra_ids": extra_ids}))
  return folder


def text_lines():
  """A few hundred lines of English: zoo's own documentation."""
  root = pathlib.Path(zoo.__file__).parent
  lines = []
  for path in sorted(root.rglob("*.md")) + sorted((root / "pretrained").glob("*.py")):
    lines += [ln.strip() for ln in path.read_text().splitlines() if len(ln.strip()) > 10]
  return lines


TEXTS = [
    "summarize: The model loads the weights.",
    "translate English to German: That is good.",
    "The <extra_id_0> walks in <extra_id_1> park",
    "tabs\tand  double  spaces, ünïcode ∑ and 中文!",
    "</s> inside <pad> text <unk>",
    "",
]


def test_tokenizer_ids_equal_transformers(tmp_path):
  train_spiece(tmp_path / "spm", text_lines(), 200)
  ref = transformers.T5Tokenizer.from_pretrained(str(tmp_path / "spm"))
  ref.save_pretrained(str(tmp_path / "json"))  # tokenizer.json + tokenizer_config.json
  assert not (tmp_path / "json" / "spiece.model").exists()
  sentinels = ref.convert_tokens_to_ids([f"<extra_id_{n}>" for n in range(100)])
  assert sentinels[0] == len(ref) - 1 == 299 and sentinels[99] == 200
  for kind, folder in (("spiece.model", "spm"), ("tokenizer.json", "json")):
    tok = zoo.load_tokenizer(tmp_path / folder)
    assert tok.kind == kind and (tok.pad_id, tok.vocab_size) == (0, 300)
    assert list(tok.sentinel_ids) == sentinels
    assert zoo.pretrained.tokenizer.sentinel_ids(tok) == tok.sentinel_ids
    for text in TEXTS:
      ids = ref(text)["input_ids"]
      assert ids[-1] == 1 and tok.encode(text) == ids, (kind, text)
      assert tok.encode(text, add_special_tokens=False) == ids[:-1]
      for skip in (True, False):
        assert tok.decode(ids, skip_special_tokens=skip) == ref.decode(
            ids, skip_special_tokens=skip), (kind, text, skip)
    batch, want = tok(TEXTS[:3]), ref(TEXTS[:3], padding=True)
    assert batch["input_ids"].tolist() == want["input_ids"]
    assert batch["attention_mask"].tolist() == want["attention_mask"]
