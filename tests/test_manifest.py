"""The labelled manifest: reading, validation errors with file and row, skipping, round trip."""

import csv
import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from aukit.data.manifest import Manifest, ManifestError, load_landmarks, manifest_aus, read_manifest


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
