"""train.py end to end: every family's smoke config, SIGTERM + resume, bad command lines."""

import importlib.util
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import zoo
from zoo.models.vit import ViTConfig
from zoo.training import config as config_lib
from zoo.training import loop
from zoo.training.checkpoint import Checkpointer
from zoo.training.metrics import read_jsonl

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Every configs/<name>.py with a `:smoke` argument trains here (llama's smoke: tests/test_llama.py,
# with its LoRA and RoPE checks), so a new config file is tested without editing this file.
CONFIGS = sorted(
    p.stem for p in (ROOT / "configs").glob("*.py")
    if '"smoke"' in p.read_text() and p.stem != "llama"
)


def _load(path: pathlib.Path, name: str):
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


cli = _load(ROOT / "train.py", "zoo_train_cli")


def _env(devices: int, fast_compile: bool) -> dict:
  env = dict(os.environ)
  flags = f"--xla_force_host_platform_device_count={devices}"
  if fast_compile:  # LLVM -O0: tiny programs compile about twice as fast
    flags += " --xla_backend_optimization_level=0"
  env.update(XLA_FLAGS=flags, JAX_PLATFORMS="cpu", JAX_DEFAULT_MATMUL_PRECISION="highest")
  return env


def _train_losses(workdir) -> dict[int, float]:
  return {r["step"]: r["loss"] for r in read_jsonl(str(workdir)) if r["split"] == "train"}


@pytest.mark.parametrize("family", CONFIGS)
def test_smoke_config_trains(tmp_path, family):
  cmd = [
      sys.executable, str(ROOT / "train.py"), "--config", f"configs/{family}.py:smoke",
      "--workdir", str(tmp_path), "--config.train.log_every=1", "--config.train.plot=False",
  ]
  proc = subprocess.run(cmd, cwd=ROOT, env=_env(1, True), capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  losses = _train_losses(tmp_path)
  steps = sorted(losses)
  assert steps == list(range(1, len(steps) + 1)) and len(steps) >= 30
  first, last = losses[1], np.mean([losses[s] for s in steps[-10:]])
  assert last < 0.92 * first, (family, first, last)
  assert "done: step" in proc.stdout and "eval" in proc.stdout  # the final evaluation ran
  assert Checkpointer(tmp_path, every=1, keep=1, fingerprint={}).latest_step() == steps[-1]
  # The eval row carries the task's own metrics (JSONL; TensorBoard gets the same row).
  row = [r for r in read_jsonl(str(tmp_path)) if r["split"] == "eval"][-1]
  for key in TASK_METRICS.get(family, ()):
    assert key in row and np.isfinite(row[key]), (family, key, row)


TASK_METRICS = {
    "gpt": ("bits_per_byte", "perplexity", "accuracy"),
    "transformer": ("bleu", "accuracy"),
    "bert_pretrain": ("mlm_accuracy", "nsp_accuracy"),
    "bert_classify": ("macro_f1", "accuracy"),
    "bert_tagging": ("span_precision", "span_recall", "span_f1"),
    "vit": ("macro_f1", "accuracy"),
    "bert_qa": ("exact_match", "f1", "start_accuracy"),
}


def _smoke_config(**train):
  config = _load(ROOT / "configs" / "gpt.py", "zoo_gpt_config").get_config("smoke")
  config.train.update(num_steps=100_000, log_every=1, checkpoint_every=100_000, plot=False,
                      progress_bar=False, **train)
  config.eval.every = -1
  config.train.compiler_options.xla_backend_optimization_level = 0
  return config


def test_sigterm_saves_and_resume_matches_uninterrupted_run(tmp_path):
  work, ref_dir = tmp_path / "run", tmp_path / "reference"
  cmd = [
      sys.executable, str(ROOT / "train.py"), "--config", "configs/gpt.py:smoke",
      "--workdir", str(work), "--config.train.num_steps=100000", "--config.train.log_every=1",
      "--config.train.checkpoint_every=100000", "--config.train.plot=False",
      "--config.eval.every=-1",
      "--config.train.compiler_options={'xla_backend_optimization_level': 0}",
  ]
  # One device there and here (devices=[cpu:0]): both compile the same program.
  proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(1, False), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.time() + 240
    while len(_train_losses(work)) < 3:
      assert proc.poll() is None, proc.communicate()[1][-3000:]
      assert time.time() < deadline, "no training progress"
      time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == cli.EXIT_SIGNAL["SIGTERM"], err[-3000:]
  assert "SIGTERM: saved step" in out
  ckpt = Checkpointer(work, every=1, keep=1, fingerprint={})
  k = ckpt.latest_step()
  ckpt.close()
  before = _train_losses(work)
  assert k >= 3 and sorted(before) == list(range(1, k + 1))

  one = jax.devices()[:1]
  resumed = loop.train(_smoke_config(), str(work), stop_at=k + 3, devices=one)
  reference = loop.train(_smoke_config(), str(ref_dir), stop_at=k + 3, devices=one)
  assert {**before, **resumed.losses} == reference.losses  # bitwise, step by step
  same = jax.tree.map(
      lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)),
      jax.device_get(resumed.state.params), jax.device_get(reference.state.params),
  )
  assert all(jax.tree.leaves(same))


def test_unknown_config_key_fails_fast_with_close_matches(capsys):
  argv = ["train.py", "--config", f"{ROOT}/configs/gpt.py:smoke", "--workdir", "/nonexistent/w"]
  assert cli.main(argv + ["--config.nonexistent=1"]) == cli.EXIT_USAGE
  err = capsys.readouterr().err
  assert "unknown config key --config.nonexistent" in err and "Keys there: data, eval" in err
  assert cli.main(argv + ["--config.train.batchsize=4"]) == cli.EXIT_USAGE
  assert "Did you mean --config.train.batch_size" in capsys.readouterr().err
  assert cli.main(argv + ["--config.model.d_modle=4"]) == cli.EXIT_USAGE
  err = capsys.readouterr().err
  assert "Did you mean --config.model.d_model?" in err and len(err.strip().splitlines()) == 1
  # A free-form dict (XLA options) is set whole; the message says how.
  assert cli.main(argv + ["--config.train.compiler_options.xla_cpu_foo=1"]) == cli.EXIT_USAGE
  assert "--config.train.compiler_options=\"{'xla_cpu_foo': ...}\"" in capsys.readouterr().err
  # The preset is the config argument: renaming it would not refill config.model.
  assert cli.main(argv + ["--config.model.name=gpt2-medium"]) == cli.EXIT_USAGE
  assert "chosen by the config argument" in capsys.readouterr().err
  assert cli.main(
      ["train.py", "--config", f"{ROOT}/configs/gpt.py:gpt2-smal", "--workdir", "w"]
  ) == 2
  assert "Did you mean gpt2-small" in capsys.readouterr().err
  assert not pathlib.Path("/nonexistent/w").exists()


def test_command_line_overrides_reach_the_config():
  config, workdir, _ = cli.parse([
      "train.py", "--config", str(ROOT / "configs/gpt.py:smoke"), "--workdir", "w",
      "--config.train.batch_size=16", "--config.model.d_model=48",
      "--config.model.position", "rope", "--config.data.data_dir=/data",
      "--config.optim.lr=1e-3", "--config.train.plot=false",
      "--config.train.compiler_options={'xla_backend_optimization_level': 0}",
  ])
  assert workdir == "w" and config.train.batch_size == 16 and config.optim.lr == 1e-3
  assert config.model.d_model == 48 and config.model.position == "rope"
  assert config.data.data_dir == "/data" and config.train.plot is False
  assert config.train.compiler_options.to_dict() == {"xla_backend_optimization_level": 0}


def test_typed_model_overrides_reach_the_model_config():
  config, _, _ = cli.parse([
      "train.py", "--config", str(ROOT / "configs/gpt.py:smoke"), "--workdir", "w",
      "--config.model.num_layers=3", "--config.model.head_dim=16",  # head_dim: None default
      "--config.model.dtype=bfloat16", "--config.model.rope_base=5e5",
  ])
  model_cfg = config_lib.model_config(config, {"vocab_size": 259})
  assert (model_cfg.num_layers, model_cfg.head_dim, model_cfg.rope_base) == (3, 16, 5e5)
  assert model_cfg.dtype == jnp.bfloat16 and model_cfg.param_dtype == jnp.float32
  assert model_cfg.vocab_size == 259  # the preset's 50257 gives way to the data's


def test_config_model_holds_every_field_of_the_preset():
  config = _load(ROOT / "configs" / "vit.py", "zoo_vit_config").get_config("vit-l16")
  assert set(config.model) == {*zoo.registry.field_names(ViTConfig), "name", "match_data"}
  assert (config.model.name, config.model.d_model, config.model.num_layers) == ("vit-l16", 1024, 24)
  assert config.model.dtype == "float32" and config.model.representation_size is None
  assert config_lib.model_config(config) == zoo.get_config("vit-l16")


def test_wrong_type_fails_with_one_line_naming_the_key(capsys):
  argv = ["train.py", "--config", f"{ROOT}/configs/gpt.py:smoke", "--workdir", "w"]
  assert cli.main(argv + ["--config.model.num_layers=abc"]) == cli.EXIT_USAGE
  err = capsys.readouterr().err.strip()
  assert "--config.model.num_layers=abc" in err and len(err.splitlines()) == 1
  assert cli.main(argv + ["--config.model.head_dim=abc"]) == cli.EXIT_USAGE  # a None field too
  assert "--config.model.head_dim=abc" in capsys.readouterr().err
  assert cli.main(argv + ["--config.train.plot", "False"]) == cli.EXIT_USAGE
  assert "unexpected argument 'False'" in capsys.readouterr().err


def test_print_config_lists_every_key(capsys):
  argv = ["train.py", "--config", f"{ROOT}/configs/gpt.py:smoke", "--print_config"]
  assert cli.main(argv + ["--config.model.num_layers=5"]) == 0
  out = capsys.readouterr().out
  assert "num_layers: 5" in out and "head_dim: null" in out and "batch_size: 8" in out


def test_help_lists_every_config_file_and_its_args():
  proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "--help"], cwd=ROOT,
                        env=_env(1, False), capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.startswith("usage:") and "--print_config" in proc.stdout
  for path in sorted((ROOT / "configs").glob("*.py")):
    assert f"configs/{path.name}" in proc.stdout
    for arg in _load(path, f"zoo_{path.stem}_config").ARGS:
      assert arg in proc.stdout, (path.name, arg)
  assert cli.main(["train.py", "-h"]) == 0  # the short form, in-process


@pytest.mark.parametrize("config", ["configs/nonexistent.py", "configs/gpt.py:gpt2-smal",
                                    "NO_GET_CONFIG"])
def test_bad_config_argument_is_one_line_without_traceback(tmp_path, config):
  if config == "NO_GET_CONFIG":
    config = str(tmp_path / "empty.py")
    (tmp_path / "empty.py").write_text("X = 1\n")
  cmd = [sys.executable, str(ROOT / "train.py"), "--config", config, "--workdir", str(tmp_path)]
  proc = subprocess.run(cmd, cwd=ROOT, env=_env(1, False), capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == cli.EXIT_USAGE
  assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
  assert proc.stderr.startswith("train.py: error: ")


def test_indivisible_batch_fails_fast_naming_the_fix(capsys, tmp_path):
  argv = ["train.py", "--config", f"{ROOT}/configs/gpt.py:smoke", "--workdir", str(tmp_path / "w"),
          "--config.train.batch_size=12"]  # this process has 8 devices: data=8
  assert cli.main(argv) == cli.EXIT_USAGE
  err = capsys.readouterr().err
  assert "not divisible by the data-parallel size 8" in err
  assert "--config.train.batch_size=16" in err
  assert not (tmp_path / "w").exists()
