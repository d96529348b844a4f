"""SynthAU: the embedded, procedurally rendered AU face data set (numpy + OpenCV only).

A sample is a pure function of ``(seed, subject, index)``: the subject fixes an identity (face
shape, skin, features, hair, background), the index draws an expression (AU intensities from
prototypes plus noise) and nuisances (pose, light, gamma, blur, pixel noise). Every AU moves the
68 landmarks and adds texture at its FACS location, graded by intensity, and the face is drawn
from the moved landmarks, so the returned landmarks lie exactly on the drawn features.

Geometry lives in the *face frame* (inter-ocular distance (IOD) units, origin between the eye
centres, +x towards the image right, +y down) until it is projected onto the canvas.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from aukit.au import ACTION_UNITS, ALL_AUS, FLIP_PERMUTATION, NUM_LANDMARKS

SYNTHAU_SPLITS: dict[str, range] = {
    "unlabeled": range(0, 60),
    "train": range(60, 90),
    "val": range(90, 100),
    "test": range(100, 120),
}
RENDER_SIZE = 256
INTENSITY_THRESHOLD = 2.0

_A = len(ALL_AUS)
_AU_INDEX = {n: i for i, n in enumerate(ALL_AUS)}
_FLIP = np.array(FLIP_PERMUTATION)
_SHIFT = 4  # OpenCV fixed-point bits: sub-pixel drawing keeps landmarks exact
_IOD_FRACTION = 0.25  # inter-ocular distance as a fraction of the render size
_EYE_LEVEL = 0.38  # eye height as a fraction of the render size
_TAG_IDENTITY, _TAG_SAMPLE = 1, 2  # keep identity and sample random streams apart

# dlib / OpenFace mean face (iBUG-68, min-max normalised); symmetrised in _mean_face
_TEMPLATE = np.array([
    (.0792, .3392), (.0829, .4570), (.0968, .5756), (.1221, .6919), (.1687, .8003), (.2398, .8957),
    (.3257, .9771), (.4223, 1.0433), (.5318, 1.0608), (.6413, 1.0398), (.7381, .9723),
    (.8244, .8896), (.8948, .7925), (.9394, .6815), (.9611, .5622), (.9706, .4418), (.9712, .3221),
    (.1638, .2492), (.2178, .2043), (.2913, .1924), (.3675, .2036), (.4393, .2331), (.5864, .2281),
    (.6602, .1959), (.7375, .1824), (.8132, .1928), (.8708, .2353), (.5153, .3186), (.5162, .3962),
    (.5171, .4738), (.5182, .5532), (.4337, .6041), (.4755, .6208), (.5207, .6343), (.5659, .6188),
    (.6071, .6016), (.2524, .3311), (.2987, .3026), (.3557, .3030), (.4037, .3387), (.3525, .3500),
    (.2968, .3505), (.6313, .3341), (.6791, .2965), (.7360, .2947), (.7829, .3213), (.7403, .3418),
    (.6850, .3437), (.3532, .7462), (.4146, .7191), (.4777, .7068), (.5227, .7171), (.5698, .7054),
    (.6352, .7157), (.6995, .7394), (.6394, .8052), (.5764, .8354), (.5254, .8417), (.4764, .8375),
    (.4138, .8100), (.3801, .7500), (.4780, .7451), (.5234, .7489), (.5711, .7433), (.6724, .7442),
    (.5725, .7766), (.5219, .7841), (.4772, .7786),
], np.float32)


def _mean_face() -> np.ndarray:
    """The symmetrised template in the face frame. Returns ``[68, 2]``."""
    mirrored = _TEMPLATE[_FLIP] * [-1.0, 1.0]
    mirrored[:, 0] += 2 * _TEMPLATE[:, 0].mean()
    face = (_TEMPLATE + mirrored) / 2
    right_eye, left_eye = face[36:42].mean(0), face[42:48].mean(0)
    return ((face - (right_eye + left_eye) / 2) / np.linalg.norm(left_eye - right_eye)).astype(
        np.float32)


_MEAN_FACE = _mean_face()

# How far out of the image plane each landmark sits (IOD units), for the yaw approximation:
# a head-sized ellipse plus the nose, which juts out and so shifts most when the head turns.
_NOSE_DEPTH = {27: .10, 28: .18, 29: .26, 30: .34, 31: .12, 32: .16, 33: .20, 34: .16, 35: .12}


def _depth(x: np.ndarray) -> np.ndarray:
    return 0.6 * np.sqrt(np.clip(1 - (x / 1.25) ** 2, 0, None)) - 0.3


_LANDMARK_DEPTH = _depth(_MEAN_FACE[:, 0])
for _i, _z in _NOSE_DEPTH.items():
    _LANDMARK_DEPTH[_i] += _z


# ---------------------------------------------------------------------------------- identity
_SKIN_TONES = np.array([(.99, .87, .77), (.93, .76, .63), (.80, .58, .42), (.60, .40, .27),
                        (.40, .26, .17)], np.float32)
_HAIR_COLOURS = np.array([(.08, .06, .05), (.25, .16, .10), (.45, .30, .18), (.80, .65, .40),
                          (.60, .25, .12), (.62, .60, .58)], np.float32)
_IRIS_COLOURS = np.array([(.30, .18, .10), (.15, .10, .07), (.30, .45, .60), (.35, .45, .30),
                          (.45, .45, .45)], np.float32)


@dataclass(frozen=True, eq=False)
class Identity:
    """Everything fixed per subject. Colours are RGB in 0..1; lengths in IOD units."""

    shape: np.ndarray  # [68, 2] neutral landmarks, face frame
    skin: np.ndarray
    lips: np.ndarray
    hair: np.ndarray
    iris: np.ndarray
    background: np.ndarray
    clothes: np.ndarray
    brow_thickness: float
    hairline: float  # face-frame y of the hairline at the centre
    long_hair: bool
    chin_pits: np.ndarray  # [P, 2] AU17 "orange peel" pits, offsets from the chin centre
    expressiveness: float  # scales this subject's AU intensities


def _make_identity(rng: np.random.Generator) -> Identity:
    shape = _MEAN_FACE.copy()
    u = rng.uniform
    jaw, brows, nose = slice(0, 17), slice(17, 27), slice(27, 36)
    eyes, mouth = slice(36, 48), slice(48, 68)
    shape[jaw, 0] *= u(0.9, 1.08)
    shape[jaw, 1] = shape[0, 1] + (shape[jaw, 1] - shape[0, 1]) * u(0.9, 1.08)
    shape[brows, 1] += u(-0.05, 0.04) - u(-0.03, 0.05) * np.abs(np.tile(np.linspace(-1, 1, 5), 2))
    for side, eye in ((-1, slice(36, 42)), (1, slice(42, 48))):
        centre = shape[eye].mean(0)
        shape[eye] = centre + (shape[eye] - centre) * [u(.88, 1.12), u(.85, 1.2)]
    spread = u(-0.04, 0.04)
    shape[eyes, 0] += np.sign(shape[eyes, 0]) * spread
    shape[brows, 0] += np.sign(shape[brows, 0]) * spread
    root = shape[27]
    shape[nose] = root + (shape[nose] - root) * [u(0.85, 1.25), u(0.9, 1.1)]
    shape[mouth, 1] += shape[33, 1] - _MEAN_FACE[33, 1] + u(-0.04, 0.04)
    centre = shape[mouth].mean(0)
    lip_scale = u(0.75, 1.3)
    shape[mouth] = centre + (shape[mouth] - centre) * [u(0.85, 1.15), 1.0]
    # lip thickness: move the outer contour away from the inner one, leave the inner line
    shape[49:54, 1] += (shape[49:54, 1] - shape[62, 1]) * (lip_scale - 1)
    shape[55:60, 1] += (shape[55:60, 1] - shape[66, 1]) * (lip_scale - 1)
    tone = u(0, len(_SKIN_TONES) - 1)
    skin = np.array([np.interp(tone, np.arange(len(_SKIN_TONES)), _SKIN_TONES[:, c])
                     for c in range(3)], np.float32) * rng.normal(1, 0.03, 3).astype(np.float32)
    lips = skin * [0.8, 0.5, 0.5] * u(0.8, 1.05) + [0.08, 0.0, 0.02]
    hair = _HAIR_COLOURS[rng.integers(len(_HAIR_COLOURS))] * u(0.8, 1.2)
    radius = np.sqrt(u(0, 1, 14)) * 0.2
    angle = u(0, 2 * np.pi, 14)
    return Identity(
        shape=shape.astype(np.float32),
        skin=np.clip(skin, 0, 1),
        lips=np.clip(lips, 0, 1).astype(np.float32),
        hair=np.clip(hair, 0, 1),
        iris=_IRIS_COLOURS[rng.integers(len(_IRIS_COLOURS))] * u(0.8, 1.2),
        background=u(0.15, 0.85, 3).astype(np.float32),
        clothes=u(0.05, 0.9, 3).astype(np.float32),
        brow_thickness=u(0.045, 0.085),
        hairline=shape[17:27, 1].min() - u(0.7, 0.95),
        long_hair=bool(rng.random() < 0.45),
        chin_pits=np.stack([radius * np.cos(angle) * 1.4, radius * np.sin(angle)], 1),
        expressiveness=u(0.75, 1.15),
    )


# --------------------------------------------------------------------------------- nuisances
@dataclass(frozen=True)
class Nuisance:
    """Image-level nuisances. The defaults are "none": a frontal, evenly lit, clean face."""

    rotation: float = 0.0  # in-plane, degrees
    scale: float = 1.0
    shift: tuple[float, float] = (0.0, 0.0)  # fractions of the image size
    yaw: float = 0.0  # radians; approximated by a depth-dependent horizontal squeeze
    gaze: tuple[float, float] = (0.0, 0.0)  # iris offset, fractions of the eye width
    light: tuple[float, float] = (0.0, 0.0)  # multiplicative brightness gradient across the image
    brightness: float = 1.0
    white_balance: tuple[float, float, float] = (1.0, 1.0, 1.0)
    gamma: float = 1.0
    blur: float = 0.0  # Gaussian sigma in render pixels; 0 disables
    noise: float = 0.0  # pixel noise std on the 0..255 scale
    noise_seed: int = 0

    @classmethod
    def random(cls, rng: np.random.Generator) -> Nuisance:
        """The default nuisance distribution used by :meth:`SynthAU.sample`."""
        u = rng.uniform
        return cls(
            rotation=float(np.clip(rng.normal(0, 6), -15, 15)),
            scale=u(0.85, 1.1),
            shift=(u(-0.04, 0.04), u(-0.04, 0.04)),
            yaw=u(-0.3, 0.3),
            gaze=(u(-0.15, 0.15), u(-0.08, 0.08)),
            light=(u(-0.35, 0.35), u(-0.25, 0.25)),
            brightness=u(0.75, 1.15),
            white_balance=tuple(rng.normal(1, 0.04, 3).tolist()),
            gamma=u(0.75, 1.3),
            blur=u(0.6, 1.8) if rng.random() < 0.3 else 0.0,
            noise=u(1, 7),
            noise_seed=int(rng.integers(2**31)),
        )


# -------------------------------------------------------------------------------- expressions
# (name, probability, core AUs, optional AUs): prototypes give AUs their co-occurrence structure
_PROTOTYPES: tuple[tuple[str, float, tuple[int, ...], tuple[int, ...]], ...] = (
    ("neutral", 0.16, (), ()),
    ("happiness", 0.16, (6, 12), (25,)),
    ("surprise", 0.09, (1, 2, 5, 26), (25,)),
    ("sadness", 0.1, (1, 4, 15), (17,)),
    ("anger", 0.1, (4, 7, 23, 24), ()),
    ("disgust", 0.09, (9, 10, 17), (4,)),
    ("fear", 0.07, (1, 2, 4, 5, 20, 26), (25,)),
    ("contempt", 0.08, (14,), ()),
    ("mixed", 0.15, (), ()),
)
_PROTOTYPE_P = np.array([p for _, p, _, _ in _PROTOTYPES]) / sum(p for _, p, _, _ in _PROTOTYPES)


def draw_expression(rng: np.random.Generator, expressiveness: float = 1.0,
                    ) -> tuple[np.ndarray, np.ndarray]:
    """AU intensities ``[A]`` (ALL_AUS order, 0..5) and per-side gains ``[A, 2]`` for one sample.

    A prototype sets which AUs act together at one shared strength; per-AU jitter, dropouts,
    sub-threshold traces of every AU and random extra AUs keep labels noisy and near the
    threshold. The side gains make AUs slightly asymmetric (AU14 of contempt often one-sided).
    """
    _, _, core, optional = _PROTOTYPES[rng.choice(len(_PROTOTYPES), p=_PROTOTYPE_P)]
    intensity = rng.exponential(0.35, _A)  # traces: every face has some sub-threshold activity
    active = list(core) + [au for au in optional if rng.random() < 0.5]
    if not core and not optional and rng.random() < _PROTOTYPE_P[-1] / (
            _PROTOTYPE_P[0] + _PROTOTYPE_P[-1]):
        active = list(rng.choice(ALL_AUS, rng.integers(2, 5), replace=False))
    strength = rng.uniform(0.8, 4.8) * expressiveness
    for au in active:
        if rng.random() > 0.12:  # dropout: a prototype AU is sometimes absent
            intensity[_AU_INDEX[au]] = strength * np.exp(rng.normal(0, 0.3)) + rng.normal(0, 0.3)
    extra = rng.random(_A) < 0.04
    intensity[extra] = np.maximum(intensity[extra], rng.uniform(0.5, 4.5, extra.sum()))
    gain = rng.uniform(0.8, 1.0, (_A, 2))
    if 14 in active and rng.random() < 0.7:
        gain[_AU_INDEX[14], rng.integers(2)] = 0.2
    return np.clip(intensity, 0, 5).astype(np.float32), gain.astype(np.float32)
