"""The cluster configs in clusters/: checked with Ray's own schema and default-filling code (what
`ray up` runs before it touches a machine), since no test can ssh anywhere."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
CLUSTERS = sorted((ROOT / "clusters").glob("*.yaml"))
# What an AWS key, a secret or a password looks like in text
SECRET_PATTERNS = [
    re.compile(r"AKIA[0-9A-Z]{16}"),
    re.compile(r"(?i)aws_(secret_)?access_key"),
    re.compile(r"(?i)aws_session_token"),
    re.compile(r"(?i)(password|passwd|secret)\s*[:=]"),
    re.compile(r"(?i)RAY_AUTH_TOKEN\s*="),
    # the shape of an AWS secret access key: 40 of base64's characters, digits among them
    re.compile(r"(?<![A-Za-z0-9/+])(?=[A-Za-z/+]*\d)[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+])"),
]


def _load(name: str) -> dict:
    return yaml.safe_load((ROOT / "clusters" / name).read_text())


def _prepared(name: str) -> dict:
    """What `ray up` works from: defaults filled, setup commands merged, then validated."""
    config = prepare_config(_load(name))
    validate_config(config)
    return config


def test_both_clusters_are_there():
    assert [p.name for p in CLUSTERS] == ["aws-gpu.yaml", "onprem.yaml"]


@pytest.mark.parametrize("name", ["aws-gpu.yaml", "onprem.yaml"])
def test_ray_accepts_the_config_and_fills_its_defaults(name):
    config = _prepared(name)
    assert config["head_node_type"] in config["available_node_types"]
    assert config["cluster_synced_files"] == []  # a default Ray filled in


def test_ray_schema_rejects_a_broken_config():
    """The validation above can fail: a misspelt key and a head type that does not exist."""
    config = _load("aws-gpu.yaml")
    config["max_wokers"] = 3
    with pytest.raises(jsonschema.ValidationError, match="max_wokers"):
        validate_config(prepare_config(config))
    config = _load("aws-gpu.yaml")
    config["head_node_type"] = "head.gpu"
    with pytest.raises(ValueError, match="head_node_type"):
        validate_config(prepare_config(config))


@pytest.mark.parametrize("path", CLUSTERS, ids=lambda p: p.name)
def test_no_credentials_in_the_config(path):
    text = path.read_text()
    for pattern in SECRET_PATTERNS:
        assert not pattern.search(text), f"{path.name}: looks like a credential: {pattern.pattern}"
    config = yaml.safe_load(text)
    # nothing from ~/.aws (or any key) is copied to the nodes; the Ray token is the only secret synced
    sources = [str(source) for source in config["file_mounts"].values()]
    assert not any(".aws" in s or s.endswith((".pem", "credentials")) for s in sources), sources
    assert "~/.ray/auth_token" in sources


def test_aws_reaches_s3_through_instance_profiles():
    config = _prepared("aws-gpu.yaml")
    for name, node_type in config["available_node_types"].items():
        if name != config["head_node_type"]:
            assert node_type["node_config"]["IamInstanceProfile"] == {"Name": "lop-ray-s3"}, name
    # the head keeps Ray's default profile (which `ray up` creates with S3 access)
    head = config["available_node_types"][config["head_node_type"]]
    assert "IamInstanceProfile" not in head["node_config"]


@pytest.mark.parametrize("name", ["aws-gpu.yaml", "onprem.yaml"])
def test_every_node_installs_this_lop_ray_and_its_pinned_requirements(name):
    config = _prepared(name)
    assert config["file_mounts"]["~/lop-ray"] == "."  # the repository `ray up` is run from
    for commands in (config["head_setup_commands"], config["worker_setup_commands"]):
        text = "\n".join(commands)
        assert re.search(r"pip install .*-r ~/lop-ray/requirements\.txt", text), text
        assert re.search(r"pip install .*-e ~/lop-ray$", text, re.MULTILINE), text
        assert re.search(r"lop-ray --help", text), text
    excluded = config["rsync_exclude"]
    assert ".venv" in excluded and "results" in excluded


@pytest.mark.parametrize("name", ["aws-gpu.yaml", "onprem.yaml"])
def test_ray_uses_token_auth_and_keeps_its_dashboard_on_loopback(name):
    config = _prepared(name)
    head = " ".join(config["head_start_ray_commands"])
    worker = " ".join(config["worker_start_ray_commands"])
    assert "RAY_AUTH_MODE=token" in head and "RAY_AUTH_MODE=token" in worker
    assert "--head --port=6379" in head
    assert "--dashboard-host=127.0.0.1" in head
    assert "--address=$RAY_HEAD_IP:6379" in worker
    assert "--dashboard-host=0.0.0.0" not in head + worker


def test_aws_has_a_cpu_head_and_autoscaled_gpu_workers():
    config = _prepared("aws-gpu.yaml")
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["max_workers"] == 0
    assert head["resources"] == {"CPU": 0}  # the head runs the driver and MLflow, never a trial
    assert not re.match(r"[gp]\d", head["node_config"]["InstanceType"])
    gpu_types = {n: t for n, t in types.items() if re.match(r"[gp]\d", t["node_config"]["InstanceType"])}
    assert len(gpu_types) >= 2, types.keys()
    for name, node_type in gpu_types.items():
        assert node_type["min_workers"] == 0 and node_type["max_workers"] >= 1, name
    assert sum(t["min_workers"] for t in types.values()) <= config["max_workers"]


def test_aws_image_matches_the_pinned_ray_and_python():
    docker = _prepared("aws-gpu.yaml")["docker"]
    pinned = re.search(r"^ray\[tune\]==(\S+)$", (ROOT / "requirements.txt").read_text(), re.MULTILINE)
    assert pinned and pinned.group(1) == ray.__version__
    assert docker["image"] == f"rayproject/ray:{ray.__version__}-py311-gpu"
    assert docker["head_image"] == f"rayproject/ray:{ray.__version__}-py311-cpu"


def test_onprem_names_its_machines_and_starts_all_of_them():
    config = _prepared("onprem.yaml")
    provider = config["provider"]
    assert provider["type"] == "local" and provider["head_ip"] not in provider["worker_ips"]
    node_type = config["available_node_types"][config["head_node_type"]]
    assert node_type["min_workers"] == node_type["max_workers"] == len(provider["worker_ips"])
    assert node_type["resources"] == {}  # GPUs and CPUs are detected on each machine


def test_prepare_config_does_not_change_the_files(tmp_path):
    """Ray fills defaults into a copy: the YAML we ship stays as written."""
    for path in CLUSTERS:
        before = yaml.safe_load(path.read_text())
        prepare_config(copy.deepcopy(before))
        assert yaml.safe_load(path.read_text()) == before
