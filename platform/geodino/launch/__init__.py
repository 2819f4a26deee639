"""Running DINO somewhere: on Ray Train (``ray_train``), under torchrun/mpirun without Ray (``torchrun``),
as a SageMaker job (``sagemaker_job`` builds it, ``sagemaker_host`` runs on each of its hosts).

Launchers own processes, devices, data feeding and checkpoint storage; the loop itself is
``geodino.dino.dino_loop``. This package's face imports without Ray (``run_pretraining`` imports Ray
Train only when ``--launcher ray`` asks for it).

Public parts: ``run_pretraining`` (pick the launcher, train), ``PretrainResult``.
"""

from geodino.launch.result import PretrainResult
from geodino.launch.run import run_pretraining

__all__ = ["PretrainResult", "run_pretraining"]
