"""Where a sweep's results live: a local directory or an `s3://bucket/prefix`, as one pyarrow
filesystem and a path on it, so Tune (checkpoints, experiment state), the sweep record, `status`
and the checkpoint reconciliation all reach S3 the same way.

The S3 endpoint is boto3's: `AWS_ENDPOINT_URL_S3`, else `AWS_ENDPOINT_URL` (MinIO, Ceph, moto…);
without either, AWS itself. Credentials come from the usual chain (environment, ~/.aws, instance
profile); none is ever passed here, so none is pickled into Tune's state or trial actors.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs

# S3's bucket naming rules (3-63 lower-case letters, digits, dots and hyphens)
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class StorageError(ValueError):
    """A storage location that cannot be used; the message says which and why."""


def is_remote(location: str | Path) -> bool:
    return str(location).startswith("s3://")


def normalize(location: str | Path) -> str:
    """An absolute local path, or `s3://bucket/key` without a trailing slash."""
    text = str(location)
    if is_remote(text):
        bucket, key = _split(text)
        return f"s3://{bucket}/{key}" if key else f"s3://{bucket}"
    if "://" in text:
        raise StorageError(f"{text}: only local directories and s3://bucket/prefix URIs are supported")
    return str(Path(text).expanduser().resolve())


def join(location: str | Path, *names: str) -> str:
    return "/".join([normalize(location), *names])


def filesystem(location: str | Path) -> tuple[pyarrow.fs.FileSystem, str]:
    """(filesystem, path on it) for a local directory or an s3:// URI; the S3 path is `bucket/key`."""
    text = normalize(location)
    if not is_remote(text):
        return pyarrow.fs.LocalFileSystem(), text
    bucket, key = _split(text)
    path = f"{bucket}/{key}" if key else bucket
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if not endpoint:
        return pyarrow.fs.FileSystem.from_uri(text)[0], path  # AWS: from_uri finds the bucket's region
    parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    fs = pyarrow.fs.S3FileSystem(endpoint_override=parsed.netloc, scheme=parsed.scheme, region=region)
    return fs, path


def check_location(location: str, key: str = "storage") -> None:
    """Before anything runs: an s3:// location must name a valid bucket that exists and can be
    listed with the credentials at hand (a local directory is created when the sweep starts)."""
    if not is_remote(location):
        normalize(location)
        return
    try:
        bucket, _ = _split(location)
    except StorageError as error:
        raise StorageError(f"{key}: {error}") from None
    fs, _ = filesystem(location)
    try:
        found = fs.get_file_info(bucket)
    except OSError as error:
        raise StorageError(f"{key}: {location}: cannot reach bucket {bucket!r}: {error}") from None
    if found.type == pyarrow.fs.FileType.NotFound:
        raise StorageError(
            f"{key}: {location}: no bucket {bucket!r} at {_endpoint_name()}; create it first "
            f"(e.g. `aws s3 mb s3://{bucket}`) or fix the name"
        )


def read_text(location: str | Path, name: str) -> str | None:
    """The text of `location/name`, None if there is no such file."""
    fs, path = filesystem(location)
    target = f"{path}/{name}"
    if fs.get_file_info(target).type != pyarrow.fs.FileType.File:
        return None
    with fs.open_input_stream(target) as stream:
        return stream.read().decode()


def write_text(location: str | Path, name: str, text: str) -> None:
    fs, path = filesystem(location)
    fs.create_dir(path, recursive=True)
    with fs.open_output_stream(f"{path}/{name}") as stream:
        stream.write(text.encode())


def driver_dir(results: str | Path) -> Path:
    """A local directory for the driver-side files of a sweep (figures; for an S3 sweep without a
    tracking server, MLflow's sqlite store): the results directory itself when it is local, else
    `$LOP_RAY_HOME/sweeps/<bucket>/<key>` (LOP_RAY_HOME defaults to ~/lop-ray-mlflow, the
    directory `lop-ray mlflow-server` uses)."""
    text = normalize(results)
    if not is_remote(text):
        return Path(text)
    bucket, key = _split(text)
    home = Path(os.environ.get("LOP_RAY_HOME", "~/lop-ray-mlflow")).expanduser()
    return home.resolve() / "sweeps" / bucket / key


def _split(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    bucket, key = parsed.netloc, parsed.path.strip("/")
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise StorageError(
            f"{uri}: {bucket!r} is not an S3 bucket name (3-63 lower-case letters, digits, '.', '-'); "
            "expected s3://bucket/prefix"
        )
    if "//" in key or parsed.query or parsed.fragment:
        raise StorageError(f"{uri}: expected s3://bucket/prefix, without empty path parts, '?' or '#'")
    return bucket, key


def _endpoint_name() -> str:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "AWS S3"
