"""From prepared metadata to batches of training-ready tensors, two ways.

* ``geodino.data.ray_data.build_dataset``: the Ray Data pipeline (streams a split through
  map_batches tasks; what Ray Train, feature extraction and predict read). Imports Ray.
* ``PatchDataset`` (``indexed``): the same samples as a map-style torch Dataset, for the
  torchrun/mpirun launcher on machines without Ray.

* ``normalize.Normalizer``: raw pack pixels to normalised float32 on the training device (Ray Train's
  workers receive a pack's uint16/uint8 pixels, a half or a quarter of float32's bytes).

Both take a ``DataConfig`` (``config``: metadata, split, bands, normalisation) and decode pixels with
the same code (``decode``). This package's face imports without Ray, so the torchrun path can use it;
the Ray pipeline is imported from its module.
"""

from geodino.data.config import DataConfig, dataset_size, metadata_rows, normalizer, resolve_bands
from geodino.data.indexed import PatchDataset

__all__ = ["DataConfig", "PatchDataset", "dataset_size", "metadata_rows", "normalizer", "resolve_bands"]
