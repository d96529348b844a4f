"""Raw-layout readers: BP4D occurrence CSVs + frame folders, DISFA intensity files + videos or
frames, ME-GraphAU-style lists; unknown labels masked, DISFA threshold >= 2, problems named.

The tree builders here are shared by the prepare / cv tests (imported as ``test_readers``).
"""

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from aukit.au import DATASET_AUS
from aukit.data.manifest import ManifestError, read_manifest
from aukit.data.readers import (
    UNKNOWN,
    dataset_manifest,
    frame_ranges,
    manifest_hash,
    read_raw,
)
from aukit.data.readers.disfa import PRESENT_INTENSITY
from aukit.data.readers.lists import main as lists_main
from aukit.data.readers.lists import read_lists

# one or two subjects of each part of the fold lists, so every fold has train, val and test
BP4D_SUBJECTS = ("F001", "F018", "M011", "F003", "F007", "F015")
DISFA_SUBJECTS = ("SN002", "SN010", "SN013", "SN018", "SN003", "SN029")
Image = Callable[[int], np.ndarray]


def noise_image(i: int, size: int = 40) -> np.ndarray:
    return np.random.default_rng(i).integers(0, 255, (size, size, 3), dtype=np.uint8)


def bp4d_labels(frame: int, subject: int) -> list[int]:
    """0/1 pattern over the 12 BP4D AUs that varies by frame and subject, 9 on AU4 of frame 2."""
    labels = [(frame + subject + k) % 3 == 0 for k in range(12)]
    return [9 if (frame == 2 and k == 2) else int(v) for k, v in enumerate(labels)]


def make_bp4d(root: Path, subjects=BP4D_SUBJECTS, frames: int = 4,
              image: Image = noise_image) -> Path:
    """``AUCoding/AU_OCC/<s>_T1.csv`` (header ``Frame,1,2,...``, extra AU columns 3 and 5) and
    ``<s>/T1/<frame>.jpg`` with zero-padding that differs between subjects."""
    header = ["Frame", "1", "2", "3", "4", "5", "6", "7", "10", "12", "14", "15", "17", "23", "24"]
    for s, subject in enumerate(subjects):
        folder = root / subject / "T1"
        folder.mkdir(parents=True)
        rows = [header]
        for frame in range(1, frames + 1):
            name = f"{frame:04d}.jpg" if s % 2 else f"{frame}.jpg"
            cv2.imwrite(str(folder / name), image(100 * s + frame))
            labels = bp4d_labels(frame, s)
            rows.append([str(frame), *map(str, labels[:2]), "9", str(labels[2]), "0",
                         *map(str, labels[3:])])
        path = root / "AUCoding" / "AU_OCC" / f"{subject}_T1.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(",".join(r) for r in rows) + "\n")
    return root


def disfa_intensity(frame: int, au_index: int, subject: int) -> int:
    return (frame + au_index + subject) % 4  # 0..3: both sides of the >= 2 threshold


def make_disfa(root: Path, subjects=DISFA_SUBJECTS, frames: int = 4, image: Image = noise_image,
               video_frames: dict[str, int] | None = None) -> Path:
    """``ActionUnit_Labels/SNxxx/SNxxx_auN.txt`` for the 8 DISFA AUs and an MJPG left-camera
    video per subject with ``video_frames[subject]`` frames (default ``frames``)."""
    for s, subject in enumerate(subjects):
        folder = root / "ActionUnit_Labels" / subject
        folder.mkdir(parents=True)
        for k, au in enumerate(DATASET_AUS["disfa"]):
            lines = [f"{f},{disfa_intensity(f, k, s)}" for f in range(1, frames + 1)]
            (folder / f"{subject}_au{au}.txt").write_text("\n".join(lines) + "\n")
        video = root / "Videos_LeftCamera" / f"LeftVideo{subject}_comp.avi"
        video.parent.mkdir(parents=True, exist_ok=True)
        first = image(100 * s)
        writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10,
                                 (first.shape[1], first.shape[0]))
        for f in range((video_frames or {}).get(subject, frames)):
            writer.write(image(100 * s + f))
        writer.release()
    return root


# ------------------------------------------------------------------------------ BP4D
def test_bp4d_reads_labels_masks_unknown_and_ignores_other_au_columns(tmp_path):
    raw = read_raw("bp4d", make_bp4d(tmp_path))
    assert raw.aus == DATASET_AUS["bp4d"]
    assert len(raw.frames) == 6 * 4 and not raw.problems
    frame = next(f for f in raw.frames if f.subject == "M011" and f.frame == 2)
    expected = bp4d_labels(2, BP4D_SUBJECTS.index("M011"))
    assert frame.labels == tuple(UNKNOWN if v == 9 else v for v in expected)
    assert frame.labels[2] == UNKNOWN  # AU4 coded 9 -> masked
    manifest = raw.manifest(tmp_path / "m.csv")
    i = manifest.images.index(frame.image)
    assert not manifest.mask[i, 2] and manifest.mask[i].sum() == 11


def test_bp4d_problems_are_counted_and_named(tmp_path):
    root = make_bp4d(tmp_path, subjects=("F001", "M011"))
    (root / "F001" / "T1" / "3.jpg").unlink()  # a label row without its frame
    cv2.imwrite(str(root / "M011" / "T1" / "0009.jpg"), noise_image(9))  # a frame without labels
    (root / "AUCoding" / "AU_OCC" / "F002_T1.csv").write_text("Frame,1\n1,0\n")  # no folder
    (root / "M011" / "T2").mkdir()  # a task folder without a label file
    odd = root / "AUCoding" / "AU_OCC" / "F007_T1.csv"  # lacks AU columns, bad value
    odd.write_text("Frame,AU1,AU12,AU12_intensity\n1,7,1,3\n")
    (root / "F007" / "T1").mkdir(parents=True)
    cv2.imwrite(str(root / "F007" / "T1" / "01.jpg"), noise_image(1))
    raw = read_raw("bp4d", root)
    report = raw.problems.report()
    items = raw.problems.items
    assert items["label rows for frames that do not exist (skipped)"] == ["F001/T1: 1 frames 3"]
    assert items["frames without labels (not used)"] == ["M011/T1: 1 frames 9"]
    assert "F002 (F002_T1.csv)" in items["missing subject folders (labels skipped)"]
    assert items["frame folders without a label file (not used)"] == ["M011/T2"]
    assert "F007_T1.csv: 'AU12_intensity'" in report
    assert "F007_T1.csv: AU2, AU4" in report and "F007_T1.csv: 1" in report
    odd_frame = next(f for f in raw.frames if f.subject == "F007")
    assert odd_frame.labels[0] == UNKNOWN and odd_frame.labels[6] == 1  # AU1 bad, AU12 kept
    assert len(raw.frames) == 3 + 4 + 1


def test_bp4d_without_label_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="AUCoding"):
        read_raw("bp4d", tmp_path)


# ------------------------------------------------------------------------------ DISFA
def test_disfa_threshold_is_intensity_two(tmp_path):
    raw = read_raw("disfa", make_disfa(tmp_path, subjects=("SN002",), frames=4))
    assert PRESENT_INTENSITY == 2 and len(raw.frames) == 4 and not raw.problems
    for frame in raw.frames:
        intensities = [disfa_intensity(frame.frame, k, 0) for k in range(8)]
        assert frame.labels == tuple(int(i >= 2) for i in intensities)
        assert frame.video_index == frame.frame - 1
    seen = {(disfa_intensity(f.frame, k, 0), f.labels[k]) for f in raw.frames for k in range(8)}
    assert (1, 0) in seen and (2, 1) in seen and (3, 1) in seen


def test_disfa_truncated_video_missing_file_and_extracted_frames(tmp_path):
    root = make_disfa(tmp_path / "raw", subjects=("SN002", "SN013"), frames=5,
                      video_frames={"SN013": 3})
    (root / "ActionUnit_Labels" / "SN002" / "SN002_au9.txt").unlink()
    raw = read_raw("disfa", root)
    items = raw.problems.items
    assert items["label rows outside the video's frames (skipped)"] == [
        "SN013: 2 frames 4-5 (video has 3)"]
    assert items["missing AU label files (AU masked)"] == ["SN002_au9.txt"]
    assert len(raw.frames) == 5 + 3
    k9 = DATASET_AUS["disfa"].index(9)
    assert all(f.labels[k9] == UNKNOWN for f in raw.frames if f.subject == "SN002")
    with pytest.raises(ValueError, match="aukit-prepare"):
        raw.manifest(tmp_path / "m.csv")  # frames only in videos cannot be trained on directly
    frames = tmp_path / "frames" / "SN002"  # 0-based extracted frames
    frames.mkdir(parents=True)
    for n in range(5):
        cv2.imwrite(str(frames / f"{n}.png"), noise_image(n))
    extracted = read_raw("disfa", root, frames_root=tmp_path / "frames")
    assert [f.image.name for f in extracted.frames] == [f"{n}.png" for n in range(5)]
    assert extracted.problems.items["missing subject frame folders (labels skipped)"] == ["SN013"]


def extract_frames(folder: Path, subject: int, frames: int, first: int) -> None:
    """Video frame k of subject index ``subject`` (as ``make_disfa`` draws it) saved as
    ``<k + first>.png``: 0-based (ME-GraphAU / JAA-Net) or 1-based extraction."""
    folder.mkdir(parents=True)
    for k in range(frames):
        cv2.imwrite(str(folder / f"{k + first}.png"), noise_image(100 * subject + k))


@pytest.mark.parametrize("first", [0, 1])
def test_disfa_extracted_frame_numbering_is_detected_and_can_be_forced(tmp_path, first):
    subjects = ("SN002", "SN013")
    root = make_disfa(tmp_path / "raw", subjects=subjects, frames=5)
    for s, subject in enumerate(subjects):
        extract_frames(tmp_path / "frames" / subject, s, 5, first)
    raw = read_raw("disfa", root, frames_root=tmp_path / "frames")
    assert not raw.problems and len(raw.frames) == 10 and raw.settings == {"frame_offset": first}
    assert f"numbered from {first}" in raw.notes[0] and "--frame-offset" in raw.notes[0]
    for frame in raw.frames:  # label frame n shows video frame n - 1, whatever the numbering
        s = subjects.index(frame.subject)
        assert int(frame.image.stem) == frame.frame - 1 + first
        np.testing.assert_array_equal(cv2.imread(str(frame.image)),
                                      noise_image(100 * s + frame.frame - 1))
        assert frame.labels == tuple(int(disfa_intensity(frame.frame, k, s) >= 2)
                                     for k in range(8))
    forced = read_raw("disfa", root, frames_root=tmp_path / "frames", frame_offset=1 - first)
    assert "set by --frame-offset" in forced.notes[0] and forced.settings["frame_offset"] != first
    assert "frames without labels (not used)" in forced.problems.items
    with pytest.raises(ValueError, match="--frame-offset .* 0 or 1; got -1"):
        read_raw("disfa", root, frames_root=tmp_path / "frames", frame_offset=-1)


# ------------------------------------------------------------------------------ caching, lists
def test_dataset_manifest_is_cached_and_hashed(tmp_path, capsys):
    root = make_bp4d(tmp_path)
    path = dataset_manifest("bp4d", root)
    printed = capsys.readouterr().out
    assert "6 subjects, 24 frames" in printed and "base rates" in printed
    assert manifest_hash(path) in printed
    assert dataset_manifest("bp4d", root) == path and capsys.readouterr().out == ""  # cached
    manifest = read_manifest(path, "bp4d")
    assert len(manifest) == 24 and not manifest.mask.all()
    (root / "F001" / "T1" / "4.jpg").unlink()  # the frame folder changed: the cache is rebuilt
    assert dataset_manifest("bp4d", root) != path


def test_lists_pair_images_with_label_rows(tmp_path, capsys):
    images = []
    for i, name in enumerate(["F001/T1/1.jpg", "F001/T1/2.jpg", "M011/T8/7.jpg"]):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(tmp_path / name), noise_image(i))
        images.append(name)
    (tmp_path / "img.txt").write_text("\n".join(images) + "\n")
    (tmp_path / "lab.txt").write_text("1 0 9\n0 1 1\n-1 0 0\n")
    manifest = read_lists([tmp_path / "img.txt"], [tmp_path / "lab.txt"], ["AU1", "AU2", "AU12"],
                          tmp_path)
    assert manifest.subjects == ["F001", "F001", "M011"]
    np.testing.assert_array_equal(manifest.mask, [[1, 1, 0], [1, 1, 1], [0, 1, 1]])
    np.testing.assert_array_equal(manifest.labels, [[1, 0, 0], [0, 1, 1], [0, 0, 0]])
    lists_main(["--images", str(tmp_path / "img.txt"), "--labels", str(tmp_path / "lab.txt"),
                "--aus", "AU1,AU2,AU12", "--image-root", str(tmp_path),
                "--out", str(tmp_path / "out.csv")])
    assert "2 subjects, 3 frames" in capsys.readouterr().out
    assert len(read_manifest(tmp_path / "out.csv")) == 3
    (tmp_path / "lab.txt").write_text("1 0 9\n0 1 1\n")
    with pytest.raises(ManifestError, match="lists 3 images but .* 2 label rows"):
        read_lists([tmp_path / "img.txt"], [tmp_path / "lab.txt"], ["AU1", "AU2", "AU12"],
                   tmp_path)


def test_frame_ranges_are_compact():
    assert frame_ranges([7, 1, 2, 3, 9, 10]) == "1-3, 7, 9-10"
    assert frame_ranges([]) == ""
