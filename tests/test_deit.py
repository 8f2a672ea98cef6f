"""DeiT (a ViT with a distillation token) against Hugging Face models built locally.

Every DeiT class transformers has a converter for (``DeiTModel``, ``DeiTForImageClassification``,
``DeiTForImageClassificationWithTeacher``): tiny random models, built once per module, loaded
with ``zoo.from_pretrained`` and compared on the same images; exported back with
``save_pretrained`` and reloaded by transformers; zoo -> HF -> zoo is the identity. Then the
presets' parameter counts against transformers' own count of the released configs, a
fine-tuning run through the loop from a DeiT folder, and the bad inputs.
"""

import dataclasses
import json
import os
import runpy
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from reference import randomize

import zoo
from zoo.models.vit import ViT, ViTConfig, num_params_formula
from zoo.presets import PUBLISHED_PARAMS
from zoo.training import loop

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ATOL = 1e-4
D, N, F, K = 16, 4, 32, 5
BASE, CLASSIFIER, TEACHER = (
    "DeiTModel", "DeiTForImageClassification", "DeiTForImageClassificationWithTeacher")


def _hf_config(**kw):
  return transformers.DeiTConfig(
      image_size=32, patch_size=8, num_channels=3, hidden_size=D, num_hidden_layers=2,
      num_attention_heads=N, intermediate_size=F, num_labels=K, **kw,
  )


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
  """``{architecture: (random HF model, its saved folder)}``, each built once."""
  root = tmp_path_factory.mktemp("deit")
  out = {}
  for seed, arch in enumerate((BASE, CLASSIFIER, TEACHER)):
    hf = randomize(getattr(transformers, arch)(_hf_config()), seed)
    hf.save_pretrained(str(root / arch))
    out[arch] = hf, str(root / arch)
  return out


def _images(size=32, seed=0):
  return np.random.RandomState(seed).randn(2, size, size, 3).astype(np.float32)


def _hf(hf, images, **kw):
  with torch.no_grad():
    out = hf(pixel_values=torch.tensor(images.transpose(0, 3, 1, 2)), **kw)
  return out


def _main(out):
  """The output zoo's ViT returns: logits, or ``pooler_output`` for ``DeiTModel``."""
  return (out.pooler_output if out.get("logits") is None else out.logits).numpy()


def _flat(params):
  return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(params, sep="/").items()}


def _max_diff(a, b):
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


# ----------------------------------------------------------------------------------------------
# Parity, export, round trip.


@pytest.mark.parametrize("arch", [BASE, CLASSIFIER, TEACHER])
def test_every_deit_class_matches_hf_exports_and_round_trips(folders, arch, tmp_path):
  hf, path = folders[arch]
  model, params = zoo.from_pretrained(path)
  cfg = model.config
  assert cfg.distillation_token and cfg.distillation_head == (arch == TEACHER)
  assert cfg.num_classes == (0 if arch == BASE else K) and cfg.norm_eps == 1e-12
  assert params["dist_token"].shape == (1, 1, D) and params["pos_embedding"].shape == (1, 18, D)
  images = _images()
  ref = _main(_hf(hf, images))
  out, state = model.apply({"params": params}, images, mutable=["intermediates"])
  assert out.dtype == jnp.float32 and _max_diff(out, ref) < ATOL
  assert float(np.max(np.abs(ref))) > 0.1  # not a comparison of near-zeros
  if arch == TEACHER:  # both heads, as transformers returns them
    sown = state["intermediates"]
    hf_out = _hf(hf, images)
    assert _max_diff(sown["cls_logits"][0], hf_out.cls_logits.numpy()) < ATOL
    assert _max_diff(sown["distillation_logits"][0], hf_out.distillation_logits.numpy()) < ATOL

  zoo.save_pretrained(model, params, tmp_path / "zoo2hf")
  written = json.loads((tmp_path / "zoo2hf" / "config.json").read_text())
  assert written["architectures"] == [arch] and written["model_type"] == "deit"
  back = getattr(transformers, arch).from_pretrained(str(tmp_path / "zoo2hf")).eval()
  assert _max_diff(_main(_hf(back, images)), ref) < ATOL
  again = _flat(zoo.from_pretrained(tmp_path / "zoo2hf")[1])
  want = _flat(params)
  assert sorted(again) == sorted(want)
  for k in want:
    np.testing.assert_array_equal(again[k], want[k], err_msg=k)


def test_another_resolution_keeps_both_prefix_rows_like_interpolate_pos_encoding(folders):
  hf, path = folders[TEACHER]
  model, params = zoo.from_pretrained(path, image_size=48)
  assert params["pos_embedding"].shape == (1, 2 + 6 * 6, D)
  images = _images(48, 1)
  ref = _hf(hf, images, interpolate_pos_encoding=True).logits.numpy()
  assert _max_diff(model.apply({"params": params}, images), ref) < ATOL


def test_fresh_heads_on_a_deit_checkpoint_and_the_dropped_distillation_head(folders):
  _, path = folders[TEACHER]
  fitted = zoo.pretrained.api.load(path, num_classes=3)
  assert fitted.new == ["head/bias", "head/kernel", "head_dist/bias", "head_dist/kernel"]
  # Without the distillation head (a plain DeiTForImageClassification), it is not used.
  fitted = zoo.pretrained.api.load(path, distillation_head=False)
  assert fitted.dropped == ["head_dist/bias", "head_dist/kernel"] and not fitted.new


# ----------------------------------------------------------------------------------------------
# Presets and configuration.

# The released facebook/deit-*-distilled-patch16-224 config.json fields (all 12 layers, 224 px,
# patch 16, 1000 labels, DeiTForImageClassificationWithTeacher): hidden, heads, intermediate.
RELEASED = {
    "deit-tiny-distilled-patch16-224": (192, 3, 768),
    "deit-small-distilled-patch16-224": (384, 6, 1536),
    "deit-base-distilled-patch16-224": (768, 12, 3072),
}


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_preset_counts_are_transformers_count_of_the_released_config(name):
  d, n, f = RELEASED[name]
  hf_cfg = transformers.DeiTConfig(
      hidden_size=d, num_hidden_layers=12, num_attention_heads=n, intermediate_size=f,
      image_size=224, patch_size=16, num_channels=3, num_labels=1000, layer_norm_eps=1e-12)
  with torch.device("meta"):
    hf = transformers.DeiTForImageClassificationWithTeacher(hf_cfg)
  want = sum(p.numel() for p in hf.parameters())
  assert PUBLISHED_PARAMS[name] == want
  assert zoo.param_count(name, scan_layers=True) == want
  assert num_params_formula(zoo.get_config(name)) == want


def test_distillation_fields_are_checked_with_the_fix():
  tiny = dict(image_size=32, patch_size=8, d_model=D, num_heads=N, num_layers=1, mlp_dim=F)
  with pytest.raises(ValueError, match=r"distillation_token=True needs class_token=True"):
    ViTConfig(**tiny, pool="mean", class_token=False, distillation_token=True)
  with pytest.raises(ValueError, match=r"got distillation_token=False"):
    ViTConfig(**tiny, distillation_head=True)
  with pytest.raises(ValueError, match=r"got pool='mean', num_classes=0"):
    ViTConfig(**tiny, distillation_token=True, distillation_head=True, pool="mean", num_classes=0)
  cfg = ViTConfig(**tiny, distillation_token=True, pool="mean", num_classes=K)
  assert cfg.num_prefix_tokens == 2 and cfg.num_tokens == 18
  assert zoo.param_count(ViT(cfg)) == num_params_formula(cfg)


def test_the_averaged_logits_train_both_heads_and_mean_pooling_skips_both_tokens(folders):
  model, params = zoo.from_pretrained(folders[TEACHER][1])
  cfg, images, labels = model.config, _images(), jnp.array([1, 3])

  def loss(p):
    logits = model.apply({"params": p}, images)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))

  jit = jax.jit(jax.grad(loss), compiler_options={"xla_backend_optimization_level": 0})
  grads = _flat(jit(params))
  for k in ("head/kernel", "head_dist/kernel", "dist_token", "cls"):
    assert np.any(grads[k] != 0), k
  # Mean pooling averages the patch tokens only, after both prefix tokens.
  pooled = dataclasses.replace(cfg, pool="mean", distillation_head=False, num_classes=0)
  p = {k: v for k, v in params.items() if not k.startswith("head")}
  out, state = ViT(pooled).apply({"params": p}, images, capture_intermediates=True)
  x = state["intermediates"]["encoder_norm"]["__call__"][0]
  assert x.shape == (2, 2 + 16, D)
  np.testing.assert_allclose(out, x[:, 2:].mean(axis=1), atol=1e-6)
  assert _max_diff(out, x[:, 1:].mean(axis=1)) > 1e-3


# ----------------------------------------------------------------------------------------------
# Unsupported variants.


def _edited(folder, tmp_path, **fields):
  out = tmp_path / "edited"
  shutil.copytree(folder, out)
  cfg = json.loads((out / "config.json").read_text())
  cfg.update(fields)
  (out / "config.json").write_text(json.dumps(cfg))
  return str(out)


def test_an_unimplemented_deit_variant_is_one_error_naming_the_field(folders, tmp_path):
  _, path = folders[TEACHER]
  with pytest.raises(ValueError, match=r"config\.json: DeiT qkv_bias=false is not supported"):
    zoo.from_pretrained(_edited(path, tmp_path / "a", qkv_bias=False))
  with pytest.raises(ValueError, match=r"config\.json: DeiT hidden_act 'relu6' is not supported"):
    zoo.from_pretrained(_edited(path, tmp_path / "b", hidden_act="relu6"))
  masked = _edited(path, tmp_path / "c", architectures=["DeiTForMaskedImageModeling"])
  with pytest.raises(ValueError, match=r"architecture \['DeiTForMaskedImageModeling'\] .* not"):
    zoo.from_pretrained(masked)


# ----------------------------------------------------------------------------------------------
# Fine-tuning through the loop.


def _run_config(init, **train):
  c = runpy.run_path(os.path.join(ROOT, "configs", "vit.py"))["get_config"]("finetune")
  c.init.path = init
  c.data.image_size = 16  # a 2 x 2 patch grid: the position table is resized
  c.train.update(batch_size=4, num_steps=3, log_every=1, checkpoint_every=100,
                 progress_bar=False, plot=False, **train)
  c.train.compiler_options = {"xla_backend_optimization_level": 0}
  c.optim.update(warmup_steps=1, lr=0.1)
  c.eval.update(every=-1)
  c.mesh.update(data=1)
  return c


BACKBONE = r"^(embedding|encoder|encoder_norm|cls|dist_token)(/|$)"


@pytest.mark.parametrize("how", ["freeze", "lora"])
def test_fine_tuning_a_deit_folder_trains_fresh_heads_on_a_fixed_backbone(folders, tmp_path, how):
  _, path = folders[TEACHER]
  config = _run_config(path, freeze=BACKBONE if how == "freeze" else "")
  if how == "lora":
    config.lora.update(rank=2, alpha=4.0)
  result = loop.train(config, str(tmp_path / "run"), devices=jax.devices()[:1])
  assert result.step == 3
  got = _flat(result.state.params)
  base = _flat(zoo.from_pretrained(path, image_size=16)[1])  # positions resized to 2 x 2
  assert got["head/kernel"].shape == got["head_dist/kernel"].shape == (D, 10)  # the digits
  adapters = [k for k in got if k.endswith(("lora_a", "lora_b"))]
  assert bool(adapters) == (how == "lora")
  assert how == "freeze" or any(np.any(got[k] != 0) for k in adapters if k.endswith("lora_b"))
  # LoRA trains adapters and the fresh heads only; freezing leaves the positions trainable.
  moves = ("pos_embedding",) if how == "freeze" else ()
  for k in base:
    if k.startswith("head"):
      continue
    if k in moves:
      assert not np.array_equal(got[k], base[k]), k
    else:
      np.testing.assert_array_equal(got[k], base[k], err_msg=k)  # frozen: bit for bit
  model = zoo.build(zoo.pretrained.api.read_workdir(str(tmp_path / "run")).config)
  assert model.config.distillation_head and model.config.num_classes == 10




# ----------------------------------------------------------------------------------------------
# Attention maps (needs /tmp/h/deit_vit_attention.patch in zoo/analysis/vit_attention.py).


def test_attention_maps_of_a_deit_read_cls_after_both_prefix_tokens(folders, tmp_path):
  from zoo.analysis.__main__ import main  # noqa: PLC0415 - matplotlib only for this test

  _, path = folders[TEACHER]
  assert main(["attention", "--out", str(tmp_path), "--checkpoint", path, "--all-layers"]) == 0
  data = json.loads((tmp_path / "attention.json").read_text())
  assert data["grid"] == [4, 4] and data["class_token"] is True
  assert data["tokens"][:3] == ["[CLS]", "[DIST]", "0,0"] and len(data["tokens"]) == 18
  assert [r["layer"] for r in data["layers"]] == [0, 1] and data["num_heads"] == N
  for r in data["layers"]:
    for h, m in r["heads"].items():
      m = np.asarray(m)
      assert m.shape == (18, 18)
      np.testing.assert_allclose(m.sum(-1), 1.0, atol=1e-3)
      np.testing.assert_allclose(r["cls_grid"][h], m[0, 2:].reshape(4, 4), atol=1e-4)
  roll = np.asarray(data["rollout"]["matrix"])
  np.testing.assert_allclose(data["rollout"]["cls_grid"], roll[0, 2:].reshape(4, 4), atol=1e-4)
  assert (tmp_path / "attention.png").read_bytes()[:4] == b"\x89PNG"
