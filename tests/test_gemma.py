"""Gemma, Gemma 2 and Gemma 3 (text) as configurations of the GPT family, against Hugging Face
models built locally with random weights: logits on a right-padded batch, export and zoo -> HF
-> zoo, scanned layers, greedy generation on a left-padded batch past the sliding window, the
final-logit soft-cap in decoding, LoRA fine-tuning through the loop, preset sizes, bad configs.
"""

import json
import os
import runpy

import jax
import numpy as np
import pytest
from test_qwen3_phi3 import (  # noqa: I001  (shared helpers of the decoder tests)
  IDS,
  MASK,
  PROMPTS,
  V,
  _flat,
  _forward,
  _hf_logits,
  _max_diff,
  _meta_count,
  hf_greedy,
  randomize,
)

import zoo
from zoo import generate as zg
from zoo.presets import PUBLISHED_PARAMS
from zoo.pretrained import export as export_lib
from zoo.training import loop
from zoo.training import trainable as tr

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ATOL = 1e-4
WINDOW, NEW = 4, 8  # prompts of up to 10 tokens + 8 new ones: far past the window
SHAPE = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_attention_heads=4,
             head_dim=16, max_position_embeddings=64, pad_token_id=0)


def _hf(name, **extra):
  """A tiny random model of each generation with what makes it differ from the others."""
  shape = {**SHAPE, **extra}
  if name == "gemma":  # multi-query attention, head_dim * heads != hidden_size
    cfg = transformers.GemmaConfig(**shape, num_hidden_layers=2, num_key_value_heads=1)
    return randomize(transformers.GemmaForCausalLM(cfg), 5)
  if name == "gemma2":  # caps small enough to bite, query_pre_attn_scalar != head_dim
    cfg = transformers.Gemma2Config(
        **shape, num_hidden_layers=2, num_key_value_heads=2, sliding_window=WINDOW,
        query_pre_attn_scalar=24, attn_logit_softcapping=3.0, final_logit_softcapping=2.0)
    return randomize(transformers.Gemma2ForCausalLM(cfg), 6)
  # Gemma 3: two local layers (base 100) then a global one (base 10000, linear scaling 2)
  cfg = transformers.Gemma3TextConfig(
      **shape, num_hidden_layers=3, num_key_value_heads=2, sliding_window=WINDOW,
      query_pre_attn_scalar=20,
      layer_types=["sliding_attention", "sliding_attention", "full_attention"],
      rope_parameters={
          "full_attention": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0},
          "sliding_attention": {"rope_type": "default", "rope_theta": 100.0}})
  return randomize(transformers.Gemma3ForCausalLM(cfg), 7)


@pytest.fixture(scope="module", params=["gemma", "gemma2", "gemma3"])
def checkpoint(request, tmp_path_factory):
  """``(name, hf model, folder)``, each model built and saved once."""
  hf = _hf(request.param)
  path = str(tmp_path_factory.mktemp(request.param) / "hf")
  hf.save_pretrained(path, max_shard_size="20KB")
  return request.param, hf, path


def test_logits_export_and_reimport_match_hugging_face(checkpoint, tmp_path):
  name, hf, path = checkpoint
  model, params = zoo.from_pretrained(path)
  cfg = model.config
  assert cfg.norm_scale_offset == 1.0 and cfg.scale_embeddings and cfg.activation == "gelu_tanh"
  assert cfg.sublayer_post_norm == (name != "gemma") and cfg.qk_norm == (name == "gemma3")
  assert cfg.layer_types == {"gemma": (), "gemma2": ("local", "global"),
                             "gemma3": ("local", "local", "global")}[name]
  valid = MASK.astype(bool)
  ref = _hf_logits(hf, IDS, MASK)
  assert _max_diff(_forward(model, params, IDS, valid), ref, valid) < ATOL
  if cfg.layer_types:  # scanned layers: the windows and RoPE tables as scanned inputs
    scanned, sparams = zoo.from_pretrained(path, scan_layers=True)
    assert _max_diff(_forward(scanned, sparams, IDS, valid), ref, valid) < ATOL
  if name == "gemma2":  # each Gemma 2 option changes the logits
    for change in (dict(attention_softcap=None), dict(final_logit_softcap=None),
                   dict(attention_scale=None), dict(layer_types=())):
      assert _max_diff(_forward(zoo.build(cfg, **change), params, IDS, valid), ref, valid) > 1e-3
  if name == "gemma3":  # the local layers' own RoPE base matters
    assert _max_diff(_forward(zoo.build(cfg, local_rope_base=None), params, IDS, valid), ref,
                     valid) > 1e-3

  zoo.save_pretrained(model, params, tmp_path / "out")
  back = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "out")).eval()
  assert type(back) is type(hf)
  assert _max_diff(_hf_logits(back, IDS, MASK), ref, valid) < ATOL
  again_model, again = zoo.from_pretrained(tmp_path / "out")
  assert again_model.config == cfg
  want = _flat(params)
  assert sorted(_flat(again)) == sorted(want)
  for k, v in _flat(again).items():
    np.testing.assert_array_equal(v, want[k], err_msg=k)


def test_greedy_generation_matches_hugging_face_past_the_window(checkpoint):
  name, hf, path = checkpoint
  want = hf_greedy(hf, PROMPTS, NEW)
  for scan in (False, True) if name == "gemma3" else (False,):  # scan: per-layer inputs
    model, params = zoo.from_pretrained(path, scan_layers=scan)
    assert zg.generate(model, params, PROMPTS, max_new_tokens=NEW).tolist() == want.tolist()
  if name == "gemma2":
    # A repetition penalty rescales the logits the model returns, so the choice depends on
    # whether the output soft-cap was applied first (as transformers does).
    want = hf_greedy(hf, PROMPTS, NEW, repetition_penalty=1.3)
    got = zg.generate(model, params, PROMPTS, max_new_tokens=NEW, repetition_penalty=1.3)
    assert got.tolist() == want.tolist()
    uncapped = zoo.build(model.config, final_logit_softcap=None)
    other = zg.generate(uncapped, params, PROMPTS, max_new_tokens=NEW, repetition_penalty=1.3)
    assert other.tolist() != want.tolist()


# The released config.json fields that shape the parameters (google/gemma-2b, gemma-7b,
# gemma-2-2b, gemma-2-9b, gemma-3-1b-pt).
RELEASED = {
    "gemma-2b": ("Gemma", dict(vocab_size=256000, hidden_size=2048, intermediate_size=16384,
                               num_hidden_layers=18, num_attention_heads=8,
                               num_key_value_heads=1, head_dim=256)),
    "gemma-7b": ("Gemma", dict(vocab_size=256000, hidden_size=3072, intermediate_size=24576,
                               num_hidden_layers=28, num_attention_heads=16,
                               num_key_value_heads=16, head_dim=256)),
    "gemma2-2b": ("Gemma2", dict(vocab_size=256000, hidden_size=2304, intermediate_size=9216,
                                 num_hidden_layers=26, num_attention_heads=8,
                                 num_key_value_heads=4, head_dim=256)),
    "gemma2-9b": ("Gemma2", dict(vocab_size=256000, hidden_size=3584, intermediate_size=14336,
                                 num_hidden_layers=42, num_attention_heads=16,
                                 num_key_value_heads=8, head_dim=256)),
    "gemma3-1b": ("Gemma3Text", dict(vocab_size=262144, hidden_size=1152,
                                     intermediate_size=6912, num_hidden_layers=26,
                                     num_attention_heads=4, num_key_value_heads=1,
                                     head_dim=256)),
}


@pytest.mark.parametrize("preset", sorted(RELEASED))
def test_preset_sizes_equal_transformers_count_of_the_released_config(preset):
  kind, fields = RELEASED[preset]
  cls = "Gemma3ForCausalLM" if kind == "Gemma3Text" else f"{kind}ForCausalLM"
  want = _meta_count(getattr(transformers, cls), getattr(transformers, f"{kind}Config")(**fields))
  assert PUBLISHED_PARAMS[preset] == want
  assert zoo.param_count(preset, scan_layers=True) == want
  cfg = zoo.get_config(preset)
  if preset == "gemma3-1b":
    assert cfg.layer_types.count("global") == 4 and cfg.layer_types[5] == "global"


@pytest.mark.parametrize("preset", ["gemma2-2b", "gemma3-1b", "qwen3-0.6b", "phi3-mini"])
def test_configs_entries_build_the_presets(preset):
  from zoo.training import config as run_config

  c = runpy.run_path(os.path.join(ROOT, "configs", "llama.py"))["get_config"](preset)
  cfg = run_config.model_config(c)
  assert cfg == zoo.get_config(preset, max_len=c.data.seq_len, dtype=cfg.dtype,
                               param_dtype=cfg.param_dtype)
  assert isinstance(cfg.layer_types, tuple) and hash(cfg)


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


def test_lora_fine_tuning_of_gemma2_and_merged_export(tmp_path):
  hf = _hf("gemma2", vocab_size=300)
  path = str(tmp_path / "hf")
  hf.save_pretrained(path)  # the data's byte tokenizer (264 ids) fits in 300
  result = loop.train(_lora_config(path), str(tmp_path / "run"), devices=jax.devices()[:1])
  assert result.step == 3
  params, base = _flat(result.state.params), _flat(zoo.from_pretrained(path)[1])
  adapters = [k for k in params if k.rpartition("/")[2] in ("lora_a", "lora_b")]
  assert {k.split("/")[-2] for k in adapters} == {"query", "key", "value", "out"}
  for k, v in params.items():
    if k.rpartition("/")[2] not in tr.ADAPTER_NAMES:
      np.testing.assert_array_equal(v, base[k], err_msg=k)
  assert any(np.any(params[k] != 0) for k in adapters if k.endswith("lora_b"))

  export_lib.export_run(str(tmp_path / "run"), str(tmp_path / "export"))
  back = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "export")).eval()
  assert type(back).__name__ == "Gemma2ForCausalLM"
  cfg = zoo.pretrained.api.read_workdir(str(tmp_path / "run")).config
  merged = zoo.build(cfg, dtype=np.float32)
  ids = np.random.RandomState(2).randint(0, 300, (1, 8))
  ours = _forward(merged, tr.merge_adapters(result.state.params), ids, np.ones_like(ids, bool))
  assert _max_diff(ours, _hf_logits(back, ids, np.ones_like(ids))) < ATOL


def _edit_config(path, **changes):
  cfg = json.load(open(os.path.join(path, "config.json")))
  cfg.update(changes)
  json.dump(cfg, open(os.path.join(path, "config.json"), "w"))


def test_bad_configs_are_clear_errors_before_tracing(tmp_path):
  path = str(tmp_path / "hf")
  _hf("gemma3").save_pretrained(path)
  config = os.path.join(path, "config.json")
  original = json.load(open(config))

  _edit_config(path, hidden_activation="gelu_erf_fancy")
  with pytest.raises(ValueError, match=rf"{config}: hidden_activation 'gelu_erf_fancy' is not "
                     "supported; known"):
    zoo.from_pretrained(path)
  yarn = {"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0}
  _edit_config(path, **{**original, "rope_parameters": {
      **original["rope_parameters"], "full_attention": yarn}})
  with pytest.raises(ValueError, match=r"rope_type='yarn' .*not implemented"):
    zoo.from_pretrained(path)
  _edit_config(path, **{**original, "layer_types": ["sliding_attention", "full_attention"]})
  with pytest.raises(ValueError, match=r"layer_types lists 2 layers but num_hidden_layers=3"):
    zoo.from_pretrained(path)
  _edit_config(path, **{**original, "layer_types": None, "sliding_window_pattern": 0})
  with pytest.raises(ValueError, match=r"sliding_window_pattern=0 must be a positive integer"):
    zoo.from_pretrained(path)
  _edit_config(path, **original)
  cfg = zoo.from_pretrained(path)[0].config
  with pytest.raises(ValueError, match=r"layer_types lists 2 layers but num_layers=3"):
    zoo.build(cfg, layer_types=("local", "global"))
  gemma2 = zoo.get_config("gemma2-2b")
  for impl in ("cudnn", "chunked"):
    with pytest.raises(ValueError, match=rf"attention_softcap=50.0 needs the logits, which "
                       rf"attention_impl='{impl}' never forms"):
      zoo.build(gemma2, attention_impl=impl)
