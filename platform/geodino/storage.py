"""One way to reach files whether they are local paths or s3:// URIs.

Everything geodino reads or writes goes through pyarrow filesystems (and
rasterio/GDAL for GeoTIFFs, which understand the same URIs), so an archive on S3
follows exactly the code path of a local one. An S3-compatible endpoint is taken
from the standard ``AWS_ENDPOINT_URL`` variable, as boto3 and the AWS CLI do.
"""

from __future__ import annotations

import os
import posixpath
from urllib.parse import urlparse

import pyarrow.fs as pafs


def is_uri(path: str) -> bool:
    return "://" in str(path)


def join(root: str, *parts: str) -> str:
    """Join path parts under a local root or a URI without touching the filesystem."""
    if is_uri(root):
        return posixpath.join(str(root), *parts)
    return os.path.join(str(root), *parts)


def filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem for `path` and the path inside it."""
    path = str(path)
    if path.startswith("s3://"):
        parsed = urlparse(path)
        return s3_filesystem(), parsed.netloc + parsed.path
    return pafs.LocalFileSystem(), os.path.abspath(path)


def s3_filesystem() -> pafs.S3FileSystem:
    """S3 through the standard AWS credential chain, honouring AWS_ENDPOINT_URL."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    kwargs = {}
    if endpoint:
        parsed = urlparse(endpoint)
        kwargs["endpoint_override"] = parsed.netloc or parsed.path
        kwargs["scheme"] = parsed.scheme or "https"
    region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
    if region:
        kwargs["region"] = region
    return pafs.S3FileSystem(**kwargs)


def read_bytes(path: str) -> bytes:
    fs, inner = filesystem(path)
    with fs.open_input_stream(inner) as stream:
        return stream.read()


def exists(path: str) -> bool:
    fs, inner = filesystem(path)
    return fs.get_file_info(inner).type != pafs.FileType.NotFound


def write_bytes_atomic(path: str, payload: bytes) -> None:
    """Write to a temporary name, then move into place, so a crash never leaves half a file."""
    fs, inner = filesystem(path)
    parent = posixpath.dirname(inner) if is_uri(path) else os.path.dirname(inner)
    if parent:
        fs.create_dir(parent, recursive=True)
    temporary = inner + ".tmp"
    with fs.open_output_stream(temporary) as stream:
        stream.write(payload)
    fs.move(temporary, inner)
