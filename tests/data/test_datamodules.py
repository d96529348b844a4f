"""Datasets and DataModules: batch keys / shapes / dtypes, subject-exclusive splits, label
statistics, and clear errors for bad folders and images."""

import csv
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from aukit.au import DATASET_AUS
from aukit.data.datamodules import (
    AUDataModule,
    BP4DDataModule,
    ManifestDataModule,
    SynthAUDataModule,
    UnlabeledFaceDataModule,
    label_statistics,
)
from aukit.data.datasets import ManifestDataset
from aukit.data.manifest import read_manifest
from aukit.data.synthau import split_subjects
from aukit.data.transforms import eval_transform

S = 64  # image_size everywhere: tiny keeps the tests fast


def write_image(path: Path, size: int = 40, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    cv2.imwrite(str(path), image)
    return path


# toy labels, 8 subjects x 2 frames, columns AU1 AU2 AU12 (9 = unknown)


TOY = [
    (1, 1, 0), (1, 0, 9),
    (0, 0, 1), (1, 1, 1),
    (0, 9, 0), (0, 0, 1),
    (1, 1, 0), (0, 0, 0),
    (9, 0, 1), (1, 1, 1),
    (0, 0, 0), (0, 1, 0),
    (1, 0, 1), (0, 0, 0),
    (0, 0, 1), (1, 1, 9),
]


def write_manifest(folder: Path, name: str = "train.csv", subjects: str = "S",
                   labels: list = TOY) -> Path:
    path = folder / name
    folder.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "subject", "frame", "AU1", "AU2", "AU12"])
        for i, row in enumerate(labels):
            image = write_image(folder / "img" / f"{subjects}{i}.png", seed=i)
            writer.writerow([image.relative_to(folder), f"{subjects}{i // 2}", i, *row])
    return path


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    return write_manifest(tmp_path)


def csv_module(manifest: Path, **kwargs) -> ManifestDataModule:
    return ManifestDataModule(manifest=str(manifest), image_size=S, batch_size=4, **kwargs)


def check_labelled_batch(batch: dict, batch_size: int, num_aus: int) -> None:
    assert batch["image"].shape == (batch_size, 3, S, S)
    assert batch["image"].dtype == torch.uint8  # normalised later, on the device
    assert batch["landmarks"].shape == (batch_size, 68, 2)
    assert batch["landmarks"].dtype == torch.float32
    assert batch["labels"].shape == (batch_size, num_aus)
    assert batch["labels"].dtype == torch.float32
    assert batch["label_mask"].shape == (batch_size, num_aus)
    assert batch["label_mask"].dtype == torch.bool
    assert len(batch["subject"]) == batch_size and isinstance(batch["subject"][0], str)


def test_csv_batches_and_masked_unknowns(toy):
    dm = csv_module(toy, val_subjects=0.25)
    assert dm.au_names == ["AU1", "AU2", "AU12"]
    dm.setup("fit")
    check_labelled_batch(next(iter(dm.train_dataloader())), 4, 3)
    check_labelled_batch(next(iter(dm.val_dataloader())), 4, 3)
    train = dm.dataset_for("train")
    items = [train[i] for i in range(len(train))]
    mask = torch.stack([item["label_mask"] for item in items])
    labels = torch.stack([item["labels"] for item in items])
    assert not mask.all() and not labels[~mask].any()  # unknowns present, masked, set to 0


def test_val_split_is_subject_disjoint_and_seeded(toy):
    dm = csv_module(toy, val_subjects=0.25, seed=3)
    splits = dm.splits()
    train, val = set(splits["train"].subjects), set(splits["val"].subjects)
    assert len(val) == 2 and len(train) == 6 and not train & val
    assert val == set(csv_module(toy, val_subjects=0.25, seed=3).splits()["val"].subjects)
    named = csv_module(toy, val_subjects=["S1", "S5"]).splits()
    assert set(named["val"].subjects) == {"S1", "S5"}
    assert not {"S1", "S5"} & set(named["train"].subjects)
    with pytest.raises(ValueError, match="S42"):
        csv_module(toy, val_subjects=["S42"]).splits()


def test_label_fraction_keeps_training_subjects(toy):
    full = csv_module(toy, val_subjects=0.25).splits()
    kept = {}
    for fraction in (0.34, 0.5, 1.0):
        splits = csv_module(toy, val_subjects=0.25, label_fraction=fraction).splits()
        kept[fraction] = set(splits["train"].subjects)
        assert splits["val"].subjects == full["val"].subjects  # validation does not move
        assert len(kept[fraction]) == round(fraction * 6)
        # whole subjects: every frame of a kept subject stays
        assert len(splits["train"]) == 2 * len(kept[fraction])
    assert kept[0.34] < kept[0.5] < kept[1.0] == set(full["train"].subjects)


def test_class_weights_and_cooccurrence_by_hand(toy):
    dm = csv_module(toy, val_manifest=str(write_manifest(toy.parent, "val.csv", "V")))
    labels = np.array(TOY, dtype=float)
    known = labels != 9
    present = (labels == 1) & known
    rate = present.sum(0) / known.sum(0)
    expected = (1 / rate) / (1 / rate).mean()
    stats = dm.train_label_statistics()
    torch.testing.assert_close(stats.class_weights, torch.tensor(expected, dtype=torch.float32))
    cooc = np.zeros((3, 3))
    for i in range(3):
        for j in range(3):
            both = present[:, i] & known[:, j]
            cooc[i, j] = (present[:, i] & present[:, j]).sum() / both.sum()
    torch.testing.assert_close(stats.cooccurrence, torch.tensor(cooc, dtype=torch.float32))
    assert "train: 8 subjects, 16 frames" in dm.summary()


def test_class_weights_stay_finite_for_an_absent_au():
    labels = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    weights, pos_weight, cooc = label_statistics(labels, torch.ones_like(labels, dtype=torch.bool))
    assert torch.isfinite(weights).all() and weights[1] > weights[0]
    assert pos_weight.tolist() == [1.0, 3.0]  # an absent AU counts as half a positive
    assert weights.mean().item() == pytest.approx(1.0)
    assert cooc.tolist() == [[1.0, 0.0], [0.0, 0.0]]


def test_csv_errors(toy, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        csv_module(tmp_path / "missing.csv")
    with pytest.raises(FileNotFoundError, match="test_manifest .*nope.csv"):
        csv_module(toy, test_manifest=str(tmp_path / "nope.csv"))
    with pytest.raises(ValueError, match="ManifestDataModule needs --data.manifest <path"):
        ManifestDataModule()
    with pytest.raises(ValueError, match="BP4DDataModule needs --data.data_root .* or "
                                         "--data.manifest"):
        BP4DDataModule()
    with pytest.raises(ValueError, match="names no source: use SynthAUDataModule"):
        AUDataModule()
    with pytest.raises(ValueError, match="no test split for ManifestDataModule: give "
                                         "--data.test_manifest <path>"):
        csv_module(toy).setup("test")
    overlapping = write_manifest(tmp_path / "other", "test.csv", "S")
    with pytest.raises(ValueError, match="subject-exclusive"):
        csv_module(toy, test_manifest=str(overlapping)).setup("test")


def test_csv_au_selection(toy, tmp_path):
    assert csv_module(toy, aus="AU12,AU1").au_names == ["AU12", "AU1"]
    dm = csv_module(toy, aus=["AU2"])
    assert dm.splits()["train"].labels.shape[1] == 1
    assert BP4DDataModule(manifest=str(toy)).aus == DATASET_AUS["bp4d"]
    with pytest.raises(ValueError, match="no column for AU4"):
        BP4DDataModule(manifest=str(toy)).splits()


def test_test_manifest_and_no_validation(toy, tmp_path):
    test = write_manifest(tmp_path / "t", "test.csv", "T")
    dm = csv_module(toy, val_subjects=0.0, test_manifest=str(test))
    dm.setup("fit")
    assert dm.val_dataloader() == []
    dm.setup("test")
    check_labelled_batch(next(iter(dm.test_dataloader())), 4, 3)


def test_synthau_datamodule_batches():
    dm = SynthAUDataModule(image_size=S, batch_size=2, synthau_samples_per_subject=1,
                           synthau_eval_samples_per_subject=1)
    assert dm.au_names == [f"AU{n}" for n in DATASET_AUS["synthau"]]
    splits = dm.splits()
    assert all(splits[s] for s in ("train", "val", "test"))
    assert not set(splits["train"]) & set(splits["val"]) and not set(splits["val"]) & set(
        splits["test"])
    dm.setup("fit")
    check_labelled_batch(next(iter(dm.train_dataloader())), 2, 12)
    check_labelled_batch(next(iter(dm.split_dataloader("test"))), 2, 12)
    fewer = SynthAUDataModule(image_size=S, label_fraction=0.5, synthau_samples_per_subject=1)
    assert len(fewer.splits()["train"]) == round(0.5 * len(splits["train"]))


def test_synthau_class_weights():
    dm = SynthAUDataModule(image_size=S, synthau_samples_per_subject=1)
    weights = dm.train_label_statistics().class_weights
    assert weights.shape == (12,) and torch.isfinite(weights).all()
    assert weights.mean().item() == pytest.approx(1.0, abs=1e-5)


def check_views_batch(batch: dict, batch_size: int, views: int) -> None:
    assert batch["image"].shape == (batch_size, views, 3, S, S)
    assert batch["landmarks"].shape == (batch_size, views, 68, 2)
    assert not torch.equal(batch["image"][:, 0], batch["image"][:, 1])  # independent draws


def test_unlabeled_synthau_views():
    dm = UnlabeledFaceDataModule(image_size=S, batch_size=3, faces_per_subject=0,
                                 synthau_subjects=3, synthau_samples_per_subject=1)
    batch = next(iter(dm.train_dataloader()))
    check_views_batch(batch, 3, 2)
    assert "labels" not in batch
    assert isinstance(dm.probe_datamodule(), SynthAUDataModule)


def test_unlabeled_synthau_batches_group_subjects_from_an_unlabelled_pool():
    dm = UnlabeledFaceDataModule(image_size=S, batch_size=4, faces_per_subject=2,
                                 synthau_subjects=70, synthau_samples_per_subject=2)
    assert dm.subjects_per_batch == 2
    # the default cache: under AUKIT_CACHE, a temp dir in tests (conftest)
    assert dm.synthau_cache == str(Path(os.environ["AUKIT_CACHE"]) / "synthau")
    loader = dm.train_dataloader()
    assert len(loader) == 70 * 2 // 4
    batch = next(iter(loader))
    check_views_batch(batch, 4, 2)
    subjects = batch["subject"]
    assert subjects[0] == subjects[1] != subjects[2] == subjects[3]
    pool = {f"S{s:03d}" for s in dm._train.subjects}
    assert len(pool) == 70 and set(subjects) <= pool
    labelled = dm.probe_datamodule().splits()
    assert all(not pool & {f"S{s:03d}" for s in labelled[k]} for k in ("train", "val", "test"))
    assert not pool & {f"S{s:03d}" for k in ("train", "val", "test") for s in split_subjects(k)}


@pytest.mark.parametrize("kwargs,message", [
    ({"batch_size": 30, "faces_per_subject": 4}, r"--data.batch_size 30 is not a multiple of "
                                                 r"--data.faces_per_subject 4"),
    ({"faces_per_subject": 4, "synthau_samples_per_subject": 2},
     r"--data.faces_per_subject 4 is more than the 2 faces per subject"),
    ({"batch_size": 32, "faces_per_subject": 2, "synthau_subjects": 10},
     r"needs 16 distinct subjects; --data.synthau_subjects is 10"),
    ({"faces_per_subject": -1}, "need --data.faces_per_subject >= 0"),
])
def test_unlabeled_grouping_settings_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        UnlabeledFaceDataModule(image_size=S, **kwargs)


def test_unlabeled_folder_groups_by_subfolder(tmp_path):
    for subject in ("alice", "bob", "carol"):
        for k in range(3):
            write_image(tmp_path / subject / f"{k}.png", seed=k)
    dm = UnlabeledFaceDataModule(source=str(tmp_path), image_size=S, batch_size=4,
                                 faces_per_subject=2)
    batches = list(dm.train_dataloader())
    assert len(batches) == 3  # 2 chunks of 2 per subject; 6 chunks -> 3 batches of 2 subjects
    for batch in batches:
        assert batch["image"].shape == (4, 2, 3, S, S)


def test_unlabeled_folder_and_probe_manifest(toy):
    source = str(toy.parent / "img")  # flat: random batches only
    with pytest.raises(ValueError, match="subjects.csv .*--data.faces_per_subject 0"):
        UnlabeledFaceDataModule(source=source, image_size=S, batch_size=4).train_dataloader()
    dm = UnlabeledFaceDataModule(source=source, image_size=S, batch_size=4, faces_per_subject=0,
                                 views=2, probe=dict(dataset="csv", manifest=str(toy)))
    check_views_batch(next(iter(dm.train_dataloader())), 4, 2)
    assert isinstance(dm.probe_datamodule(), ManifestDataModule)
    assert dm.probe_datamodule().au_names == ["AU1", "AU2", "AU12"]
    with pytest.raises(FileNotFoundError, match="neither 'synthau' nor an existing folder"):
        UnlabeledFaceDataModule(source=str(toy.parent / "nowhere"))
    with pytest.raises(FileNotFoundError, match="probe.csv"):
        UnlabeledFaceDataModule(probe=dict(dataset="csv", manifest=str(toy.parent / "probe.csv")))
    with pytest.raises(ValueError, match="--data.probe.dataset csv needs --data.probe.manifest"):
        UnlabeledFaceDataModule(probe=dict(dataset="csv"))
    with pytest.raises(ValueError, match="--data.probe.dataset synthau renders its own"):
        UnlabeledFaceDataModule(probe=dict(manifest=str(toy)))
    with pytest.raises(ValueError, match="--data.probe.dataset must be one of synthau, csv"):
        UnlabeledFaceDataModule(probe=dict(dataset="nope"))


def test_manifest_groups_are_its_subjects(toy):
    dataset = ManifestDataset(read_manifest(str(toy), (1, 2, 12)), eval_transform(S))
    assert dataset.groups() == [f"S{i // 2}" for i in range(len(TOY))]


def test_unlabeled_synthau_clip_positives_are_two_frames():
    dm = UnlabeledFaceDataModule(image_size=S, batch_size=2, faces_per_subject=0,
                                 synthau_subjects=2, synthau_samples_per_subject=1,
                                 positives="clip", synthau_cache=None)
    dm.setup()
    dataset = dm._train
    dataset.transform = eval_transform(S)  # deterministic: each view is its frame, resized
    item = dataset[1]
    frames = [dataset.synth.sample(*dataset.locate(1), frame=v)["image"] for v in range(2)]
    for view, frame in zip(item["image"], frames, strict=True):
        expected = eval_transform(S)(frame, np.zeros((68, 2), np.float32))["image"]
        torch.testing.assert_close(view, expected)


@pytest.mark.parametrize("kwargs,message", [
    ({"positives": "video"}, r"--data.positives must be one of \('augment', 'clip'\)"),
    ({"positives": "clip", "views": 1}, r"--data.positives clip needs --data.views >= 2"),
])
def test_unlabeled_positives_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        UnlabeledFaceDataModule(image_size=S, **kwargs)
