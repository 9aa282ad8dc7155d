"""Input pipelines on generated files in the real formats (CIFAR-10 binary, JPEG class folders)."""

from __future__ import annotations

import numpy as np
import pytest

from src.dataset import CIFAR_MEAN, CIFAR_STD, CifarBinarySource, cifar10_files, create_dataset
from src.demo_data import cifar_records
from src.errors import UserError


def _write_batches(folder, counts, seed=0):
    """CIFAR-10 layout with ``counts`` records per training file; pixel value = record index % 251."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    labels_all = []
    for index, count in enumerate(counts, start=1):
        labels = rng.integers(0, 10, count)
        images = rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
        (folder / f"data_batch_{index}.bin").write_bytes(cifar_records(labels, images))
        labels_all.append(labels)
    test_labels = np.arange(13) % 10
    test_images = np.stack([np.full((32, 32, 3), i * 10, dtype=np.uint8) for i in range(13)])
    (folder / "test_batch.bin").write_bytes(cifar_records(test_labels, test_images))
    return np.concatenate(labels_all)


def test_source_reads_records_of_any_count(tmp_path):
    labels = _write_batches(tmp_path, [7, 1, 20, 3, 64])
    source = CifarBinarySource(cifar10_files(tmp_path, training=True))
    assert len(source) == 95
    assert [int(source[i][1]) for i in range(95)] == labels.tolist()
    raw = np.fromfile(tmp_path / "data_batch_3.bin", dtype=np.uint8).reshape(-1, 3073)
    image, label = source[7 + 1 + 5]  # sixth record of the third file
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    assert np.array_equal(image, raw[5, 1:].reshape(3, 32, 32).transpose(1, 2, 0))
    assert int(label) == raw[5, 0]


def test_eval_reads_test_batch_and_every_image_is_scored(tmp_path):
    _write_batches(tmp_path, [4, 4, 4, 4, 4])
    data = create_dataset("cifar10", tmp_path, training=False, batch_size=5, image_size=(32, 32))
    batches = list(data.create_tuple_iterator(output_numpy=True))
    assert [len(b[1]) for b in batches] == [5, 5, 3]  # 13 images, remainder kept
    images = np.concatenate([b[0] for b in batches])
    labels = np.concatenate([b[1] for b in batches])
    assert images.shape == (13, 3, 32, 32) and images.dtype == np.float32 and labels.dtype == np.int32
    assert labels.tolist() == (np.arange(13) % 10).tolist()
    expected = (np.float32(30) / 255 - np.float32(CIFAR_MEAN[1])) / np.float32(CIFAR_STD[1])
    assert images[3, 1] == pytest.approx(np.full((32, 32), expected), abs=1e-5)


def test_eval_also_accepts_a_verify_folder(tmp_path):
    _write_batches(tmp_path / "all", [2, 2, 2, 2, 2])
    verify = tmp_path / "cifar-10-verify-bin"
    verify.mkdir()
    (verify / "verify.bin").write_bytes((tmp_path / "all" / "test_batch.bin").read_bytes())
    assert cifar10_files(verify, training=False) == [verify / "verify.bin"]


def test_training_resizes_and_drops_the_last_partial_batch(tmp_path):
    _write_batches(tmp_path, [10, 10, 10, 10, 3])
    data = create_dataset("cifar10", tmp_path, training=True, batch_size=8, image_size=(48, 40))
    assert data.get_dataset_size() == 5
    shapes = {b[0].shape for b in data.create_tuple_iterator(output_numpy=True)}
    assert shapes == {(8, 3, 48, 40)}


def test_shards_are_disjoint_and_cover_the_data(tmp_path):
    # Record i of the 30 has every pixel equal to i: the normalised image tells which record a row is.
    tmp_path.mkdir(exist_ok=True)
    for index in range(1, 6):
        values = np.arange(6) + 6 * (index - 1)
        images = np.repeat(values.astype(np.uint8), 32 * 32 * 3).reshape(6, 32, 32, 3)
        (tmp_path / f"data_batch_{index}.bin").write_bytes(cifar_records(values % 10, images))
    seen = []
    for rank in range(3):
        data = create_dataset("cifar10", tmp_path, training=True, batch_size=1, image_size=(32, 32),
                              rank_id=rank, rank_size=3)
        rows = []
        for image, _ in data.create_tuple_iterator(output_numpy=True):
            # Random crop pads with zeros and flips, but the centre pixel is always from the record.
            centre = image[0, 0, 16, 16] * CIFAR_STD[0] + CIFAR_MEAN[0]
            rows.append(int(round(centre * 255)))
        seen.append(rows)
    assert [len(rows) for rows in seen] == [10, 10, 10]
    assert sorted(sum(seen, [])) == list(range(30))


def test_bad_cifar_files_are_named(tmp_path):
    _write_batches(tmp_path, [2, 2, 2, 2, 2])
    with open(tmp_path / "data_batch_2.bin", "ab") as handle:
        handle.write(b"\0" * 100)
    with pytest.raises(UserError, match=r"data_batch_2.bin: 6246 bytes is not a whole, non-zero number of 3073"):
        create_dataset("cifar10", tmp_path, training=True, batch_size=2, image_size=(32, 32))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"no data_batch_\*.bin in"):
        cifar10_files(tmp_path / "empty", training=True)
    with pytest.raises(UserError, match=r"no test_batch.bin in"):
        cifar10_files(tmp_path / "empty", training=False)
    with pytest.raises(UserError, match="does not exist"):
        cifar10_files(tmp_path / "missing", training=False)


def test_labels_beyond_num_classes_are_rejected(tmp_path):
    _write_batches(tmp_path, [3, 3, 3, 3, 3])
    with pytest.raises(UserError, match=r"label 9 found, but num_classes=5"):
        create_dataset("cifar10", tmp_path, training=False, batch_size=2, image_size=(32, 32), num_classes=5)


def test_imagenet_folders(image_tree):
    train = create_dataset("imagenet", image_tree / "train", training=True, batch_size=4, image_size=(32, 32))
    assert train.get_dataset_size() == 12  # 48 images
    image, label = next(train.create_tuple_iterator(output_numpy=True))
    assert image.shape == (4, 3, 32, 32) and image.dtype == np.float32 and label.dtype == np.int32
    val = create_dataset("imagenet", image_tree / "val", training=False, batch_size=6, image_size=(32, 32))
    labels = np.concatenate([b[1] for b in val.create_tuple_iterator(output_numpy=True)])
    assert sorted(labels.tolist()) == sorted([c for c in range(4) for _ in range(5)])
