"""The memory-mapped crop store: the same samples as decoding the files, and clear errors."""

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from aukit.data.crop_store import CropStore, main, write_crop_store
from aukit.data.datamodules import ManifestDataModule
from aukit.data.datasets import ManifestDataset
from aukit.data.manifest import read_manifest
from aukit.data.transforms import eval_transform, train_transform


def write_manifest(folder: Path, count: int = 4, size: int = 48) -> Path:
    path = folder / "train.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "subject", "AU1", "AU12"])
        for i in range(count):
            image = np.random.default_rng(i).integers(0, 255, (size, size, 3), dtype=np.uint8)
            cv2.imwrite(str(folder / f"{i}.png"), image)
            writer.writerow([f"{i}.png", f"S{i // 2}", i % 2, 1 - i % 2])
    return path


def test_store_items_equal_decoded_items(tmp_path):
    manifest = read_manifest(write_manifest(tmp_path))
    store = CropStore(write_crop_store(manifest, tmp_path / "store", size=48))
    assert len(store) == 4 and store.size == 48
    for transform in (eval_transform(32), train_transform(32, seed=1)):
        files = ManifestDataset(manifest, transform)
        mapped = ManifestDataset(manifest, transform, store=store)
        for key in (0, 3, 5):  # a key past N is a later epoch: same row, other augmentation
            a, b = files[key], mapped[key]
            assert torch.equal(a["image"], b["image"])
            assert torch.allclose(a["landmarks"], b["landmarks"])
            assert torch.equal(a["labels"], b["labels"])


def test_resizing_store_scales_landmarks(tmp_path):
    manifest = read_manifest(write_manifest(tmp_path, count=2, size=48))
    store = CropStore(write_crop_store(manifest, tmp_path / "store", size=96))
    image, landmarks = store.read(manifest.images[1])
    assert image.shape == (96, 96, 3) and image.dtype == np.uint8
    _, original = CropStore(write_crop_store(manifest, tmp_path / "same", 48)).read(
        manifest.images[1])
    np.testing.assert_allclose(landmarks, original * 2, rtol=1e-6)


def test_datamodule_reads_through_the_store(tmp_path, capsys):
    path = write_manifest(tmp_path)
    main(["--manifest", str(path), "--out", str(tmp_path / "store"), "--size", "48"])
    assert "--data.crop_store" in capsys.readouterr().out
    data = ManifestDataModule(manifest=str(path), aus="AU1,AU12", image_size=32, batch_size=2,
                              val_subjects=0, crop_store=str(tmp_path / "store"))
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert batch["image"].shape == (2, 3, 32, 32)


def test_bad_stores_say_how_to_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m aukit.data.crop_store"):
        CropStore(tmp_path)
    manifest = read_manifest(write_manifest(tmp_path))
    store = CropStore(write_crop_store(manifest.subset(["S0"]), tmp_path / "part", size=48))
    with pytest.raises(ValueError, match="lacks 2 of the 4 images"):
        ManifestDataset(manifest, eval_transform(32), store=store)
