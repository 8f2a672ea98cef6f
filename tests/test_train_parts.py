"""Pieces of zoo.training against formulas: losses, schedules, decay mask, mesh, configs."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from zoo import registry
from zoo.data.batch import IGNORE_INDEX as IGNORE
from zoo.data.batch import pad_batch
from zoo.models.common import train_flops
from zoo.tasks import losses
from zoo.training import config as config_lib
from zoo.training import mesh as mesh_lib
from zoo.training import metrics as metrics_lib
from zoo.training import optimizer as opt_lib


def np_log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_cross_entropy_matches_numpy_with_label_smoothing():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 5, 7)).astype(np.float32)
  labels = rng.integers(0, 7, (3, 5))
  labels[0, :2] = IGNORE
  eps = 0.1
  loss, nll, correct = losses.cross_entropy(jnp.asarray(logits), jnp.asarray(labels), eps)
  logp = np_log_softmax(logits.astype(np.float64))
  safe = np.where(labels == IGNORE, 0, labels)
  want_nll = -np.take_along_axis(logp, safe[..., None], -1)[..., 0]
  target = (1 - eps) * np.eye(7)[safe] + eps / 7  # Szegedy et al.: mix with uniform
  want_loss = -(target * logp).sum(-1)
  np.testing.assert_allclose(nll, want_nll, rtol=1e-5)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
  np.testing.assert_array_equal(correct, (logits.argmax(-1) == safe).astype(np.float32))


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_cross_entropy_gradient_is_softmax_minus_target(eps):
  """The hand-written backward against the textbook gradient, for loss and nll cotangents
  together, with ignored labels; and against autodiff of the log_softmax formula."""
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(2, 4, 9)).astype(np.float32) * 3
  labels = rng.integers(0, 9, (2, 4))
  labels[1, 3] = IGNORE
  a, b = rng.normal(size=(2, 4)), rng.normal(size=(2, 4))  # cotangents of loss and nll

  def f(z):
    loss, nll, _ = losses.cross_entropy(z, jnp.asarray(labels), eps)
    return jnp.sum(loss * a) + jnp.sum(nll * b)

  got = jax.grad(f)(jnp.asarray(logits))
  x = logits.astype(np.float64)
  p = np.exp(np_log_softmax(x))
  hot = np.eye(9)[np.where(labels == IGNORE, 0, labels)]
  want = (p - ((1 - eps) * hot + eps / 9)) * a[..., None] + (p - hot) * b[..., None]
  np.testing.assert_allclose(got, want, atol=1e-6)

  def plain(z):
    logp = jax.nn.log_softmax(z)
    nll = -jnp.take_along_axis(
        logp, jnp.asarray(np.where(labels == IGNORE, 0, labels))[..., None], -1
    )[..., 0]
    loss = (1 - eps) * nll - eps * logp.mean(-1)
    return jnp.sum(loss * a) + jnp.sum(nll * b)

  np.testing.assert_allclose(got, jax.grad(plain)(jnp.asarray(logits)), atol=1e-6)
  # bf16 logits: computed in float32, gradient returned in the input dtype.
  g16 = jax.grad(f)(jnp.asarray(logits, jnp.bfloat16))
  assert g16.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(g16, np.float32), want, atol=2e-2)


def test_padding_aware_means_ignore_padded_rows():
  """A batch padded with rows of IGNORE labels has the same statistics as the real rows."""
  task = registry.task("tagging")
  rng = np.random.default_rng(1)
  labels = rng.integers(0, 4, (3, 6)).astype(np.int32)
  labels[:, 4:] = IGNORE  # padding positions
  batch = {"input_ids": np.ones((3, 6), np.int32), "labels": labels}
  logits = rng.normal(size=(3, 6, 4)).astype(np.float32)
  stats = task.stats({"logits": jnp.asarray(logits)}, batch)
  padded = pad_batch(batch, 5)
  assert (padded["labels"][3:] == IGNORE).all() and (padded["input_ids"][3:] == 0).all()
  logits5 = np.concatenate([logits, rng.normal(size=(2, 6, 4)).astype(np.float32)])
  stats5 = task.stats({"logits": jnp.asarray(logits5)}, padded)
  for k in stats:
    np.testing.assert_allclose(stats5[k][0], stats[k][0], rtol=1e-6)
    np.testing.assert_allclose(stats5[k][1], stats[k][1])
  assert float(stats["loss"][1]) == 12  # 3 rows x 4 real positions
  logp = np_log_softmax(logits.astype(np.float64))
  real = labels != IGNORE
  want = -np.take_along_axis(logp, np.where(real, labels, 0)[..., None], -1)[..., 0][real].mean()
  assert losses.means(jax.device_get(stats))["loss"] == pytest.approx(want, rel=1e-5)


def test_lm_weights_and_perplexity():
  task = registry.task("lm")
  logits = jnp.zeros((2, 3, 10))  # uniform: nll = log(10) everywhere
  batch = {
      "input_ids": np.zeros((2, 3), np.int32),
      "targets": np.array([[1, 2, 3], [4, IGNORE, 5]], np.int32),
      "weights": np.array([[1, 1, 0], [1, 1, 1]], np.float32),
  }
  stats = jax.device_get(task.stats(logits, batch))
  assert float(stats["loss"][1]) == 4  # weight 0 and IGNORE_INDEX both drop out
  m = losses.means(stats)
  assert m["loss"] == pytest.approx(math.log(10), rel=1e-6)
  assert m["perplexity"] == pytest.approx(10, rel=1e-5)


def test_mlm_nsp_loss_is_the_sum_of_two_means():
  task = registry.task("mlm_nsp")
  assert task.loss_terms == ("mlm_loss", "nsp_loss")
  w = task.loss_weights({"mlm_targets": np.array([[IGNORE, 3, 4]]), "nsp_labels": np.array([1])})
  np.testing.assert_array_equal(w["mlm_loss"], [[0, 1, 1]])
  np.testing.assert_array_equal(w["nsp_loss"], [1])
  assert registry.task("image_classification").unit == "images"
  with pytest.raises(ValueError, match="unknown task 'cls'"):
    registry.task("cls")


def _optim(**kw):
  c = config_lib.base_config("lm", "gpt2-small").optim
  c.update(kw)
  return c


def test_schedules_follow_their_formulas():
  lr, warm, total = 1e-3, 10, 100
  cos = opt_lib.make_schedule(lr, "cosine", total, warm, end_lr_ratio=0.1)
  assert float(cos(0)) == pytest.approx(lr / warm)  # update 1 of the ramp
  assert float(cos(warm - 1)) == pytest.approx(lr)
  mid = warm + (total - warm) // 2 - 1
  assert float(cos(mid)) == pytest.approx(lr * (0.1 + 0.9 * 0.5), rel=1e-5)
  assert float(cos(total - 1)) == pytest.approx(lr * 0.1, rel=1e-5)
  lin = opt_lib.make_schedule(lr, "linear", total, warm, end_lr_ratio=0.0)
  assert float(lin(total - 1)) == pytest.approx(0.0, abs=1e-9)
  # Vaswani et al. 2017 eq. 3 with d_model = 512, warmup = 4000.
  d, w = 512, 4000
  inv = opt_lib.make_schedule(d**-0.5 * w**-0.5, "inverse_sqrt", 10**6, w)
  for step in (1, 100, 4000, 10_000, 250_000):
    want = d**-0.5 * min(step**-0.5, step * w**-1.5)
    assert float(inv(step - 1)) == pytest.approx(want, rel=1e-5)
  with pytest.raises(ValueError, match="optim.schedule must be one of"):
    opt_lib.make_schedule(lr, "cosin", total)


def test_weight_decay_only_on_kernels():
  params = {
      "wte": {"embedding": jnp.ones((5, 4))},
      "layer": {"kernel": jnp.ones((4, 4)), "bias": jnp.ones(4)},
      "ln": {"scale": jnp.ones(4), "bias": jnp.ones(4)},
      "scanned": {"kernel": jnp.ones((2, 4, 4)), "scale": jnp.ones((2, 4))},
  }
  tx, _ = opt_lib.make_optimizer(
      _optim(lr=0.1, schedule="constant", warmup_steps=0, weight_decay=0.5, clip_norm=0.0), 10
  )
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  # With zero gradients only decoupled weight decay moves a parameter: -lr * wd * p.
  np.testing.assert_allclose(updates["layer"]["kernel"], -0.05 * np.ones((4, 4)), rtol=1e-6)
  np.testing.assert_allclose(updates["scanned"]["kernel"], -0.05 * np.ones((2, 4, 4)), rtol=1e-6)
  for leaf in (updates["wte"]["embedding"], updates["layer"]["bias"], updates["ln"]["scale"],
               updates["scanned"]["scale"]):
    np.testing.assert_array_equal(leaf, 0.0)


def test_gradient_clipping_caps_the_global_norm():
  tx, _ = opt_lib.make_optimizer(
      _optim(name="sgd", momentum=0.0, lr=1.0, schedule="constant", warmup_steps=0,
             weight_decay=0.0, clip_norm=1.0), 10)
  grads = {"a": jnp.full((3,), 10.0)}
  updates, _ = tx.update(grads, tx.init(grads), grads)
  assert float(optax.tree.norm(updates)) == pytest.approx(1.0, rel=1e-6)
  with pytest.raises(ValueError, match="use optim.name='adamw'"):
    opt_lib.make_optimizer(_optim(name="adam", weight_decay=0.1), 10)


def test_mesh_shape_fills_minus_one_and_explains_mismatches():
  assert mesh_lib.mesh_shape(dict(data=-1, fsdp=2, tensor=1), 8) == dict(data=4, fsdp=2, tensor=1)
  assert mesh_lib.mesh_shape(dict(data=2, fsdp=-1, tensor=2), 8) == dict(data=2, fsdp=2, tensor=2)
  with pytest.raises(ValueError, match="does not divide the 8 available"):
    mesh_lib.mesh_shape(dict(data=-1, fsdp=3, tensor=1), 8)
  with pytest.raises(ValueError, match="needs 4 devices but 8 are in use"):
    mesh_lib.mesh_shape(dict(data=2, fsdp=2, tensor=1), 8)
  mesh = mesh_lib.make_mesh(dict(data=2, fsdp=2, tensor=2))
  assert dict(mesh.shape) == dict(data=2, fsdp=2, tensor=2)
  assert mesh_lib.data_parallel_size(mesh) == 4


def test_place_batch_splits_rows_over_data_and_fsdp():
  mesh = mesh_lib.make_mesh(dict(data=2, fsdp=2, tensor=2))
  batch = {"x": np.arange(8 * 3).reshape(8, 3)}
  placed = mesh_lib.place_batch(batch, mesh)["x"]
  np.testing.assert_array_equal(np.asarray(placed), batch["x"])
  assert placed.sharding.spec == jax.sharding.PartitionSpec(("data", "fsdp"))
  assert {s.data.shape for s in placed.addressable_shards} == {(2, 3)}


def test_rules_from_config_reject_unknown_mesh_axes():
  c = ml_collections.ConfigDict({"sharding_rules": (("embed", "model"),)})
  with pytest.raises(ValueError, match="names mesh axis 'model'"):
    mesh_lib.rules_from_config(c)


def test_config_arguments_and_fingerprint():
  args = config_lib.config_args("gpt", "smoke")
  assert args[0] == "gpt2-small" and args[-1] == "smoke"  # the default first
  assert config_lib.choose(None, args) == "gpt2-small"
  with pytest.raises(ValueError, match="Did you mean gpt2-small"):
    config_lib.choose("gpt2-smal", args)
  c = config_lib.base_config("lm", "gpt2-small")
  c.model.d_modle = 3  # a typo in a config file adds a key; model_config refuses it
  with pytest.raises(ValueError, match="'d_modle'. Did you mean d_model"):
    config_lib.model_config(c, {"vocab_size": 100})
  a = config_lib.fingerprint(
      config_lib.model_config(config_lib.base_config("lm", "gpt2-small")), "lm"
  )
  b = dict(a, **{"model.num_layers": 6})
  assert config_lib.fingerprint_diff(a, b) == ["model.num_layers: checkpoint 12, this run 6"]
  assert "model.dtype" not in a and "model.dropout_rate" not in a  # may change on resume


def test_float64_is_refused_while_jax_x64_is_off():
  """JAX would make every float64 array float32 with only a warning: the config is refused."""
  assert not jax.config.read("jax_enable_x64")
  c = config_lib.base_config("lm", "gpt2-small")
  c.model.dtype = "float64"
  with pytest.raises(ValueError, match=r"config.model.dtype=float64 .*JAX_ENABLE_X64=1"):
    config_lib.model_config(c, {"vocab_size": 100})
  c.model.dtype = "float32"
  assert config_lib.model_config(c, {"vocab_size": 100}).dtype == jnp.float32


def test_peak_flops_table():
  class Dev:
    def __init__(self, kind):
      self.device_kind = kind

  assert metrics_lib.peak_flops(Dev("NVIDIA H100 80GB HBM3")) == 989e12
  assert metrics_lib.peak_flops(Dev("NVIDIA H100 PCIe")) == 756e12
  assert metrics_lib.peak_flops(Dev("TPU v5 lite")) == 197e12
  assert metrics_lib.peak_flops(Dev("cpu")) is None
  # 6 N per token + attention: 12 * layers * d_model * seq per token; causal halves attention.
  flops = train_flops([(100, 10)], [(2, 8, 10, 4, True)])
  assert flops["full"] == 10 * (600 + 12 * 2 * 8 * 4)
  assert flops["causal_half"] == 10 * (600 + 6 * 2 * 8 * 4)


def test_distributed_initialize_only_when_launched_as_several_processes(monkeypatch):
  calls = []
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
  for var in (
      "JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES"
  ):
    monkeypatch.delenv(var, raising=False)
  assert mesh_lib.maybe_initialize_distributed() is False and calls == []
  monkeypatch.setenv("SLURM_NTASKS", "1")  # one task: not distributed
  assert mesh_lib.maybe_initialize_distributed() is False and calls == []
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
  monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
  monkeypatch.setenv("JAX_PROCESS_ID", "2")
  monkeypatch.delenv("ZOO_HEARTBEAT_TIMEOUT_S", raising=False)
  assert mesh_lib.maybe_initialize_distributed() is True
  assert calls == [{"num_processes": 4, "process_id": 2, "heartbeat_timeout_seconds": 15}]
  monkeypatch.setenv("ZOO_HEARTBEAT_TIMEOUT_S", "soon")
  with pytest.raises(ValueError, match="ZOO_HEARTBEAT_TIMEOUT_S='soon'.*e.g. ZOO_HEARTBEAT"):
    mesh_lib.maybe_initialize_distributed()


@pytest.mark.parametrize("key,value", [("lr", -1e-3), ("eps", 0.0), ("weight_decay", -0.1),
                                       ("clip_norm", -1.0)])
def test_optimizer_refuses_impossible_values(key, value):
  optim = config_lib.base_config("lm", "gpt2-small").optim
  optim[key] = value
  with pytest.raises(ValueError, match=rf"optim.{key}={value!r} must be"):
    opt_lib.make_optimizer(optim, 10)


def test_data_state_restores_per_process_and_on_another_process_count(tmp_path, monkeypatch):
  """Each process reads its own ``process_<i>-of-<n>.json``; a process of another count reads
  process 0's (the states are positions in the global stream)."""
  from etils import epath

  from zoo.training import checkpoint as ckpt_lib

  folder = epath.Path(tmp_path)
  for i, n in ((0, 2), (1, 2)):
    (folder / f"process_{i}-of-{n}.json").write_text(f'{{"grain": {{"next_index": {10 + i}}}}}')
  handler = ckpt_lib.data_state_handler()

  def restore(index, count):
    monkeypatch.setattr(jax, "process_index", lambda: index)
    monkeypatch.setattr(jax, "process_count", lambda: count)
    return handler.restore(folder, args=ckpt_lib.DataRestore(ckpt_lib._DataState())).state

  assert restore(1, 2) == {"grain": {"next_index": 11}}  # its own file
  assert restore(0, 1) == {"grain": {"next_index": 10}}  # 1 process: process 0's
  assert restore(3, 4) == {"grain": {"next_index": 10}}
  for f in folder.glob("*.json"):
    f.unlink()
  with pytest.raises(ValueError, match="no data-iterator state: the checkpoint is damaged"):
    restore(0, 1)
