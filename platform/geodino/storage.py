"""One way to reach files whether they are local paths or s3:// URIs.

Everything geodino reads or writes goes through pyarrow filesystems (and
rasterio/GDAL for GeoTIFFs, which understand the same URIs), so an archive on S3
follows exactly the code path of a local one. An S3-compatible endpoint is taken
from the standard ``AWS_ENDPOINT_URL`` variable, as boto3 and the AWS CLI do.
"""

from __future__ import annotations

import contextlib
import functools
import os
import pathlib
import posixpath
import re
from collections.abc import Sequence
from urllib.parse import urlparse

import pyarrow.fs as pafs

from geodino.errors import GeodinoError


class StorageError(GeodinoError, OSError):
    """A read or write that failed after the SDK's retries (a bucket that is not there, no permission, an endpoint
    that does not answer): the message names the object and the endpoint."""


def is_uri(path: str) -> bool:
    return "://" in str(path)


SCHEMES = ("s3",)  # what filesystem() reaches; anything else that looks like a URI is a mistake
_SCHEME_LIKE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):(/*)(.*)$")


def location_problem(path: str | None) -> str | None:
    """What is wrong with a place the user typed, or None: `s3:/bucket` (one slash) or `gs://bucket` would
    otherwise become a local folder named `s3:` or `gs:`, and a run would write there without a word."""
    if not path:
        return None
    match = _SCHEME_LIKE.match(str(path))
    if match is None:
        return None
    scheme, slashes, rest = match.groups()
    if scheme.lower() not in SCHEMES:
        return f"{path!r}: the {scheme}:// scheme is not supported; use a local path or s3://bucket/prefix"
    if slashes != "//" or not rest.split("/")[0]:
        return f"{path!r} is not a well-formed URI; write {scheme}://bucket/prefix"
    return None


def folder_problem(path: str | None) -> str | None:
    """What stops a run from writing into the local folder `path`: a file where the folder (or one above it)
    should be. Found before the run, not as NotADirectoryError when its first checkpoint is written."""
    if not path or is_uri(path):
        return None
    place = os.path.abspath(path)
    while not os.path.exists(place) and os.path.dirname(place) != place:
        place = os.path.dirname(place)
    if not os.path.isdir(place):
        which = f"{path!r} is a file" if place == os.path.abspath(path) else f"{path!r}: {place} is a file"
        return f"{which}, not a folder; give a folder (it is made if missing)"
    return None


def first_location_problem(places: dict[str, str | None], folders: Sequence[str] = (),
                           existing: Sequence[str] = (), local: Sequence[str] = ()) -> str | None:
    """`flag problem` for the first of {flag: place} that is refused, or None: one check for every script's
    places. Each must be a well-formed location; the `folders` flags are written into (no file in the way),
    the `existing` ones are read from (a local one must be there), the `local` ones are folders on this machine
    (an s3:// one would otherwise become a local folder named `s3:`)."""
    for flag, path in places.items():
        problem = location_problem(path)
        if not problem and flag in local and path and is_uri(path):
            problem = (f"{path!r}: this folder is written on this machine; give a local folder, and copy it to S3 "
                       f"afterwards if you want it there (aws s3 cp --recursive FOLDER {path})")
        if not problem and flag in folders:
            problem = folder_problem(path)
        if not problem and flag in existing and path and not is_uri(path) and not os.path.exists(path):
            problem = f"{path!r}: no such file or folder"
        if problem:
            return f"{flag} {problem}"
    return None


def name_problem(flag: str, name: str | None) -> str | None:
    """A run's name is one folder inside the storage: `../x` or `a/b` would write elsewhere than the user's
    --storage_path says."""
    if not name:
        return None  # the default name
    if not name.strip() or name.strip(".") == "" or any(separator in name for separator in "/\\"):
        return (f"{flag} {name!r} must be one folder name (no '/', not '.' or '..'), e.g. vit_small_ep100; the "
                "folder goes inside --storage_path")
    return None


def absolute(path: str) -> str:
    """A local path made absolute (workers may run in another folder); a URI as it is."""
    return str(path) if is_uri(path) else os.path.abspath(path)


def lies_inside(path: str, folder: str) -> bool:
    """Whether a local path is `folder` or under it, by name after making both absolute (a child named "..x" is
    inside: a test of the relative path's first characters would call it outside)."""
    return pathlib.PurePath(os.path.abspath(path)).is_relative_to(os.path.abspath(folder))


def default_home() -> str:
    """Where geodino keeps what it generates for the user (the demo archive, cached features)."""
    return os.environ.get("GEODINO_HOME", os.path.join(os.path.expanduser("~"), ".cache", "geodino"))


def join(root: str, *parts: str) -> str:
    """Join path parts under a local root or a URI without touching the filesystem."""
    if is_uri(root):
        return posixpath.join(str(root), *parts)
    return os.path.join(str(root), *parts)


def bucket(path: str) -> str:
    """s3://bucket of an s3:// path."""
    parsed = urlparse(str(path))
    return f"{parsed.scheme}://{parsed.netloc}"


def parent(path: str) -> str:
    """The folder holding a local file (made absolute) or an object (its prefix, as a URI)."""
    return posixpath.dirname(str(path)) if is_uri(path) else os.path.dirname(os.path.abspath(path))


def is_absolute(path: str) -> bool:
    """An absolute local path or a URI: a place that does not depend on the folder it is read from."""
    return os.path.isabs(path) or is_uri(path)


def _base_and_key(path: str) -> tuple[str, str]:
    """('s3://bucket', '/key/of/object') for a URI, ('', '/normalised/path') for a local path."""
    if is_uri(path):
        parsed = urlparse(str(path))
        return f"{parsed.scheme}://{parsed.netloc}", posixpath.normpath(parsed.path or "/")
    return "", os.path.normpath(path)


def common_folder(paths: Sequence[str]) -> str:
    """The deepest folder holding every file of `paths` that lies where the first one does (the same bucket, or
    this machine); the others are outside it."""
    base = _base_and_key(paths[0])[0]
    keys = [key for other, key in map(_base_and_key, paths) if other == base]
    return base + posixpath.commonpath([posixpath.dirname(key) for key in keys])


def relative_inside(path: str, folder: str) -> str | None:
    """`path` relative to `folder` when it lies inside it (both absolute or URIs), else None."""
    (base, key), (folder_base, folder_key) = _base_and_key(path), _base_and_key(folder)
    if base != folder_base or posixpath.commonpath([key, folder_key]) != folder_key:
        return None
    return posixpath.relpath(key, folder_key)


def is_folder(path: str) -> bool:
    """A local folder, or an S3 prefix that holds objects."""
    if not is_uri(path):
        return os.path.isdir(path)
    return file_type(path) == pafs.FileType.Directory


def filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem for `path` and the path inside it."""
    path = str(path)
    if path.startswith("s3://"):
        parsed = urlparse(path)
        return s3_filesystem(), parsed.netloc + parsed.path
    return pafs.LocalFileSystem(), os.path.abspath(path)


def s3_endpoint() -> str | None:
    """An S3-compatible endpoint given the standard way (AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL)."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def s3_attempts() -> int:
    """AWS SDK standard retries (exponential backoff with jitter): GEODINO_S3_ATTEMPTS, default 8."""
    return int(os.environ.get("GEODINO_S3_ATTEMPTS", 8))


def s3_filesystem() -> pafs.S3FileSystem:
    """S3 through the standard AWS credential chain, honouring AWS_ENDPOINT_URL.

    A short outage is ridden out by the AWS SDK's standard retry strategy
    (exponential backoff with jitter, s3_attempts() attempts); after that the
    caller gets an error that names the object and the endpoint.
    """
    endpoint = s3_endpoint()
    kwargs = {"retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=s3_attempts()), "connect_timeout": 10.0}
    if endpoint:
        parsed = urlparse(endpoint)
        kwargs["endpoint_override"] = parsed.netloc or parsed.path
        kwargs["scheme"] = parsed.scheme or "https"
    region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
    if region:
        kwargs["region"] = region
    return pafs.S3FileSystem(**kwargs)


def raster_env(path: str = "", **gdal_options):
    """A rasterio.Env that reaches s3:// GeoTIFFs at the same endpoint as pyarrow.

    GDAL ignores AWS_ENDPOINT_URL; it needs the endpoint as a session plus
    path-style addressing, and plain HTTP spelt out for a local endpoint.
    Credentials stay with the standard AWS chain (boto3's session).
    """
    import rasterio

    if path and not str(path).startswith("s3://"):
        # A local file needs no AWS session, yet rasterio builds a boto3 one for every open whenever AWS
        # credentials are in the environment (as on SageMaker): 18 ms an open instead of 1.2 ms.
        from rasterio.session import DummySession

        return rasterio.Env(session=DummySession(), **gdal_options)
    endpoint = s3_endpoint()
    if not endpoint:
        return rasterio.Env(**gdal_options) if gdal_options else contextlib.nullcontext()
    parsed = urlparse(endpoint)
    gdal_options.setdefault("AWS_VIRTUAL_HOSTING", "FALSE")
    if parsed.scheme == "http":
        gdal_options.setdefault("AWS_HTTPS", "NO")
    return rasterio.Env(_aws_session(parsed.netloc or parsed.path), **gdal_options)


@functools.lru_cache(maxsize=4)
def _aws_session(endpoint: str):
    """One boto3-backed session per endpoint and process: making one costs milliseconds."""
    from rasterio.session import AWSSession

    return AWSSession(endpoint_url=endpoint)


def read_bytes(path: str) -> bytes:
    fs, inner = filesystem(path)
    try:
        with fs.open_input_stream(inner) as stream:
            return stream.read()
    except FileNotFoundError:
        raise
    except OSError as error:
        raise StorageError(f"{path}: cannot read ({where(path)}): {error}") from error


def where(path: str) -> str:
    """For error messages: which endpoint an s3:// path went to."""
    if not str(path).startswith("s3://"):
        return "local file"
    return f"S3 endpoint {s3_endpoint() or 'AWS default'}, {s3_attempts()} attempts with backoff"


def exists(path: str) -> bool:
    return file_type(path) != pafs.FileType.NotFound


def file_type(path: str) -> pafs.FileType:
    """What is at `path`; an endpoint that cannot be reached (no network, a host that does not resolve) is named
    after the configured attempts, not a pyarrow traceback."""
    fs, inner = filesystem(path)
    try:
        return fs.get_file_info(inner).type
    except OSError as error:
        if not is_uri(path):  # a folder above it that cannot be read
            raise StorageError(f"{path}: cannot look there ({error})") from error
        raise StorageError(f"{path}: cannot reach it ({where(path)}): {error}; check the network, the bucket's name "
                           "and AWS_ENDPOINT_URL") from error


def write_bytes_atomic(path: str, payload: bytes) -> None:
    """Write to a temporary name, then move into place, so a crash never leaves half a file."""
    fs, inner = filesystem(path)
    parent = posixpath.dirname(inner) if is_uri(path) else os.path.dirname(inner)
    temporary = inner + ".tmp"
    try:
        if parent:
            fs.create_dir(parent, recursive=True)
        with fs.open_output_stream(temporary) as stream:
            stream.write(payload)
        fs.move(temporary, inner)
    except OSError as error:
        raise StorageError(f"{path}: cannot write ({where(path)}); the previous version, if any, is unchanged: "
                      f"{error}") from error
