"""Predict AUs on new images, folders of images and videos with a finetune checkpoint.

``python -m aukit.predict --input PATH --ckpt best.ckpt [--out DIR] [--device cuda]
[--batch-size 32] [--landmarks auto|dlib68|template] [--visualize [--every N]]
[--video-out annotated.avi]`` writes

- ``DIR/predictions.csv``: one row per frame and face: ``source`` (the file), ``frame`` (video
  frame number; 0 for an image), ``time_s`` (frame / fps; empty for an image), ``face`` (index,
  left to right), ``status`` (``ok``, ``no_face`` or ``unreadable``; the last two have empty
  cells after it), the MTCNN box ``x1 y1 x2 y2`` and ``face_score`` in source pixels,
  ``landmarks`` (where the face's 68 landmarks came from: ``dlib68``, or ``template`` when that
  source is chosen or its fit failed), then per AU its probability ``AU12_prob`` and decision
  ``AU12`` (probability >= 0.5);
- with ``--visualize``: ``DIR/visualize/*.png`` per face of every image (or every Nth video
  frame): the aligned face with its 68 landmarks, its predicted AUs and the per-AU
  activation-map grid;
- with ``--video-out``: the video with boxes, landmarks and predicted AUs drawn on every frame.

Faces are found by MTCNN, get their 68 landmarks (``aukit.landmarks``) and are aligned onto the
canonical template like the training crops (``aukit.data.prepare``); the landmarks place the
model's AU attention maps. Videos are decoded frame by frame, so memory does not grow with their
length. The frames per second of the whole run (decode, detect, align, model) are reported.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from aukit.data.manifest import TOO_SMALL, decode_problem
from aukit.data.prepare import align_with_landmarks
from aukit.data.readers import IMAGE_SUFFIXES
from aukit.data.transforms import eval_transform
from aukit.data.video import video_frames
from aukit.inference import THRESHOLD, AUPredictor, load_predictor
from aukit.landmarks import AUTO, SOURCES, Landmarker, mtcnn_faces
from aukit.utils.device import check_device
from aukit.visualize import activation_grid

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
ALIGN_SIZE = 256  # aukit.data.prepare's crop size: the model sees the training resampling
TILE = 160  # pixels per face tile in the pictures: readable AU titles
OK, NO_FACE, UNREADABLE = "ok", "no_face", "unreadable"


@dataclass
class Frame:
    """One image or video frame: ``image`` RGB uint8 ``[H, W, 3]`` (None = unreadable)."""

    source: str
    index: int
    time_s: float | None
    image: np.ndarray | None


@dataclass
class Face:
    """A detected face: box ``[4]`` (x1, y1, x2, y2), MTCNN score, aligned crop RGB, its
    landmarks ``[68, 2]`` in crop pixels and their source, the ``[2, 3]`` matrix from frame to
    crop pixels, and the model's probabilities ``[A]`` and activation maps ``[A, h, w]`` (None
    without maps)."""

    box: np.ndarray
    score: float
    crop: np.ndarray
    landmarks: np.ndarray
    landmark_source: str
    matrix: np.ndarray
    probs: np.ndarray | None = None
    maps: np.ndarray | None = None


@dataclass
class FrameResult:
    frame: Frame
    faces: list[Face] = field(default_factory=list)

    @property
    def status(self) -> str:
        return UNREADABLE if self.frame.image is None else OK if self.faces else NO_FACE


# ---------------------------------------------------------------- inputs
def _read_image(path: Path) -> np.ndarray | None:
    """RGB ``[H, W, 3]``, or None when the file will not decode whole (a truncated JPEG, which
    OpenCV would fill with grey, included; ``aukit.data.manifest.decode_problem``)."""
    problem = decode_problem(path)
    if problem is not None and not problem.startswith(TOO_SMALL):  # small images have no face
        return None
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    return None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _video_info(path: Path) -> tuple[int | None, float | None] | None:
    """``(frame count or None, fps or None)`` of a decodable video, None if it is not one."""
    capture = cv2.VideoCapture(str(path))
    try:
        if not (capture.isOpened() and capture.grab()):
            return None
        count, fps = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), capture.get(cv2.CAP_PROP_FPS)
        return (count if count > 0 else None), (fps or None)
    finally:
        capture.release()


def _video_frames(path: Path, fps: float) -> Iterator[Frame]:
    """The video's frames; a truncated video's cut last frame comes unreadable (image None)."""
    for index, image in video_frames(path):
        yield Frame(str(path), index, index / fps if fps > 0 else None, image)


def open_input(path: str | Path) -> tuple[Iterator[Frame], int | None, float | None]:
    """``(frames, frame count or None, video fps or None)`` of an image, a folder of images
    (sorted, recursive) or a video; bad paths and files that are neither are clear errors."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"input {path} does not exist; give an image, a folder of images "
                                "or a video")
    if path.is_dir():
        found = sorted(path.rglob("*"))
        files = [p for p in found if p.suffix.lower() in IMAGE_SUFFIXES]
        videos = [p for p in found if p.suffix.lower() in VIDEO_SUFFIXES]
        if videos:
            print(f"note: a folder is read as images; its {len(videos)} video(s) (e.g. "
                  f"{videos[0]}) are not read: give each as --input", file=sys.stderr)
        if not files:
            raise ValueError(f"no images in folder {path} (looked for {', '.join(IMAGE_SUFFIXES)})"
                             + ("; give each video as --input" if videos else ""))
        return (Frame(str(p), 0, None, _read_image(p)) for p in files), len(files), None
    suffix = path.suffix.lower()
    image = _read_image(path) if suffix not in VIDEO_SUFFIXES else None
    if image is not None:
        return iter([Frame(str(path), 0, None, image)]), 1, None
    info = _video_info(path) if suffix not in IMAGE_SUFFIXES else None
    if info is None:
        kind = "image" if suffix in IMAGE_SUFFIXES else "video" if suffix in VIDEO_SUFFIXES \
            else "image or video"
        raise ValueError(f"{path} could not be decoded as an {kind}; give an image "
                         f"({', '.join(IMAGE_SUFFIXES)}), a folder of images or a video "
                         f"({', '.join(VIDEO_SUFFIXES)})")
    count, fps = info
    # the frames come from a fresh capture at frame 0 (seeking back is not exact for every codec)
    return _video_frames(path, fps or 0.0), count, fps


# ---------------------------------------------------------------- detection and model
class FaceDetector:
    """MTCNN (``facenet-pytorch``, weights shipped in the wheel) keeping every face."""

    def __init__(self, device: str = "cpu", min_face_size: int = 20) -> None:
        try:
            from facenet_pytorch import MTCNN
        except ImportError as err:
            raise ImportError("face detection needs facenet-pytorch: pip install --no-deps "
                              "facenet-pytorch==2.6.0 (make install does this)") from err
        self.mtcnn = MTCNN(keep_all=True, device=device, min_face_size=min_face_size)
        self.min_face_size = min_face_size

    def __call__(self, images: list[np.ndarray]) -> list[list[tuple[np.ndarray, float,
                                                                   np.ndarray]]]:
        """RGB images ``[H, W, 3]`` -> per image, ``(box [4], score, points [5, 2])`` per face,
        left to right; an image smaller than the smallest face has none (``mtcnn_faces``)."""
        return [[] if faces is None else
                [(faces[0][k], float(faces[1][k]), faces[2][k]) for k in np.argsort(faces[0][:, 0])]
                for faces in mtcnn_faces(self.mtcnn, images, self.min_face_size)]


class FramePredictor:
    """Detect, locate landmarks, align and score the faces of a stream of frames,
    ``batch_size`` at a time."""

    def __init__(self, predictor: AUPredictor, device: str = "cpu", batch_size: int = 32,
                 min_face_size: int = 20, landmarks: str = AUTO) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.predictor = predictor.to(device).eval()
        self.device, self.batch_size = device, batch_size
        self.detector = FaceDetector(device, min_face_size)
        self.landmarker = Landmarker(landmarks)
        self.transform = eval_transform(predictor.image_size)

    @torch.inference_mode()
    def _score(self, faces: list[Face]) -> None:
        for start in range(0, len(faces), self.batch_size):
            chunk = faces[start:start + self.batch_size]
            inputs = [self.transform(f.crop, f.landmarks) for f in chunk]
            images = torch.stack([x["image"] for x in inputs]).to(self.device)
            landmarks = torch.stack([x["landmarks"] for x in inputs]).to(self.device)
            outputs = [o.float().cpu().numpy() for o in self.predictor(images, landmarks)]
            for k, face in enumerate(chunk):
                face.probs = outputs[0][k]
                face.maps = outputs[1][k] if len(outputs) > 1 else None

    def _process(self, frames: list[Frame]) -> list[FrameResult]:
        results = [FrameResult(frame) for frame in frames]
        readable = [r for r in results if r.frame.image is not None]
        found = self.detector([r.frame.image for r in readable]) if readable else []
        for result, faces in zip(readable, found, strict=True):
            result.faces = [Face(box, score, *align_with_landmarks(
                result.frame.image, box, points, self.landmarker, ALIGN_SIZE))
                for box, score, points in faces]
        self._score([face for result in results for face in result.faces])
        return results

    def __call__(self, frames: Iterable[Frame]) -> Iterator[FrameResult]:
        """Results in input order; at most ``batch_size`` frames are held at a time."""
        pending: list[Frame] = []
        for frame in frames:
            pending.append(frame)
            if len(pending) == self.batch_size:
                yield from self._process(pending)
                pending = []
        if pending:
            yield from self._process(pending)


# ---------------------------------------------------------------- outputs
def csv_header(au_names: list[str]) -> list[str]:
    return ["source", "frame", "time_s", "face", "status", "x1", "y1", "x2", "y2", "face_score",
            "landmarks", *(c for name in au_names for c in (f"{name}_prob", name))]


def csv_rows(result: FrameResult, num_aus: int) -> list[list]:
    """One row per face, or one row with empty cells after ``status`` for a frame without."""
    frame = result.frame
    time_s = "" if frame.time_s is None else round(frame.time_s, 4)
    head = [frame.source, frame.index, time_s]
    if not result.faces:
        return [head + ["", result.status] + [""] * (6 + 2 * num_aus)]
    rows = []
    for k, face in enumerate(result.faces):
        scores = [c for p in face.probs for c in (round(float(p), 5), int(p >= THRESHOLD))]
        rows.append(head + [k, OK, *np.round(face.box, 1), round(face.score, 4),
                            face.landmark_source, *scores])
    return rows


def _au_lines(face: Face, au_names: list[str]) -> list[str]:
    active = [f"{n} {p:.2f}" for n, p in zip(au_names, face.probs, strict=True) if p >= THRESHOLD]
    return active or ["no AU >= 0.5"]


def face_panel(face: Face, au_names: list[str]) -> np.ndarray:
    """RGB uint8 picture: the aligned face with its 68 landmarks and its predicted AUs, beside
    the activation grid."""
    crop = cv2.resize(face.crop, (TILE, TILE), interpolation=cv2.INTER_AREA)
    for x, y in face.landmarks * (TILE / face.crop.shape[1]):
        cv2.circle(crop, (int(x), int(y)), 1, (0, 255, 0), -1, cv2.LINE_AA)
    lines = ["predicted:", *_au_lines(face, au_names)]
    column = np.zeros((TILE + 16 * len(lines) + 8, TILE, 3), np.uint8)
    column[:TILE] = crop
    for i, line in enumerate(lines):
        cv2.putText(column, line, (4, TILE + 16 * (i + 1)), cv2.FONT_HERSHEY_SIMPLEX, 0.42,
                    (255, 255, 255), 1, cv2.LINE_AA)
    if face.maps is None:
        return column
    image = eval_transform(TILE)(face.crop)["image"]
    grid = activation_grid(image, torch.from_numpy(face.maps), au_names,
                           torch.from_numpy(face.probs))
    height = max(len(column), len(grid))
    panel = np.zeros((height, TILE + 8 + grid.shape[1], 3), np.uint8)
    panel[:len(column), :TILE] = column
    panel[:len(grid), TILE + 8:] = grid
    return panel


LINE_HEIGHT = 16  # pixels per line of text drawn on a frame


def _text_origin(lines: list[str], box: tuple[int, int, int, int], frame: tuple[int, int],
                 scale: float) -> tuple[int, int]:
    """(x, y) of the top-left corner of a text block for a face ``box`` (x1, y1, x2, y2) in a
    ``frame`` (height, width): below the box, else above it, else as low as the frame allows,
    and shifted left where it would run off the right edge."""
    (x1, y1, _, y2), (height, width) = box, frame
    block = LINE_HEIGHT * len(lines) + 4
    wide = max(cv2.getTextSize(line, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] for line in lines)
    top = y2 if y2 + block <= height else y1 - block if y1 - block >= 0 \
        else max(0, height - block)
    return min(max(0, x1), max(0, width - wide)), top


def annotate(image: np.ndarray, faces: list[Face], au_names: list[str]) -> np.ndarray:
    """A copy of RGB ``image`` with each face's box, 68 landmarks, index and predicted AUs
    drawn (the text below the box, or above it where the frame ends)."""
    out = image.copy()
    for k, face in enumerate(faces):
        box = tuple(int(round(v)) for v in face.box)
        cv2.rectangle(out, box[:2], box[2:], (0, 255, 0), 2)
        frame_landmarks = (face.landmarks - face.matrix[:, 2]) @ np.linalg.inv(face.matrix[:, :2]).T
        for x, y in frame_landmarks:
            cv2.circle(out, (int(round(x)), int(round(y))), 1, (0, 255, 0), -1, cv2.LINE_AA)
        lines = [f"face {k}", *_au_lines(face, au_names)]
        x, top = _text_origin(lines, box, out.shape[:2], 0.45)
        for i, line in enumerate(lines):
            cv2.putText(out, line, (x, top + LINE_HEIGHT * (i + 1)), cv2.FONT_HERSHEY_SIMPLEX,
                        0.45, (0, 255, 0), 1, cv2.LINE_AA)
    return out


def _picture_name(frame: Frame, face: int, is_video: bool) -> str:
    stem = Path(frame.source).stem
    return f"{stem}_frame{frame.index:06d}_face{face}.png" if is_video \
        else f"{stem}_face{face}.png"


class _VideoOut:
    """An annotated copy of the input video, opened on its first frame."""

    def __init__(self, path: Path, fps: float) -> None:
        self.path, self.fps, self.writer = path, fps, None

    def write(self, image: np.ndarray) -> None:
        if self.writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            codec = "MJPG" if self.path.suffix.lower() == ".avi" else "mp4v"
            self.writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*codec),
                                          self.fps, (image.shape[1], image.shape[0]))
        self.writer.write(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()


def predict(input_path: str | Path, ckpt: str | Path, out: str | Path, device: str | None = None,
            batch_size: int = 32, visualize: bool = False, every: int = 1,
            video_out: str | Path | None = None, min_face_size: int = 20,
            progress: bool = True, text_cache_dir: str | Path | None = None,
            landmarks: str = AUTO) -> dict:
    """Run the checkpoint on ``input_path`` with ``landmarks`` from that source
    (``aukit.landmarks.SOURCES``); writes ``out/predictions.csv`` (and pictures, see the module
    docstring). Returns ``{"csv", "frames", "faces", "seconds", "fps"}``."""
    if every < 1:
        raise ValueError(f"--every must be >= 1, got {every}")
    frames, total, fps = open_input(input_path)  # bad input fails before the model loads
    if video_out is not None and fps is None:
        raise ValueError("--video-out needs a video input; for images use --visualize")
    device = check_device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    predictor = load_predictor(ckpt, text_cache_dir)
    run = FramePredictor(predictor, device, batch_size, min_face_size, landmarks)
    out = Path(out)
    pictures = out / "visualize"
    (pictures if visualize else out).mkdir(parents=True, exist_ok=True)
    writer = _VideoOut(Path(video_out), fps) if video_out is not None else None
    names, counts = predictor.au_names, {"frames": 0, "faces": 0}
    start = time.perf_counter()
    with (out / "predictions.csv").open("w", newline="") as f, \
            tqdm(total=total, unit="frame", file=sys.stderr, disable=not progress) as bar:
        table = csv.writer(f)
        table.writerow(csv_header(names))
        for result in run(frames):
            table.writerows(csv_rows(result, len(names)))
            frame = result.frame
            if visualize and (fps is None or frame.index % every == 0):
                for k, face in enumerate(result.faces):
                    panel = face_panel(face, names)
                    cv2.imwrite(str(pictures / _picture_name(frame, k, fps is not None)),
                                cv2.cvtColor(panel, cv2.COLOR_RGB2BGR))
            if writer is not None and frame.image is not None:
                writer.write(annotate(frame.image, result.faces, names))
            counts["frames"] += 1
            counts["faces"] += len(result.faces)
            bar.update()
    if writer is not None:
        writer.close()
    seconds = time.perf_counter() - start
    return {"csv": out / "predictions.csv", **counts, "seconds": seconds,
            "fps": counts["frames"] / seconds if seconds > 0 else float("inf")}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="aukit-predict", description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--input", required=True, help="an image, a folder of images or a video")
    parser.add_argument("--ckpt", required=True, help="a finetune checkpoint (.ckpt)")
    parser.add_argument("--out", default=None, help="output folder (default: predictions/<the "
                        "input's file or folder name>, e.g. predictions/clip.mp4)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda "
                        "when available)")
    parser.add_argument("--batch-size", type=int, default=32, help="frames and faces per batch")
    parser.add_argument("--visualize", action="store_true",
                        help="a PNG per face with its activation maps (videos: see --every)")
    parser.add_argument("--every", type=int, default=1, help="visualise every Nth video frame")
    parser.add_argument("--video-out", default=None, help="write an annotated video here "
                        "(.avi: MJPG, else mp4v)")
    parser.add_argument("--min-face-size", type=int, default=20, help="smallest face, pixels")
    parser.add_argument("--landmarks", default=AUTO, choices=SOURCES,
                        help="68 landmarks per face: dlib68, the template, or auto (dlib68 when "
                             "installed)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    # the input's whole name, so that clip.mp4 and clip.jpg do not share a folder
    out = args.out or Path("predictions") / Path(args.input).resolve().name
    try:
        summary = predict(args.input, args.ckpt, out, args.device, args.batch_size,
                          args.visualize, args.every, args.video_out, args.min_face_size,
                          not args.no_progress, landmarks=args.landmarks)
    except Exception as err:
        from aukit.cli import report_user_error  # Lightning loads only when something failed

        report_user_error(err, "aukit-predict")
        raise
    print(f"{summary['frames']} frames, {summary['faces']} faces in {summary['seconds']:.1f} s "
          f"({summary['fps']:.2f} frames/s) -> {summary['csv']}")


if __name__ == "__main__":
    main()
