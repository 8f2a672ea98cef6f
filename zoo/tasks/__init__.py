"""Training tasks, one registered record each (``zoo/tasks/<name>.py``).

A task is a :class:`~zoo.tasks.base.Task` subclass that owns its objective's whole vertical:
data keys and checks, offline and TFDS records, the batch builder, model inputs, loss and
statistics, host metrics and evaluation hooks. It is found by name through the registry:
``zoo.registry.task("lm")``, ``zoo.registry.task_names()``. :mod:`~zoo.tasks.losses` holds the
padding-aware cross entropy and sums every task uses; :mod:`~zoo.tasks.metrics` the host-side
metrics of the field's reference libraries (scikit-learn, seqeval, sacrebleu).
"""

from zoo.tasks.base import Task

__all__ = ["Task"]
