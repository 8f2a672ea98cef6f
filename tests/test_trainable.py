"""Frozen parameters and LoRA: what changes, what the optimizer holds, what merging gives."""

import jax
import numpy as np
import optax
import pytest
from flax import linen as nn
from flax import traverse_util

from zoo.models.gpt import GPT, GPTConfig
from zoo.training import trainable as tr

TINY = dict(vocab_size=61, max_len=16, d_model=32, num_heads=4, num_layers=2, mlp_dim=64)


def _setup(trainable, scan=False, seed=0):
  model = GPT(GPTConfig(**TINY, scan_layers=scan))
  ids = jax.random.randint(jax.random.PRNGKey(1), (2, 12), 1, TINY["vocab_size"])
  boxed = model.init(jax.random.PRNGKey(seed), ids)["params"]
  boxed = tr.add_adapters(boxed, trainable, jax.random.PRNGKey(7))
  return model, ids, boxed, nn.unbox(boxed)


def _train(model, ids, params, trainable, steps=3):
  """A few AdamW steps of next-token loss through the wrapped apply and optimizer."""
  tx = tr.wrap_optimizer(optax.adamw(1e-2, weight_decay=0.1), trainable)
  apply = tr.wrap_apply(model.apply, trainable)
  opt_state = tx.init(params)

  def loss_fn(p):
    logits = apply({"params": p}, ids[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, ids[:, 1:]).mean()

  @jax.jit
  def step(p, s):
    grads = jax.grad(loss_fn)(p)
    updates, s = tx.update(grads, s, p)
    return optax.apply_updates(p, updates), s

  new = params
  for _ in range(steps):
    new, opt_state = step(new, opt_state)
  return new, opt_state


def _flat(tree):
  return traverse_util.flatten_dict(tree, sep="/")


def _state_size(opt_state) -> int:
  return sum(int(np.size(x)) for x in jax.tree.leaves(opt_state) if np.ndim(x) > 0)


def test_frozen_leaves_are_bit_identical_and_hold_no_optimizer_state():
  spec = tr.Trainable(freeze=r"^(wte|wpe)/|decoder/layers_0/")
  model, ids, _, params = _setup(spec)
  new, opt_state = _train(model, ids, params, spec)
  before, after = _flat(params), _flat(new)
  frozen = _flat(tr.frozen_mask(params, spec))
  assert any(frozen.values()) and not all(frozen.values())
  for path in before:
    same = np.array_equal(np.asarray(before[path]), np.asarray(after[path]))
    assert same == frozen[path], path  # frozen: unchanged; trainable: moved
  counts = tr.counts(params, spec)
  # Adam keeps mu and nu for trainable leaves only.
  assert _state_size(opt_state) == 2 * counts["trainable"]
  assert counts["trainable"] + counts["frozen"] == counts["total"]


@pytest.mark.parametrize("scan", [False, True])
def test_lora_trains_only_adapters_and_merges_exactly(scan):
  spec = tr.Trainable(lora_rank=4, lora_alpha=8.0)
  model, ids, boxed, params = _setup(spec, scan=scan)
  flat = _flat(params)
  adapted = sorted(p.rpartition("/")[0] for p in flat if p.endswith("/lora_a"))
  prefix = "decoder/layers/" if scan else "decoder/layers_0/"
  assert f"{prefix}attn/query" in adapted and f"{prefix}attn/value" in adapted
  assert not any(m.endswith(("attn/key", "attn/out", "mlp/wi")) for m in adapted)
  # Adapters carry logical names, so they shard like their kernel's in / out axes.
  names = _flat(nn.get_partition_spec(boxed))
  assert names[f"{prefix}attn/query/lora_a"][-1] is None
  # b starts at zero: the adapted model is the base model.
  base = {k: v for k, v in params.items()}
  np.testing.assert_array_equal(
      model.apply({"params": tr.merge_adapters(params)}, ids), model.apply({"params": base}, ids)
  )

  new, opt_state = _train(model, ids, params, spec)
  before, after = _flat(params), _flat(new)
  for path in before:
    leaf = path.rpartition("/")[2]
    changed = not np.array_equal(np.asarray(before[path]), np.asarray(after[path]))
    if leaf == "lora_b":
      assert changed, path
    elif leaf not in ("lora_a",):
      assert not changed, path
  adapters = sum(int(np.size(v)) for p, v in before.items() if p.endswith(("lora_a", "lora_b")))
  assert _state_size(opt_state) == 2 * adapters

  # Merged export == the adapted forward pass.
  adapted_logits = tr.wrap_apply(model.apply, spec)({"params": new}, ids)
  merged = tr.merge_adapters(new)
  assert not tr.has_adapters(merged) and set(_flat(merged)) == {
      p for p in after if p.rpartition("/")[2] not in tr.ADAPTER_NAMES
  }
  merged_logits = model.apply({"params": merged}, ids)
  np.testing.assert_allclose(merged_logits, adapted_logits, atol=1e-5)
  # And the adapters did something.
  assert not np.allclose(merged_logits, model.apply({"params": base}, ids), atol=1e-6)


def test_lora_merge_is_kernel_plus_scaled_product():
  spec = tr.Trainable(lora_rank=2, lora_alpha=6.0, lora_targets=r"attn/out$")
  _, _, _, params = _setup(spec)
  flat = dict(_flat(params))
  out = "decoder/layers_1/attn/out"
  kernel = flat[f"{out}/kernel"]  # [N, H, D]: the in axes are N and H
  a = jax.random.normal(jax.random.PRNGKey(3), flat[f"{out}/lora_a"].shape)
  b = jax.random.normal(jax.random.PRNGKey(4), flat[f"{out}/lora_b"].shape)
  assert a.shape == (*kernel.shape[:2], 2) and b.shape == (2, kernel.shape[2])
  flat[f"{out}/lora_a"], flat[f"{out}/lora_b"] = a, b
  merged = _flat(tr.merge_adapters(traverse_util.unflatten_dict(flat, sep="/")))
  n, h, d = kernel.shape
  expected = kernel + 3.0 * (a.reshape(n * h, 2) @ b).reshape(n, h, d)
  np.testing.assert_allclose(merged[f"{out}/kernel"], expected, rtol=1e-6, atol=1e-6)


def test_always_train_keeps_a_fresh_head_trainable_under_lora():
  spec = tr.Trainable(lora_rank=2, always_train=r"^ln_f/")
  _, _, _, params = _setup(spec)
  mask = _flat(tr.frozen_mask(params, spec))
  assert not mask["ln_f/scale"] and mask["wte/embedding"]
  assert not mask["decoder/layers_0/attn/query/lora_b"]
  assert mask["decoder/layers_0/attn/query/lora_scale"]


def test_bad_patterns_are_named_with_the_fix():
  _, _, boxed, params = _setup(tr.Trainable())
  with pytest.raises(ValueError, match=r"train.freeze='nothing/here' matches no parameter.*wte/"):
    tr.frozen_mask(params, tr.Trainable(freeze="nothing/here"))
  with pytest.raises(ValueError, match="freezes every parameter"):
    tr.frozen_mask(params, tr.Trainable(freeze="."))
  with pytest.raises(ValueError,
                     match=r"lora.targets='attn/qkv' matches no projection.*attn/query"):
    tr.add_adapters(
        boxed, tr.Trainable(lora_rank=2, lora_targets="attn/qkv"), jax.random.PRNGKey(0)
    )
  with pytest.raises(ValueError, match=r"freeze='\(' is not a regular expression"):
    tr.Trainable(freeze="(")
  with pytest.raises(ValueError, match="lora rank must be an integer >= 0"):
    tr.Trainable(lora_rank=-1)


def test_inactive_spec_changes_nothing():
  spec = tr.Trainable()
  tx = optax.sgd(0.1)
  assert tr.wrap_optimizer(tx, spec) is tx
  apply = lambda v, x: x  # noqa: E731
  assert tr.wrap_apply(apply, spec) is apply
  assert not spec.active
