"""`lop-ray mlflow-server`: the MLflow tracking server a cluster's sweeps log to.

On one machine the embedded sqlite store needs no server. On a cluster the trials run on other
nodes than the driver, so they log to one server on the head: its backend store is a sqlite file
(default) or a database such as PostgreSQL, and its artifacts are proxied by the server
(`--serve-artifacts`) to a local directory or an `s3://` prefix, so only the head needs S3 access.

The server binds 127.0.0.1 unless `--host` says otherwise: MLflow has no authentication of its own,
so it is reached through an ssh port-forward, or from the cluster's nodes over its private network
when the head's private address is given as `--host`.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from lop_ray.tracking import quiet_mlflow_environment

DEFAULT_DIR = "~/lop-ray-mlflow"
LOOPBACK = "127.0.0.1"


def default_backend_uri(directory: str | Path) -> str:
    return f"sqlite:///{Path(directory).expanduser().resolve() / 'mlflow.db'}"


def server_command(
    backend_store_uri: str, artifact_root: str, host: str = LOOPBACK, port: int = 5000, workers: int = 4
) -> list[str]:
    """The `mlflow server` invocation (the MLflow installed beside this Python)."""
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        backend_store_uri,
        "--serve-artifacts",
        "--artifacts-destination",
        artifact_root,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]


def redact(uri: str) -> str:
    """`postgresql://user:secret@host/db` → `postgresql://user:***@host/db`, for what is printed."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def serve(
    directory: str | None,
    backend_store_uri: str | None,
    artifact_root: str | None,
    host: str,
    port: int,
    workers: int,
) -> None:
    """Replace this process with the MLflow server (so signals reach it directly); never returns."""
    quiet_mlflow_environment()
    base = Path(directory or DEFAULT_DIR).expanduser().resolve()
    backend = backend_store_uri or default_backend_uri(base)
    artifacts = artifact_root or str(base / "artifacts")
    if backend.startswith("sqlite:") or artifacts == str(base / "artifacts"):
        base.mkdir(parents=True, exist_ok=True)
    if not artifacts.startswith("s3://") and "://" not in artifacts:
        artifacts = str(Path(artifacts).expanduser().resolve())
    print(
        f"MLflow server: backend {redact(backend)}, artifacts {artifacts}\n"
        f"  tracking_uri: http://{host}:{port}   (put it in the sweep file)",
        file=sys.stderr,
        flush=True,
    )
    if not _is_loopback(host):
        print(
            f"  bound to {host}: anyone who can reach it can read and write runs (MLflow has no "
            "login); keep it on a private network or behind a firewall",
            file=sys.stderr,
            flush=True,
        )
    command = server_command(backend, artifacts, host, port, workers)
    os.execv(command[0], command)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
