"""Stream a split through geodino's Ray Data pipeline and report shapes, label counts and patches/s.

With no arguments it generates the embedded demo archive, prepares it and streams it.
"""

import sys
import time

import numpy as np

from geodino import cli
from geodino.archive.card import load_card
from geodino.archive.demo import prepared_demo
from geodino.data.config import DataConfig, StreamConfig, dataset_size, resolve_bands
from geodino.data.indexed import check_readable
from geodino.data.ray_data import build_dataset
from geodino.ray_cluster import init_ray


def main(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(description=__doc__)
    cli.add_dataclass_arguments(parser, StreamConfig)
    config = cli.dataclass_from_args(StreamConfig, parser.parse_args(argv))
    config.validate()
    metadata = config.metadata_dir or prepared_demo()
    data = DataConfig(metadata=metadata, data_dir=config.data_dir, split=config.split, bands=config.bands,
                      normalize=config.normalize)
    resolve_bands(load_card(metadata), config.bands)  # a wrong metadata path or band named before Ray starts
    if dataset_size(data) == 0:
        parser.error(f"--split {config.split}: {metadata} holds no recommended patches of that split")
    check_readable(data)
    init_ray()
    dataset = build_dataset(data)
    started, seen, label_counts = time.perf_counter(), 0, None
    for index, batch in enumerate(dataset.iter_batches(batch_size=config.batch_size_per_gpu)):
        seen += len(batch["name"])
        label_counts = batch["labels"].sum(0) if label_counts is None else label_counts + batch["labels"].sum(0)
        if index == 0:
            image = batch["image"]
            print(f"image {image.shape} {image.dtype}, per-band mean {np.round(image.mean(axis=(0, 2, 3)), 3)}")
            print(f"labels {batch['labels'].shape}, first patch {batch['name'][0]}")
        if config.batches and index + 1 >= config.batches:
            break
    elapsed = time.perf_counter() - started
    print(f"streamed {seen} patches in {elapsed:.1f} s ({seen / elapsed:.1f} patches/s); "
          f"label counts {label_counts.astype(int).tolist()}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_entry("stream.py", main))
