"""Where prepare's outputs live and how they are read: the metadata parquet, its card and its rejects.

prepare writes three files side by side, ``NAME.parquet`` (one row per usable patch), ``NAME.json``
(the card: format, classes, bands, pixel scale, band statistics, the pack) and ``NAME.rejects.csv``.
Every reader finds them through this module, so "where is the card" has one answer. A folder may be
given instead of the parquet (the seed's ``--metadata_dir``): it means ``FOLDER/metadata.parquet``.
"""

from __future__ import annotations

import json

from geodino import storage
from geodino.errors import MissingInputError

METADATA_COLUMNS = ["name", "path", "format", "labels", "original_split", "recommended"]


def metadata_file(metadata: str) -> str:
    """The parquet itself, or FOLDER/metadata.parquet for a folder."""
    if str(metadata).endswith(".parquet"):
        return str(metadata)
    return storage.join(metadata, "metadata.parquet")


def _beside(metadata: str, suffix: str) -> str:
    return metadata_file(metadata)[: -len(".parquet")] + suffix


def card_file(metadata: str) -> str:
    return _beside(metadata, ".json")


def rejects_file(metadata: str) -> str:
    return _beside(metadata, ".rejects.csv")


def load_card(metadata: str) -> dict:
    card_path = card_file(metadata)
    try:
        return json.loads(storage.read_bytes(card_path))
    except FileNotFoundError as error:
        if not storage.exists(metadata_file(metadata)):
            raise MissingInputError(f"{metadata}: no metadata parquet there; give the file (or folder) that "
                                    "experiments/prepare.py --out wrote") from error
        raise MissingInputError(f"{card_path}: the card that prepare writes next to {metadata_file(metadata)} is "
                                "missing; rerun experiments/prepare.py") from error


def write_card(metadata: str, card: dict) -> None:
    storage.write_bytes_atomic(card_file(metadata), json.dumps(card, indent=2).encode())


def check_metadata_columns(metadata: str) -> int:
    """Fail with the file and the missing columns, not with a pyarrow error deep inside a Ray task.

    Returns the row count, read from the same footer (one request on S3).
    """
    import pyarrow.parquet as pq

    parquet = metadata_file(metadata)
    fs, inner = storage.filesystem(parquet)
    footer = pq.read_metadata(fs.open_input_file(inner))
    present = set(footer.schema.to_arrow_schema().names)
    missing = [column for column in METADATA_COLUMNS if column not in present]
    if missing:
        raise ValueError(f"{parquet} lacks the columns {missing}; it was not written by experiments/prepare.py "
                         "(or by an older version): run prepare on the archive again")
    return footer.num_rows
