"""Orbax checkpoints of a run: state, data-iterator position, RNG and a config fingerprint.

``<workdir>/checkpoints/<step>/`` holds two items:

* ``state``: step, parameters, optimizer state (restored straight into the shardings of the
  current mesh, whatever mesh or device count saved it);
* ``meta``: JSON with the base RNG key, the data iterator state (``Dataset.get_state()``),
  the model config (``zoo.registry.config_to_json``) and its fingerprint, checked before
  anything else is restored.

Orbax writes into a temporary directory and renames it when complete, so a run killed
mid-save leaves the previous checkpoint as the latest.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from zoo.training.config import fingerprint_diff
from zoo.training.state import TrainState

log = logging.getLogger(__name__)


def _tree(state: TrainState) -> dict[str, Any]:
  return {"step": state.step, "params": state.params, "opt_state": state.opt_state}


def _handler_registry():
  """``state`` as a PyTree of arrays, ``meta`` as JSON.

  Replica-parallel saving (each replica writes a slice of a replicated array) is off: it
  compiles a slicing program per array shape and device, which costs more than it saves for
  data-parallel replicas of small arrays, and only replica 0 writes anyway on GPUs.
  """
  arrays = ocp.type_handlers.ArrayHandler(use_replica_parallel=False)
  types = ocp.type_handlers.create_type_handler_registry(
      (jax.Array, arrays),
      (np.ndarray, ocp.type_handlers.NumpyHandler()),
      (np.number, ocp.type_handlers.ScalarHandler()),
      (int, ocp.type_handlers.ScalarHandler()),
      (float, ocp.type_handlers.ScalarHandler()),
  )
  pytree = ocp.PyTreeCheckpointHandler(type_handler_registry=types)
  registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
  registry.add("state", ocp.args.PyTreeSave, pytree)
  registry.add("state", ocp.args.PyTreeRestore, pytree)
  registry.add("meta", ocp.args.JsonSave, ocp.JsonCheckpointHandler)
  registry.add("meta", ocp.args.JsonRestore, ocp.JsonCheckpointHandler)
  return registry


class Checkpointer:
  """Save every ``every`` steps (and when forced), keep the last ``keep``, resume the latest.

  Args:
    workdir: run directory; checkpoints go to ``<workdir>/checkpoints``.
    every: save interval in steps.
    keep: how many checkpoints to keep (oldest deleted first).
    fingerprint: JSON-able description of the model; a checkpoint with another one is refused.
    model_config: ``zoo.registry.config_to_json`` of the model, saved so that readers
      (``zoo.generate``, export) rebuild the model from the checkpoint alone.
    data_info: JSON facts of the data the run trained on (label names, special token ids,
      tokenizer), which export writes into the Hugging Face ``config.json``.
  """

  def __init__(
      self,
      workdir: str,
      *,
      every: int,
      keep: int,
      fingerprint: dict[str, Any],
      model_config: dict[str, Any] | None = None,
      data_info: dict[str, Any] | None = None,
  ):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    self.fingerprint = fingerprint
    self.model_config = model_config
    self.data_info = data_info
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=max(int(every), 1),
        max_to_keep=max(int(keep), 1),
        create=True,
        cleanup_tmp_directories=True,
        enable_async_checkpointing=True,
    )
    self.every = max(int(every), 1)
    self.manager = ocp.CheckpointManager(
        self.directory, options=options, handler_registry=_handler_registry()
    )

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def read_meta(self, step: int | None = None) -> dict[str, Any]:
    step = self.latest_step() if step is None else step
    restored = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return dict(restored["meta"])

  def read_params(self, step: int | None = None) -> tuple[Any, dict[str, Any]]:
    """``(params, meta)`` of checkpoint ``step`` (default latest) on this host's first device.

    Whatever mesh saved it (a GPU run read on a laptop); the optimizer state is not read.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}.")
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    saved = self.manager.item_metadata(step)["state"]
    abstract = {
        "params": jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), saved["params"]
        )
    }
    restore = ocp.args.PyTreeRestore(
        item=abstract,
        restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
        partial_restore=True,
    )
    restored = self.manager.restore(
        step, args=ocp.args.Composite(state=restore, meta=ocp.args.JsonRestore())
    )
    return restored["state"]["params"], dict(restored["meta"])

  def check_fingerprint(self, step: int | None = None) -> None:
    """Refuse (ValueError) to resume a checkpoint of another model or task."""
    saved = self.read_meta(step).get("fingerprint", {})
    diff = fingerprint_diff(saved, self.fingerprint)
    if diff:
      raise ValueError(
          f"{self.directory} holds a checkpoint (step {step or self.latest_step()}) of another "
          "model or task, so it cannot be resumed:\n  " + "\n  ".join(diff) + "\nUse a fresh "
          "--workdir, or change the config back to match the checkpoint."
      )

  def restore(
      self, abstract_state: TrainState, step: int | None = None
  ) -> tuple[TrainState, dict[str, Any]]:
    """``(state, meta)`` of checkpoint ``step`` (default latest) in ``abstract_state``'s shardings.

    ``abstract_state`` holds ``jax.ShapeDtypeStruct``\\ s with ``.sharding`` set: the saved
    arrays are read and resharded onto that layout (any mesh, any device count).
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}.")
    self.check_fingerprint(step)
    target = _tree(abstract_state)
    restored = self.manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(
                item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target)
            ),
            meta=ocp.args.JsonRestore(),
        ),
    )
    tree = restored["state"]
    state = abstract_state.replace(
        step=tree["step"], params=tree["params"], opt_state=tree["opt_state"]
    )
    return state, dict(restored["meta"])

  def save(
      self,
      step: int,
      state: TrainState,
      *,
      rng: jax.Array,
      data_state: Any = None,
      force: bool = False,
  ) -> bool:
    """Save (asynchronously) if ``step`` is a save step or ``force``; returns whether it did."""
    if not force and step % self.every:
      return False
    if step in self.manager.all_steps():
      return False
    meta = {
        "step": int(step),
        "rng": np.asarray(jax.device_get(rng)).tolist(),
        "data": data_state,
        "fingerprint": self.fingerprint,
        "model_config": self.model_config,
        "data_info": self.data_info,
    }
    saved = self.manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.PyTreeSave(_tree(state)), meta=ocp.args.JsonSave(meta)
        ),
        force=force,
    )
    if saved:
      log.info("checkpoint %d -> %s", step, self.directory)
    return bool(saved)

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def rng_from_meta(meta: dict[str, Any]) -> jax.Array:
  """The base RNG key (a raw ``uint32[2]`` key) saved in ``meta``."""
  return jax.numpy.asarray(np.asarray(meta["rng"], np.uint32))
