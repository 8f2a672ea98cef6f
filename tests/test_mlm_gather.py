"""BERT's masked-LM head at the masked positions only (``masked_positions [B, P]``).

The gathered head must be the full-position head restricted to the masked rows: same loss,
same gradient for every parameter (padded rows, different numbers of real and masked tokens,
IGNORE_INDEX and weight-0 slots, label smoothing on and off), on one device and on a
data x fsdp x tensor mesh of 8 simulated CPU devices through the training step. The data's
gathered arrays are its full label array rearranged, and ``max_predictions`` never drops a
selected token.
"""

import importlib.util
import itertools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

import zoo.data as zd
from zoo import registry
from zoo.data import bert as bert_data
from zoo.data.batch import IGNORE_INDEX as IGNORE
from zoo.data.tokenizers import ByteTokenizer
from zoo.models.bert import Bert, BertConfig
from zoo.training import config as config_lib
from zoo.training import loop, steps
from zoo.training import mesh as mesh_lib

TINY = dict(vocab_size=97, max_len=16, d_model=32, num_heads=4, num_layers=2, mlp_dim=64,
            head="pretraining")
B, L, P = 3, 16, 6
CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


def draw_params(model, ids, seed=0):
  """Random params of ``model``'s tree: norm scales ~ 1 + N(0, 0.1), the rest N(0, 0.1)."""
  shapes = nn.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), ids)["params"])
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    x = rng.normal(0.0, 0.1, leaf.shape) + jax.tree_util.keystr(path).endswith("['scale']")
    return jnp.asarray(x, leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def padded_batch():
  """Rows with 16, 10 and 5 real tokens and 5, 2 and 1 masked slots of P = 6.

  Row 0's third slot is labelled IGNORE_INDEX (weight 1); row 1's last slot holds a real id
  at weight 0; the other unused slots are position 0, IGNORE_INDEX, weight 0.
  """
  rng = np.random.default_rng(1)
  lengths = [16, 10, 5]
  chosen = [[1, 4, 7, 9, 14], [2, 8], [3]]
  ids = np.zeros((B, L), np.int32)
  targets = np.full((B, L), IGNORE, np.int32)
  positions = np.zeros((B, P), np.int32)
  labels = np.full((B, P), IGNORE, np.int32)
  weights = np.zeros((B, P), np.float32)
  for r, (n, pos) in enumerate(zip(lengths, chosen)):
    ids[r, :n] = rng.integers(5, TINY["vocab_size"], n)
    positions[r, : len(pos)] = pos
    labels[r, : len(pos)] = rng.integers(5, TINY["vocab_size"], len(pos))
    weights[r, : len(pos)] = 1.0
  labels[0, 2] = IGNORE
  positions[1, 5], labels[1, 5] = 6, 11  # weight 0: must not count
  for r in range(B):
    real = weights[r] > 0
    targets[r, positions[r, real]] = labels[r, real]
  return {
      "input_ids": ids,
      "token_type_ids": (np.arange(L)[None] >= np.array([[8], [5], [3]])).astype(np.int32),
      "attention_mask": (np.arange(L)[None] < np.array(lengths)[:, None]).astype(np.int32),
      "mlm_targets": targets,
      "masked_positions": positions,
      "masked_labels": labels,
      "masked_weights": weights,
      "nsp_labels": np.array([0, 1, IGNORE], np.int32),
  }


def full_only(batch):
  """The batch as the full-position path sees it: no gathered arrays."""
  return {k: v for k, v in batch.items() if not k.startswith("masked_")}


def loss_of(task, apply_fn, params, batch):
  """The training step's loss: each term's sum over its own weight total."""
  outputs = task.apply(apply_fn, params, batch, rng=None, train=False)
  stats = task.stats(outputs, batch)
  totals = {t: jnp.sum(w) for t, w in task.loss_weights(batch).items()}
  return sum(stats[t][0] / totals[t] for t in task.loss_terms), stats


@pytest.fixture(scope="module")
def tiny():
  model = Bert(BertConfig(**TINY))
  batch = padded_batch()
  return model, draw_params(model, jnp.asarray(batch["input_ids"])), batch


def test_gathered_logits_are_the_full_logits_at_the_positions(tiny):
  model, params, batch = tiny
  ids = jnp.asarray(batch["input_ids"])
  kw = dict(token_type_ids=batch["token_type_ids"], attention_mask=batch["attention_mask"])
  full = model.apply({"params": params}, ids, **kw)
  got = model.apply({"params": params}, ids, masked_positions=batch["masked_positions"], **kw)
  assert got["mlm_logits"].shape == (B, P, TINY["vocab_size"])
  assert got["mlm_logits"].dtype == jnp.float32
  want = np.take_along_axis(np.asarray(full["mlm_logits"]),
                            batch["masked_positions"][..., None], axis=1)
  np.testing.assert_allclose(got["mlm_logits"], want, atol=1e-5, rtol=1e-5)
  for k in ("last_hidden_state", "pooled", "nsp_logits"):
    np.testing.assert_array_equal(got[k], full[k])


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_loss_and_every_gradient_equal_the_full_head(tiny, label_smoothing):
  model, params, batch = tiny
  task = registry.task("mlm_nsp", label_smoothing)
  fn = jax.jit(jax.value_and_grad(
      lambda p, b: loss_of(task, model.apply, p, b), has_aux=True))
  (loss_g, stats_g), grads_g = fn(params, {k: jnp.asarray(v) for k, v in batch.items()})
  (loss_f, stats_f), grads_f = fn(params, {k: jnp.asarray(v) for k, v in full_only(batch).items()})
  # 5 + 2 + 1 slots, less the IGNORE_INDEX one; the weight-0 slot does not count.
  assert float(stats_g["mlm_loss"][1]) == float(stats_f["mlm_loss"][1]) == 7
  np.testing.assert_allclose(loss_g, loss_f, rtol=2e-6)
  for k in stats_f:
    np.testing.assert_allclose(stats_g[k], stats_f[k], rtol=2e-6, atol=1e-6, err_msg=k)
  flat_g, flat_f = jax.tree.leaves_with_path(grads_g), jax.tree.leaves(grads_f)
  assert len(flat_g) == len(flat_f) == len(jax.tree.leaves(params))
  for (path, g), f in zip(flat_g, flat_f):
    name = jax.tree_util.keystr(path)
    assert np.abs(f).max() > 0, name  # every parameter is reached, so the comparison bites
    np.testing.assert_allclose(g, f, rtol=1e-5, atol=1e-6 * np.abs(f).max(), err_msg=name)
  # The gather is not a no-op: scoring the wrong positions changes the loss.
  shifted = dict(batch, masked_positions=(batch["masked_positions"] + 1) % L)
  (loss_s, _), _ = fn(params, {k: jnp.asarray(v) for k, v in shifted.items()})
  assert abs(float(loss_s) - float(loss_g)) > 1e-3


# ----------------------------------------------------------------------------------------------
# The training step on 8 simulated devices.


def run_config():
  c = config_lib.base_config("mlm_nsp", "bert-base")
  c.model.update(d_model=32, num_heads=4, num_layers=1, mlp_dim=64, max_len=16,
                 dropout_rate=0.1)  # dropout acts before the gather: both heads see the same
  c.data.seq_len = 16
  # Plain SGD: equal gradients give equal parameters after the step.
  c.optim.update(name="sgd", momentum=0.0, lr=0.5, weight_decay=0.0, clip_norm=0.0,
                 warmup_steps=0)
  return c


def padded_rows(batch, slots):
  """Real data made ragged: rows cut to 9, 6 and 12 tokens, one row without MLM labels."""
  batch = {k: np.array(v) for k, v in batch.items()}
  for r, n in ((0, 9), (1, 6), (2, 12)):
    batch["input_ids"][r, n:] = 0
    batch["token_type_ids"][r, n:] = 0
    batch["attention_mask"][r, n:] = 0
    batch["mlm_targets"][r, n:] = IGNORE
  batch["mlm_targets"][3] = IGNORE
  batch["nsp_labels"][5] = IGNORE
  gathered = [bert_data.gather_targets(t, slots) for t in batch["mlm_targets"]]
  for k in gathered[0]:
    batch[k] = np.stack([g[k] for g in gathered])
  return batch


@pytest.fixture(scope="module")
def step_results():
  c = run_config()
  data = zd.build_dataset(c.data, split="train", global_batch_size=8, seed=0)
  info = {k: v for k, v in data.info.items() if k != "tokenizer"}
  batch = padded_rows(next(iter(data)), info["max_predictions"])
  counts = (batch["masked_weights"] > 0).sum(1)
  assert len(set(counts.tolist())) > 1 and counts[3] == 0
  model_cfg = config_lib.model_config(c, info)
  task = registry.task("mlm_nsp")
  rules = mesh_lib.rules_from_config(c)
  optim = tuple(sorted(c.optim.to_dict().items()))
  out = {}
  for name, shape, gathered in (
      ("single", dict(data=1, fsdp=1, tensor=1), True),
      ("mesh8", dict(data=2, fsdp=2, tensor=2), True),
      ("mesh8_full", dict(data=2, fsdp=2, tensor=2), False),
  ):
    n = int(np.prod(list(shape.values())))
    mesh = mesh_lib.make_mesh(shape, jax.devices()[:n])
    prog = steps.program(model_cfg, task, optim, 10, 1, mesh, rules)
    b = batch if gathered else full_only(batch)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      state = prog.init(jax.random.PRNGKey(0))
      before = jax.device_get(state.params)
      new, metrics = prog.step(state, mesh_lib.place_batch(b, mesh), jax.random.PRNGKey(1))
    out[name] = (jax.device_get(new.params), jax.device_get(metrics), before)
  return out


@pytest.mark.parametrize("name", ["mesh8", "mesh8_full"])
def test_training_step_sharded_equals_single_device(step_results, name):
  p_ref, m_ref, before = step_results["single"]
  p, m, _ = step_results[name]
  for k in ("loss", "mlm_loss", "mlm_nll", "mlm_accuracy", "nsp_loss", "grad_norm"):
    np.testing.assert_allclose(m[k], m_ref[k], rtol=1e-5, err_msg=k)
  paths = jax.tree.leaves_with_path(p_ref)
  for (path, a), b, b0 in zip(paths, jax.tree.leaves(p), jax.tree.leaves(before)):
    name_ = jax.tree_util.keystr(path)
    assert np.abs(a - b0).max() > 0, name_  # every parameter moved
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6, err_msg=name_)


# ----------------------------------------------------------------------------------------------
# Data.


@pytest.fixture(scope="module")
def mlm_batches(take):
  cfg = zd.default_config("mlm_nsp", seq_len=64)
  ds = zd.build_dataset(cfg, split="train", global_batch_size=16, seed=2)
  return ds.info, take(ds, 3)


def test_gathered_arrays_are_the_full_label_array(mlm_batches):
  info, batches = mlm_batches
  slots = info["max_predictions"]
  assert slots == 16  # round(0.15 * 61) = 9 -> the next multiple of 8
  for b in batches:
    assert b["masked_positions"].shape == b["masked_labels"].shape == (16, slots)
    assert b["masked_positions"].dtype == b["masked_labels"].dtype == np.int32
    assert b["masked_weights"].dtype == np.float32
    for t, pos, lab, w in zip(b["mlm_targets"], b["masked_positions"], b["masked_labels"],
                              b["masked_weights"]):
      where = np.flatnonzero(t != IGNORE)
      n = len(where)
      assert 1 <= n <= slots
      np.testing.assert_array_equal(pos[:n], where)
      np.testing.assert_array_equal(lab[:n], t[where])
      np.testing.assert_array_equal(w, np.arange(slots) < n)
      assert (pos[n:] == 0).all() and (lab[n:] == IGNORE).all()


def test_max_predictions_changes_no_selection(mlm_batches, take):
  _, batches = mlm_batches
  cfg = zd.default_config("mlm_nsp", seq_len=64, max_predictions=40)
  ds = zd.build_dataset(cfg, split="train", global_batch_size=16, seed=2)
  assert ds.info["max_predictions"] == 40
  for a, b in zip(batches, take(ds, 3)):
    for k in ("input_ids", "token_type_ids", "attention_mask", "mlm_targets", "nsp_labels"):
      np.testing.assert_array_equal(a[k], b[k])
    np.testing.assert_array_equal(b["masked_positions"][:, :16], a["masked_positions"])
    assert not b["masked_weights"][:, 16:].any()


@pytest.mark.parametrize("seq_len,default", [(32, 8), (128, 24), (512, 80)])
def test_default_slots_hold_the_most_the_selection_can_produce(seq_len, default):
  tok = ByteTokenizer()
  rng = np.random.default_rng(0)
  counts = []
  for n in range(seq_len - 2):  # every candidate count a [CLS] A [SEP] B [SEP] row can have
    _, targets = bert_data.mask_tokens(
        np.full(seq_len, 9, np.int32), np.arange(n), tok, rng, mask_rate=0.15,
        mask_token_rate=0.8, random_token_rate=0.1, pool=np.array([10]))
    counts.append(int((targets != IGNORE).sum()))
  cfg = zd.default_config("mlm_nsp", seq_len=seq_len)
  assert bert_data.most_selected(seq_len, 0.15) == max(counts)
  assert bert_data.max_predictions(cfg) == default >= max(counts)


def test_max_predictions_too_small_is_a_clear_error():
  cfg = zd.default_config("mlm_nsp", seq_len=128, max_predictions=10)
  msg = r"max_predictions=10 is too small.*up to 19 tokens.*Set max_predictions >= 19"
  with pytest.raises(ValueError, match=msg):
    zd.build_dataset(cfg, split="train", global_batch_size=4, seed=0)
  for bad in (0, 2.5, True):
    cfg = zd.default_config("mlm_nsp")
    cfg.max_predictions = bad
    with pytest.raises(ValueError, match=f"max_predictions must be None .*; got {bad!r}"):
      zd.build_dataset(cfg, split="train", global_batch_size=4, seed=0)


# ----------------------------------------------------------------------------------------------
# Model inputs, FLOPs, and the smoke run.


def test_bad_masked_positions_are_clear_errors(tiny):
  model, params, batch = tiny
  ids = jnp.asarray(batch["input_ids"])
  cases = [
      (np.full((B, P), L, np.int32), r"values in \[16, 16\].*length 16 \(valid 0..15\)"),
      (np.full((B, P), -1, np.int32), r"values in \[-1, -1\]"),
      (np.zeros((B, P), np.float32), "must be integer positions; got dtype float32"),
      (np.zeros((B + 1, P), np.int32), "has 4 rows but input_ids has 3"),
      (np.zeros((B,), np.int32), r"rank 2\); got shape \(3,\)"),
  ]
  for positions, msg in cases:
    with pytest.raises(ValueError, match=msg):
      model.apply({"params": params}, ids, masked_positions=positions)
  classifier = Bert(BertConfig(**{**TINY, "head": "sequence_classification"}))
  with pytest.raises(ValueError, match="masked_positions is read by the masked-LM head only"):
    classifier.init(jax.random.PRNGKey(0), ids, masked_positions=batch["masked_positions"])


def test_train_flops_count_the_mlm_head_on_the_gathered_tokens(tiny):
  model, params, _ = tiny
  family = registry.family_of(model.config)
  full = family.train_flops(model.config, params, {"input_ids": (4, 128)})["full"]
  gathered = family.train_flops(
      model.config, params, {"input_ids": (4, 128), "masked_positions": (4, 24)})["full"]
  head = sum(x.size for x in jax.tree.leaves(params["mlm"]))
  head += params["embeddings"]["word_embeddings"]["embedding"].size
  assert full - gathered == pytest.approx(6.0 * head * 4 * (128 - 24))


def test_smoke_config_trains_on_gathered_logits(tmp_path):
  spec = importlib.util.spec_from_file_location("bert_pretrain", CONFIGS / "bert_pretrain.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config("smoke")
  c.model.update(num_layers=1)  # the smoke model, one layer
  c.train.update(progress_bar=False, plot=False, checkpoint_every=100)
  result = loop.train(c, str(tmp_path), devices=jax.devices()[:1], stop_at=2)
  losses = np.array([result.losses[k] for k in sorted(result.losses)])
  assert len(losses) == 2 and np.isfinite(losses).all()
  data = zd.build_dataset(c.data, split="train", global_batch_size=8, seed=0)
  b = next(iter(data))
  args, kwargs = registry.task("mlm_nsp").inputs(b)  # what the step gives the model
  out = jax.eval_shape(
      lambda p: result.state.apply_fn({"params": p}, *args, **kwargs), result.state.params)
  assert out["mlm_logits"].shape == (8, data.info["max_predictions"], data.info["vocab_size"])
  assert data.info["max_predictions"] == 8 < c.data.seq_len


def test_helpers_are_what_the_task_uses():
  task = registry.task("mlm_nsp")
  batch = padded_batch()
  _, kwargs = task.inputs(batch)
  assert kwargs["masked_positions"] is batch["masked_positions"]
  assert "masked_positions" not in task.inputs(full_only(batch))[1]
  w = task.loss_weights(batch)["mlm_loss"]
  assert w.shape == (B, P) and float(w.sum()) == 7
  assert list(itertools.chain(*bert_data.gather_targets(np.full(4, IGNORE), 2).values())) == [
      0, 0, IGNORE, IGNORE, 0.0, 0.0]
