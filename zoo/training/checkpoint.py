"""Orbax checkpoints of a run: state, data-iterator positions, RNG and a config fingerprint.

``<workdir>/checkpoints/<step>/`` holds three items:

* ``state``: step, parameters, optimizer state (restored straight into the shardings of the
  current mesh, whatever mesh or device count saved it);
* ``data``: every process's data-iterator state (``Dataset.get_state()``), one
  ``process_<i>-of-<n>.json`` per process, written by that process through Grain's Orbax
  handler and restored by each process from its own file. The states are positions in the
  global stream, so a run restarted on another process count reads process 0's;
* ``meta``: JSON with the base RNG key, the metrics window since the last logged row, the
  model config (``zoo.registry.config_to_json``) and its fingerprint, checked before anything
  else is restored.

Only complete checkpoints are ever listed: Orbax writes into a temporary directory and renames
it when complete (a run killed mid-save leaves the previous checkpoint as the latest), old
checkpoints are deleted by renaming them into ``checkpoints/deleted/`` first and removing them
there (a run killed mid-deletion leaves no half-deleted step), and a step directory lacking
any of its items' files is skipped with a warning. The layout and these step rules live in
:mod:`zoo.pretrained.workdir`, the reader that ``zoo.generate`` and export use.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import shutil
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from zoo.pretrained import workdir as layout
from zoo.training.config import fingerprint_diff
from zoo.training.state import TrainState

log = logging.getLogger(__name__)
TRASH = layout.TRASH
DamagedCheckpointError = layout.DamagedCheckpointError  # a missing or unreadable step


def _tree(state: TrainState) -> dict[str, Any]:
  return {"step": state.step, "params": state.params, "opt_state": state.opt_state}


class _DataState:
  """A data-iterator state in the shape Grain's Orbax handler reads and writes (JSON bytes)."""

  def __init__(self, state: dict | None = None):
    self.state = state

  def get_state(self) -> bytes:
    return json.dumps(self.state).encode()

  def set_state(self, raw: bytes) -> None:
    self.state = json.loads(raw)

  def start_prefetch(self) -> None:  # called by Grain's handler after restoring
    pass


@functools.cache
def _handler_class():
  """Grain's Orbax handler, which also restores on another process count (defined on first
  use: the GPU benchmark image imports the loop without Grain installed).

  Saving: each process writes ``process_<i>-of-<n>.json``. Restoring: each reads its own file;
  with another process count, process 0's (zoo's data states are positions in the global
  stream, the same on every process).
  """
  import grain  # noqa: PLC0415

  class DataStateHandler(grain.checkpoint.CheckpointHandler):

    def restore(self, directory, item=None, args=None):
      item = item or args.item
      i, n = jax.process_index(), jax.process_count()
      path = directory / f"process_{i}-of-{n}.json"
      if not path.exists():
        saved = sorted(directory.glob("process_0-of-*.json"))
        if not saved:
          raise ValueError(
              f"{directory} holds no data-iterator state: the checkpoint is damaged."
          )
        path = saved[0]
        log.info("data state of another process count, read from %s", path.name)
      item.set_state(path.read_text().encode())
      return item

  return DataStateHandler


def data_state_handler():
  """The Orbax handler of the ``data`` item (see :func:`_handler_class`)."""
  return _handler_class()()


@dataclasses.dataclass
class DataSave(ocp.args.CheckpointArgs):
  item: Any


@dataclasses.dataclass
class DataRestore(ocp.args.CheckpointArgs):
  item: Any


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
  data = data_state_handler()
  registry.add("data", DataSave, data)
  registry.add("data", DataRestore, data)
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
    self.directory = layout.checkpoint_dir(workdir)
    self.fingerprint = fingerprint
    self.model_config = model_config
    self.data_info = data_info
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=max(int(every), 1),
        max_to_keep=max(int(keep), 1),
        create=True,
        cleanup_tmp_directories=True,
        enable_async_checkpointing=True,
        todelete_subdir=TRASH,
    )
    self.every = max(int(every), 1)
    self.manager = ocp.CheckpointManager(
        self.directory, options=options, handler_registry=_handler_registry()
    )
    self._empty_trash()

  def _empty_trash(self) -> None:
    """Remove what earlier deletions renamed away (process 0; a kill here loses nothing)."""
    trash = os.path.join(self.directory, TRASH)
    if jax.process_index() == 0 and os.path.isdir(trash):
      shutil.rmtree(trash, ignore_errors=True)

  def all_steps(self) -> list[int]:
    """The steps of complete checkpoints, oldest first."""
    # Orbax also lists a step still being written (its folder not renamed into place yet).
    return layout.complete_steps(self.directory, self.manager.all_steps())

  def latest_step(self) -> int | None:
    steps = self.all_steps()
    return steps[-1] if steps else None

  def _step(self, step: int | None) -> int:
    """``step`` (default the latest), checked to be a complete checkpoint."""
    return layout.choose_step(self.directory, step, self.all_steps())

  def _restore(self, step: int, **items) -> dict[str, Any]:
    try:
      return self.manager.restore(step, args=ocp.args.Composite(**items))
    except (OSError, ValueError, KeyError) as e:
      raise layout.unreadable(self.directory, step, self.all_steps(), e) from e

  def read_meta(self, step: int | None = None) -> dict[str, Any]:
    step = self._step(step)
    return dict(self._restore(step, meta=ocp.args.JsonRestore())["meta"])

  def read_params(self, step: int | None = None) -> tuple[Any, dict[str, Any]]:
    """``(params, meta)`` of checkpoint ``step`` (default latest) on this host's first device.

    Whatever mesh saved it (a GPU run read on a laptop); the optimizer state is not read.
    """
    return layout.read_step(self.directory, self._step(step), self.all_steps())

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
    step = self._step(step)
    self.check_fingerprint(step)
    target = _tree(abstract_state)
    items = dict(
        state=ocp.args.PyTreeRestore(
            item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target)
        ),
        meta=ocp.args.JsonRestore(),
    )
    has_data = os.path.isdir(os.path.join(self.directory, str(step), "data"))
    if has_data:
      items["data"] = DataRestore(_DataState())
    restored = self._restore(step, **items)
    tree = restored["state"]
    state = abstract_state.replace(
        step=tree["step"], params=tree["params"], opt_state=tree["opt_state"]
    )
    meta = dict(restored["meta"])
    if has_data:
      meta["data"] = restored["data"].state  # this process's own
    return state, meta

  def save(
      self,
      step: int,
      state: TrainState,
      *,
      rng: jax.Array,
      data_state: Any = None,
      window: dict[str, Any] | None = None,
      force: bool = False,
  ) -> bool:
    """Save (asynchronously) if ``step`` is a save step or ``force``; returns whether it did.

    ``data_state`` is this process's ``Dataset.get_state()``; ``window`` the metrics summed
    since the last logged row (so rows logged after a resume equal the uninterrupted run's).
    """
    if not force and step % self.every:
      return False
    if step in self.manager.all_steps():
      return False
    meta = {
        "step": int(step),
        "rng": np.asarray(jax.device_get(rng)).tolist(),
        "window": window,
        "fingerprint": self.fingerprint,
        "model_config": self.model_config,
        "data_info": self.data_info,
    }
    saved = self.manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.PyTreeSave(_tree(state)),
            meta=ocp.args.JsonSave(meta),
            data=DataSave(_DataState(data_state)),
        ),
        force=force,
    )
    if saved:
      log.info("checkpoint %d -> %s", step, self.directory)
    return bool(saved)

  def wait(self) -> None:
    self.manager.wait_until_finished()
    self._empty_trash()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
    self._empty_trash()


def rng_from_meta(meta: dict[str, Any]) -> jax.Array:
  """The base RNG key (a raw ``uint32[2]`` key) saved in ``meta``."""
  return jax.numpy.asarray(np.asarray(meta["rng"], np.uint32))
