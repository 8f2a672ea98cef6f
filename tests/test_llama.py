"""Llama, Mistral and Qwen2 checkpoints as configurations of the GPT family, against Hugging
Face models built locally with random weights: logits, export, greedy generation, RoPE
scaling, loading onto a mesh, LoRA fine-tuning through the loop, the CLI, and bad inputs.
"""

import json
import os
import runpy

import jax
import numpy as np
import pytest
from flax import traverse_util

import zoo
from zoo import generate as zg
from zoo.generate import cli
from zoo.layers.positional import RopeScaling, rope_frequencies
from zoo.pretrained import assemble, checkpoint_io
from zoo.pretrained import export as export_lib
from zoo.training import loop
from zoo.training import trainable as tr

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ATOL = 1e-4
V, WINDOW = 128, 5
SHAPE = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
             num_attention_heads=4, max_position_embeddings=64)
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 4.0,
               "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}


def _hf(name: str, **extra):
  """A tiny random model of each architecture with what makes it differ from the others."""
  shape = {**SHAPE, **{k: extra.pop(k) for k in list(extra) if k in SHAPE}}
  if name == "llama":  # GQA, head_dim independent of d_model (4 x 16 != 32), Llama 3 RoPE
    cfg = transformers.LlamaConfig(**shape, num_key_value_heads=2, head_dim=16,
                                   rope_parameters=LLAMA3_ROPE, **extra)
    cls = transformers.LlamaForCausalLM
  elif name == "mistral":  # a window shorter than the test sequences
    cfg = transformers.MistralConfig(**shape, num_key_value_heads=2, sliding_window=WINDOW,
                                     **extra)
    cls = transformers.MistralForCausalLM
  else:  # q/k/v biases, multi-query, tied embeddings
    cfg = transformers.Qwen2Config(**shape, num_key_value_heads=1, tie_word_embeddings=True,
                                   **extra)
    cls = transformers.Qwen2ForCausalLM
  model = cls(cfg)
  g = torch.Generator().manual_seed(len(name))
  with torch.no_grad():
    for key, t in model.state_dict().items():
      noise = torch.randn(t.shape, generator=g) * 0.3
      t.copy_(1.0 + noise if "norm" in key else noise)  # biases random too
  return model.eval()


def _flat(tree):
  flat = traverse_util.flatten_dict(jax.device_get(tree), sep="/")
  return {k: np.asarray(v) for k, v in flat.items()}


def _max_diff(a, b, valid=None):
  d = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
  return float(d[valid].max() if valid is not None else d.max())


def _hf_logits(hf, ids, mask):
  with torch.no_grad():
    return hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()


IDS = np.random.RandomState(0).randint(0, V, (2, 12))
MASK = np.ones_like(IDS)
MASK[1, 7:] = 0  # right padding
PROMPTS = [[5, 9, 3, 7, 1, 2, 8, 4, 6, 10], [11, 12, 13], [20, 21, 22, 23, 24, 25]]
NEW = 10  # 10 + 10 tokens: past the window of 5


@pytest.mark.parametrize("name", ["llama", "mistral", "qwen2"])
def test_logits_export_and_greedy_generation_match_hugging_face(tmp_path, name):
  hf = _hf(name)
  path = str(tmp_path / "hf")
  hf.save_pretrained(path, max_shard_size="20KB")  # model-0000x-of-0000y + index
  assert os.path.exists(os.path.join(path, "model.safetensors.index.json"))
  model, params = zoo.from_pretrained(path)
  cfg = model.config
  assert (cfg.position, cfg.norm, cfg.gated_mlp, cfg.activation) == ("rope", "rmsnorm", True,
                                                                      "silu")
  assert cfg.sliding_window == (WINDOW if name == "mistral" else None)
  assert cfg.rope_scaling == ("llama3" if name == "llama" else "none")
  assert cfg.qkv_bias == (True if name == "qwen2" else None)

  valid = MASK.astype(bool)
  ref = _hf_logits(hf, IDS, MASK)
  out = _forward(model, params, IDS, valid)
  assert out.dtype == np.float32 and _max_diff(out, ref, valid) < ATOL
  if name == "mistral":  # the window matters at this length
    full = _forward(zoo.build(cfg, sliding_window=None), params, IDS, valid)
    assert _max_diff(full, ref, valid) > 1e-2

  zoo.save_pretrained(model, params, tmp_path / "out")
  back = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "out")).eval()
  assert type(back) is type(hf)
  assert _max_diff(_hf_logits(back, IDS, MASK), ref, valid) < ATOL
  _, again = zoo.from_pretrained(tmp_path / "out")
  want = _flat(params)
  assert sorted(_flat(again)) == sorted(want)
  for k, v in _flat(again).items():
    np.testing.assert_array_equal(v, want[k], err_msg=k)

  # Greedy decoding of a left-padded batch of prompts of different lengths.
  pad, longest = 0, max(map(len, PROMPTS))
  ids = torch.full((len(PROMPTS), longest), pad)
  attn = torch.zeros_like(ids)
  for i, row in enumerate(PROMPTS):
    ids[i, longest - len(row):] = torch.tensor(row)
    attn[i, longest - len(row):] = 1
  kw = dict(do_sample=False, max_new_tokens=NEW, min_new_tokens=NEW, pad_token_id=pad,
            eos_token_id=None)
  with torch.no_grad():
    want = hf.generate(input_ids=ids, attention_mask=attn, **kw)[:, longest:].numpy()
  ours = zg.generate(model, params, PROMPTS, max_new_tokens=NEW, pad_id=pad)
  assert ours.tolist() == want.tolist()

  # Several stop ids (Llama 3 lists two): each row stops at the first, the same program runs.
  traces = zg.TRACE_COUNTS["decoder"]
  stops = [int(want[0, 2]), int(want[1, 1])]
  cut = zg.generate(model, params, PROMPTS, max_new_tokens=NEW, pad_id=pad, eos_id=stops)
  assert zg.TRACE_COUNTS["decoder"] == traces
  for row, full in zip(cut.tolist(), want.tolist()):
    n = next((j for j, t in enumerate(full) if t in stops), NEW - 1) + 1
    assert row == full[:n] + [pad] * (NEW - n)

  if name == "mistral":  # streaming yields the same tokens, step by step
    steps = list(zg.stream(model, params, PROMPTS, max_new_tokens=NEW, pad_id=pad))
    assert np.stack(steps, axis=1).tolist() == want.tolist()


def _forward(model, params, ids, valid):
  """One jitted forward: a compile costs less CPU than dispatching every op eagerly."""
  return np.asarray(jax.jit(lambda p: model.apply({"params": p}, ids, attention_mask=valid))(
      params))


def test_repetition_penalty_and_stop_ids_follow_hugging_face():
  from transformers.generation import logits_process as lp

  rng = np.random.RandomState(0)
  logits = rng.randn(3, 40).astype(np.float32) * 3
  ids = rng.randint(0, 40, (3, 6))
  seen = np.zeros((3, 40), bool)
  seen[np.arange(3)[:, None], ids] = True
  want = lp.RepetitionPenaltyLogitsProcessor(1.7)(torch.tensor(ids), torch.tensor(logits))
  got = zg.repetition_penalty(logits, seen, 1.7)
  np.testing.assert_allclose(np.asarray(got), want.numpy(), rtol=1e-6)
  assert zg.decoder.until_eos([4, 7, 9, 2, 7], [9, 2]) == [4, 7]
  assert zg.decoder.stop_array([9, 2]).tolist() == [9, 2, -1, -1]


def test_rope_frequency_variants_match_hugging_face():
  from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

  for params, ours in (
      ({"rope_type": "linear", "rope_theta": 500.0, "factor": 3.0},
       RopeScaling(kind="linear", factor=3.0)),
      ({**LLAMA3_ROPE, "rope_theta": 500.0},
       RopeScaling(kind="llama3", factor=4.0, low_freq_factor=1.0, high_freq_factor=4.0,
                   original_max_len=64)),
  ):
    cfg = transformers.LlamaConfig(**SHAPE, head_dim=32, rope_parameters=params)
    want, scale = ROPE_INIT_FUNCTIONS[params["rope_type"]](cfg, "cpu")
    got = rope_frequencies(32, 500.0, ours)
    assert scale == 1.0
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-6)
  # Low, medium and high frequencies all occur here: some scaled, some kept, some between.
  base = rope_frequencies(32, 500.0)
  ratio = np.asarray(base / rope_frequencies(32, 500.0, ours))
  assert ratio.max() == pytest.approx(4.0) and ratio.min() == pytest.approx(1.0)
  assert ((ratio > 1.01) & (ratio < 3.99)).any()


def test_loading_onto_a_mesh_reads_each_devices_block(tmp_path, monkeypatch):
  path = str(tmp_path / "hf")
  _hf("llama").save_pretrained(path, max_shard_size="20KB")
  model, want = zoo.from_pretrained(path)
  reads = []
  read_slice = checkpoint_io.TensorStore.read_slice

  def counting(self, key, index):
    out = read_slice(self, key, index)
    reads.append((key, out.size))
    return out

  monkeypatch.setattr(checkpoint_io.TensorStore, "read_slice", counting)
  mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"),
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)
  _, params = zoo.from_pretrained(path, mesh=mesh)
  shardings = _flat(jax.tree.map(lambda s: np.array(s, object), assemble.param_shardings(
      model, mesh)))
  got = traverse_util.flatten_dict(params, sep="/")
  assert sorted(got) == sorted(_flat(want))
  for k, x in got.items():
    assert x.sharding == shardings[k].item(), k
    np.testing.assert_array_equal(np.asarray(x), _flat(want)[k], err_msg=k)
  q = got["decoder/layers_0/attn/query/kernel"]
  assert q.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor", None)
  # Every tensor came in per-device blocks: a kernel split 4 ways is read in quarters, and
  # a block replicated over "data" is read once.
  per_key = {}
  for key, size in reads:
    per_key.setdefault(key, []).append(size)
  q_reads = per_key["model.layers.0.self_attn.q_proj.weight"]
  assert q_reads == [q.size // 4] * 4
  assert sum(len(v) for v in per_key.values()) < 8 * len(got)


def _lora_config(init):
  c = runpy.run_path(os.path.join(ROOT, "configs", "llama.py"))["get_config"]("lora")
  c.init.path = init
  c.train.update(batch_size=4, num_steps=3, log_every=1, checkpoint_every=100,
                 progress_bar=False, plot=False)
  c.train.compiler_options = {"xla_backend_optimization_level": 0}
  c.optim.update(warmup_steps=1, lr=1e-2)
  c.eval.update(every=-1)
  c.sample.num_tokens = 0
  c.mesh.update(data=1, fsdp=1)
  c.data.seq_len = 16
  return c


def test_lora_fine_tuning_trains_only_adapters_in_bfloat16(tmp_path):
  hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
      **{**SHAPE, "vocab_size": 300, "num_hidden_layers": 1}, num_key_value_heads=2))
  path = str(tmp_path / "hf")
  hf.save_pretrained(path)  # no tokenizer: the data's byte tokenizer (264 ids) fits in 300
  result = loop.train(_lora_config(path), str(tmp_path / "run"), devices=jax.devices()[:1])
  assert result.step == 3
  params, base = _flat(result.state.params), _flat(zoo.from_pretrained(path)[1])
  adapters = [k for k in params if k.rpartition("/")[2] in ("lora_a", "lora_b")]
  assert {k.split("/")[-2] for k in adapters} == {"query", "key", "value", "out"}
  for k, v in params.items():
    if k.rpartition("/")[2] not in tr.ADAPTER_NAMES:
      assert v.dtype == np.float32, k  # float32 master weights under bfloat16 compute
      np.testing.assert_array_equal(v, base[k], err_msg=k)
  assert any(np.any(params[k] != 0) for k in adapters if k.endswith("lora_b"))
  cfg = zoo.pretrained.api.read_workdir(str(tmp_path / "run")).config
  assert np.dtype(cfg.dtype) == np.dtype("bfloat16") and cfg.gated_mlp

  # Out again: export merges the adapters; transformers reads the merged float32 weights.
  export_lib.export_run(str(tmp_path / "run"), str(tmp_path / "export"))
  back = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "export")).eval()
  assert type(back).__name__ == "LlamaForCausalLM"
  merged = zoo.build(cfg, dtype=np.float32)
  ids = np.random.RandomState(2).randint(0, 300, (1, 8))
  ours = _forward(merged, tr.merge_adapters(result.state.params), ids, np.ones_like(ids, bool))
  assert _max_diff(ours, _hf_logits(back, ids, np.ones_like(ids))) < ATOL


def _word_tokenizer(folder, size):
  from tokenizers import Tokenizer, models, pre_tokenizers

  tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(size)}, unk_token="w0"))
  tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  tok.save(os.path.join(folder, "tokenizer.json"))


def test_cli_streams_tokens_and_stops_at_strings(tmp_path, capsys):
  path = str(tmp_path / "hf")
  hf = _hf("mistral", eos_token_id=None, bos_token_id=None, num_hidden_layers=1)
  hf.save_pretrained(path)
  _word_tokenizer(path, V)
  argv = ["--checkpoint", path, "--prompt", "w5 w9 w3 w7", "--max_new_tokens", "8",
          "--repetition_penalty", "1.5", "--stream"]
  assert cli.main(argv) == 0
  full = capsys.readouterr().out.strip()
  with torch.no_grad():
    want = hf.generate(input_ids=torch.tensor([[5, 9, 3, 7]]), do_sample=False, max_new_tokens=8,
                       min_new_tokens=8, repetition_penalty=1.5, eos_token_id=None,
                       pad_token_id=0)[0].tolist()
  assert full == " ".join(f"w{i}" for i in want)
  stop = full.split()[6]  # the third new word
  cut = full[: full.index(" " + stop, len("w5 w9 w3 w7"))]
  pieces = []
  loaded = cli.load(path)
  text = cli.complete(loaded, "w5 w9 w3 w7", max_new_tokens=8, stop=[" " + stop],
                      on_text=pieces.append, repetition_penalty=1.5)
  assert text == cut and "".join(pieces) == cut and len(pieces) > 2
  assert cli.main(argv + ["--stop", " " + stop]) == 0
  assert capsys.readouterr().out.strip() == cut


def _edit_config(path, **changes):
  cfg = json.load(open(os.path.join(path, "config.json")))
  cfg.update(changes)
  json.dump(cfg, open(os.path.join(path, "config.json"), "w"))


def test_bad_checkpoints_are_clear_errors_before_tracing(tmp_path):
  path = str(tmp_path / "hf")
  _hf("mistral").save_pretrained(path, max_shard_size="20KB")
  config = os.path.join(path, "config.json")
  original = json.load(open(config))

  _edit_config(path, rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0})
  with pytest.raises(ValueError, match=rf"{config}: rope_type='yarn' .*not implemented.*"
                     "default, linear, llama3"):
    zoo.from_pretrained(path)

  _edit_config(path, **{**original, "max_position_embeddings": 4})
  with pytest.raises(ValueError, match=rf"{config}: sliding_window=5 is longer than "
                     r"max_position_embeddings=4, so every KV cache .* shorter than the window.*"
                     "set sliding_window to null"):
    zoo.from_pretrained(path)

  _edit_config(path, **{**original, "num_key_value_heads": 3})
  with pytest.raises(ValueError, match=rf"{config}: num_attention_heads=4 is not a multiple of "
                     r"num_key_value_heads=3.*e\.g\. 1, 2, 4"):
    zoo.from_pretrained(path)

  _edit_config(path, **{**original, "num_key_value_heads": 4})  # the weights hold 2 KV heads
  with pytest.raises(ValueError, match=r"'model\.layers\.0\.self_attn\.k_proj\.weight'.*shape "
                     r"\(16, 32\) but the zoo model expects \(32, 32\).*num_key_value_heads=4"):
    zoo.from_pretrained(path)

  _edit_config(path, **original)
  index = json.load(open(os.path.join(path, "model.safetensors.index.json")))
  shard = sorted(set(index["weight_map"].values()))[-1]
  os.remove(os.path.join(path, shard))
  with pytest.raises(ValueError, match=rf"index\.json lists shard {shard} .*does not exist; "
                     "download the missing shard"):
    zoo.from_pretrained(path)
