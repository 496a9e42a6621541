"""One copy of a dataset per node, in Ray's object store, for every trial on that node.

The first trial on a node that needs a prepared dataset starts a small named actor pinned to that
node; the actor loads (and checksums) the shards once and puts the arrays into the node's object
store. Every trial on the node then gets them with `ray.get`: numpy arrays backed by shared memory,
read-only and zero-copy, so K trials hold one copy, not K. The actor is detached (it must outlive
the trial that happened to start it, since it owns the object) and is named by node and by the
dataset's manifest, so a re-prepared dataset gets a new copy; `release_shared_datasets` ends them
when the sweep ends.
"""

from __future__ import annotations

import hashlib
import json

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from lop_ray.data.locations import location
from lop_ray.data.shards import MANIFEST_FILE, ImageDataset, load_dataset

NAMESPACE = "lop_ray_data"


@ray.remote(num_cpus=0)
class _DatasetHolder:
    def __init__(self, dataset: str, data: str | None, split: str) -> None:
        self._ref = ray.put(load_dataset(dataset, data, split))

    def reference(self) -> list[ray.ObjectRef]:
        return [self._ref]  # in a list: returning the ref itself would hand back its value


def shared_dataset(dataset: str, data: str | None, split: str = "train") -> ImageDataset:
    """The dataset as zero-copy arrays from this node's object store (loaded once per node)."""
    if not ray.is_initialized():  # a trainable used outside Ray (tests, plain loops)
        return load_dataset(dataset, data, split)
    node = ray.get_runtime_context().get_node_id()
    holder = _DatasetHolder.options(
        name=_holder_name(node, dataset, data, split),
        namespace=NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False),
    ).remote(dataset, data, split)
    [ref] = ray.get(holder.reference.remote())
    return ray.get(ref)


def _holder_name(node: str, dataset: str, data: str | None, split: str) -> str:
    # the manifest's hash, not the path: re-preparing a dataset in place must not serve the old copy
    identity = location(data).read(MANIFEST_FILE) if data else b"bundled"
    digest = hashlib.sha256(identity + json.dumps([dataset, split]).encode()).hexdigest()[:16]
    return f"{dataset}-{split}-{digest}-{node[:12]}"


def release_shared_datasets() -> int:
    """End every dataset holder (and free its copy); returns how many there were."""
    released = 0
    for entry in ray.util.list_named_actors(all_namespaces=True):
        if entry["namespace"] != NAMESPACE:
            continue
        try:
            ray.kill(ray.get_actor(entry["name"], namespace=NAMESPACE))
            released += 1
        except ValueError:  # already gone
            pass
    return released
