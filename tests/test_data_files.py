"""MNIST IDX files and prepared shards: read exactly, and refused with a message naming the file
when missing, truncated or tampered with."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lop_ray.data.idx import DataFormatError, read_idx, read_mnist
from lop_ray.data.shards import MANIFEST_FILE, load_dataset, load_split, prepare_dataset
from tests.mnist_files import idx_bytes, write_mnist


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_files_read_back_exactly(tmp_path, gz):
    write_mnist(tmp_path, train=30, test=10, gz=gz, seed=1)
    images, labels = read_mnist(tmp_path, "train")
    rng = np.random.default_rng(1)
    expected_images = rng.integers(0, 256, (30, 28, 28), dtype=np.uint8)
    expected_labels = rng.integers(0, 10, 30, dtype=np.uint8)
    np.testing.assert_array_equal(images, expected_images)
    np.testing.assert_array_equal(labels, expected_labels)
    test_images, test_labels = read_mnist(tmp_path, "test")
    assert test_images.shape == (10, 28, 28) and test_labels.shape == (10,)


def test_idx_multibyte_types_are_big_endian(tmp_path):
    values = np.arange(6, dtype=">i4").reshape(2, 3)
    data = bytes([0, 0, 0x0C, 2]) + (2).to_bytes(4, "big") + (3).to_bytes(4, "big") + values.tobytes()
    (tmp_path / "ints").write_bytes(data)
    np.testing.assert_array_equal(read_idx(tmp_path / "ints"), np.arange(6).reshape(2, 3))


def test_truncated_or_foreign_idx_files_are_refused_by_name(tmp_path):
    write_mnist(tmp_path)
    path = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(
        DataFormatError, match=r"train-images-idx3-ubyte: .*header declares shape \(60, 28, 28\)"
    ):
        read_mnist(tmp_path)
    path.write_bytes(b"PK\x03\x04 not idx")
    with pytest.raises(DataFormatError, match="not an IDX file"):
        read_mnist(tmp_path)


def test_missing_or_mismatched_mnist_files_are_named(tmp_path):
    with pytest.raises(
        DataFormatError, match=r"no train-images-idx3-ubyte \(or train-images-idx3-ubyte.gz\)"
    ):
        read_mnist(tmp_path)
    write_mnist(tmp_path)
    labels = tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte"
    labels.write_bytes(idx_bytes(np.zeros(59, dtype=np.uint8)))
    with pytest.raises(DataFormatError, match="59 labels for 60 images"):
        read_mnist(tmp_path)


def test_prepared_shards_round_trip_in_several_pieces(tmp_path):
    write_mnist(tmp_path / "raw", train=50, test=10)
    manifest = prepare_dataset("mnist", tmp_path / "raw", tmp_path / "prepared", shard_bytes=784 * 16)
    spec = json.loads(Path(manifest).read_text())
    assert [s["rows"] for s in spec["splits"]["train"]["images"]["shards"]] == [16, 16, 16, 2]
    train = load_split(tmp_path / "prepared", "train")
    images, labels = read_mnist(tmp_path / "raw", "train")
    np.testing.assert_array_equal(train.images, images)
    np.testing.assert_array_equal(train.labels, labels.astype(np.int64))
    assert train.pixel_max == 255.0 and train.num_classes == 10 and len(train) == 50
    assert len(load_dataset("mnist", tmp_path / "prepared", "test")) == 10


def test_tampered_truncated_or_missing_shards_are_errors_naming_file_and_checksum(tmp_path):
    write_mnist(tmp_path / "raw")
    prepare_dataset("mnist", tmp_path / "raw", tmp_path / "prepared")
    shard = tmp_path / "prepared" / "train-images-00000.npy"
    original = shard.read_bytes()
    tampered = bytearray(original)
    tampered[-1] ^= 0xFF
    shard.write_bytes(bytes(tampered))
    with pytest.raises(
        DataFormatError, match=r"train-images-00000.npy: .* sha256 [0-9a-f]{64}, but the manifest"
    ):
        load_split(tmp_path / "prepared")
    shard.write_bytes(original[:-10])
    with pytest.raises(DataFormatError, match=f"{len(original) - 10} bytes .* says {len(original)} bytes"):
        load_split(tmp_path / "prepared")
    shard.unlink()
    with pytest.raises(DataFormatError, match="train-images-00000.npy: shard listed in .* is missing"):
        load_split(tmp_path / "prepared")


def test_unprepared_or_foreign_directories_are_refused(tmp_path):
    with pytest.raises(DataFormatError, match=f"{MANIFEST_FILE}: not found: prepare the dataset first"):
        load_split(tmp_path)
    prepare_dataset("digits", None, tmp_path / "digits")
    with pytest.raises(DataFormatError, match="holds 'digits', not 'mnist'"):
        load_dataset("mnist", tmp_path / "digits")
    with pytest.raises(DataFormatError, match="no split 'test'; it has train"):
        load_split(tmp_path / "digits", "test")


def test_digits_need_no_preparing_and_match_their_prepared_shards(tmp_path):
    bundled = load_dataset("digits", None)
    prepare_dataset("digits", None, tmp_path / "digits")
    prepared = load_dataset("digits", tmp_path / "digits")
    assert bundled.images.shape == (1797, 8, 8) and bundled.pixel_max == 16.0
    np.testing.assert_array_equal(bundled.images, prepared.images)
    np.testing.assert_array_equal(bundled.labels, prepared.labels)


def test_shards_round_trip_through_s3_and_tampering_there_is_caught(tmp_path, s3_bucket):
    import boto3

    write_mnist(tmp_path / "raw", train=40, test=8)
    uri = f"{s3_bucket}/prepared/mnist"
    assert prepare_dataset("mnist", tmp_path / "raw", uri, shard_bytes=784 * 16) == f"{uri}/{MANIFEST_FILE}"
    local = load_split(Path(prepare_dataset("mnist", tmp_path / "raw", tmp_path / "local")).parent)
    remote = load_split(uri)
    np.testing.assert_array_equal(remote.images, local.images)
    np.testing.assert_array_equal(
        load_dataset("mnist", uri, "test").labels, read_mnist(tmp_path / "raw", "test")[1]
    )

    s3 = boto3.client("s3")
    s3.put_object(Bucket="lop-data", Key="prepared/mnist/train-images-00001.npy", Body=b"tampered")
    with pytest.raises(
        DataFormatError, match=r"s3://lop-data/prepared/mnist/train-images-00001.npy: 8 bytes"
    ):
        load_split(uri)
    s3.delete_object(Bucket="lop-data", Key="prepared/mnist/train-images-00001.npy")
    with pytest.raises(DataFormatError, match="train-images-00001.npy: shard listed in .* is missing"):
        load_split(uri)
    with pytest.raises(DataFormatError, match="s3://lop-data/nothing/manifest.json: not found"):
        load_split(f"{s3_bucket}/nothing")


def test_cli_prepares_to_s3_and_sweeps_validate_s3_data(tmp_path, s3_bucket, capsys):
    from lop_ray.cli import main
    from lop_ray.schema import SweepError, load_sweep

    assert main(["data", "prepare", "digits", "--dest", f"{s3_bucket}/digits"]) == 0
    assert f"manifest: {s3_bucket}/digits/{MANIFEST_FILE}" in capsys.readouterr().out
    sweep_text = (
        "name: s3\nproblem: {{name: permuted_mnist, dataset: digits, data: '{data}'}}\n"
        "algorithms: [{{algorithm: bp, step_size: 0.01}}]\nnum_tasks: 1\n"
    )
    (tmp_path / "ok.yaml").write_text(sweep_text.format(data=f"{s3_bucket}/digits"))
    assert load_sweep(tmp_path / "ok.yaml").trials[0]["problem_settings"]["data"] == f"{s3_bucket}/digits"
    (tmp_path / "bad.yaml").write_text(sweep_text.format(data=f"{s3_bucket}/absent"))
    with pytest.raises(
        SweepError, match=r"bad.yaml:2: problem.data: s3://lop-data/absent/manifest.json: not found"
    ):
        load_sweep(tmp_path / "bad.yaml")
