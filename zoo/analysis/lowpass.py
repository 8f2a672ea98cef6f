"""ViT as a low-pass filter: Fourier analysis of feature maps (Park & Kim, ICLR 2022, Fig. 2(a)).

Park & Kim ("How Do Vision Transformers Work?") Fourier-transform every feature map of a
trained ViT and a trained ResNet and find that multi-head self-attention (MSA) lowers the
amplitude of the high frequencies while convolutions raise it. This experiment repeats the
measurement on the offline digits (8x8, resized to ``--image-size``):

* a small ViT trained by zoo's own loop (``configs/vit.py`` with a shrunk model, through
  :func:`zoo.training.loop.build_run`; the workdir is kept, so the ViT can be looked at with
  ``python -m zoo.analysis attention --checkpoint <workdir>``);
* :class:`ConvNet`, a small Flax module of this file only (not a zoo family): the same
  patchify stem, MLP sublayers, LayerNorms and mean-pool head as the ViT, with every MSA
  replaced by a 3x3 convolution, trained on the same batches with the same optimizer
  (``zoo.training.optimizer.make_optimizer`` of the run config). The two networks differ in
  the token mixer only.

For each feature map ``[B, h, w, C]`` (the residual stream at the embedding and after every
sublayer; the ViT's tokens laid back on their ``h x w`` patch grid) :func:`diagonal_spectrum`
takes ``log |FFT2|`` per channel, averages over batch and channels, and reads the diagonal
frequencies ``(k, k)``, ``k = 0..h/2`` (``0..pi``). The paper's quantity is the highest
frequency relative to the lowest, ``delta = log A(pi, pi) - log A(0, 0)``; the plot shows it
against normalised depth, relative to the embedding's ``delta``.
"""

from __future__ import annotations

import os
import runpy
import time

import numpy as np

from zoo.analysis import common

EPS = 1e-6  # added to |FFT| before the log, as Park & Kim's code does

# The default experiment: 12x12 digits in 2x2 patches -> a 6x6 grid of 36 tokens, frequencies
# 0, pi/3, 2pi/3, pi on the diagonal; sized to train both models in about a minute on 2 cores.
DEFAULTS = dict(
    image_size=12, patch_size=2, width=32, num_heads=4, num_layers=4, mlp_dim=64,
    steps=300, batch_size=32, lr=3e-3, seed=0,
)


# ----------------------------------------------------------------------------------------------
# The measurement.


def diagonal_spectrum(features: np.ndarray) -> np.ndarray:
  """Mean log amplitude of the 2-D Fourier transform along the diagonal frequencies.

  Args:
    features: ``[B, H, W, C]`` feature maps (``H == W``).

  Returns:
    ``[H // 2 + 1]``: entry ``k`` is ``log(|FFT2(x)[k, k]| + EPS)`` averaged over the batch
    and channels, frequency ``2 pi k / H`` on both axes (``k = H / 2`` is ``pi``: the
    checkerboard).
  """
  x = np.asarray(features, np.float64)
  if x.ndim != 4 or x.shape[1] != x.shape[2] or x.shape[1] < 2:
    raise common.AnalysisError(
        f"feature maps must be [batch, h, w, channels] with h == w >= 2; got {x.shape}."
    )
  log_amp = np.log(np.abs(np.fft.fft2(x, axes=(1, 2))) + EPS).mean(axis=(0, 3))
  k = np.arange(x.shape[1] // 2 + 1)
  return log_amp[k, k]


def high_frequency_delta(features: np.ndarray) -> float:
  """``log A(pi, pi) - log A(0, 0)`` of :func:`diagonal_spectrum`: Park & Kim's quantity."""
  spectrum = diagonal_spectrum(features)
  return float(spectrum[-1] - spectrum[0])


# ----------------------------------------------------------------------------------------------
# The two models and their feature maps.


def _conv_net_cls():
  from flax import linen as nn

  class ConvNet(nn.Module):
    """The analysis's CNN: the ViT's stem, MLPs, norms and head, a 3x3 conv as token mixer.

    Pre-LN residual sublayers on ``[B, h, w, D]``: ``x + conv3x3(norm(x))`` then
    ``x + mlp(norm(x))``; mean pool, LayerNorm, linear head. ``__call__`` returns the logits
    and the feature maps ``[(name, [B, h, w, D])]`` after the stem and every sublayer.
    """

    width: int
    num_layers: int
    mlp_dim: int
    patch_size: int
    num_classes: int

    @nn.compact
    def __call__(self, images):
      p, d = self.patch_size, self.width
      x = nn.Conv(d, (p, p), strides=(p, p), padding="VALID", name="embedding")(images)
      features = [("embedding", x)]
      for i in range(self.num_layers):
        h = nn.LayerNorm(epsilon=1e-6, name=f"conv_norm_{i}")(x)
        x = x + nn.Conv(d, (3, 3), padding="SAME", name=f"conv_{i}")(h)
        features.append((f"conv {i}", x))
        h = nn.LayerNorm(epsilon=1e-6, name=f"mlp_norm_{i}")(x)
        h = nn.gelu(nn.Dense(self.mlp_dim, name=f"mlp_wi_{i}")(h), approximate=False)
        x = x + nn.Dense(d, name=f"mlp_wo_{i}")(h)
        features.append((f"mlp {i}", x))
      pooled = nn.LayerNorm(epsilon=1e-6, name="encoder_norm")(x.mean(axis=(1, 2)))
      return nn.Dense(self.num_classes, name="head")(pooled), features

  return ConvNet


def vit_features(model, params, images) -> list[tuple[str, np.ndarray]]:
  """The residual stream of a zoo ViT, laid on its patch grid: ``[(name, [B, h, w, D])]``.

  Read by intercepting the encoder blocks (their input and output) and each block's
  ``mlp_norm`` (whose input, in a pre-LN block, is the stream after self-attention); the
  class token is dropped. No model code is involved.

  Raises:
    AnalysisError: for a non-square patch grid.
  """
  return _vit_forward(model, params, images)[0]


def _vit_forward(model, params, images):
  """``(vit_features(...), logits)`` from one forward pass."""
  import jax
  from flax import linen as nn

  from zoo.layers.blocks import EncoderBlock

  cfg = model.config
  grid_h, grid_w = images.shape[1] // cfg.patch_size, images.shape[2] // cfg.patch_size
  if grid_h != grid_w:
    raise common.AnalysisError(f"the patch grid must be square; got {grid_h}x{grid_w}.")
  found: list[tuple[str, object]] = []

  def grab(next_fun, args, kwargs, context):
    module = context.module
    if context.method_name != "__call__":
      return next_fun(*args, **kwargs)
    if isinstance(module, EncoderBlock):
      layer = sum(name.startswith("mlp") for name, _ in found)
      if not found:
        found.append(("embedding", args[0]))
      out = next_fun(*args, **kwargs)
      found.append((f"mlp {layer}", out))
      return out
    if module.name == "mlp_norm" and isinstance(module.parent, EncoderBlock):
      layer = sum(name.startswith("mlp") for name, _ in found)
      found.append((f"msa {layer}", args[0]))
    return next_fun(*args, **kwargs)

  def forward(params, images):
    with nn.intercept_methods(grab):
      logits = model.apply({"params": params}, images)
    return [x for _, x in found], logits

  # One compiled program: cheaper than compiling every op of an eager pass once.
  maps, logits = jax.jit(forward)(params, np.asarray(images, np.float32))
  skip = int(cfg.class_token)
  return [
      (name, np.asarray(x, np.float32)[:, skip:].reshape(x.shape[0], grid_h, grid_w, -1))
      for (name, _), x in zip(found, maps)
  ], np.asarray(logits)


def measure(features: list[tuple[str, np.ndarray]]) -> dict:
  """Spectra and deltas of a model's feature maps, and the change each sublayer kind makes."""
  spectra = [diagonal_spectrum(x) for _, x in features]
  delta = np.array([s[-1] - s[0] for s in spectra])
  n = len(features)
  changes: dict[str, list[float]] = {}
  for i in range(1, n):
    kind = features[i][0].split()[0]
    changes.setdefault(kind, []).append(float(delta[i] - delta[i - 1]))
  return dict(
      names=[name for name, _ in features],
      depth=np.linspace(0.0, 1.0, n).round(4),
      spectra=[(s - s[0]).round(4) for s in spectra],  # relative to each map's own (0, 0)
      delta=delta.round(4),
      delta_vs_embedding=(delta - delta[0]).round(4),
      change_per_sublayer={k: dict(mean=float(np.mean(v)), values=np.round(v, 4))
                           for k, v in changes.items()},
  )


# ----------------------------------------------------------------------------------------------
# Training.


def run_config(*, image_size, patch_size, width, num_heads, num_layers, mlp_dim, steps,
               batch_size, lr, seed):
  """``configs/vit.py``'s ``smoke`` run, shrunk to the experiment's ViT and schedule."""
  here = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "vit.py")
  if os.path.exists(here):
    c = runpy.run_path(here)["get_config"]("smoke")
  else:  # an installed zoo without the configs folder: the same keys from the base config
    from zoo.training.config import base_config

    c = base_config("image_classification", "vit-b16")
  c.seed = seed
  # Mean pooling, no class token: the ViT's head is the ConvNet's, and every token is a
  # patch. Learned positions, as the paper's ViT. Xavier-uniform kernels (vit_jax's init,
  # init_std=None): with normal(0.02) this ViT sits at chance for ~150 of its 300 steps.
  c.model.update(patch_size=patch_size, d_model=width, num_heads=num_heads,
                 num_layers=num_layers, mlp_dim=mlp_dim, pool="mean", class_token=False,
                 position="learned", dropout_rate=0.0, init_std=None)
  c.data.update(source="offline", image_size=image_size, augment=False, num_channels=3)
  c.train.update(batch_size=batch_size, num_steps=steps, log_every=max(1, steps // 3),
                 checkpoint_every=steps)
  c.optim.update(name="adamw", lr=lr, schedule="cosine", warmup_steps=max(1, steps // 10),
                 weight_decay=0.0, clip_norm=1.0)
  c.eval.every = -1  # no eval split in the loop: both models are scored on the same images
  return c


def _batches(config, split: str, batch_size: int):
  from zoo import data

  return data.build_dataset(config.data, split=split, global_batch_size=batch_size,
                            seed=config.seed)


def train_vit(config, workdir: str):
  """The ViT through zoo's loop; returns ``(model, params, seconds)``."""
  import jax

  from zoo.training import loop

  start = time.perf_counter()
  run = loop.build_run(config, workdir)
  result = run.run()
  params = jax.device_get(result.state.params)
  return run.prog.model, params, time.perf_counter() - start


def train_conv_net(config, num_classes: int):
  """:class:`ConvNet` on the run's batches with the run's optimizer; ``(model, params, ...)``."""
  import jax
  import jax.numpy as jnp
  import optax

  from zoo.training.optimizer import make_optimizer

  start = time.perf_counter()
  m, steps = config.model, int(config.train.num_steps)
  model = _conv_net_cls()(width=m.d_model, num_layers=m.num_layers, mlp_dim=m.mlp_dim,
                          patch_size=m.patch_size, num_classes=num_classes)
  size, channels = config.data.image_size, config.data.num_channels
  params = jax.jit(model.init)(jax.random.PRNGKey(config.seed),
                               jnp.zeros((1, size, size, channels)))["params"]
  tx, _ = make_optimizer(config.optim, steps)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, images, labels):
    def loss_fn(p):
      logits, _ = model.apply({"params": p}, images)
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  data = iter(_batches(config, "train", int(config.train.batch_size)))
  for _ in range(steps):
    batch = next(data)
    params, opt_state, _ = step(params, opt_state, batch["images"], batch["labels"])
  params = jax.device_get(params)
  return model, params, time.perf_counter() - start


def _eval_batch(config, rows: int = 256):
  """The first validation images and labels (no padding rows)."""
  batch = next(iter(_batches(config, "validation", rows)))
  keep = batch["labels"] >= 0
  return batch["images"][keep], batch["labels"][keep]


def run(*, workdir: str, **overrides) -> dict:
  """Train both models, measure their feature maps, say whether the paper's finding holds.

  Args:
    workdir: the ViT's train.py-style workdir (an existing finished run there is resumed,
      i.e. reused, by the loop).
    **overrides: keys of :data:`DEFAULTS`.

  Returns:
    ``{"settings", "vit": {...measure, accuracy, params, seconds}, "cnn": {...},
    "agrees": {...}}``.
  """
  import jax

  unknown = set(overrides) - set(DEFAULTS)
  if unknown:
    raise common.AnalysisError(f"unknown settings {sorted(unknown)}; known: {sorted(DEFAULTS)}.")
  s = {**DEFAULTS, **overrides}
  if s["image_size"] % s["patch_size"] or s["image_size"] // s["patch_size"] < 2:
    raise common.AnalysisError(
        f"--image-size {s['image_size']} must be a multiple of --patch-size {s['patch_size']} "
        "with at least 2 patches per side (e.g. --image-size 16 --patch-size 2)."
    )
  if s["width"] % s["num_heads"]:
    w, n = s["width"], s["num_heads"]
    raise common.AnalysisError(
        f"--width {w} is not a multiple of the ViT's {n} heads; use {max(w // n, 1) * n} or "
        f"{(w // n + 1) * n}."
    )
  if s["steps"] < 1 or s["batch_size"] < 1:
    raise common.AnalysisError(
        f"--steps and --batch-size must be >= 1; got {s['steps']} and {s['batch_size']}."
    )
  config = run_config(**s)
  try:
    vit, vit_params, vit_seconds = train_vit(config, workdir)
  except ValueError as e:  # e.g. the checkpoint of a run with other settings in the workdir
    detail = " ".join(str(e).split())  # one paragraph
    raise common.AnalysisError(f"cannot train the ViT in {workdir}: {detail}") from e
  cnn, cnn_params, cnn_seconds = train_conv_net(config, vit.config.num_classes)
  images, labels = _eval_batch(config)

  vit_maps, vit_logits = _vit_forward(vit, vit_params, images)
  vit_numbers = measure(vit_maps)
  names = []

  def cnn_forward(params, images):
    logits, maps = cnn.apply({"params": params}, images)
    names.extend(name for name, _ in maps)
    return logits, [x for _, x in maps]

  cnn_logits, cnn_maps = jax.jit(cnn_forward)(cnn_params, images)
  cnn_numbers = measure([(name, np.asarray(x)) for name, x in zip(names, cnn_maps)])
  count = lambda p: int(sum(np.size(x) for x in jax.tree.leaves(p)))  # noqa: E731
  accuracy = lambda z: float(np.mean(np.asarray(z).argmax(-1) == labels))  # noqa: E731
  # Both accuracies on the same validation images (the loop itself evaluates nothing).
  vit_numbers.update(accuracy=accuracy(vit_logits), params=count(vit_params),
                     train_seconds=round(vit_seconds, 1), workdir=workdir)
  cnn_numbers.update(accuracy=accuracy(cnn_logits), params=count(cnn_params),
                     train_seconds=round(cnn_seconds, 1))
  msa = np.asarray(vit_numbers["change_per_sublayer"]["msa"]["values"])
  conv = np.asarray(cnn_numbers["change_per_sublayer"]["conv"]["values"])
  return dict(
      settings=s, eval_images=int(len(labels)), vit=vit_numbers, cnn=cnn_numbers,
      agrees=dict(
          msa_lowers_high_frequency=bool(msa.mean() < 0),
          conv_raises_high_frequency=bool(conv.mean() > 0),
          mean_msa_change=float(msa.mean()), mean_conv_change=float(conv.mean()),
          msa_sublayers_lowering=f"{int((msa < 0).sum())}/{len(msa)}",
          conv_sublayers_raising=f"{int((conv > 0).sum())}/{len(conv)}",
          vit_last_vs_embedding=float(vit_numbers["delta_vs_embedding"][-1]),
          cnn_last_vs_embedding=float(cnn_numbers["delta_vs_embedding"][-1]),
          paper="MSAs reduce high-frequency amplitude, Convs amplify it (Park & Kim 2022)",
      ),
  )


def plot(numbers: dict):
  """Three panels: each model's relative log-amplitude spectra by depth, and delta vs depth."""
  plt = common.pyplot()
  fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
  for ax, key, title in ((axes[0], "vit", "ViT"), (axes[1], "cnn", "ConvNet (3x3 conv mixer)")):
    m = numbers[key]
    spectra = np.asarray(m["spectra"])
    freqs = np.linspace(0, 1, spectra.shape[1])
    cmap = plt.get_cmap("plasma")
    for i, (name, s) in enumerate(zip(m["names"], spectra)):
      ax.plot(freqs, s, color=cmap(m["depth"][i] * 0.9), lw=1.2,
              label=name if i in (0, len(spectra) - 1) else None)
    ax.set(xlabel="frequency (x pi)", ylabel="log amplitude - log amplitude at 0",
           title=f"{title}: params {m['params']}, accuracy {m['accuracy']:.2f}")
    ax.legend(fontsize=7)
  ax = axes[2]
  for key, label, mixer, marker, color in (("vit", "ViT", "msa", "v", "tab:blue"),
                                           ("cnn", "ConvNet", "conv", "^", "tab:red")):
    m = numbers[key]
    depth, y = np.asarray(m["depth"]), np.asarray(m["delta_vs_embedding"])
    ax.plot(depth, y, "-", color=color, label=label)
    mix = [i for i, n in enumerate(m["names"]) if n.startswith(mixer)]
    ax.plot(depth[mix], y[mix], marker, color=color, ls="none", label=f"after {mixer.upper()}")
    ax.plot(depth[0], y[0], "o", color=color)
  ax.axhline(0, color="gray", lw=0.6)
  ax.set(xlabel="normalised depth", ylabel="Δ log amplitude (π vs 0) − embedding's",
         title="high-frequency amplitude through the network")
  ax.legend(fontsize=7)
  fig.tight_layout()
  return fig


def add_arguments(parser) -> None:
  d = DEFAULTS
  parser.add_argument("--workdir", default=None,
                      help="the ViT's training workdir (default OUT/lowpass_vit; reused if done)")
  parser.add_argument("--steps", type=int, default=d["steps"], help="training steps per model")
  parser.add_argument("--batch-size", type=int, default=d["batch_size"])
  parser.add_argument("--image-size", type=int, default=d["image_size"])
  parser.add_argument("--patch-size", type=int, default=d["patch_size"])
  parser.add_argument("--width", type=int, default=d["width"], help="channels / d_model")
  parser.add_argument("--num-layers", type=int, default=d["num_layers"])
  parser.add_argument("--seed", type=int, default=d["seed"])


def main(args) -> dict:
  workdir = args.workdir or os.path.join(args.out, "lowpass_vit")
  numbers = run(workdir=workdir, steps=args.steps, batch_size=args.batch_size,
                image_size=args.image_size, patch_size=args.patch_size, width=args.width,
                num_layers=args.num_layers, seed=args.seed)
  common.write(args.out, "lowpass", plot(numbers), numbers)
  return numbers
