"""How far the landmarks SynthAU serves lie from the renderer's: the landmark stage's error.

For every face of a SynthAU split (``--samples`` per subject), the detected landmarks
(``aukit.data.synthau_landmarks``: MTCNN -> dlib68, found once and cached) against the
renderer's exact ones, in inter-ocular distances of the exact face; and how many fits failed
(those faces get the template).

    python scripts/synthau_landmark_error.py --split test --samples 20 --cache runs/cache/synthau
"""

from __future__ import annotations

import argparse

import numpy as np

from aukit.data.datamodules import synthau_cache_dir
from aukit.data.synthau import SynthAU, split_subjects
from aukit.data.synthau_landmarks import SynthAULandmarks


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--split", default="test", choices=["train", "val", "test"])
    parser.add_argument("--samples", type=int, default=20, help="faces per subject")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", default="auto", help="where the detected landmarks are kept")
    args = parser.parse_args(argv)
    synth = SynthAU(seed=args.seed)
    detected = SynthAULandmarks(synth, "dlib68", synthau_cache_dir(args.cache))
    keys = [(s, i, 0) for s in split_subjects(args.split) for i in range(args.samples)]
    counts = detected.prepare(keys, f"SynthAU {args.split}")
    errors = []
    for key in keys:
        sample = synth.sample(*key)
        exact = sample["landmarks"]
        iod = np.linalg.norm(exact[36:42].mean(0) - exact[42:48].mean(0))
        errors.append(np.linalg.norm(detected(key, sample) - exact, axis=1).mean() / iod)
    e = np.array(errors)
    print(f"SynthAU {args.split}, {len(e)} faces: {counts['template']} failed fits (template); "
          f"mean point error {e.mean():.3f} inter-ocular distances, median {np.median(e):.3f}, "
          f"95th percentile {np.percentile(e, 95):.3f}, max {e.max():.3f}")


if __name__ == "__main__":
    main()
