"""QLoRA: LoRA adapters over a quantized frozen base (lora.base_quant), through the one loop."""

import os
import runpy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

import zoo
from zoo import quantize_base as qb
from zoo.pretrained import workdir as workdir_lib
from zoo.pretrained.export import export_run
from zoo.training import loop
from zoo.training import trainable as tr

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)


def _flat(tree):
  return traverse_util.flatten_dict(tree, sep="/")


def _config(init, base_quant="nf4", steps=4):
  c = runpy.run_path(os.path.join(ROOT, "configs", "llama.py"))["get_config"]("lora")
  c.init.path = init
  c.lora.base_quant = base_quant
  c.train.update(batch_size=4, num_steps=steps, log_every=1, checkpoint_every=2,
                 progress_bar=False, plot=False)
  c.train.compiler_options = {"xla_backend_optimization_level": 0}
  c.optim.update(warmup_steps=1, lr=1e-2)
  c.eval.update(every=-1)
  c.sample.num_tokens = 0
  c.mesh.update(data=1, fsdp=1)
  c.data.seq_len = 16
  return c


@pytest.fixture(scope="module")
def qlora_run(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("qlora")
  hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**SHAPE))
  hf.save_pretrained(str(tmp / "hf"))  # no tokenizer: the byte tokenizer (264 ids) fits in 300
  config = _config(str(tmp / "hf"))
  result = loop.train(config, str(tmp / "run"), devices=jax.devices()[:1])
  return tmp, config, result


def test_only_adapters_train_and_the_base_stays_quantized(qlora_run):
  tmp, _, result = qlora_run
  assert result.step == 4
  state = _flat(result.state.params)
  base = _flat(zoo.from_pretrained(str(tmp / "hf"))[1])
  kernels = [p for p in base if p.endswith("/kernel")]
  assert kernels and not any(p in state for p in kernels)  # no float copy of a kernel
  for p in kernels:
    codes, scale = state[f"{p}/{qb.CODES}"], state[f"{p}/{qb.SCALE}"]
    shape = base[p].shape  # two 4-bit codes per bfloat16 element along the output axis
    assert codes.dtype == jnp.bfloat16 and codes.shape == (*shape[:-1], shape[-1] // 2), p
    want = qb.quantize_kernel(base[p], "nf4", qb.last_in_axis(codes.shape, scale.shape))
    np.testing.assert_array_equal(codes, want[qb.CODES], err_msg=p)  # unchanged by training
    np.testing.assert_array_equal(scale, want[qb.SCALE], err_msg=p)
    c = np.asarray(codes, np.float32)
    assert np.all((c >= 0) & (c < 256) & (c == np.round(c))), p
  for p, v in state.items():  # embeddings and norms: float and untouched
    if p in base:
      np.testing.assert_array_equal(v, base[p], err_msg=p)
  adapters = [p for p in state if p.endswith(tr.LORA_B)]
  assert adapters and any(np.any(state[p] != 0) for p in adapters)
  names = tr.ADAPTER_NAMES
  assert all(state[p].dtype == np.float32 for p in state if p.rpartition("/")[2] in names)
  # The optimizer holds moments of the adapters only.
  moments = sum(x.size for x in jax.tree.leaves(result.state.opt_state) if np.ndim(x) > 0)
  assert moments == 2 * sum(state[p].size for p in state if p.endswith(("lora_a", "lora_b")))


def test_nf4_dequantizes_to_within_a_block_step_of_the_float_kernel(qlora_run):
  tmp, _, result = qlora_run
  base = _flat(zoo.from_pretrained(str(tmp / "hf"))[1])
  state = _flat(result.state.params)
  w = np.asarray(base["decoder/layers_0/mlp/wo/kernel"])  # [F=128, D=64]: two blocks of 64
  q = {k: state[f"decoder/layers_0/mlp/wo/kernel/{k}"] for k in (qb.CODES, qb.SCALE)}
  assert q[qb.SCALE].shape == (2, 64)
  absmax = np.abs(w.reshape(2, 64, 64)).max(1)  # the QLoRA paper's block absmax
  np.testing.assert_allclose(q[qb.SCALE], absmax, rtol=1e-6)
  err = np.abs(np.asarray(qb.dequantize_kernel(q)) - w).reshape(2, 64, 64) / absmax[:, None]
  assert err.max() <= 0.16  # half the widest gap between NF4 levels (-1, -0.696)


def test_a_checkpoint_restores_the_quantized_state_bit_for_bit(qlora_run):
  tmp, config, result = qlora_run
  run = loop.build_run(config, str(tmp / "run"), devices=jax.devices()[:1])
  try:
    assert run.start == 4
    got, want = _flat(run.state.params), _flat(result.state.params)
    assert set(got) == set(want)
    for p in want:
      assert got[p].dtype == want[p].dtype, p
      np.testing.assert_array_equal(got[p], want[p], err_msg=p)
  finally:
    run.ckpt.close()


def test_export_merges_adapters_into_dequantized_weights_that_transformers_loads(qlora_run):
  tmp, _, result = qlora_run
  ckpt = workdir_lib.complete_steps(workdir_lib.checkpoint_dir(str(tmp / "run")))
  raw, _ = workdir_lib.read_step(workdir_lib.checkpoint_dir(str(tmp / "run")), ckpt[-1], ckpt)
  merged = tr.merge_adapters(raw)
  assert not any(p.endswith((qb.CODES, tr.LORA_A)) for p in _flat(merged))
  model = zoo.build(zoo.from_pretrained(str(tmp / "hf"))[0].config, dtype=jnp.float32)
  # What `python -m zoo.pretrained export RUN OUT` runs: the same merged, dequantized weights.
  export_run(str(tmp / "run"), str(tmp / "export"))
  exported = zoo.from_pretrained(str(tmp / "export"))[1]
  for p, v in _flat(merged).items():
    np.testing.assert_allclose(np.asarray(_flat(exported)[p], np.float32),
                               np.asarray(v, np.float32), atol=1e-6, err_msg=p)
  back = transformers.AutoModelForCausalLM.from_pretrained(str(tmp / "export")).eval()
  ids = np.random.RandomState(0).randint(0, 300, (1, 8))
  with torch.no_grad():
    hf_logits = back(torch.tensor(ids)).logits.numpy()
  # The training forward (dequantize + adapters inside apply, bfloat16) gives the same logits.
  train_logits = np.asarray(result.state.apply_fn({"params": result.state.params}, ids), np.float32)
  assert np.abs(hf_logits - train_logits).max() < 0.03 * np.abs(hf_logits).max()
  np.testing.assert_allclose(hf_logits, model.apply({"params": merged}, ids), atol=1e-4)


def test_bad_base_quant_is_one_clear_error():
  with pytest.raises(ValueError, match="lora.base_quant='nf8' is not a base quantization"):
    tr.Trainable(lora_rank=4, base_quant="nf8")
  with pytest.raises(ValueError, match="set lora.rank > 0"):
    tr.Trainable(base_quant="nf4")
