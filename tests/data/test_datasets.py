"""Datasets: a manifest's rows, a folder's images, landmarks and persons, clip views, and
clear errors for unreadable images."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from test_datamodules import S, write_image, write_manifest

from aukit.data.datamodules import UnlabeledFaceDataModule
from aukit.data.datasets import ImageFolderDataset, ManifestDataset
from aukit.data.manifest import read_manifest
from aukit.data.synthau import SynthAU
from aukit.data.transforms import eval_transform


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    return write_manifest(tmp_path)


def landmarks_of(folder: Path, name: str, views: int = 1) -> torch.Tensor:
    dataset = ImageFolderDataset(folder, eval_transform(S), views=views)
    return dataset[[p.name for p in dataset.images].index(name)]["landmarks"]


def test_manifest_dataset_unreadable_image_names_file_and_row(toy):
    manifest = read_manifest(toy)
    manifest.images[3].write_bytes(b"corrupt")
    dataset = ManifestDataset(manifest, eval_transform(S))
    with pytest.raises(OSError, match=r"S3.png .*train.csv, row 4"):
        dataset[3]


def test_manifest_dataset_views(toy):
    item = ManifestDataset(read_manifest(toy), eval_transform(S), views=3)[0]
    assert item["image"].shape == (3, 3, S, S) and item["landmarks"].shape == (3, 68, 2)
    assert item["labels"].shape == (3,)


def test_image_folder_landmarks(tmp_path):
    for name in ("a.png", "b.jpg", "nested/c.bmp", "d.jpeg"):
        write_image(tmp_path / name, size=40)
    (tmp_path / "notes.txt").write_text("ignored")
    points = np.random.default_rng(0).uniform(0, 40, (68, 2)).astype(np.float32)
    (tmp_path / "landmarks.json").write_text(json.dumps({"nested/c.bmp": points.tolist()}))
    np.save(tmp_path / "d.npy", points[::-1].copy())
    dataset = ImageFolderDataset(tmp_path, eval_transform(S))
    assert [p.name for p in dataset.images] == ["a.png", "b.jpg", "d.jpeg", "c.bmp"]
    scale = S / 40  # eval resizes 40 -> S
    torch.testing.assert_close(landmarks_of(tmp_path, "c.bmp"), torch.from_numpy(points * scale))
    torch.testing.assert_close(landmarks_of(tmp_path, "d.jpeg"),
                               torch.from_numpy(points[::-1] * scale))
    a = landmarks_of(tmp_path, "a.png")
    assert a.shape == (68, 2) and (a > 0).all() and (a < S).all()  # canonical template
    assert landmarks_of(tmp_path, "a.png", views=2).shape == (2, 68, 2)


def test_image_folder_groups(tmp_path):
    for name in ("v1/a.png", "v1/deep/b.png", "v2/c.png"):
        write_image(tmp_path / "videos" / name)
    assert ImageFolderDataset(tmp_path / "videos", eval_transform(S)).groups() == \
        ["v1", "v1", "v2"]  # images sorted: v1/a, v1/deep/b, v2/c
    flat = tmp_path / "flat"
    for name in ("a.png", "b.png", "sub/c.png"):
        write_image(flat / name)
    dataset = ImageFolderDataset(flat, eval_transform(S))
    with pytest.raises(ValueError, match=r"2 images lie directly in .*flat .*'a.png'.*subjects.csv"
                                         r".*sub-folder of their own"):
        dataset.groups()
    (flat / "subjects.csv").write_text("image,subject\na.png,S1\nsub/c.png,S2\n")
    with pytest.raises(ValueError, match=r"lists no subject for 1 of 3 images, e.g. \['b.png'\]"):
        dataset.groups()
    (flat / "subjects.csv").write_text("image,subject\na.png,S1\n./b.png,S1\nsub/c.png,S2\n")
    assert dataset.groups() == ["S1", "S1", "S2"]
    (flat / "subjects.csv").write_text("path,person\na.png,S1\n")
    with pytest.raises(ValueError, match="needs the columns image,subject"):
        dataset.groups()


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageFolderDataset(tmp_path / "missing", eval_transform(S))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no images found .*\.jpg, \.jpeg, \.png, \.bmp"):
        ImageFolderDataset(tmp_path / "empty", eval_transform(S))
    write_image(tmp_path / "faces" / "tiny.png", size=20)
    (tmp_path / "faces" / "zz_corrupt.jpg").write_bytes(b"\xff\xd8 nope")
    write_image(tmp_path / "faces" / "ok.png", size=40)
    # found when the dataset is built, not when training draws the image
    with pytest.raises(ValueError, match=r"(?s)2 of the 3 images under .*faces cannot be used:"
                                         r".*tiny.png is 20x20 px, smaller than 32 px.*remove it"
                                         r".*zz_corrupt.jpg cannot be decoded"):
        ImageFolderDataset(tmp_path / "faces", eval_transform(S))


def test_synthau_clip_frames_keep_the_expression_and_change_the_view(tmp_path):
    synth = SynthAU(image_size=S, cache_dir=tmp_path)
    first, second = synth.sample(120, 3), synth.sample(120, 3, frame=1)
    np.testing.assert_array_equal(first["labels"], second["labels"])
    np.testing.assert_array_equal(first["intensity"], second["intensity"])
    assert np.abs(first["image"].astype(float) - second["image"]).mean() > 5  # new pose / light
    again = SynthAU(image_size=S, cache_dir=tmp_path).sample(120, 3, frame=1)  # from the cache
    np.testing.assert_array_equal(again["image"], second["image"])
    np.testing.assert_array_equal(SynthAU(image_size=S).sample(120, 3, frame=1)["image"],
                                  second["image"])  # cached == rendered


def test_image_folder_clip_views_come_from_neighbouring_frames(tmp_path):
    def write_flat(path: Path, value: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), np.full((40, 40, 3), value, np.uint8))

    for i in range(5):
        write_flat(tmp_path / "v1" / f"{i:02d}.png", 10 * (i + 1))
    write_flat(tmp_path / "v2" / "a.png", 200)

    def first_pixel(image, landmarks):  # a transform stub: which frame did a view come from?
        return {"image": torch.tensor(float(image[0, 0, 0])), "landmarks": torch.tensor(0.0)}

    dataset = ImageFolderDataset(tmp_path, first_pixel, views=3, clip_window=1)
    seen = set()
    for key in (2, 2 + 6, 2 + 12, 2 + 18):  # image v1/02 in several epochs
        views = dataset[key]["image"].tolist()
        assert views[0] == 30 and set(views[1:]) <= {20, 40}
        seen |= set(views[1:])
    assert seen == {20, 40}
    assert dataset[2]["image"].tolist() == dataset[2]["image"].tolist()  # keyed: reproducible
    assert set(dataset[0]["image"].tolist()) == {10, 20}
    assert dataset[5]["image"].tolist() == [200, 200, 200]  # alone in its video: itself


def test_image_folder_clip_views_without_videos_pair_each_image_with_itself(tmp_path):
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((40, 40, 3), 10 * (i + 1), np.uint8))

    def first_pixel(image, landmarks):
        return {"image": torch.tensor(float(image[0, 0, 0])), "landmarks": torch.tensor(0.0)}

    dataset = ImageFolderDataset(tmp_path, first_pixel, views=2, clip_window=1)
    assert [dataset[i]["image"].tolist() for i in range(3)] == [[10, 10], [20, 20], [30, 30]]
    assert "subjects.csv" in dataset.person_ids_problem and "subject" not in dataset[0]
    pool = UnlabeledFaceDataModule(str(tmp_path), image_size=32, batch_size=2,
                                   faces_per_subject=0, positives="clip", landmarks="template")
    with pytest.warns(UserWarning, match="clip positives need videos or subjects"):
        pool.train_dataloader()


def test_image_folder_items_carry_their_person_from_sub_folders_or_subjects_csv(tmp_path):
    def nothing(image, landmarks):
        return {"image": torch.tensor(0.0), "landmarks": torch.tensor(0.0)}

    for person in ("ann", "bob"):
        (tmp_path / "sub" / person).mkdir(parents=True)
        (tmp_path / "csv").mkdir(exist_ok=True)
        for i in range(2):
            image = np.full((40, 40, 3), 50, np.uint8)
            cv2.imwrite(str(tmp_path / "sub" / person / f"{i}.png"), image)
            cv2.imwrite(str(tmp_path / "csv" / f"{person}{i}.png"), image)
    (tmp_path / "csv" / "subjects.csv").write_text(
        "image,subject\n" + "".join(f"{p}{i}.png,{p}\n" for p in ("ann", "bob") for i in (0, 1)))
    for folder in ("sub", "csv"):
        dataset = ImageFolderDataset(tmp_path / folder, nothing, views=1)
        assert [dataset[i]["subject"] for i in range(4)] == ["ann", "ann", "bob", "bob"]
        assert dataset.person_ids_problem is None
