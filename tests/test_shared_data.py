"""Prepared datasets through Ray's object store: one copy per node, zero-copy in every trial."""

from __future__ import annotations

import numpy as np
import ray

from lop_ray.data.shards import load_dataset, prepare_dataset
from lop_ray.trainables.shared_data import NAMESPACE, release_shared_datasets, shared_dataset
from tests.mnist_files import write_mnist


@ray.remote(num_cpus=0)
def _trial_view(data: str) -> tuple[int, bool, int]:
    dataset = shared_dataset("mnist", data)
    return int(dataset.images.sum()), dataset.images.flags.writeable, len(dataset)


def _holders() -> list[str]:
    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["namespace"] == NAMESPACE]


def test_trials_on_a_node_share_one_read_only_copy(tmp_path, local_ray):
    data = str(tmp_path / "mnist")
    prepare_dataset("mnist", write_mnist(tmp_path / "raw", train=200), data)
    expected = load_dataset("mnist", data)

    views = ray.get([_trial_view.remote(data) for _ in range(4)])

    assert views == [(int(expected.images.sum()), False, 200)] * 4  # same data, shared memory (read-only)
    assert len(_holders()) == 1  # loaded once on this node
    prepare_dataset("mnist", write_mnist(tmp_path / "raw", train=120, seed=7), data)  # re-prepared in place
    assert ray.get(_trial_view.remote(data))[2] == 120  # a new manifest is a new copy, not the stale one
    assert release_shared_datasets() == 2 and _holders() == []


def test_outside_ray_the_dataset_is_loaded_directly(tmp_path):
    data = str(tmp_path / "digits")
    prepare_dataset("digits", None, data)
    dataset = shared_dataset("digits", data)
    assert np.array_equal(dataset.images, load_dataset("digits", None).images)


def test_a_dataset_on_s3_is_fetched_once_per_node(tmp_path, s3_bucket, ray_tmp):
    prepare_dataset("mnist", write_mnist(tmp_path / "raw", train=64), f"{s3_bucket}/mnist")
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=str(ray_tmp))  # workers inherit the S3 endpoint
    try:
        views = ray.get([_trial_view.remote(f"{s3_bucket}/mnist") for _ in range(3)])
        assert {v[2] for v in views} == {64} and len(_holders()) == 1
        assert release_shared_datasets() == 1
    finally:
        ray.shutdown()
