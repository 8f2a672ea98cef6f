"""Qwen3 and Phi-3 checkpoints as configurations of the GPT family, against Hugging Face
models built locally with random weights: logits, export, zoo -> HF -> zoo, scanned layers,
greedy generation on a left-padded batch, preset sizes and bad configs.
"""

import json
import os

import jax
import numpy as np
import pytest
from flax import traverse_util

import zoo
from zoo import generate as zg
from zoo.presets import PUBLISHED_PARAMS

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

ATOL = 1e-4
V, WINDOW = 128, 4
SHAPE = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
             num_attention_heads=4, max_position_embeddings=64)
IDS = np.random.RandomState(0).randint(0, V, (2, 12))
MASK = np.ones_like(IDS)
MASK[1, 7:] = 0  # right padding
PROMPTS = [[5, 9, 3, 7, 1, 2, 8, 4, 6, 10], [11, 12, 13], [20, 21, 22, 23, 24, 25]]
NEW = 8


def randomize(model, seed):
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for key, t in model.state_dict().items():
      noise = torch.randn(t.shape, generator=g) * 0.3
      t.copy_(1.0 + noise if "norm" in key else noise)
  return model.eval()


def _hf(name):
  if name == "qwen3":  # q/k norms, GQA, head_dim independent of d_model, tied embeddings
    cfg = transformers.Qwen3Config(**SHAPE, num_key_value_heads=2, head_dim=16,
                                   tie_word_embeddings=True)
    return randomize(transformers.Qwen3ForCausalLM(cfg), 3)
  # Phi-3 with grouped KV heads (unequal q/k/v parts of qkv_proj) and a short window
  cfg = transformers.Phi3Config(**SHAPE, num_key_value_heads=2, sliding_window=WINDOW,
                                pad_token_id=0)
  return randomize(transformers.Phi3ForCausalLM(cfg), 4)


def _flat(tree):
  flat = traverse_util.flatten_dict(jax.device_get(tree), sep="/")
  return {k: np.asarray(v) for k, v in flat.items()}


def _max_diff(a, b, valid=None):
  d = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
  return float(d[valid].max() if valid is not None else d.max())


def _hf_logits(hf, ids, mask):
  with torch.no_grad():
    return hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()


def _forward(model, params, ids, valid):
  return np.asarray(jax.jit(lambda p: model.apply({"params": p}, ids, attention_mask=valid))(
      params))


def hf_greedy(hf, prompts, new, pad=0, **extra):
  """transformers' greedy ``generate`` on the left-padded batch of ``prompts``."""
  longest = max(map(len, prompts))
  ids = torch.full((len(prompts), longest), pad)
  attn = torch.zeros_like(ids)
  for i, row in enumerate(prompts):
    ids[i, longest - len(row):] = torch.tensor(row)
    attn[i, longest - len(row):] = 1
  with torch.no_grad():
    out = hf.generate(input_ids=ids, attention_mask=attn, do_sample=False, max_new_tokens=new,
                      min_new_tokens=new, pad_token_id=pad, eos_token_id=None, **extra)
  return out[:, longest:].numpy()


@pytest.mark.parametrize("name", ["qwen3", "phi3"])
def test_logits_export_and_generation_match_hugging_face(tmp_path, name):
  hf = _hf(name)
  path = str(tmp_path / "hf")
  hf.save_pretrained(path, max_shard_size="20KB")
  model, params = zoo.from_pretrained(path)
  cfg = model.config
  assert cfg.qk_norm == (name == "qwen3") and cfg.qkv_bias is None
  assert cfg.sliding_window == (WINDOW if name == "phi3" else None)
  valid = MASK.astype(bool)
  ref = _hf_logits(hf, IDS, MASK)
  out = _forward(model, params, IDS, valid)
  assert _max_diff(out, ref, valid) < ATOL
  if name == "qwen3":  # the q/k norms matter: without them the logits are far off
    plain = zoo.build(cfg, qk_norm=False)
    stripped = jax.tree.map(lambda x: x, params)
    for layer in stripped["decoder"].values():
      del layer["attn"]["query_norm"], layer["attn"]["key_norm"]
    assert _max_diff(_forward(plain, stripped, IDS, valid), ref, valid) > 1e-2
  scanned, sparams = zoo.from_pretrained(path, scan_layers=True)
  assert _max_diff(_forward(scanned, sparams, IDS, valid), ref, valid) < ATOL

  zoo.save_pretrained(model, params, tmp_path / "out")
  saved = json.load(open(tmp_path / "out" / "config.json"))
  assert saved["architectures"] == [type(hf).__name__]
  back = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "out")).eval()
  assert type(back) is type(hf)
  assert _max_diff(_hf_logits(back, IDS, MASK), ref, valid) < ATOL
  _, again = zoo.from_pretrained(tmp_path / "out")
  want = _flat(params)
  assert sorted(_flat(again)) == sorted(want)
  for k, v in _flat(again).items():
    np.testing.assert_array_equal(v, want[k], err_msg=k)

  want = hf_greedy(hf, PROMPTS, NEW)  # 10 + 8 tokens: past Phi-3's window of 4
  assert zg.generate(model, params, PROMPTS, max_new_tokens=NEW).tolist() == want.tolist()
  assert zg.generate(scanned, sparams, PROMPTS, max_new_tokens=NEW).tolist() == want.tolist()


def _meta_count(cls, cfg):
  with torch.device("meta"):
    model = cls(cfg)
  return sum(p.numel() for p in model.parameters())


# The released config.json fields that shape the parameters (Qwen/Qwen3-0.6B, Qwen/Qwen3-8B,
# microsoft/Phi-3-mini-4k-instruct).
RELEASED = {
    "qwen3-0.6b": ("Qwen3", dict(vocab_size=151936, hidden_size=1024, intermediate_size=3072,
                                 num_hidden_layers=28, num_attention_heads=16,
                                 num_key_value_heads=8, head_dim=128, tie_word_embeddings=True)),
    "qwen3-8b": ("Qwen3", dict(vocab_size=151936, hidden_size=4096, intermediate_size=12288,
                               num_hidden_layers=36, num_attention_heads=32,
                               num_key_value_heads=8, head_dim=128, tie_word_embeddings=False)),
    "phi3-mini": ("Phi3", dict(vocab_size=32064, hidden_size=3072, intermediate_size=8192,
                               num_hidden_layers=32, num_attention_heads=32,
                               num_key_value_heads=32, tie_word_embeddings=False)),
}


@pytest.mark.parametrize("preset", sorted(RELEASED))
def test_preset_sizes_equal_transformers_count_of_the_released_config(preset):
  kind, fields = RELEASED[preset]
  want = _meta_count(getattr(transformers, f"{kind}ForCausalLM"),
                     getattr(transformers, f"{kind}Config")(**fields))
  assert PUBLISHED_PARAMS[preset] == want
  assert zoo.param_count(preset, scan_layers=True) == want


def _edit_config(path, **changes):
  cfg = json.load(open(os.path.join(path, "config.json")))
  cfg.update(changes)
  json.dump(cfg, open(os.path.join(path, "config.json"), "w"))


def test_unimplemented_phi3_variants_are_clear_errors(tmp_path):
  path = str(tmp_path / "hf")
  _hf("phi3").save_pretrained(path)
  config = os.path.join(path, "config.json")
  longrope = {"rope_type": "longrope", "rope_theta": 1e4, "short_factor": [1.0] * 4,
              "long_factor": [1.0] * 4, "original_max_position_embeddings": 32}
  _edit_config(path, rope_parameters=longrope)
  with pytest.raises(ValueError, match=rf"{config}: rope_scaling type 'longrope' .*LongRoPE.*not "
                     "implemented.*4k-context"):
    zoo.from_pretrained(path)
  _edit_config(path, rope_parameters={"rope_type": "default", "rope_theta": 1e4,
                                      "partial_rotary_factor": 0.5})
  with pytest.raises(ValueError, match=r"partial_rotary_factor=0\.5 .*not implemented"):
    zoo.from_pretrained(path)
