"""How much AU information SynthAU's landmark geometry holds, with and without the person.

A logistic probe per AU, trained on the labelled subjects' face-frame landmark shapes
(``aukit.face_shape``) and scored (mean F1 %) on the test subjects, for three inputs:

- ``raw shape``: each face's shape as it is (expression and who the person is);
- ``person-centred``: the shape minus its person's mean shape (``aukit.losses.geometry``; on the
  test subjects this reads their other faces);
- ``pool-learned``: the shape through one linear map fitted, by least squares on the unlabeled
  pool (no AU labels), to return the person-centred shape from one face: what stage 1's
  geometry loss trains the region encoder's geometry branch to do.

With ``--stage1 CKPT ...`` a fourth column per checkpoint: the shape through that stage-1
checkpoint's own geometry map (``--model.encoder.geometry true``), with its share of the test
target left unexplained.

Seconds on a CPU, from landmarks alone (no images)::

    python scripts/geometry_probe.py --cache runs/cache/synthau --fractions 0.1 1.0 --seeds 0 1 2
    python scripts/geometry_probe.py --fractions 0.1 \
        --stage1 runs/bench/pretrain/masked-geometry-seed0/last.ckpt
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import f1_score

from aukit.au import ALL_AUS, NUM_LANDMARKS, au_numbers
from aukit.checkpoint import read_checkpoint
from aukit.data.datamodules import choose_subjects
from aukit.data.synthau import SynthAU, split_subjects, unlabeled_subjects
from aukit.face_shape import normalise_shape
from aukit.losses.geometry import expression_geometry
from aukit.models.region import SHAPE_SCALE, ExpressionGeometry


def shapes(synth: SynthAU, subjects: list[int], faces: int,
           columns: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> face-frame shapes [N, 136], person-centred shapes [N, 136], labels [N, A]."""
    samples = [synth.sample(s, i) for s in subjects for i in range(faces)]
    landmarks = torch.from_numpy(np.stack([s["landmarks"] for s in samples]))
    groups = [s for s in subjects for _ in range(faces)]
    return (normalise_shape(landmarks).flatten(1).numpy(),
            expression_geometry(landmarks, groups).flatten(1).numpy(),
            np.stack([s["labels"][columns] for s in samples]))


def stage1_map(path: str) -> ExpressionGeometry:
    """The geometry map of a stage-1 checkpoint."""
    state = read_checkpoint(path, "pretrain")["state_dict"]
    prefix = "encoder.region.geometry."
    if prefix + "project.weight" not in state:
        raise SystemExit(f"{path} has no geometry branch (train it with "
                         "--model.encoder.geometry true)")
    geometry = ExpressionGeometry()
    geometry.load_state_dict({k[len(prefix):]: v for k, v in state.items()
                              if k.startswith(prefix)})
    return geometry.eval()


@torch.no_grad()
def through(geometry: ExpressionGeometry, shape: np.ndarray) -> np.ndarray:
    """Face-frame shapes [N, 136] -> the map's output [N, 136] (in inter-ocular distances)."""
    points = torch.from_numpy(shape).float().view(-1, NUM_LANDMARKS, 2)
    return (geometry(points).flatten(1) / SHAPE_SCALE).double().numpy()


def probe(train: np.ndarray, labels: np.ndarray, test: np.ndarray, truth: np.ndarray) -> float:
    mean, sd = train.mean(0), train.std(0) + 1e-6
    scores = []
    for k in range(labels.shape[1]):
        model = LogisticRegression(max_iter=3000, class_weight="balanced")
        model.fit((train - mean) / sd, labels[:, k])
        scores.append(f1_score(truth[:, k], model.predict((test - mean) / sd)))
    return 100 * float(np.mean(scores))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache", default="runs/cache/synthau", help="rendered-face cache")
    parser.add_argument("--aus", default="1,2,4,6,7,10,12,14,15,17,23,24")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.1, 1.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--pool-subjects", type=int, default=300)
    parser.add_argument("--pool-faces", type=int, default=8)
    parser.add_argument("--stage1", nargs="*", default=[],
                        help="stage-1 checkpoints whose geometry maps to probe as well")
    args = parser.parse_args(argv)
    synth = SynthAU(image_size=128, cache_dir=args.cache)
    columns = [ALL_AUS.index(a) for a in au_numbers(args.aus.split(","))]
    pool, pool_centred, _ = shapes(synth, unlabeled_subjects(args.pool_subjects),
                                   args.pool_faces, columns)
    projector = Ridge(alpha=1e-3).fit(pool, pool_centred)
    test, test_centred, truth = shapes(synth, split_subjects("test"), 20, columns)
    unexplained = ((projector.predict(test) - test_centred) ** 2).sum() / (test_centred ** 2).sum()
    print(f"pool-learned map on the test subjects: {unexplained:.3f} of the person-centred "
          "shape's energy left unexplained")
    maps = [stage1_map(path) for path in args.stage1]
    for path, geometry in zip(args.stage1, maps, strict=True):
        left = ((through(geometry, test) - test_centred) ** 2).sum() / (test_centred ** 2).sum()
        print(f"stage-1 map of {path}: {left:.3f} left unexplained")
    print("| labelled subjects | seed | raw shape | person-centred | pool-learned |"
          + " stage-1 map |" * len(maps))
    print("|---:|---:|---:|---:|---:|" + "---:|" * len(maps))
    for fraction in args.fractions:
        for seed in args.seeds:
            train_subjects = choose_subjects(split_subjects("train"), fraction, seed)
            raw, centred, labels = shapes(synth, train_subjects, 60, columns)
            row = [probe(raw, labels, test, truth), probe(centred, labels, test_centred, truth),
                   probe(projector.predict(raw), labels, projector.predict(test), truth)]
            row += [probe(through(g, raw), labels, through(g, test), truth) for g in maps]
            print(f"| {len(train_subjects)} | {seed} | " + " | ".join(f"{f:.1f}" for f in row)
                  + " |")


if __name__ == "__main__":
    main()
