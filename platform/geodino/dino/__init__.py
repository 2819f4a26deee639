"""DINO itself: multi-crop augmentation, the student/teacher networks and head, the loss with its centre,
the schedules, the checkpoint format, and the loop that trains them.

Knows nothing of Ray, archives or launchers: the loop sees its data and its process group only through
a ``Runtime`` (``runtime``), so ``geodino.launch`` can run it on Ray Train or under torchrun/mpirun.

Public parts: ``PretrainConfig`` (every setting), ``DinoState`` (what is trained and checkpointed),
``Runtime`` (what a launcher provides), ``dino_loop`` (the training from start or checkpoint to the end).
"""

from geodino.dino.config import PretrainConfig, steps_per_epoch_for
from geodino.dino.loop import NonFiniteLossError, dino_loop, train_one_epoch
from geodino.dino.runtime import Runtime
from geodino.dino.state import DinoState

__all__ = ["DinoState", "NonFiniteLossError", "PretrainConfig", "Runtime", "dino_loop", "steps_per_epoch_for",
           "train_one_epoch"]
