"""The 3-fold protocol: folds named by the part they test on, subject-exclusive splits,
validation carved from the training parts, class weights from the training fold only."""

import numpy as np
import pytest
import torch
from test_readers import BP4D_SUBJECTS, make_bp4d

from aukit.data.datamodules import (
    BP4DDataModule,
    ManifestDataModule,
    SynthAUDataModule,
    label_statistics,
)
from aukit.data.protocol import dataset_parts, fold_split, load_parts


def test_fold_lists_match_the_published_parts():
    parts = load_parts()
    assert [len(p) for p in parts["bp4d"]] == [14, 14, 13]
    assert [len(p) for p in parts["disfa"]] == [9, 9, 9]
    assert parts["bp4d"][0][0] == "F001" and parts["disfa"][2][-1] == "SN004"


@pytest.mark.parametrize("dataset", ["bp4d", "disfa", "synthau"])
@pytest.mark.parametrize("fold", [1, 2, 3])
def test_fold_k_tests_on_part_k_and_is_subject_exclusive(dataset, fold):
    parts = dataset_parts(dataset)
    split = fold_split(dataset, fold, val_subjects=0.2, seed=3)
    assert split.test == list(parts[fold - 1])  # not the older "fold1 = part3" naming
    train_parts = {s for k, p in enumerate(parts) if k != fold - 1 for s in p}
    assert set(split.train) | set(split.val) == train_parts
    assert not set(split.train) & set(split.val) and split.val
    assert fold_split(dataset, fold, val_subjects=0.2, seed=3) == split  # seeded


def test_missing_subjects_are_reported_and_bad_folds_rejected(caplog):
    split = fold_split("disfa", 1, ["SN002", "SN013", "SN003", "SN999"], val_subjects=0.0)
    assert split.test == ["SN002"] and split.train == ["SN013", "SN003"]
    assert "SN010" in split.missing and split.unlisted == ["SN999"]
    assert "not comparable" in caplog.text
    with pytest.raises(ValueError, match="tests on part"):
        fold_split("disfa", 0)
    with pytest.raises(ValueError, match="test part"):
        fold_split("disfa", 1, ["SN013", "SN003"])
    with pytest.raises(ValueError, match="training parts"):
        fold_split("disfa", 1, ["SN002", "SN013", "SN003"], val_subjects=["SN002"])


def test_datamodule_fold_from_raw_root_weights_from_train_only(tmp_path):
    root = make_bp4d(tmp_path)
    dm = BP4DDataModule(data_root=str(root), fold=1, val_subjects=["M011"], image_size=32,
                        batch_size=4)
    splits = dm.splits()
    assert set(splits["test"].subjects) == {"F001", "F018"}  # part1
    assert set(splits["val"].subjects) == {"M011"}
    assert set(splits["train"].subjects) == {"F003", "F007", "F015"}
    assert len(dm.manifest_hash) == 64
    train = splits["train"]
    expected = label_statistics(torch.from_numpy(train.labels), torch.from_numpy(train.mask))[0]
    torch.testing.assert_close(dm.train_label_statistics().class_weights, expected)
    everything = BP4DDataModule(data_root=str(root), image_size=32)
    full = everything.splits()["train"]  # no fold: carve only, weights differ
    assert set(full.subjects) < set(BP4D_SUBJECTS)
    assert not np.allclose(dm.train_label_statistics().class_weights.numpy(),
                           everything.train_label_statistics().class_weights.numpy())
    batch = next(iter(dm.test_dataloader()))
    assert batch["label_mask"].shape == (4, 12) and not batch["label_mask"].all()  # 9 masked


def test_datamodule_rejects_fold_with_own_test_split(tmp_path):
    with pytest.raises(ValueError, match="3-fold protocol.*drop --data.val_manifest"):
        BP4DDataModule(fold=1, manifest=str(tmp_path / "x.csv"),
                       test_manifest=str(tmp_path / "t.csv"))
    with pytest.raises(ValueError, match="--data.data_root and --data.manifest: give one"):
        BP4DDataModule(data_root=str(tmp_path), manifest=str(tmp_path / "x.csv"))
    (tmp_path / "x.csv").write_text("image,subject,AU1\n")
    with pytest.raises(TypeError, match="fold"):  # a CSV manifest has no fold lists
        ManifestDataModule(fold=1, manifest=str(tmp_path / "x.csv"))


def test_synthau_folds_cover_the_labelled_subjects():
    dm = SynthAUDataModule(fold=2, image_size=32)
    splits = dm.splits()
    assert [str(s) for s in splits["test"]] == list(dataset_parts("synthau")[1])
    assert dm.manifest_hash is None and len(splits["val"]) >= 1
