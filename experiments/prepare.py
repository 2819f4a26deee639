"""Turn an archive into geodino's metadata parquet: python experiments/prepare.py ARCHIVE --out metadata.parquet"""

import sys

from geodino import cli
from geodino.archive.config import PrepareConfig
from geodino.archive.pack import PackConfig, PackMismatchError, pack
from geodino.archive.prepare import prepare, summarise


def main(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(description=__doc__)
    parser.add_argument("archive", help="BigEarthNet v1 folder, reBEN folder (metadata.parquet + LMDB), a "
                        "CSV/TSV/parquet of images, or a folder of class folders (FOLDER/Forest/*.jpg, optionally "
                        "split first: FOLDER/train/Forest/*.jpg)")
    cli.add_dataclass_arguments(parser, PrepareConfig)
    config = cli.dataclass_from_args(PrepareConfig, parser.parse_args(argv))
    config.validate()
    try:
        if not config.pack_only:
            result = prepare(config)
            print(summarise(result))
            if config.strict and result.rejected:
                print(f"prepare.py: --strict and {result.rejected} patches were rejected", file=sys.stderr)
                return 1
        if config.pack:
            packed = pack(PackConfig(metadata=config.out, out_dir=config.pack, bands=config.bands,
                                     shard_size=config.shard_size, workers=config.workers))
            print(f"packed {packed.rows} patches into {packed.shards} shards in {packed.out_dir} ({packed.written} "
                  f"written now, {packed.shards - packed.written} already there) in {packed.seconds:.1f} s")
    except (FileNotFoundError, ValueError, PackMismatchError) as error:
        print(f"prepare.py: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_entry("prepare.py", main))
