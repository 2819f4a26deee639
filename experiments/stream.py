"""Stream a split through geodino's Ray Data pipeline and report shapes, label counts and patches/s.

With no arguments it generates the embedded demo archive, prepares it and streams it.
"""

import sys
import time

import numpy as np

from geodino import cli
from geodino.archive.card import load_card
from geodino.archive.demo import prepared_demo
from geodino.archive.splits import SPLITS
from geodino.data.config import NORMALIZATIONS, DataConfig, dataset_size, resolve_bands
from geodino.data.ray_data import build_dataset
from geodino.ray_cluster import init_ray


def main(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(description=__doc__)
    parser.add_argument("--metadata_dir", help="metadata parquet (or its folder); default: the demo archive")
    parser.add_argument("--data_dir", help="pixel archive; default: where prepare found it")
    parser.add_argument("--split", default="train", choices=SPLITS, help="which split to stream (default: train)")
    parser.add_argument("--bands", default="rgb", help="rgb, all, or a list such as B04,B03,B02,B08 (default: rgb)")
    parser.add_argument("--normalize", default="max", choices=NORMALIZATIONS,
                        help="max: divide by the card's pixel scale; stats: per-band mean and std (default: max)")
    parser.add_argument("--batch_size_per_gpu", "--batch_size", dest="batch_size", type=int, default=32,
                        help="patches per batch (default: 32)")
    parser.add_argument("--batches", type=int, default=5, help="batches to stream (0: all)")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.batches < 0:
        parser.error(f"--batch_size_per_gpu {args.batch_size} must be at least 1 and --batches {args.batches} at "
                     "least 0 (0: all)")
    metadata = args.metadata_dir or prepared_demo()
    config = DataConfig(metadata=metadata, data_dir=args.data_dir, split=args.split, bands=args.bands,
                        normalize=args.normalize)
    resolve_bands(load_card(metadata), args.bands)  # a wrong metadata path or band named before Ray starts
    if dataset_size(config) == 0:
        parser.error(f"--split {args.split}: {metadata} holds no recommended patches of that split")
    init_ray()
    dataset = build_dataset(config)
    started, seen, label_counts = time.perf_counter(), 0, None
    for index, batch in enumerate(dataset.iter_batches(batch_size=args.batch_size)):
        seen += len(batch["name"])
        label_counts = batch["labels"].sum(0) if label_counts is None else label_counts + batch["labels"].sum(0)
        if index == 0:
            image = batch["image"]
            print(f"image {image.shape} {image.dtype}, per-band mean {np.round(image.mean(axis=(0, 2, 3)), 3)}")
            print(f"labels {batch['labels'].shape}, first patch {batch['name'][0]}")
        if args.batches and index + 1 >= args.batches:
            break
    elapsed = time.perf_counter() - started
    print(f"streamed {seen} patches in {elapsed:.1f} s ({seen / elapsed:.1f} patches/s); "
          f"label counts {label_counts.astype(int).tolist()}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_entry("stream.py", main))
