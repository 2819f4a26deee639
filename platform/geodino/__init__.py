"""geodino: DINO self-supervised pretraining on overhead imagery with Ray, and the transfer benchmarks that judge it.

Packages by role, imports running downwards (see README.md beside this file for the picture):

* ``geodino.launch``   where DINO runs: Ray Train, torchrun/mpirun without Ray, SageMaker jobs
* ``geodino.transfer`` frozen backbones: features, linear probe and k-NN, Tune sweeps, predict
* ``geodino.dino``     the algorithm and its loop, behind a ``Runtime`` protocol (no Ray)
* ``geodino.data``     prepared metadata -> training tensors (Ray Data pipeline; indexed dataset without Ray)
* ``geodino.archive``  archives -> metadata parquet, card and packs (prepare, pack, demo)

and leaf modules: ``storage``, ``errors``, ``metrics``, ``cli``, ``ray_cluster``.
"""
