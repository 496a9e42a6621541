"""Where prepared datasets live: a local directory or an S3 prefix, behind the same three calls.

S3 goes through boto3, which takes credentials and the endpoint from the usual places
(`AWS_ACCESS_KEY_ID`, …, `AWS_ENDPOINT_URL` for S3-compatible stores such as MinIO or moto).
"""

from __future__ import annotations

import abc
from pathlib import Path
from urllib.parse import urlparse


class LocationError(OSError):
    """A location that cannot be read; the message names the path or URI and the cause."""


class MissingFile(LocationError):
    """A file that is not at the location; `str(error)` is its full path or URI."""


class Location(abc.ABC):
    """A directory of named files, local or remote."""

    @abc.abstractmethod
    def write(self, name: str, data: bytes) -> None:
        """Store `data` as `name`, replacing any earlier file of that name."""

    @abc.abstractmethod
    def read(self, name: str) -> bytes:
        """The bytes of `name`; `MissingFile` if there is none, `LocationError` if unreadable."""

    @abc.abstractmethod
    def describe(self, name: str = "") -> str:
        """The full path or URI of `name` (of the location itself without one), for messages."""


class LocalDirectory(Location):
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()

    def write(self, name: str, data: bytes) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        partial = self.path / f".{name}.partial"
        partial.write_bytes(data)
        partial.replace(self.path / name)

    def read(self, name: str) -> bytes:
        try:
            return (self.path / name).read_bytes()
        except FileNotFoundError as error:
            raise MissingFile(self.describe(name)) from error

    def describe(self, name: str = "") -> str:
        return str(self.path / name) if name else str(self.path)


class S3Prefix(Location):
    def __init__(self, uri: str) -> None:
        parsed = urlparse(uri)
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        import boto3

        self.client = boto3.client("s3")

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def write(self, name: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(name), Body=data)

    def read(self, name: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(name))["Body"].read()
        except self.client.exceptions.NoSuchKey as error:
            raise MissingFile(self.describe(name)) from error
        except self.client.exceptions.NoSuchBucket as error:
            raise MissingFile(f"{self.describe(name)} (no bucket {self.bucket!r})") from error
        except (BotoCoreError, ClientError) as error:
            raise LocationError(f"{self.describe(name)}: cannot read: {error}") from error

    def describe(self, name: str = "") -> str:
        key = self._key(name) if name else self.prefix
        return f"s3://{self.bucket}/{key}"


def location(path: str | Path) -> Location:
    """`s3://bucket/prefix` or a local directory."""
    text = str(path)
    if text.startswith("s3://"):
        return S3Prefix(text)
    if "://" in text:
        raise ValueError(f"{text}: only local paths and s3:// URIs are supported")
    return LocalDirectory(text)
