"""ViT: patch order matters, resolution changes, pooling, scan/remat/jit equivalences, training,
and logits equal to a Hugging Face ``ViTForImageClassification`` built locally.

CPU budget: every jit compile of even a tiny model costs a second or more on the CI's two
cores, and compiling the random initialisers (threefry) several times that. So tests share
one jitted apply per config, draw parameters with numpy at the shapes ``init`` reports
(``jax.eval_shape``: no compile), only the training test runs the real initialiser, and
every jit asks XLA for its cheapest CPU codegen (LLVM -O0: same numerics, ~2.5x faster to
compile, irrelevant run time at these sizes).
"""

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

import zoo
from zoo.layers.positional import sincos_2d
from zoo.layers.stack import scan_params
from zoo.models.vit import ViT, ViTConfig, dummy_inputs, num_params_formula

# 32 px images, 8 px patches: a 4 x 4 grid, 17 tokens with the class token, 2 layers.
TINY = ViTConfig(
    image_size=32, patch_size=8, num_channels=3, d_model=32, num_heads=4, num_layers=2,
    mlp_dim=64, num_classes=5,
)


# LLVM optimisation level 0 for test programs (see the module docstring).
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def _images(seed=0, batch=2, height=32, width=32, channels=3):
  return np.random.default_rng(seed).normal(
      size=(batch, height, width, channels)
  ).astype(np.float32)


def _shapes(cfg):
  """The boxed parameter tree of ``ViT(cfg).init`` as ShapeDtypeStructs (nothing compiled)."""
  args, kwargs = dummy_inputs(cfg, batch_size=2)
  return jax.eval_shape(ViT(cfg).init, jax.random.PRNGKey(0), *args, **kwargs)["params"]


def _params(cfg=TINY, seed=0):
  """Random parameters for ``cfg``: unit-variance activations, non-trivial norms and biases.

  Kernels are normal(1/sqrt(fan_in)) so that attention is far from uniform (with the 0.02
  init every token attends almost evenly and patch order barely shows in the output).
  """
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    names = [getattr(k, "key", "") for k in path]
    shape = leaf.shape
    if names[-1] == "kernel":
      fan_in = shape[0] if names[-2] in ("query", "key", "value") else np.prod(shape[:-1])
      x = rng.normal(size=shape) / np.sqrt(fan_in)
    elif names[-1] == "scale":
      x = 1.0 + 0.1 * rng.normal(size=shape)
    elif names[-1] == "bias":
      x = 0.1 * rng.normal(size=shape)
    else:  # cls, pos_embedding
      x = rng.normal(size=shape)
    return jnp.asarray(x, jnp.float32)

  return jax.tree_util.tree_map_with_path(draw, nn.unbox(_shapes(cfg)))


@functools.cache
def _jit_apply(cfg):
  return jit(lambda params, images: ViT(cfg).apply({"params": params}, images))


def _apply(cfg, params, images):
  """Jitted forward, compiled once per (config, input shape)."""
  return _jit_apply(cfg)(params, images)


def _shuffle_patches(images, patch, perm):
  """Permute the non-overlapping ``patch x patch`` squares of ``[B, H, W, C]`` images."""
  b, h, w, c = images.shape
  gh, gw = h // patch, w // patch
  x = images.reshape(b, gh, patch, gw, patch, c).transpose(0, 1, 3, 2, 4, 5)
  x = x.reshape(b, gh * gw, patch, patch, c)[:, perm]
  x = x.reshape(b, gh, gw, patch, patch, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h, w, c)


def _max_diff(a, b):
  return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


def test_tree_axes_and_param_count():
  boxed = _shapes(TINY)
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert all(isinstance(x, nn.Partitioned) for x in leaves), "every parameter has axis names"
  params = nn.unbox(boxed)
  assert set(params) == {"embedding", "cls", "pos_embedding", "encoder", "encoder_norm", "head"}
  assert params["embedding"]["kernel"].shape == (8, 8, 3, 32)
  assert params["cls"].shape == (1, 1, 32)
  assert params["pos_embedding"].shape == (1, 17, 32)
  assert set(params["encoder"]) == {"layers_0", "layers_1"}
  assert params["encoder"]["layers_0"]["attn"]["query"]["kernel"].shape == (32, 4, 8)
  assert params["head"]["kernel"].shape == (32, 5)
  out = _apply(TINY, _params(), _images())
  assert out.shape == (2, 5) and out.dtype == jnp.float32
  # The architecture formula and zoo.param_count agree, on the tiny config and on ViT-B/16
  # (86.6M against the paper's 86M).
  assert zoo.param_count(ViT(TINY)) == num_params_formula(TINY)
  b16 = zoo.param_count("vit-b16")
  assert b16 == num_params_formula(zoo.get_config("vit-b16"))
  assert abs(b16 / zoo.PUBLISHED_PARAMS["vit-b16"] - 1) < 0.02


def test_shuffling_patches_changes_output():
  params, images = _params(), _images()
  perm = np.random.default_rng(0).permutation(16)
  shuffled_images = _shuffle_patches(images, 8, perm)
  assert _max_diff(_apply(TINY, params, images), _apply(TINY, params, shuffled_images)) > 0.05
  # Control: without position embeddings the class token's output is permutation invariant,
  # so the change above comes from the positions, not from a broken patchify.
  no_pos = {**params, "pos_embedding": jnp.zeros_like(params["pos_embedding"])}
  np.testing.assert_allclose(
      _apply(TINY, no_pos, images), _apply(TINY, no_pos, shuffled_images), atol=1e-5
  )


def test_bad_inputs_fail_clearly():
  model, params = ViT(TINY), _params()
  apply = lambda x: model.apply({"params": params}, x)
  with pytest.raises(ValueError, match=r"30x32 is not divisible by patch_size=8.*height 24 or 32"):
    apply(_images(height=30))
  with pytest.raises(ValueError, match=r"rank 4.*\(32, 32, 3\)"):
    apply(np.zeros((32, 32, 3), np.float32))
  with pytest.raises(ValueError, match=r"1 channels.*num_channels=3"):
    apply(np.zeros((2, 32, 32, 1), np.float32))
  with pytest.raises(ValueError, match=r"channels-last"):
    apply(np.zeros((2, 3, 32, 32), np.float32))
  with pytest.raises(ValueError, match=r"floating point; got dtype uint8"):
    apply(np.zeros((2, 32, 32, 3), np.uint8))
  # The same checks, registered with the family, need no model or parameters.
  validate = zoo.registry.get("vit").validate
  validate(TINY, {"images": _images()})
  with pytest.raises(ValueError, match=r"floating point; got dtype uint8"):
    validate(TINY, {"images": np.zeros((2, 32, 32, 3), np.uint8)})
  with pytest.raises(ValueError, match=r"image_size=30 is not divisible by patch_size=8"):
    ViTConfig(image_size=30, patch_size=8)
  with pytest.raises(ValueError, match=r"pool='cls' needs class_token=True"):
    ViTConfig(class_token=False)
  with pytest.raises(ValueError, match=r"d_model=30 is not divisible by num_heads=4"):
    ViTConfig(d_model=30, num_heads=4)


def test_other_resolutions_interpolate_positions():
  params = _params()
  table = params["pos_embedding"]
  # Reference: a model built natively at 48 px whose table is the class row + PyTorch's
  # bicubic resize of the 4x4 grid to 6x6 (what timm / HF interpolate_pos_encoding do).
  grid = _torch_bicubic(table[0, 1:].reshape(4, 4, 32), (6, 6))
  big = dataclasses.replace(TINY, image_size=48)
  big_params = {
      **params, "pos_embedding": jnp.concatenate([table[:, :1], grid.reshape(1, 36, 32)], 1)
  }
  images = _images(height=48, width=48)
  np.testing.assert_allclose(
      _apply(TINY, params, images), _apply(big, big_params, images), atol=1e-5
  )
  # A non-square grid runs with the same parameters.
  out = _apply(TINY, params, _images(height=48, width=40))
  assert out.shape == (2, 5) and bool(jnp.all(jnp.isfinite(out)))
  # At the native size the bicubic resize is the identity, so skipping it changes nothing.
  same = _torch_bicubic(table[0, 1:].reshape(4, 4, 32), (4, 4))
  np.testing.assert_allclose(same.reshape(16, 32), table[0, 1:], atol=1e-6)


def _torch_bicubic(grid_hwd, size):
  import torch

  x = torch.from_numpy(np.asarray(grid_hwd, np.float32)).permute(2, 0, 1)[None]
  y = torch.nn.functional.interpolate(x, size=size, mode="bicubic", align_corners=False)
  return jnp.asarray(y[0].permute(1, 2, 0).numpy())


def test_pooling_cls_mean_and_pre_logits():
  params, images = _params(), _images()
  body = {k: v for k, v in params.items() if k != "head"}
  features = {}
  for pool in ("cls", "mean"):
    cfg = dataclasses.replace(TINY, pool=pool, num_classes=0)
    out, state = jit(functools.partial(ViT(cfg).apply, capture_intermediates=True))(
        {"params": body}, images
    )
    normed = state["intermediates"]["encoder_norm"]["__call__"][0]  # [B, 17, D]
    want = normed[:, 0] if pool == "cls" else normed[:, 1:].mean(axis=1)
    assert out.shape == (2, 32)
    np.testing.assert_allclose(out, want, atol=1e-6)
    features[pool] = out
  assert _max_diff(features["cls"], features["mean"]) > 0.1
  # Pre-logits: head(tanh(dense(features))).
  rep = dataclasses.replace(TINY, representation_size=24)
  rep_params = _params(rep)
  chex.assert_trees_all_equal_shapes(rep_params, nn.unbox(_shapes(rep)))
  rep_params = {**body, "pre_logits": rep_params["pre_logits"], "head": rep_params["head"]}
  pre, head = rep_params["pre_logits"], rep_params["head"]
  want = np.tanh(features["cls"] @ pre["kernel"] + pre["bias"]) @ head["kernel"] + head["bias"]
  np.testing.assert_allclose(_apply(rep, rep_params, images), want, atol=1e-5)
  # Mean pooling without a class token: no "cls" parameter and a 16-row position table.
  cfg = dataclasses.replace(TINY, pool="mean", class_token=False)
  p = {k: v for k, v in params.items() if k != "cls"}
  p["pos_embedding"] = params["pos_embedding"][:, 1:]
  chex.assert_trees_all_equal_shapes(p, nn.unbox(_shapes(cfg)))
  assert _apply(cfg, p, _images(height=40)).shape == (2, 5)


def test_sincos2d_positions():
  cfg = dataclasses.replace(TINY, position="sincos2d")
  params = {k: v for k, v in _params().items() if k != "pos_embedding"}
  chex.assert_trees_all_equal_shapes(params, nn.unbox(_shapes(cfg)))
  images = _images()
  # Same as a learned model whose table is a zero class row over the 4x4 sin-cos grid.
  table = jnp.concatenate([jnp.zeros((1, 32)), sincos_2d(4, 4, 32)])[None]
  learned = _apply(TINY, {**params, "pos_embedding": table}, images)
  np.testing.assert_allclose(_apply(cfg, params, images), learned, atol=1e-5)
  perm = np.random.default_rng(1).permutation(16)
  assert _max_diff(_apply(cfg, params, _shuffle_patches(images, 8, perm)), learned) > 0.05
  assert _apply(cfg, params, _images(height=48, width=24)).shape == (2, 5)


def test_jit_equals_no_jit_and_dropout():
  params, images = _params(), _images()
  jitted = _apply(TINY, params, images)
  np.testing.assert_allclose(ViT(TINY).apply({"params": params}, images), jitted, atol=1e-5)
  # Dropout is on only with deterministic=False (every other test runs the default True).
  drop_cfg = dataclasses.replace(TINY, dropout_rate=0.2, attention_dropout_rate=0.2)
  noisy = jit(
      lambda rng: ViT(drop_cfg).apply(
          {"params": params}, images, deterministic=False, rngs={"dropout": rng}
      )
  )(jax.random.PRNGKey(1))
  assert _max_diff(noisy, jitted) > 1e-2


def test_scan_equals_loop():
  params, images = _params(), _images()
  scan_cfg = dataclasses.replace(TINY, scan_layers=True)
  scanned = scan_params(params)
  chex.assert_trees_all_equal_shapes(scanned, nn.unbox(_shapes(scan_cfg)))
  np.testing.assert_allclose(
      _apply(scan_cfg, scanned, images), _apply(TINY, params, images), atol=1e-5
  )


def _loss_and_grads(cfg, params, images, labels):
  def loss(p):
    logits = ViT(cfg).apply({"params": p}, images)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  return jit(jax.value_and_grad(loss))(params)


def test_remat_equals_plain():
  # One layer and one policy: each gradient compile costs seconds, and the policies differ
  # only in what jax.checkpoint saves (zoo.layers.stack), not in how the model calls it.
  plain = dataclasses.replace(TINY, num_layers=1)
  params, images, labels = _params(plain), _images(), jnp.array([1, 3])
  value, grads = _loss_and_grads(plain, params, images, labels)
  cfg = dataclasses.replace(plain, remat_policy="full")
  remat_value, remat_grads = _loss_and_grads(cfg, params, images, labels)
  np.testing.assert_allclose(remat_value, value, rtol=1e-6)
  chex.assert_trees_all_close(remat_grads, grads, atol=1e-5)


def test_bfloat16_compute_gives_float32_logits():
  params, images = _params(), _images()
  out = _apply(dataclasses.replace(TINY, dtype=jnp.bfloat16), params, images)
  assert out.dtype == jnp.float32
  want = _apply(TINY, params, images)
  assert _max_diff(out, want) < 0.1 * float(np.max(np.abs(want)))


def test_tiny_vit_overfits_one_batch():
  cfg = dataclasses.replace(TINY, num_classes=4)
  model = ViT(cfg)
  images, labels = _images(seed=3, batch=8), jnp.arange(8) % 4
  params = jit(model.init)(jax.random.PRNGKey(0), images)["params"]  # the real init
  opt = optax.adam(3e-3)

  @jit
  def step(params, opt_state):
    def loss_fn(p):
      logits = model.apply({"params": p}, images)
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  opt_state = opt.init(params)
  losses = []
  for _ in range(100):
    params, opt_state, loss = step(params, opt_state)
    losses.append(float(loss))
  assert losses[0] == pytest.approx(np.log(4), rel=1e-5)  # zero-initialised head: uniform
  assert losses[-1] < 0.05 * losses[0], losses[::10]


def _hf_to_zoo(state_dict, cfg):
  """An explicit key map from a transformers-5 in-memory ViT state dict to the zoo tree."""
  sd = {k: v.detach().numpy() for k, v in state_dict.items()}
  used = set()

  def get(key):
    used.add(key)
    return sd[key]

  d, n = cfg.d_model, cfg.num_heads
  h = d // n
  ln = lambda pre: {"scale": get(f"{pre}.weight"), "bias": get(f"{pre}.bias")}
  lin = lambda pre: {"kernel": get(f"{pre}.weight").T, "bias": get(f"{pre}.bias")}
  heads = lambda pre: {
      "kernel": get(f"{pre}.weight").T.reshape(d, n, h), "bias": get(f"{pre}.bias").reshape(n, h)
  }
  conv = "vit.embeddings.patch_embeddings.projection"
  params = {
      "embedding": {
          "kernel": get(f"{conv}.weight").transpose(2, 3, 1, 0), "bias": get(f"{conv}.bias")
      },
      "cls": get("vit.embeddings.cls_token"),
      "pos_embedding": get("vit.embeddings.position_embeddings"),
      "encoder": {},
      "encoder_norm": ln("vit.layernorm"),
      "head": lin("classifier"),
  }
  for i in range(cfg.num_layers):
    pre = f"vit.layers.{i}"
    params["encoder"][f"layers_{i}"] = {
        "attn_norm": ln(f"{pre}.layernorm_before"),
        "attn": {
            "query": heads(f"{pre}.attention.q_proj"),
            "key": heads(f"{pre}.attention.k_proj"),
            "value": heads(f"{pre}.attention.v_proj"),
            "out": {
                "kernel": get(f"{pre}.attention.o_proj.weight").T.reshape(n, h, d),
                "bias": get(f"{pre}.attention.o_proj.bias"),
            },
        },
        "mlp_norm": ln(f"{pre}.layernorm_after"),
        "mlp": {"wi": lin(f"{pre}.mlp.fc1"), "wo": lin(f"{pre}.mlp.fc2")},
    }
  assert used == set(sd), f"unmapped keys: {sorted(set(sd) - used)}"
  return jax.tree.map(jnp.asarray, params)


def test_matches_huggingface_vit():
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  torch.manual_seed(0)
  hf_cfg = transformers.ViTConfig(
      image_size=32, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=2,
      num_attention_heads=4, intermediate_size=64, hidden_act="gelu", layer_norm_eps=1e-6,
      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=5,
      qkv_bias=True, attn_implementation="eager",
  )
  hf = transformers.ViTForImageClassification(hf_cfg).eval()
  with torch.no_grad():  # non-trivial biases and norm parameters, not just the default init
    for p in hf.parameters():
      p.add_(0.05 * torch.randn_like(p))
  params = _hf_to_zoo(hf.state_dict(), TINY)
  chex.assert_trees_all_equal_shapes(params, nn.unbox(_shapes(TINY)))  # every shape checked
  images = _images(seed=5)
  with torch.no_grad():
    want = hf(pixel_values=torch.from_numpy(images).permute(0, 3, 1, 2)).logits.numpy()
  got = _apply(TINY, params, images)
  np.testing.assert_allclose(got, want, atol=1e-4)
  assert float(np.max(np.abs(want))) > 0.1  # the comparison is not between near-zeros
