"""The training loop in-process on 8 simulated CPU devices: sharding, resume, accumulation, NaN.

Runs use the real offline data (``zoo.data``) and tiny models; ``train()`` caches what it
compiles per (model, task, optimizer, mesh), so runs of one config share one compilation.
"""

import dataclasses
import functools
import shutil
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

import zoo
import zoo.data as zd
from zoo import registry
from zoo.generate import cli as generate_cli
from zoo.training import actions, loop, steps
from zoo.training import config as config_lib
from zoo.training import mesh as mesh_lib
from zoo.training import state as state_lib
from zoo.training.checkpoint import Checkpointer
from zoo.training.metrics import read_jsonl
from zoo.training.optimizer import make_optimizer

MESHES = {
    "single": (dict(data=1, fsdp=1, tensor=1), 1),
    "data8": (dict(data=8, fsdp=1, tensor=1), 8),
    "data2_fsdp4": (dict(data=2, fsdp=4, tensor=1), 8),
    "data2_fsdp2_tensor2": (dict(data=2, fsdp=2, tensor=2), 8),
}


def tiny(task: str, preset: str, **model):
  """A 1-layer model; runs that differ only in data, eval or logging share one compilation."""
  c = config_lib.base_config(task, preset)
  model = {"dropout_rate": 0.1, **model}
  c.model.update(d_model=32, num_heads=4, num_layers=1, mlp_dim=64, max_len=16, **model)
  c.data.seq_len = 16
  c.train.update(batch_size=8, num_steps=12, log_every=1, checkpoint_every=3, keep_checkpoints=3,
                 progress_bar=False, plot=False)
  # LLVM at -O0 compiles these tiny programs about twice as fast; results stay comparable
  # because every run of a test uses the same options.
  c.train.compiler_options.xla_backend_optimization_level = 0
  c.optim.update(lr=3e-3, warmup_steps=2)
  c.eval.every = -1
  return c


def run(config, workdir, mesh="data8", **kw):
  shape, n = MESHES[mesh]
  config.mesh.update(shape)
  return loop.train(config, str(workdir), devices=jax.devices()[:n], **kw)


def losses(result):
  return np.array([result.losses[k] for k in sorted(result.losses)])


def host(tree):
  return jax.tree.map(np.asarray, jax.device_get(tree))


@pytest.mark.parametrize("task,preset", [("lm", "gpt2-small"), ("mlm_nsp", "bert-base")],
                         ids=["gpt", "bert"])
def test_sharded_runs_match_single_device(tmp_path, task, preset):
  """Same losses (dropout included: threefry bits do not depend on the sharding)."""
  ref = None
  for name in MESHES:
    c = tiny(task, preset)
    c.train.checkpoint_every = 100
    result = run(c, tmp_path / name, mesh=name, stop_at=5)
    got = losses(result)
    assert len(got) == 5 and np.all(np.isfinite(got))
    if ref is None:
      ref = got
      assert got[-1] < got[0]  # it trains
    else:
      np.testing.assert_allclose(got, ref, rtol=1e-5, err_msg=name)
    # Parameters live where the rules put them.
    _, shardings = _abstract(c, mesh_lib.make_mesh(c.mesh, jax.devices()[: MESHES[name][1]]))
    assert state_lib.is_sharded_like(result.state, shardings)
    if name == "data2_fsdp2_tensor2":  # the rules did shard something over fsdp and tensor
      specs = {s.spec for s in jax.tree.leaves(shardings.params)}
      assert any("fsdp" in str(s) for s in specs) and any("tensor" in str(s) for s in specs)


def _abstract(config, mesh):
  """``(abstract_state, shardings)`` of a run config on ``mesh``, and the pieces used."""
  model_cfg = _model_cfg(config)
  tx, _ = make_optimizer(config.optim, config.train.num_steps)
  args, kwargs = zoo.registry.family_of(model_cfg).dummy_inputs(model_cfg)
  return state_lib.abstract_state(
      zoo.build(model_cfg), tx, args, kwargs, mesh, mesh_lib.rules_from_config(config)
  )


@functools.cache
def _info(task: str, seq_len: int):
  cfg = zd.default_config(task)
  cfg.seq_len = seq_len
  info = dict(zd.build_dataset(cfg, split="train", global_batch_size=8, seed=0).info)
  return {k: v for k, v in info.items() if k != "tokenizer"}


def _model_cfg(config):
  return config_lib.model_config(config, _info(config.task, config.data.seq_len))


@pytest.fixture(scope="module")
def gpt_runs(tmp_path_factory):
  """An uninterrupted 12-step GPT run (with dropout) and one stopped at step 5, then resumed."""
  root = tmp_path_factory.mktemp("gpt_runs")
  c = tiny("lm", "gpt2-small")
  c.train.log_every = 4  # rows at 4, 8, 12; checkpoints at 3, 6, 9, 12: inside the windows
  full = run(c, root / "full")
  first = run(c, root / "resumed", stop_at=5)
  second = run(c, root / "resumed")
  return c, root, full, first, second


def test_stop_and_resume_is_bitwise_identical(gpt_runs):
  _, _, full, first, second = gpt_runs
  assert first.step == 5 and second.step == 12
  assert sorted(first.losses) == [1, 2, 3, 4, 5]
  assert sorted(second.losses) == list(range(6, 13))
  curve = {**first.losses, **second.losses}
  assert curve == full.losses  # exact float equality, step by step
  chex_equal = jax.tree.map(np.array_equal, host(full.state.params), host(second.state.params))
  assert all(jax.tree.leaves(chex_equal))
  opt_equal = jax.tree.map(np.array_equal, host(full.state.opt_state), host(second.state.opt_state))
  assert all(jax.tree.leaves(opt_equal))


def _rows(workdir) -> dict[int, dict]:
  keys = ("loss", "nll", "accuracy", "grad_norm", "learning_rate")
  return {r["step"]: {k: r[k] for k in keys} for r in read_jsonl(str(workdir))
          if r["split"] == "train"}


def test_resume_inside_a_logging_window_logs_the_uninterrupted_rows(gpt_runs, tmp_path):
  """Checkpoint 6 holds the sums of steps 5-6, so the row at 8 (steps 5-8) is the same."""
  c, root, *_ = gpt_runs
  shutil.copytree(root / "full" / "checkpoints" / "6", tmp_path / "checkpoints" / "6")
  run(c, tmp_path)  # as if killed after step 6
  full, resumed = _rows(root / "full"), _rows(tmp_path)
  assert sorted(full) == [4, 8, 12] and sorted(resumed) == [8, 12]
  assert resumed[8] == full[8] and resumed[12] == full[12]  # exact floats


def test_damaged_and_half_deleted_checkpoints_are_never_listed_or_restored(
    gpt_runs, tmp_path, capsys
):
  c, root, *_ = gpt_runs
  ckpts = tmp_path / "checkpoints"
  for step in (6, 9, 12):
    shutil.copytree(root / "full" / "checkpoints" / str(step), ckpts / str(step))
  (ckpts / "12" / "state" / "manifest.ocdbt").unlink()  # a folder rmtree stopped halfway in
  shutil.copytree(root / "full" / "checkpoints" / "6", ckpts / "deleted" / "3")  # trash
  ckpt = Checkpointer(tmp_path, every=3, keep=3, fingerprint={})
  assert ckpt.all_steps() == [6, 9] and ckpt.latest_step() == 9
  assert not (ckpts / "deleted").exists()  # emptied at start-up
  with pytest.raises(ValueError, match=r"step 12 .* is damaged.*nearest good step is 9"):
    ckpt.read_params(12)
  with pytest.raises(ValueError, match=r"step 7 .* does not exist.*nearest good step is 6"):
    ckpt.read_params(7)
  ckpt.close()
  (tmp_path / "config.json").write_text((root / "full" / "config.json").read_text())
  code = generate_cli.main(["--checkpoint", str(tmp_path), "--step", "12", "--prompt_ids", "1"])
  err = capsys.readouterr().err
  assert code == 2 and "step 12" in err and "nearest good step is 9" in err, err
  assert "Traceback" not in err and err.strip().count("\n") == 0
  code = generate_cli.main(["--checkpoint", str(tmp_path), "--config", "configs/nope.py",
                            "--prompt_ids", "1"])
  assert code == 2 and "configs/nope.py" in capsys.readouterr().err
  resumed = run(c, tmp_path, stop_at=9)  # resumes the latest good step: nothing to train
  assert resumed.step == 9 and not resumed.losses


def test_keeps_last_k_checkpoints(gpt_runs):
  _, root, *_ = gpt_runs
  ckpt = Checkpointer(root / "full", every=3, keep=3, fingerprint={})
  assert ckpt.all_steps() == [6, 9, 12]  # saved at 3, 6, 9, 12; the oldest was deleted
  ckpt.close()


@pytest.mark.parametrize("mesh", ["single", "data2_fsdp4"])
def test_checkpoint_from_8_devices_restores_on_other_meshes(gpt_runs, mesh):
  c, root, full, *_ = gpt_runs
  c = c.copy_and_resolve_references()
  # stop_at = the saved step: restore only, no training step is run or compiled.
  restored = run(c, root / "full", mesh=mesh, stop_at=12)
  assert restored.step == 12 and not restored.losses
  same = jax.tree.map(np.array_equal, host(full.state.params), host(restored.state.params))
  assert all(jax.tree.leaves(same))
  shape, n = MESHES[mesh]
  leaf = jax.tree.leaves(restored.state.params)[0]
  assert leaf.sharding.mesh.devices.size == n
  assert dict(leaf.sharding.mesh.shape) == {**shape}


def test_another_models_checkpoint_is_refused(gpt_runs):
  c, root, *_ = gpt_runs
  other = c.copy_and_resolve_references()
  other.model.d_model = 64
  with pytest.raises(ValueError,
                     match=r"(?s)another model.*model\.d_model: checkpoint 32, this run 64"):
    run(other, root / "full")


def test_indivisible_batch_fails_fast(tmp_path):
  c = tiny("lm", "gpt2-small")
  c.train.batch_size = 12
  with pytest.raises(ValueError, match=r"not divisible by the data-parallel size 8.*batch_size=16"):
    run(c, tmp_path)
  c.train.update(batch_size=16, grad_accum_steps=4)  # micro-batches of 4 rows on 8 devices
  with pytest.raises(ValueError, match=r"grad_accum_steps=4 = 4\) is not divisible"):
    run(c, tmp_path)
  assert not (tmp_path / "checkpoints").exists()  # nothing was started


class _Poisoned:
  """A dataset whose ``bad``-th train batch (1-based) has NaN weights."""

  def __init__(self, bad: int):
    self.bad = bad

  def __call__(self, data_cfg, **kwargs):
    ds = zd.build_dataset(data_cfg, **kwargs)
    bad = self.bad
    if kwargs["split"] != "train":
      return ds

    class Wrapped:
      info = ds.info
      get_state = ds.get_state
      set_state = ds.set_state

      def __iter__(self):
        for batch in ds:
          if ds.get_state()["grain"]["next_index"] == bad:  # batches read so far
            batch = {**batch, "weights": np.full_like(batch["weights"], np.nan)}
          yield batch

    return Wrapped()


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(tmp_path):
  c = tiny("lm", "gpt2-small")
  c.data.packing = False  # one document per row: the Grain iterator counts batches
  c.train.update(checkpoint_every=2, batch_size=8)
  with pytest.raises(loop.NonFiniteLossError,
                     match=r"nan.* at step 5;.*last good checkpoint is step 4") as e:
    run(c, tmp_path, dataset_fn=_Poisoned(bad=5))
  assert e.value.step == 5
  ckpt = Checkpointer(tmp_path, every=2, keep=5, fingerprint={})
  assert ckpt.all_steps() == [2, 4]
  ckpt.close()
  resumed = run(c, tmp_path, stop_at=6)  # clean data: carries on from step 4
  assert resumed.step == 6 and sorted(resumed.losses) == [5, 6]
  assert all(np.isfinite(v) for v in resumed.losses.values())
  assert all(
      jax.tree.leaves(jax.tree.map(lambda x: np.isfinite(x).all(), host(resumed.state.params)))
  )


def test_gradient_accumulation_equals_one_big_batch():
  c = tiny("mlm_nsp", "bert-base", dropout_rate=0.0, attention_dropout_rate=0.0)
  # Plain SGD: the update is linear in the gradient, so equal gradients mean equal params
  # (Adam's first step is about sign(g), which amplifies rounding where g is ~0).
  c.optim.update(name="sgd", momentum=0.0, lr=0.5, weight_decay=0.0, clip_norm=0.0)
  model_cfg = _model_cfg(c)
  task = registry.task("mlm_nsp")
  mesh = mesh_lib.make_mesh(dict(data=2, fsdp=2, tensor=2))
  rules = mesh_lib.rules_from_config(c)
  optim = tuple(sorted(c.optim.to_dict().items()))
  xla = tuple(sorted(c.train.compiler_options.to_dict().items()))
  data = zd.build_dataset(c.data, split="train", global_batch_size=16, seed=0)
  batch = next(iter(data))
  # Uneven label counts per micro-batch: the normalisation must use the whole batch's totals.
  batch["mlm_targets"][:6] = zd.IGNORE_INDEX
  batch["masked_labels"][:6] = zd.IGNORE_INDEX  # what the gathered MLM head is scored on
  batch["nsp_labels"][[1, 2, 9]] = zd.IGNORE_INDEX
  results = []
  for accum in (1, 4):  # the loop's own jitted step (explicit shardings, donated state)
    prog = steps.program(model_cfg, task, optim, 10, accum, mesh, rules, xla)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      state = prog.init(jax.random.PRNGKey(0))
      before = host(state.params)
      new_state, metrics = prog.step(
          state, mesh_lib.place_batch(batch, mesh), jax.random.PRNGKey(1)
      )
    results.append((host(new_state.params), jax.device_get(metrics)))
  (p1, m1), (p4, m4) = results
  for k in ("loss", "mlm_loss", "nsp_loss", "mlm_accuracy", "grad_norm"):
    np.testing.assert_allclose(m4[k], m1[k], rtol=1e-5, err_msg=k)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), p4, p1)
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: np.abs(a - b).max(), p1, before))
  assert max(moved) > 1e-4  # the step did something


def test_eval_and_logs(tmp_path):
  c = tiny("lm", "gpt2-small")
  c.train.update(log_every=2, plot=True)
  c.eval.update(every=2, num_batches=2)
  result = run(c, tmp_path, mesh="single", stop_at=4)
  from zoo.training.metrics import read_jsonl  # noqa: PLC0415

  rows = read_jsonl(str(tmp_path))
  evals = [r for r in rows if r["split"] == "eval"]
  trains = [r for r in rows if r["split"] == "train"]
  assert [r["step"] for r in evals] == [2, 4] and [r["step"] for r in trains] == [2, 4]
  assert result.eval["perplexity"] == pytest.approx(np.exp(result.eval["loss"]), rel=1e-6)
  assert "tokens_per_sec" in trains[-1]
  assert (tmp_path / "loss.png").stat().st_size > 1000
  assert list((tmp_path / "tensorboard").iterdir())


def test_model_config_takes_vocab_from_data_and_overrides_win():
  c = tiny("lm", "gpt2-small")
  cfg = config_lib.model_config(c, {"vocab_size": 300, "pad_id": 0})
  assert cfg.vocab_size == 300 and cfg.d_model == 32 and cfg.num_layers == 1
  c.model.vocab_size = 512
  assert config_lib.model_config(c, {"vocab_size": 300}).vocab_size == 512
  c.model.vocab_size = 100
  with pytest.raises(ValueError, match="smaller than the tokenizer's 300"):
    config_lib.model_config(c, {"vocab_size": 300})
  c = tiny("classification", "bert-base")
  cfg = config_lib.model_config(c, {"vocab_size": 264, "num_classes": 9})
  assert (cfg.head, cfg.num_labels) == ("sequence_classification", 9)
  assert dataclasses.asdict(cfg)["dtype"] == jnp.float32


def test_actions_run_when_due():
  """Log every k steps and at the end; checkpoint also on a signal; the final evaluation is
  skipped after a signal (the resumed run evaluates); the stop notice only on a signal."""
  log_ = actions.LogTrain(2, history=None, writer=None)
  save = actions.SaveCheckpoint(types.SimpleNamespace(every=3), None)
  ev = actions.Evaluate(0, None, None, rows=1, num_batches=1)  # 0: only at the end
  stop = actions.AnnounceStop(None, None)

  def due(step, end=7, stopping=None):
    return [type(a).__name__ for a in (log_, save, ev, stop) if a.should_run(step, end, stopping)]

  assert due(1) == []
  assert due(2) == ["LogTrain"]
  assert due(3) == ["SaveCheckpoint"]
  assert due(6) == ["LogTrain", "SaveCheckpoint"]
  assert due(7) == ["LogTrain", "SaveCheckpoint", "Evaluate"]
  assert due(5, stopping="SIGTERM") == ["SaveCheckpoint", "AnnounceStop"]
  assert due(7, stopping="SIGTERM") == ["LogTrain", "SaveCheckpoint", "AnnounceStop"]
