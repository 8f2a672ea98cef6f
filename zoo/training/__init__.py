"""One training loop for every family: ``train(config, workdir)``.

``train.py`` is its command line; ``configs/*.py`` hold the run configs. The pieces:
:mod:`~zoo.training.tasks` (losses and metrics per task), :mod:`~zoo.training.optimizer`
(Optax from config), :mod:`~zoo.training.mesh` (mesh, sharding rules, batch placement),
:mod:`~zoo.training.state` (the sharded train state), :mod:`~zoo.training.checkpoint` (Orbax,
exact resume), :mod:`~zoo.training.metrics` (progress bar, JSONL, TensorBoard, MFU, plot) and
:mod:`~zoo.training.loop` (``train_step``, ``eval_step``, ``train``).
"""

from zoo.training.config import base_config, model_config
from zoo.training.loop import NonFiniteLossError, RunResult, eval_step, train, train_step
from zoo.training.state import TrainState
from zoo.training.tasks import IGNORE_INDEX, TASKS, get_task

__all__ = [
    "IGNORE_INDEX",
    "TASKS",
    "NonFiniteLossError",
    "RunResult",
    "TrainState",
    "base_config",
    "eval_step",
    "get_task",
    "model_config",
    "train",
    "train_step",
]
