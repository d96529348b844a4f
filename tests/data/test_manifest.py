"""The labelled manifest: reading, validation errors with file and row, skipping, round trip."""

import csv
import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from aukit.data import manifest as manifest_module
from aukit.data.manifest import (
    Manifest,
    ManifestError,
    load_landmarks,
    manifest_aus,
    read_manifest,
    unreadable_images,
)


def write_image(path: Path, size: int = 40) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((size, size, 3), 128, np.uint8))
    return path


def write_csv(path: Path, rows: list[dict]) -> Path:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    for name in ("a.png", "b.png", "sub/c.png"):
        write_image(tmp_path / name)
    np.save(tmp_path / "a_lm.npy", np.random.default_rng(0).uniform(0, 40, (68, 2)))
    return tmp_path


def rows() -> list[dict]:
    return [
        {"image": "a.png", "subject": "S1", "landmarks": "a_lm.npy", "frame": 7, "AU1": 1,
         "AU12": 0},
        {"image": "b.png", "subject": "S1", "landmarks": "", "frame": 8, "AU1": 9, "AU12": 1},
        {"image": "sub/c.png", "subject": "S2", "landmarks": "", "frame": 9, "AU1": -1,
         "AU12": 0},
    ]


def test_reads_labels_mask_paths_and_ignores_extra_columns(folder):
    m = read_manifest(write_csv(folder / "m.csv", rows()))
    assert m.aus == (1, 12) and m.au_names == ["AU1", "AU12"]
    assert m.images == [folder / "a.png", folder / "b.png", folder / "sub" / "c.png"]
    assert m.subjects == ["S1", "S1", "S2"]
    assert m.landmarks == [folder / "a_lm.npy", None, None]
    np.testing.assert_array_equal(m.labels, [[1, 0], [0, 1], [0, 0]])
    np.testing.assert_array_equal(m.mask, [[True, True], [False, True], [False, True]])
    assert m.labels.dtype == np.float32 and m.mask.dtype == bool
    assert manifest_aus(folder / "m.csv") == (1, 12)


def test_json_manifest_and_au_selection(folder):
    path = folder / "m.json"
    path.write_text(json.dumps(rows()))
    m = read_manifest(path, aus=["AU12"])
    assert m.aus == (12,)
    np.testing.assert_array_equal(m.labels[:, 0], [0, 1, 0])


def test_round_trip(folder, tmp_path):
    m = read_manifest(write_csv(folder / "m.csv", rows()))
    out = tmp_path / "out" / "copy.csv"
    m.write_csv(out)
    back = read_manifest(out)
    assert back.images == m.images and back.subjects == m.subjects
    assert back.landmarks == m.landmarks and back.aus == m.aus
    np.testing.assert_array_equal(back.labels, m.labels)
    np.testing.assert_array_equal(back.mask, m.mask)


def test_subset(folder):
    m = read_manifest(write_csv(folder / "m.csv", rows()))
    s2 = m.subset(["S2"])
    assert s2.subjects == ["S2"] and s2.rows == [3] and s2.labels.shape == (1, 2)
    with pytest.raises(ManifestError, match="S9"):
        m.subset(["S9"])


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        read_manifest(tmp_path / "nope.csv")


@pytest.mark.parametrize("drop", ["image", "subject"])
def test_missing_required_column(folder, drop):
    bad = [{k: v for k, v in r.items() if k != drop} for r in rows()]
    with pytest.raises(ManifestError, match=f"m.csv has no '{drop}' column"):
        read_manifest(write_csv(folder / "m.csv", bad))


@pytest.mark.parametrize("column", ["AU99", "AU12_intensity"])
def test_unknown_au_column(folder, column):
    bad = [{**r, column: 1} for r in rows()]
    with pytest.raises(ManifestError, match=rf"m.csv, header: column '{column}'.*rename"):
        read_manifest(write_csv(folder / "m.csv", bad))


def test_requested_au_absent(folder):
    with pytest.raises(ManifestError, match=r"m.csv has no column for AU25.*labels AU1, AU12"):
        read_manifest(write_csv(folder / "m.csv", rows()), aus=["AU1", "AU25"])


@pytest.mark.parametrize("value", ["2", "", "yes", "0.5"])
def test_bad_label_names_file_and_row(folder, value):
    bad = rows()
    bad[1]["AU12"] = value
    with pytest.raises(ManifestError, match=r"m.csv, row 2 \(line 3\): AU12 = .* not a label"):
        read_manifest(write_csv(folder / "m.csv", bad))


def test_missing_image_names_file_and_row(folder):
    bad = rows()
    bad[2]["image"] = "gone.png"
    with pytest.raises(ManifestError, match=r"m.csv, row 3 \(line 4\): image .*gone.png does not"):
        read_manifest(write_csv(folder / "m.csv", bad))


def test_undecodable_image_only_with_verify(folder):
    (folder / "b.png").write_bytes(b"not a png")
    path = write_csv(folder / "m.csv", rows())
    assert len(read_manifest(path)) == 3
    with pytest.raises(ManifestError, match=r"m.csv, row 2 \(line 3\): image .*b.png cannot be"):
        read_manifest(path, verify_images=True)


@pytest.mark.parametrize("suffix", [".npy", ".txt", ".json"])
def test_landmarks_wrong_shape(folder, suffix):
    points = np.zeros((5, 2))
    target = folder / f"bad{suffix}"
    if suffix == ".npy":
        np.save(target, points)
    elif suffix == ".txt":
        np.savetxt(target, points)
    else:
        target.write_text(json.dumps(points.tolist()))
    bad = rows()
    bad[1]["landmarks"] = target.name
    with pytest.raises(ManifestError, match=rf"m.csv, row 2 \(line 3\): landmarks file "
                                            rf".*bad\{suffix}.*shape \(5, 2\)"):
        read_manifest(write_csv(folder / "m.csv", bad))


@pytest.mark.parametrize("suffix", [".npy", ".txt", ".json"])
def test_landmark_formats(tmp_path, suffix):
    points = np.random.default_rng(1).uniform(0, 100, (68, 2)).astype(np.float32)
    target = tmp_path / f"lm{suffix}"
    if suffix == ".npy":
        np.save(target, points)
    elif suffix == ".txt":
        np.savetxt(target, points, delimiter=",")
    else:
        target.write_text(json.dumps(points.tolist()))
    np.testing.assert_allclose(load_landmarks(target), points, rtol=1e-6)


def test_skip_bad_rows_reports_counts_and_kinds(folder, caplog):
    bad = rows() + [{"image": "gone.png", "subject": "S3", "AU1": 1, "AU12": 1},
                    {"image": "a.png", "subject": "S3", "AU1": "x", "AU12": 1}]
    path = write_csv(folder / "m.csv", bad)
    with caplog.at_level(logging.WARNING):
        m = read_manifest(path, skip_bad_rows=True)
    assert len(m) == 3 and m.rows == [1, 2, 3]
    assert len(m.skipped) == 2
    assert "row 4" in m.skipped[0] and "gone.png" in m.skipped[0]
    assert "row 5" in m.skipped[1] and "AU1 = 'x'" in m.skipped[1]
    assert "skipped 2 of 5 rows" in caplog.text
    assert "1 missing image" in caplog.text and "1 bad label" in caplog.text


def test_all_rows_bad_is_an_error(folder):
    bad = [{"image": "gone.png", "subject": "S1", "AU1": 1}]
    with pytest.raises(ManifestError, match="every row was bad"):
        read_manifest(write_csv(folder / "m.csv", bad), skip_bad_rows=True)


def test_manifest_constructor_checks_lengths(tmp_path):
    with pytest.raises(ManifestError, match="disagree in length"):
        Manifest(tmp_path, [tmp_path / "a.png"], ["S1", "S2"], np.zeros((1, 1)),
                 np.ones((1, 1), bool), [None], (1,), tmp_path / "m.csv")


# ----------------------------------------------------------------- the image check (issue 12)
def write_face(path: Path, size: int = 64) -> Path:
    """A noisy image, so JPEG / PNG files are large enough to cut in half meaningfully."""
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.random.default_rng(0).integers(0, 255, (size, size, 3), np.uint8))
    return path


def cut(path: Path, fraction: float) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * fraction)])
    return path


def write_bytes(path: Path, data: bytes) -> None:
    path.write_bytes(data)


BROKEN = {
    "half.jpg": lambda p: cut(write_face(p), 0.5),
    "ninety.jpg": lambda p: cut(write_face(p), 0.9),
    "half.png": lambda p: cut(write_face(p), 0.5),
    "ninety.png": lambda p: cut(write_face(p), 0.9),
    "garbage.jpg": lambda p: write_bytes(p, np.random.default_rng(1).bytes(3000)),
    "empty.png": lambda p: write_bytes(p, b""),
}
FINE = {
    "face.jpg": write_face,
    "face.png": write_face,
    "face.bmp": write_face,
    # bytes after the end-of-image marker (camera trailers) are not truncation
    "trailer.jpg": lambda p: write_bytes(p, write_face(p).read_bytes() + b"trailer"),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_image_check_catches_truncated_and_undecodable_files(tmp_path, name):
    path = tmp_path / name
    BROKEN[name](path)
    assert list(unreadable_images([path])) == [path]


@pytest.mark.parametrize("name", sorted(FINE))
def test_image_check_accepts_whole_files(tmp_path, name):
    path = tmp_path / name
    FINE[name](path)
    assert cv2.imread(str(path)) is not None
    assert unreadable_images([path]) == {}


@pytest.fixture
def faces(tmp_path: Path) -> Path:
    """A manifest of 6 JPEG faces of 3 subjects: row 2 truncated, row 5 a truncated PNG, row 6 a
    bad label."""
    records = []
    for i in range(6):
        suffix = ".png" if i == 4 else ".jpg"
        write_face(tmp_path / f"f{i}{suffix}")
        records.append({"image": f"f{i}{suffix}", "subject": f"S{i // 2}",
                        "AU1": "x" if i == 5 else i % 2, "AU12": 1})
    cut(tmp_path / "f1.jpg", 0.5)
    cut(tmp_path / "f4.png", 0.6)
    return write_csv(tmp_path / "m.csv", records)


def test_the_datamodule_refuses_a_corrupt_image_before_training(faces):
    from aukit.data.datamodules import ManifestDataModule

    data = ManifestDataModule(manifest=str(faces), val_subjects=0, image_size=32)
    with pytest.raises(ValueError, match=r"(?s)3 bad row\(s\) of 6 \(2 unreadable images, 1 bad "
                                         r"label\).*row 2 \(line 3\): image .*f1.jpg cannot be "
                                         r"decoded.*row 5 \(line 6\): image .*f4.png cannot be "
                                         r"decoded.*--data.skip_bad_rows true"):
        data.setup("fit")



def test_the_datamodule_refuses_an_image_too_small_to_be_a_face_before_training(tmp_path):
    from aukit.data.datamodules import ManifestDataModule

    records = [{"image": f"f{i}.png", "subject": f"S{i // 2}", "AU1": i % 2, "AU12": 1}
               for i in range(4)]
    for i in range(4):
        write_face(tmp_path / f"f{i}.png", size=16 if i == 3 else 64)
    data = ManifestDataModule(manifest=str(write_csv(tmp_path / "m.csv", records)),
                              val_subjects=0, image_size=32)
    with pytest.raises(ValueError, match=r"(?s)1 bad row\(s\) of 4 \(1 tiny image\).*row 4 "
                                         r"\(line 5\): image .*f3.png is 16x16 px, smaller than "
                                         r"32 px.*re-crop the face larger or drop the row"):
        data.setup("fit")

def test_skip_bad_rows_drops_corrupt_images_with_counts(faces, caplog):
    from aukit.data.datamodules import ManifestDataModule

    data = ManifestDataModule(manifest=str(faces), val_subjects=0, image_size=32,
                              skip_bad_rows=True)
    with caplog.at_level(logging.WARNING):
        data.setup("fit")
    train = data.splits()["train"]
    assert train.rows == [1, 3, 4]
    assert "skipped 3 of 6 rows" in caplog.text
    assert "2 unreadable images, 1 bad label" in caplog.text
    assert any("f1.jpg cannot be decoded" in m for m in train.skipped)
    for i in range(len(train)):  # what is left decodes
        assert data.dataset_for("train")[i]["image"].shape == (3, 32, 32)


def test_the_image_check_is_cached_by_file_size_and_time(faces, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = read_manifest(faces, skip_bad_rows=True, verify_images=True, image_check_cache=cache)
    assert len(list(cache.glob("*.json"))) == 1
    calls = []
    real = manifest_module.decode_problem
    monkeypatch.setattr(manifest_module, "decode_problem", lambda p: calls.append(p) or real(p))
    again = read_manifest(faces, skip_bad_rows=True, verify_images=True, image_check_cache=cache)
    assert calls == [] and again.rows == first.rows and again.skipped == first.skipped
    write_face(tmp_path / "f1.jpg")  # repaired: a new size and time, so checked again
    repaired = read_manifest(faces, skip_bad_rows=True, verify_images=True,
                             image_check_cache=cache)
    assert len(calls) == 6 and repaired.rows == [1, 2, 3, 4]


def test_images_from_a_crop_store_are_not_checked_again(tmp_path, monkeypatch):
    from aukit.data.crop_store import write_crop_store
    from aukit.data.datamodules import ManifestDataModule

    records = [{"image": str(write_face(tmp_path / f"f{i}.jpg")), "subject": f"S{i}", "AU1": 1}
               for i in range(2)]
    path = write_csv(tmp_path / "m.csv", records)
    store = write_crop_store(read_manifest(path), tmp_path / "store", size=32)

    def fail(*args, **kwargs):
        raise AssertionError("images of a crop store were checked")

    monkeypatch.setattr(manifest_module, "unreadable_images", fail)
    data = ManifestDataModule(manifest=str(path), val_subjects=0, image_size=32,
                              crop_store=str(store))
    assert len(data.splits()["train"]) == 2
