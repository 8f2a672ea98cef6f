"""BART and mBART checkpoints in and out of zoo's Transformer family, against transformers'
models built locally with random weights: logits on padded batches (LM and sequence
classification), the label-shift conventions, export and reload, refused variants."""

import functools
import json
import pathlib
import tempfile

import numpy as np
import pytest
from flax import traverse_util
from reference import randomize

import zoo
from zoo.models.transformer import shift_right
from zoo.pretrained import bart

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

ATOL = 1e-4
V, D, N, F = 96, 32, 4, 64
PAD, BOS, EOS = 1, 0, 2
SIZES = dict(vocab_size=V, d_model=D, encoder_layers=2, decoder_layers=2,
             encoder_attention_heads=N, decoder_attention_heads=N, encoder_ffn_dim=F,
             decoder_ffn_dim=F, max_position_embeddings=24, pad_token_id=PAD, bos_token_id=BOS,
             eos_token_id=EOS, dropout=0.0)
CLASSES = {
    "BartForConditionalGeneration": (transformers.BartConfig,
                                     transformers.BartForConditionalGeneration),
    "BartForSequenceClassification": (transformers.BartConfig,
                                      transformers.BartForSequenceClassification),
    "MBartForConditionalGeneration": (transformers.MBartConfig,
                                      transformers.MBartForConditionalGeneration),
    "MBartForSequenceClassification": (transformers.MBartConfig,
                                       transformers.MBartForSequenceClassification),
}
LANG = V - 3  # a language-code token (mBART rows end with </s> <lang>)


def _rows():
  """Right-padded sources ending in EOS (mBART: EOS then a language code), one row padded."""
  rng = np.random.RandomState(3)
  src = rng.randint(4, V - 4, (3, 10))
  for row, n in zip(src, (10, 6, 8), strict=True):
    row[n - 1], row[n:] = EOS, PAD
  return src


def hf_model(arch, seed=0, **kw):
  """A random transformers BART / mBART of ``arch`` (learned positions randomised too)."""
  config_cls, model_cls = CLASSES[arch]
  extra = {"num_labels": 3} if "Sequence" in arch else {}
  if arch.startswith("MBart"):
    extra["scale_embedding"] = True  # as the released mBART configs say
  model = randomize(model_cls(config_cls(**{**SIZES, **extra, **kw})), seed)
  g = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for name, t in model.state_dict().items():
      if "embed_positions" in name or name == "final_logits_bias":
        t.copy_(torch.randn(t.shape, generator=g) * 0.3)
  return model


@functools.cache
def _built(arch):
  """``(arch, HF model, folder, zoo model, zoo params)``, built once per module run."""
  hf = hf_model(arch)
  path = pathlib.Path(tempfile.mkdtemp(prefix=f"{arch}-"))
  hf.save_pretrained(str(path))
  model, params = zoo.from_pretrained(path)
  return arch, hf, path, model, params


@pytest.fixture(scope="module", params=list(CLASSES))
def pair(request):
  return _built(request.param)


def _hf_logits(hf, src, tgt=None, labels=None):
  kw = {} if tgt is None else {"decoder_input_ids": torch.tensor(tgt)}
  if labels is not None:
    kw["labels"] = torch.tensor(labels)
  with torch.no_grad():
    return hf(input_ids=torch.tensor(src), attention_mask=torch.tensor(src != PAD),
              **kw).logits.numpy()


def _diff(a, b):
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def _flat(params):
  return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(params, sep="/").items()}


def _targets():
  rng = np.random.RandomState(4)
  tgt = rng.randint(4, V - 4, (3, 7))
  tgt[1, 4:] = PAD
  return tgt


def test_config_reads_the_architecture(pair):
  arch, _, _, model, _ = pair
  c = model.config
  mbart = arch.startswith("MBart")
  assert (c.position, c.position_offset, c.max_len, c.embedding_norm) == ("learned", 2, 26, True)
  assert c.norm_position == ("pre" if mbart else "post")
  assert c.scale_embeddings == mbart
  assert c.activation == "gelu"
  assert c.head == ("sequence_classification" if "Sequence" in arch else "lm")
  assert c.label_shift == ("wrap_last" if mbart else "start_token")


def test_logits_equal_hf_on_padded_batches(pair):
  arch, hf, _, model, params = pair
  src = _rows()
  if "Sequence" in arch:  # decoder inputs: the source shifted right, as transformers does
    ours = model.apply({"params": params}, src)
    assert ours.shape == (3, 3)
    assert _diff(ours, _hf_logits(hf, src)) < ATOL
    return
  tgt = np.concatenate([np.full((3, 1), EOS), _targets()[:, :-1]], axis=1)
  ours = model.apply({"params": params}, src, tgt)
  assert _diff(ours, _hf_logits(hf, src, tgt)) < ATOL


@pytest.mark.parametrize("arch", [a for a in CLASSES if "Sequence" not in a])
def test_labels_become_the_decoder_inputs_hf_makes(arch):
  """BART prepends decoder_start_token_id; mBART wraps each row's last non-pad token.
  (The classifiers' labels are class ids.)"""
  arch, hf, _, model, params = _built(arch)
  src, labels = _rows(), _targets()
  labels[:, -1] = LANG
  labels[1, 3:] = PAD
  labels[1, 3] = LANG  # a padded row: its language code is its last non-pad token
  tgt_in = np.asarray(shift_right(model.config, labels))
  if arch.startswith("MBart"):
    assert list(tgt_in[:, 0]) == [LANG] * 3
  else:
    assert list(tgt_in[:, 0]) == [EOS] * 3
  assert _diff(model.apply({"params": params}, src, tgt_in),
               _hf_logits(hf, src, labels=labels)) < ATOL


def test_export_reloads_in_transformers_and_round_trips(pair, tmp_path):
  arch, hf, _, model, params = pair
  zoo.save_pretrained(model, params, tmp_path)
  saved = json.loads((tmp_path / "config.json").read_text())
  assert saved["architectures"] == [arch]
  back = getattr(transformers, arch).from_pretrained(str(tmp_path)).eval()
  src = _rows()
  tgt = None if "Sequence" in arch else np.concatenate(
      [np.full((3, 1), EOS), _targets()[:, :-1]], axis=1)
  assert _diff(_hf_logits(back, src, tgt), _hf_logits(hf, src, tgt)) < ATOL
  again = _flat(zoo.from_pretrained(tmp_path)[1])
  want = _flat(params)
  assert sorted(again) == sorted(want)
  for k in want:
    np.testing.assert_array_equal(again[k], want[k], err_msg=k)


def test_untied_bart_reads_its_own_tables_and_head(tmp_path):
  hf = hf_model("BartForConditionalGeneration", seed=5, tie_word_embeddings=False)
  g = torch.Generator().manual_seed(9)
  with torch.no_grad():
    for t in (hf.model.encoder.embed_tokens.weight, hf.model.decoder.embed_tokens.weight,
              hf.lm_head.weight):
      t.copy_(torch.randn(t.shape, generator=g) * 0.3)
  hf.save_pretrained(str(tmp_path / "hf"))
  model, params = zoo.from_pretrained(tmp_path / "hf")
  assert not model.config.tie_output and "lm_head" in params
  src = _rows()
  tgt = np.concatenate([np.full((3, 1), EOS), _targets()[:, :-1]], axis=1)
  ref = _hf_logits(hf, src, tgt)
  assert _diff(model.apply({"params": params}, src, tgt), ref) < ATOL
  zoo.save_pretrained(model, params, tmp_path / "out")
  back = transformers.BartForConditionalGeneration.from_pretrained(str(tmp_path / "out"))
  assert _diff(_hf_logits(back.eval(), src, tgt), ref) < ATOL


def test_a_conditional_generation_checkpoint_fine_tunes_as_a_classifier():
  _, _, path, _, params = _built("BartForConditionalGeneration")
  with pytest.warns(UserWarning, match="classification_head"):
    model, fresh = zoo.from_pretrained(path, head="sequence_classification", num_labels=5)
  assert "final_logits_bias" not in fresh and "classification_head" in fresh
  np.testing.assert_array_equal(fresh["shared"]["embedding"], params["shared"]["embedding"])
  assert model.apply({"params": fresh}, _rows()).shape == (3, 5)


@pytest.mark.parametrize("model_type,field,value", [
    ("bart", "normalize_before", True),
    ("bart", "add_final_layer_norm", True),
    ("mbart", "add_final_layer_norm", False),
    ("mbart", "normalize_embedding", False),
    ("bart", "activation_function", "gelu_10"),
])
def test_unimplemented_variants_are_one_clear_error(tmp_path, model_type, field, value):
  arch = ("MBart" if model_type == "mbart" else "Bart") + "ForConditionalGeneration"
  hf = {**SIZES, "model_type": model_type, "architectures": [arch], field: value}
  with pytest.raises(ValueError, match=f"{field}.*{value}|{value}.*{field}"):
    bart.config_from_hf(hf, arch)


def test_export_refuses_configs_bart_cannot_express():
  from zoo.models.transformer import TransformerConfig

  cfg = TransformerConfig(vocab_size=V, d_model=D, num_heads=N, mlp_dim=F, max_len=26,
                          position="learned", position_offset=2, embedding_norm=True,
                          final_logits_bias=False)
  with pytest.raises(ValueError, match="final_logits_bias=False"):
    bart.config_to_hf(cfg)


# The released config.json fields (facebook/bart-base, bart-large, mbart-large-cc25) that set
# shapes; the rest are the classes' defaults.
RELEASED = {
    "bart-base": ("BartForConditionalGeneration", dict(
        vocab_size=50265, d_model=768, encoder_layers=6, decoder_layers=6,
        encoder_attention_heads=12, decoder_attention_heads=12, encoder_ffn_dim=3072,
        decoder_ffn_dim=3072, max_position_embeddings=1024, scale_embedding=False)),
    "bart-large": ("BartForConditionalGeneration", dict(
        vocab_size=50265, d_model=1024, encoder_layers=12, decoder_layers=12,
        encoder_attention_heads=16, decoder_attention_heads=16, encoder_ffn_dim=4096,
        decoder_ffn_dim=4096, max_position_embeddings=1024, scale_embedding=False)),
    "mbart-large-cc25": ("MBartForConditionalGeneration", dict(
        vocab_size=250027, d_model=1024, encoder_layers=12, decoder_layers=12,
        encoder_attention_heads=16, decoder_attention_heads=16, encoder_ffn_dim=4096,
        decoder_ffn_dim=4096, max_position_embeddings=1024, scale_embedding=True)),
}


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_presets_count_what_transformers_counts(name):
  from zoo.presets import PUBLISHED_PARAMS

  arch, fields = RELEASED[name]
  config_cls, model_cls = CLASSES[arch]
  with torch.device("meta"):
    hf = model_cls(config_cls(**fields))
  assert sum(p.numel() for p in hf.parameters()) == PUBLISHED_PARAMS[name]
  # zoo's final_logits_bias is a parameter; transformers keeps it as a buffer.
  bias = hf.final_logits_bias.numel()
  assert zoo.param_count(name, scan_layers=True) == PUBLISHED_PARAMS[name] + bias
  exported = bart.config_to_hf(zoo.get_config(name))
  assert {k: exported[k] for k in fields} == fields
  assert exported["architectures"] == [arch]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
  """A random tiny BART with a byte-level BPE tokenizer.json (<s> <pad> </s> <unk> = 0..3)."""
  import inspect

  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

  tok = Tokenizer(models.BPE(unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  texts = [inspect.getdoc(f) or "" for f in (json.dumps, json.loads, np.mean, zoo.from_pretrained)]
  tok.train_from_iterator(texts, trainers.BpeTrainer(
      vocab_size=320, special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  hf = hf_model("BartForConditionalGeneration", seed=7,
                vocab_size=tok.get_vocab_size(), max_position_embeddings=80)
  path = tmp_path_factory.mktemp("tiny_bart")
  hf.save_pretrained(str(path))
  tok.save(str(path / "tokenizer.json"))
  return path


def test_summarization_config_fine_tunes_a_bart_folder_through_the_loop(tiny_folder, tmp_path):
  import runpy

  import jax

  from zoo.pretrained import export
  from zoo.training import loop

  folder = tiny_folder
  c = runpy.run_path("configs/summarization.py")["get_config"]("bart-base")
  c.init.path = str(folder)
  c.data.update(src_len=64, tgt_len=24)
  c.train.update(batch_size=4, num_steps=2, log_every=2, checkpoint_every=2, progress_bar=False,
                 plot=False)
  c.optim.update(warmup_steps=1, lr=1e-3)
  c.eval.update(every=0, num_batches=1, decode_batches=1, num_beams=2)
  c.mesh.update(data=1)
  result = loop.train(c, str(tmp_path / "run"), devices=jax.devices()[:1])
  assert result.step == 2 and np.isfinite(result.eval["loss"])
  assert 0 <= result.eval["rouge1"] <= 100 and "lead_rouge1" in result.eval
  _, start = zoo.from_pretrained(folder)
  moved = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) - b))),
                       result.state.params, start)
  assert max(jax.tree.leaves(moved)) > 0  # it trained the checkpoint's weights
  export.export_run(str(tmp_path / "run"), str(tmp_path / "out"))
  back = transformers.BartForConditionalGeneration.from_pretrained(str(tmp_path / "out"))
  assert back.config.d_model == D and (tmp_path / "out" / "tokenizer.json").exists()


def test_attention_analysis_reads_bart_and_equals_transformers_maps(tiny_folder, tmp_path):
  from zoo.analysis.__main__ import main

  text, target = "Return the JSON string of obj.", "JSON string"
  assert main(["attention", "--out", str(tmp_path), "--checkpoint", str(tiny_folder),
               "--text", text, "--target", target]) == 0
  data = json.loads((tmp_path / "attention.json").read_text())
  tok = zoo.load_tokenizer(tiny_folder)
  src, tgt = tok.encode(text), [EOS, *tok.encode(target)]  # decoder_start_token_id first
  hf = transformers.BartForConditionalGeneration.from_pretrained(
      str(tiny_folder), attn_implementation="eager").eval()
  with torch.no_grad():
    out = hf(input_ids=torch.tensor([src]), decoder_input_ids=torch.tensor([tgt]),
             output_attentions=True)
  for key, ref in (("cross", out.cross_attentions), ("encoder", out.encoder_attentions),
                   ("decoder", out.decoder_attentions)):
    row = data[key][0]
    assert row["layer"] == 1 and set(row["heads"]) == {str(h) for h in range(N)}
    for h, w in row["heads"].items():
      np.testing.assert_allclose(np.asarray(w), ref[1][0, int(h)].numpy(), atol=2e-4)


# BART's denoising pretraining task (text infilling + sentence permutation).


def test_infill_masks_the_ratio_in_poisson_spans_one_mask_each():
  from zoo.data import denoising

  rng = np.random.default_rng(0)
  lengths = np.concatenate([denoising.span_lengths(300, 3.0, rng) for _ in range(200)])
  assert abs(lengths[:-1].mean() - 3.0) < 0.1 and lengths.min() == 0  # Poisson(3), empty too
  tokens = np.arange(10, 110)
  for _ in range(20):
    out = denoising.infill(tokens, 0.3, 3.0, 4, rng)
    kept = out[out != 4]
    assert len(kept) == 70  # round(100 * 0.3) tokens gone
    assert np.all(np.diff(kept) > 0)  # the rest in order: only spans were removed
    # Every removed run of tokens sits where a mask is (runs of length 0 are insertions).
    pos = np.searchsorted(tokens, kept)
    gaps = np.diff(np.concatenate([[-1], pos, [len(tokens)]])) - 1
    masks_between = np.diff(np.concatenate([[-1], np.flatnonzero(out != 4), [len(out)]])) - 1
    assert np.all((gaps == 0) | (masks_between > 0))


def test_denoising_batches_permute_sentences_and_mask_spans(monkeypatch):
  import zoo.data as zd
  from zoo.data import denoising, offline
  from zoo.data.config import default_config
  from zoo.data.tokenizers import ByteTokenizer
  from zoo.generate.decoder import until_eos

  tok = ByteTokenizer()  # has a <mask> id
  monkeypatch.setattr(zd, "make_tokenizer", lambda cfg: tok)
  rows = {}
  for ratio in (0.0, 0.3):
    cfg = default_config("denoising", tokenizer="byte", src_len=160, mask_ratio=ratio)
    rows[ratio] = next(iter(zd.build_dataset(cfg, split="validation", global_batch_size=8,
                                             seed=0)))
  docs = denoising.documents(cfg, "validation")[:8]
  plain, masked = rows[0.0], rows[0.3]
  np.testing.assert_array_equal(plain["tgt_out_ids"], masked["tgt_out_ids"])
  np.testing.assert_array_equal(plain["tgt_in_ids"][:, 0], tok.bos_id)
  permuted = 0
  for i, doc in enumerate(docs):
    target = until_eos(plain["tgt_out_ids"][i], tok.eos_id)
    assert tok.decode(target).startswith(offline.sentences(doc)[0][:20])
    source = until_eos(plain["src_ids"][i], tok.eos_id)
    assert sorted(source) == sorted(target)  # mask_ratio 0: the sentences permuted only
    permuted += source != target
    noisy = until_eos(masked["src_ids"][i], tok.eos_id)
    assert noisy.count(tok.mask_id) >= 1 and len(noisy) < len(target)
  assert permuted >= 3


def test_denoising_task_trains_a_bart_shaped_model_through_the_loop(tmp_path):
  import jax

  from zoo.training import config as config_lib
  from zoo.training import loop

  c = config_lib.base_config("denoising", "bart-base")
  c.model.update(d_model=32, num_heads=4, num_encoder_layers=1, num_decoder_layers=1,
                 mlp_dim=64, max_len=66, dropout_rate=0.0)
  c.data.update(tokenizer="byte", src_len=64)
  c.train.update(batch_size=4, num_steps=3, log_every=3, checkpoint_every=100,
                 progress_bar=False, plot=False)
  c.optim.update(lr=3e-3, warmup_steps=1)
  c.eval.update(every=0, num_batches=1)
  c.mesh.update(data=1)
  result = loop.train(c, str(tmp_path), devices=jax.devices()[:1])
  assert result.step == 3 and np.isfinite(result.eval["loss"])
  # The BART layout: learned positions, embedding norms, the logits bias.
  assert {"encoder_positions", "encoder_embedding_norm", "final_logits_bias"} <= set(
      result.state.params)
