"""Benchmark the landmark stage: dlib68 time per face, and predict frames/s with template vs dlib68.

    python scripts/bench_landmarks.py [--ckpt best.ckpt] [--frames 40] [--repeats 2]
                                      [--out docs/benchmarks.md]

Faces: ``skimage.data.astronaut()`` (512x512, one face). The per-face time is the landmark stage
alone (``aukit.landmarks.Landmarker``: dlib's fit from MTCNN's box plus the check against MTCNN's
points) over 200 calls. The video is the astronaut as ``--frames`` MJPG frames at 25 fps, shifted
a few pixels per frame; both sources run ``aukit.predict.predict`` on it, alternating; the best
of ``--repeats`` runs is reported, and every run (their spread is the machine's noise). Without
``--ckpt`` the model is an untrained HiVA of ``make finetune``'s SynthAU shape (swin_test,
128 px, 12 AUs, MiniLM text): the same cost per face as a trained one. Writes the
``## What do landmarks cost when predicting?`` section of ``--out``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from skimage.data import astronaut

from aukit.au import DATASET_AUS, au_keys
from aukit.landmarks import DLIB68, TEMPLATE, Landmarker
from aukit.predict import FaceDetector, predict
from aukit.utils.report import benchmark_section, write_section

SECTION = "## What do landmarks cost when predicting?"


def untrained_checkpoint(path: Path) -> Path:
    """An untrained HiVA finetune checkpoint with the SynthAU config's model."""
    from finetune.module import HiVAFinetuner

    module = HiVAFinetuner(aus=au_keys(DATASET_AUS["synthau"]), image_size=128,
                           encoder=dict(embed_dim=128),
                           text=dict(cache_dir=str(path.parent / "text-cache")))
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    return path


def write_video(path: Path, frames: int) -> Path:
    face = cv2.cvtColor(astronaut(), cv2.COLOR_RGB2BGR)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (512, 512))
    for i in range(frames):
        writer.write(np.roll(face, (i % 5, 2 * (i % 3)), axis=(0, 1)))
    writer.release()
    return path


def time_per_face(calls: int = 200) -> tuple[float, float]:
    """(predictor load s, landmark stage ms per face) on the astronaut."""
    image = astronaut()
    (((box, _, points),),) = FaceDetector()([image])
    start = time.perf_counter()
    landmarker = Landmarker(DLIB68)
    load = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(calls):
        landmarker(image, box, points)
    return load, (time.perf_counter() - start) / calls * 1000


def _runs(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", default=None, help="a finetune checkpoint (default: untrained)")
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default="docs/benchmarks.md")
    args = parser.parse_args(argv)
    started = time.time()
    load, per_face = time_per_face()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ckpt = Path(args.ckpt) if args.ckpt else untrained_checkpoint(folder / "hiva.ckpt")
        video = write_video(folder / "astronaut.avi", args.frames)
        fps: dict[str, list[float]] = {TEMPLATE: [], DLIB68: []}
        for repeat in range(args.repeats):
            for source, runs in fps.items():
                run = predict(video, ckpt, folder / f"{source}{repeat}", device="cpu",
                              progress=False, landmarks=source)
                runs.append(run["fps"])
                print(f"{source}: {run['fps']:.2f} frames/s", file=sys.stderr)
    model = args.ckpt or "untrained HiVA, make finetune's SynthAU model"
    table = "\n".join([
        "| measure | template | dlib68 |", "|---|---:|---:|",
        f"| landmark stage per face (dlib fit + check) | 0 | {per_face:.1f} ms |",
        f"| predictor file load, once per process | 0 | {load:.1f} s |",
        f"| predict, whole run ({args.frames} frames), best of {args.repeats} | "
        f"{max(fps[TEMPLATE]):.2f} frames/s | {max(fps[DLIB68]):.2f} frames/s |",
        f"| predict, every run in order | {_runs(fps[TEMPLATE])} | {_runs(fps[DLIB68])} |",
        f"| landmark stage / best template frame time | 0 | "
        f"{per_face * max(fps[TEMPLATE]) / 1000:.1%} |"])
    description = (f"The landmark stage (`aukit.landmarks`) on `skimage.data.astronaut()` "
                   f"(512x512, one face), and `aukit-predict --device cpu` on the astronaut as a "
                   f"{args.frames}-frame MJPG video, with `--landmarks template` and `dlib68` "
                   f"(decode, MTCNN, landmarks, alignment, model, CSV). Model: {model}.")
    text = benchmark_section(SECTION, "scripts/bench_landmarks.py", sys.argv[1:] if argv is None
                             else argv, started, description, table)
    print(text)
    write_section(args.out, SECTION, text)


if __name__ == "__main__":
    main()
