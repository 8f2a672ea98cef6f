"""The one reader of train.py workdirs: Orbax checkpoints and the model config saved with them.

The layout, written by train.py's ``Checkpointer`` (``training/checkpoint.py``, which takes
these names and the step rules from here)::

  <workdir>/config.json                 the run config (train.py writes it)
  <workdir>/checkpoints/<step>/state/   step, params, opt_state (an Orbax PyTree)
  <workdir>/checkpoints/<step>/meta/    JSON: rng, metrics window, fingerprint, model_config,
                                        data_info
  <workdir>/checkpoints/<step>/data/    data-iterator states
  <workdir>/checkpoints/deleted/        old steps being removed

A step counts only when complete (:data:`REQUIRED` files present): Orbax writes into a
temporary folder renamed when done, and old steps are renamed into ``deleted/`` before removal.
:func:`read` gives the parameters of one step with the model config saved next to them, LoRA
adapters folded into their kernels. It reads through Orbax's handlers, not a
``CheckpointManager``, so reading never creates, cleans or deletes anything in the workdir
(a run may still be writing there), and it imports nothing of the training package, which
sits above ``generate`` and ``pretrained``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
from flax import traverse_util

from zoo import registry

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"  # <workdir>/checkpoints/<step>/
RUN_CONFIG = "config.json"  # <workdir>/config.json: the run config
TRASH = "deleted"  # old checkpoints are renamed in here, then removed
# Files every complete checkpoint has (Orbax's own markers and each item's index).
REQUIRED = ("_CHECKPOINT_METADATA", "meta/metadata", "state/_METADATA", "state/manifest.ocdbt")
# LoRA leaves next to an adapted kernel (the training package's trainable.py adds them).
LORA_A, LORA_B, LORA_SCALE = "lora_a", "lora_b", "lora_scale"
ADAPTER_NAMES = (LORA_A, LORA_B, LORA_SCALE)


class DamagedCheckpointError(ValueError):
  """A checkpoint step that is missing or cannot be read."""


def is_workdir(path: str | os.PathLike) -> bool:
  """A ``train.py --workdir`` (it holds ``checkpoints/``)."""
  return os.path.isdir(os.path.join(path, CHECKPOINTS))


def checkpoint_dir(workdir: str | os.PathLike) -> str:
  """``<workdir>/checkpoints``, absolute."""
  return os.path.join(os.path.abspath(workdir), CHECKPOINTS)


def is_complete(directory: str, step: int) -> bool:
  """Whether step folder ``step`` under ``directory`` has every :data:`REQUIRED` file."""
  folder = os.path.join(directory, str(step))
  return all(os.path.isfile(os.path.join(folder, f)) for f in REQUIRED)


def complete_steps(directory: str, steps=None) -> list[int]:
  """The complete steps among ``steps`` (default: the step folders of ``directory``), sorted.

  A listed step that is not complete (a folder a kill left half-deleted) is skipped with a
  warning; one whose folder does not exist (Orbax lists a step still being written) silently.
  """
  if steps is None:
    names = os.listdir(directory) if os.path.isdir(directory) else []
    steps = [int(n) for n in names if n.isdigit()]
  steps = [s for s in sorted(steps) if os.path.isdir(os.path.join(directory, str(s)))]
  good = [s for s in steps if is_complete(directory, s)]
  if len(good) < len(steps):
    log.warning("skipping damaged checkpoints %s in %s", sorted(set(steps) - set(good)), directory)
  return good


def choose_step(directory: str, step: int | None, good: list[int]) -> int:
  """``step`` (default the latest of ``good``), checked to be one of the complete ``good``."""
  if step is None:
    if not good:
      raise FileNotFoundError(f"no checkpoint in {directory}.")
    return good[-1]
  if step not in good:
    damaged = os.path.isdir(os.path.join(directory, str(step)))
    what = "is damaged (incomplete or half-deleted)" if damaged else "does not exist"
    raise DamagedCheckpointError(
        f"checkpoint step {step} in {directory} {what}; "
        + (f"the nearest good step is {min(good, key=lambda s: (abs(s - step), -s))} "
           f"(all good steps: {good})." if good else "there is no good checkpoint.")
    )
  return step


def unreadable(directory: str, step: int, good: list[int], error: Exception):
  """The :class:`DamagedCheckpointError` for a step whose files Orbax cannot read."""
  others = [s for s in good if s != step]
  return DamagedCheckpointError(
      f"checkpoint step {step} in {directory} cannot be read "
      f"({type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}); "
      + (f"other good steps: {others}." if others else "there is no other checkpoint.")
  )


def merge_adapters(params):
  """The plain model tree: each LoRA-adapted ``kernel + scale * a @ b``, adapter leaves removed."""
  flat = traverse_util.flatten_dict(params, sep="/")
  if not any(p.endswith(f"/{LORA_A}") for p in flat):
    return params
  out = {}
  for path, value in flat.items():
    module, _, leaf = path.rpartition("/")
    if leaf in ADAPTER_NAMES:
      continue
    if leaf == "kernel" and f"{module}/{LORA_A}" in flat:
      a, b = flat[f"{module}/{LORA_A}"], flat[f"{module}/{LORA_B}"]
      scale = flat[f"{module}/{LORA_SCALE}"]
      # float32 whatever the storage dtype: a bfloat16 a @ b would round the low-rank delta.
      delta = _delta(a.astype(jnp.float32), b.astype(jnp.float32), jnp.asarray(scale, jnp.float32))
      value = (value.astype(jnp.float32) + delta).astype(value.dtype)
    out[path] = value
  return traverse_util.unflatten_dict(out, sep="/")


def _delta(a, b, scale):
  if a.ndim == b.ndim == 2 or jnp.ndim(scale) == 0:
    return scale * jnp.tensordot(a, b, axes=1)
  return jax.vmap(_delta)(a, b, scale)  # scanned layers: one delta per layer


def read_step(directory: str, step: int, good: list[int]) -> tuple[Any, dict[str, Any]]:
  """``(params, meta)`` of complete step ``step`` under ``directory`` (``good``: the complete
  steps, named when it cannot be read), on this host's first device, whatever mesh saved it.

  Only the parameters and the JSON metadata are read: no optimizer state, no data state.
  """
  import orbax.checkpoint as ocp  # lazy: Orbax only when a workdir is read
  from etils import epath

  folder = epath.Path(directory) / str(step)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  handler = ocp.PyTreeCheckpointHandler()
  try:
    saved = handler.metadata(folder / "state").tree["params"]
    abstract = {"params": jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), saved)}
    state = handler.restore(folder / "state", args=ocp.args.PyTreeRestore(
        item=abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
        partial_restore=True,
    ))
    meta = ocp.JsonCheckpointHandler().restore(folder / "meta", args=ocp.args.JsonRestore())
  except (OSError, ValueError, KeyError) as e:
    raise unreadable(directory, step, good, e) from e
  finally:
    handler.close()
  return state["params"], dict(meta)


@dataclasses.dataclass(frozen=True)
class Checkpoint:
  """One step of a train.py run, as :func:`read` gives it.

  Attributes:
    workdir: the run directory.
    step: the checkpoint's step.
    config: the model config saved with it (``scan_layers`` as trained).
    params: the parameters (LoRA adapters merged), in the layout ``config`` builds, on this
      host's first device.
    meta: the rest of what was saved with it: ``data_info`` (label names, special token ids,
      tokenizer), ``fingerprint``, ``rng``, ``window``.
  """

  workdir: str
  step: int
  config: Any
  params: Any
  meta: dict[str, Any]

  @property
  def where(self) -> str:
    """``"<workdir> (step N)"``, for messages."""
    return f"{self.workdir} (step {self.step})"


def read(workdir: str | os.PathLike, step: int | None = None) -> Checkpoint:
  """The parameters and model config of checkpoint ``step`` (default the latest) of a run.

  Raises:
    FileNotFoundError: ``workdir`` has no complete checkpoint.
    DamagedCheckpointError: ``step`` is missing, incomplete or unreadable (names the good ones).
    ValueError: the checkpoint has no saved model config.
  """
  workdir = os.fspath(workdir)
  directory = checkpoint_dir(workdir)
  good = complete_steps(directory)
  if step is None and not good:
    raise FileNotFoundError(
        f"{workdir} holds no checkpoint under {directory}; train.py saves one every "
        "--config.train.checkpoint_every steps: give the workdir of a run that has saved one."
    )
  step = choose_step(directory, step, good)
  params, meta = read_step(directory, step, good)
  if not meta.get("model_config"):
    raise ValueError(
        f"{workdir}: checkpoint {step} has no saved model config (an older zoo wrote it); "
        "export it with that version, or retrain."
    )
  config = registry.config_from_json(meta["model_config"], f"{workdir} step {step} model_config")
  from zoo.quantize_base import dequantize_base  # noqa: PLC0415 - qwix only for QLoRA runs

  # A QLoRA run's frozen base is held quantized: dequantize it before merging the adapters.
  return Checkpoint(workdir, step, config, merge_adapters(dequantize_base(params)), meta)
