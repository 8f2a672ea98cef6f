"""One training loop for every family: ``train(config, workdir)``.

``train.py`` is its command line; ``configs/*.py`` hold the run configs. The pieces:
:mod:`~zoo.training.optimizer` (Optax from config), :mod:`~zoo.training.mesh` (mesh, sharding
rules, batch placement), :mod:`~zoo.training.state` (the sharded train state),
:mod:`~zoo.training.steps` (``train_step``, ``eval_step`` and the compiled program),
:mod:`~zoo.training.actions` (log, checkpoint, evaluate between steps),
:mod:`~zoo.training.checkpoint` (Orbax, exact resume), :mod:`~zoo.training.metrics` (progress
bar, JSONL, TensorBoard, MFU, plot), :mod:`~zoo.training.finetune` (starting from pretrained
weights) and :mod:`~zoo.training.loop` (``train``). What a batch means and how it is scored is
the task's (``zoo.tasks``, found by ``zoo.registry.task(name)``).
"""

from zoo.training.actions import NonFiniteLossError
from zoo.training.config import base_config, model_config
from zoo.training.loop import RunResult, train
from zoo.training.state import TrainState
from zoo.training.steps import eval_step, train_step

__all__ = [
    "NonFiniteLossError",
    "RunResult",
    "TrainState",
    "base_config",
    "eval_step",
    "model_config",
    "train",
    "train_step",
]
