"""Where prepare's outputs live, how they are read, and when prepare may replace them: the metadata parquet, its
card and its rejects.

prepare writes three files side by side, ``NAME.parquet`` (one row per usable patch), ``NAME.json``
(the card: format, classes, bands, pixel scale, band statistics, the pack) and ``NAME.rejects.csv``.
Every reader finds them through this module, so "where is the card" has one answer. A folder may be
given instead of the parquet (the seed's ``--metadata_dir``): it means ``FOLDER/metadata.parquet``.
"""

from __future__ import annotations

import json
import os

from geodino import storage
from geodino.errors import DamagedInputError, GeodinoError, MissingInputError

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


def check_is_metadata(metadata: str) -> None:
    """A user's own table (CSV) given where prepare's output belongs is the likeliest slip: say so, with the
    command that turns it into metadata, rather than 'TABLE.csv/metadata.json: not a directory'."""
    if not storage.is_uri(metadata) and os.path.isfile(metadata) and not metadata.endswith(".parquet"):
        raise MissingInputError(f"{metadata} is a file, not the metadata parquet that experiments/prepare.py "
                                f"writes: prepare it first (python experiments/prepare.py {metadata} --out "
                                "DIR/metadata.parquet) and give DIR/metadata.parquet")


def image_size(card: dict) -> tuple[int, int] | None:
    """The common (height, width) of a user's images, to which an image of another size is resized when read; None
    for BigEarthNet (its readers put every band on the 10 m grid) and for cards written before it was recorded."""
    size = card.get("image_size")
    return (int(size[0]), int(size[1])) if size else None


def load_card(metadata: str) -> dict:
    check_is_metadata(metadata)
    card_path = card_file(metadata)
    try:
        card = json.loads(storage.read_bytes(card_path))
    except ValueError as error:  # not JSON, or not text at all
        raise DamagedInputError(f"{card_path}: the card beside the metadata is not valid JSON ({error}); "
                                "rerun experiments/prepare.py to write it again") from error
    except FileNotFoundError as error:
        if not storage.exists(metadata_file(metadata)):
            raise MissingInputError(f"{metadata}: no metadata parquet there; give the file (or folder) that "
                                    "experiments/prepare.py --out wrote") from error
        raise MissingInputError(f"{card_path}: the card that prepare writes next to {metadata_file(metadata)} is "
                                "missing; rerun experiments/prepare.py") from error
    if not isinstance(card, dict):
        raise DamagedInputError(f"{card_path}: not a card written by experiments/prepare.py (a JSON "
                                f"{type(card).__name__}, not an object); rerun prepare to write it again")
    return card


def write_card(metadata: str, card: dict) -> None:
    storage.write_bytes_atomic(card_file(metadata), json.dumps(card, indent=2).encode())


def check_metadata_columns(metadata: str) -> int:
    """Fail with the file and the missing columns, not with a pyarrow error deep inside a Ray task.

    Returns the row count, read from the same footer (one request on S3).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    check_is_metadata(metadata)
    parquet = metadata_file(metadata)
    fs, inner = storage.filesystem(parquet)
    try:
        footer = pq.read_metadata(fs.open_input_file(inner))
    except FileNotFoundError as error:
        raise MissingInputError(f"{parquet}: no such metadata parquet; give the file (or folder) that "
                                "experiments/prepare.py --out wrote") from error
    except pa.ArrowInvalid as error:
        raise DamagedInputError(f"{parquet}: not a readable parquet file ({str(error).splitlines()[0]}); it is "
                                "damaged or was not written by experiments/prepare.py: run prepare again") from error
    present = set(footer.schema.to_arrow_schema().names)
    missing = [column for column in METADATA_COLUMNS if column not in present]
    if missing:
        raise DamagedInputError(f"{parquet} lacks the columns {missing}; it was not written by "
                                "experiments/prepare.py (or by an older version): run prepare on the archive again")
    return footer.num_rows


class OutputError(GeodinoError, ValueError):
    """An output path prepare may not write: not its own file, or not writable."""


def written_by_prepare(out: str, card: str, rejects: str) -> dict[str, bool]:
    """Whether prepare wrote the card beside --out (a JSON object with its keys: a folder may hold a metadata.json
    of the user's) and the rejects list (its header); the parquet counts as prepare's when the card does."""
    def read(path: str) -> bytes:
        try:
            return storage.read_bytes(path)
        except OSError:
            return b""

    try:
        described = json.loads(read(card) or b"null")
    except ValueError:
        described = None
    card_is_ours = isinstance(described, dict) and {"format", "bands", "classes"} <= set(described)
    return {out: card_is_ours, card: card_is_ours, rejects: read(rejects).startswith(b"name,path,reason")}


def check_prepare_out(given: str, archive: str) -> None:
    """Before anything is parsed: prepare's --out (`given`) may be replaced only if prepare wrote it, and must be
    writable."""
    out = metadata_file(given)
    if not storage.is_uri(out) and os.path.abspath(out) == os.path.abspath(archive):
        raise OutputError(f"--out {given} is the table being prepared: choose another path for the metadata")
    if storage.is_uri(out) and not storage.exists(storage.bucket(out)):
        raise OutputError(f"--out {given}: the bucket {storage.bucket(out)} is not there ({storage.where(out)}); "
                          "create it, or give another --out")
    card, rejects = card_file(given), rejects_file(given)
    ours = written_by_prepare(out, card, rejects)
    for path in (out, card, rejects):
        if storage.exists(path) and not ours[path]:
            what = (f"--out {out} exists and was not written by prepare (there is no card of prepare's, {card}, "
                    "beside it)") if path == out else (f"--out {given} would replace {path}, which exists and "
                                                       "was not written by prepare")
            raise OutputError(f"{what}: choose another --out, or move that file away yourself")
    if not storage.is_uri(out):
        folder = os.path.dirname(os.path.abspath(out))
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as error:
            raise OutputError(f"--out {out}: cannot create its folder ({error.strerror})") from error
        if not os.access(folder, os.W_OK):
            raise OutputError(f"--out {out}: the folder {folder} is not writable; choose another --out")
