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
import os
from collections.abc import Callable
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
_IOD_FRACTION = 0.23  # inter-ocular distance as a fraction of the render size
_EYE_LEVEL = 0.37  # eye height as a fraction of the render size
_TAG_IDENTITY, _TAG_SAMPLE, _TAG_FRAME = 1, 2, 3  # keep the random streams apart

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
    # the template's mouth is slightly open; a neutral face has the inner lips touching
    inner_upper, inner_lower = [61, 62, 63], [67, 66, 65]
    face[inner_upper, 1] = face[inner_lower, 1] = (face[inner_upper, 1] + face[inner_lower, 1]) / 2
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
_SKIN_TONES = np.array([(.96, .84, .74), (.93, .76, .63), (.80, .58, .42), (.60, .40, .27),
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
    """The mean face perturbed group by group (jaw, brows, eyes, nose, mouth), plus colours."""
    shape = _MEAN_FACE.copy()
    u = rng.uniform
    jaw, brows, nose = slice(0, 17), slice(17, 27), slice(27, 36)
    eyes, mouth = slice(36, 48), slice(48, 68)
    shape[jaw, 0] *= u(0.9, 1.08)
    shape[jaw, 1] = shape[0, 1] + (shape[jaw, 1] - shape[0, 1]) * u(0.9, 1.08)
    ends = np.abs(np.tile(np.linspace(-1, 1, 5), 2))  # 1 at the brow ends, 0 mid-brow
    shape[brows, 1] += u(-0.05, 0.04) - u(-0.03, 0.05) * ends  # brow height, then arch
    for eye in (slice(36, 42), slice(42, 48)):
        centre = shape[eye].mean(0)
        shape[eye] = centre + (shape[eye] - centre) * [u(.88, 1.12), u(.85, 1.2)]
    spread = u(-0.04, 0.04)
    shape[eyes, 0] += np.sign(shape[eyes, 0]) * spread
    shape[brows, 0] += np.sign(shape[brows, 0]) * spread
    root = shape[27]
    shape[nose] = root + (shape[nose] - root) * [u(0.85, 1.25), u(0.9, 1.1)]
    shape[mouth, 1] += shape[33, 1] - _MEAN_FACE[33, 1] + u(-0.04, 0.04)  # follows the nose
    centre = shape[mouth].mean(0)
    lip_scale = u(0.75, 1.3)
    shape[mouth] = centre + (shape[mouth] - centre) * [u(0.85, 1.15), 1.0]
    # lip thickness: move the outer contour away from the inner one, leave the inner line
    shape[49:54, 1] += (shape[49:54, 1] - shape[62, 1]) * (lip_scale - 1)
    shape[55:60, 1] += (shape[55:60, 1] - shape[66, 1]) * (lip_scale - 1)
    tone = u(0, len(_SKIN_TONES) - 1)
    skin = np.array([np.interp(tone, np.arange(len(_SKIN_TONES)), _SKIN_TONES[:, c])
                     for c in range(3)], np.float32) * u(0.94, 1.04)
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
def _white_balance(warmth: float) -> tuple[float, float, float]:
    """RGB gains along the warm-cool axis; a free per-channel jitter can turn skin green."""
    return (1 + warmth, 1.0, 1 - warmth)


@dataclass(frozen=True)
class Nuisance:
    """Image-level nuisances. The defaults are "none": a frontal, evenly lit, clean face."""

    rotation: float = 0.0  # in-plane, degrees
    scale: float = 1.0
    shift: tuple[float, float] = (0.0, 0.0)  # fractions of the image size
    yaw: float = 0.0  # radians; approximated by a depth-dependent horizontal squeeze
    gaze: tuple[float, float] = (0.0, 0.0)  # iris offset, fractions of the eye width
    light: tuple[float, float] = (0.0, 0.0)  # multiplicative brightness gradient (x, y)
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
            rotation=float(np.clip(rng.normal(0, 8), -15, 15)),
            scale=u(0.85, 1.05),
            shift=(u(-0.05, 0.05), u(-0.05, 0.05)),
            yaw=u(-0.3, 0.3),
            gaze=(u(-0.15, 0.15), u(-0.08, 0.08)),
            light=(u(-0.35, 0.35), u(-0.25, 0.25)),
            brightness=u(0.7, 1.05),
            white_balance=_white_balance(float(np.clip(rng.normal(0, 0.04), -0.1, 0.1))),
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
    name, _, core, optional = _PROTOTYPES[rng.choice(len(_PROTOTYPES), p=_PROTOTYPE_P)]
    intensity = rng.exponential(0.35, _A)  # traces: every face has some sub-threshold activity
    active = list(core) + [au for au in optional if rng.random() < 0.5]
    if name == "mixed":
        active = [int(au) for au in rng.choice(ALL_AUS, rng.integers(2, 5), replace=False)]
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


# ------------------------------------------------------------------------------ AU geometry
# Landmark displacement (IOD units, face frame) at intensity 5. Bilateral AUs list the subject's
# right side (image left; lateral is -x) and are mirrored for the left; midline points listed in
# a bilateral AU get half their motion from each side.
_MOTION: dict[int, dict[int, tuple[float, float]]] = {
    1: {21: (0, -.13), 20: (0, -.09), 19: (0, -.045), 18: (0, -.015)},
    2: {17: (0, -.11), 18: (0, -.12), 19: (0, -.08), 20: (0, -.03)},
    4: {21: (.07, .08), 20: (.04, .08), 19: (.02, .06), 18: (0, .04), 17: (0, .02),
        37: (0, .015), 38: (0, .02)},
    5: {37: (0, -.055), 38: (0, -.055), 36: (-.005, -.01), 39: (0, -.005)},
    6: {40: (0, -.03), 41: (0, -.035), 36: (.01, -.008), 17: (0, .015), 18: (0, .01)},
    7: {40: (0, -.05), 41: (0, -.05), 37: (0, .015), 38: (0, .015)},
    9: {31: (.01, -.05), 32: (0, -.045), 33: (0, -.02), 30: (0, -.01), 21: (.02, .04),
        20: (0, .02), 49: (0, -.025), 50: (0, -.03), 51: (0, -.015), 61: (0, -.02)},
    10: {50: (0, -.07), 49: (-.01, -.05), 51: (0, -.035), 61: (0, -.05), 62: (0, -.025),
         48: (0, -.015), 31: (0, -.015)},
    12: {48: (-.08, -.09), 49: (-.03, -.04), 59: (-.04, -.05), 60: (-.07, -.08),
         67: (-.02, -.03), 58: (-.01, -.02), 40: (0, -.01), 41: (0, -.012)},
    14: {48: (.025, -.012), 60: (.02, -.01), 49: (.01, -.005), 59: (.01, -.005)},
    15: {48: (0, .085), 60: (0, .06), 59: (0, .035), 49: (0, .02), 58: (0, .01)},
    17: {57: (0, -.05), 56: (0, -.045), 58: (0, -.045), 55: (0, -.03), 59: (0, -.03),
         65: (0, -.035), 66: (0, -.04), 67: (0, -.035), 7: (0, -.04), 8: (0, -.045),
         9: (0, -.04), 6: (0, -.02), 10: (0, -.02), 50: (0, -.01), 51: (0, -.015), 52: (0, -.01)},
    20: {48: (-.09, .015), 60: (-.08, .01), 49: (-.04, .01), 59: (-.04, 0), 67: (-.02, 0),
         61: (-.02, 0), 50: (0, .008), 58: (0, -.008)},
    23: {48: (.07, 0), 54: (-.07, 0), 60: (.06, 0), 64: (-.06, 0), 49: (.04, .01),
         53: (-.04, .01), 59: (.04, -.01), 55: (-.04, -.01), 50: (.02, .01), 52: (-.02, .01),
         58: (.02, -.01), 56: (-.02, -.01)},
    24: {49: (0, .035), 50: (0, .045), 51: (0, .05), 52: (0, .045), 53: (0, .035),
         55: (0, -.035), 56: (0, -.045), 57: (0, -.05), 58: (0, -.045), 59: (0, -.035),
         61: (0, .008), 62: (0, .01), 63: (0, .008), 65: (0, -.008), 66: (0, -.01), 67: (0, -.008)},
    25: {61: (0, -.03), 62: (0, -.035), 63: (0, -.03), 65: (0, .07), 66: (0, .08), 67: (0, .07),
         55: (0, .03), 56: (0, .045), 57: (0, .05), 58: (0, .045), 59: (0, .03),
         50: (0, -.012), 51: (0, -.015), 52: (0, -.012)},
    26: {8: (0, .18), 7: (0, .16), 9: (0, .16), 6: (0, .12), 10: (0, .12), 5: (0, .08),
         11: (0, .08), 4: (0, .045), 12: (0, .045), 3: (0, .02), 13: (0, .02),
         55: (0, .12), 56: (0, .14), 57: (0, .14), 58: (0, .14), 59: (0, .12), 65: (0, .06),
         66: (0, .065), 67: (0, .06), 48: (0, .03), 54: (0, .03), 60: (0, .03), 64: (0, .03)},
}


# Hardness knobs: scale every AU's landmark motion and texture opacity. Tuned so that pixels
# with a linear model stay weak while a small CNN learns (scripts/synthau_baselines.py).
_MOTION_GAIN = 1.5
_CUE_GAIN = 1.5


def _motion_fields() -> np.ndarray:
    """Per-AU, per-side landmark displacement at intensity 5. Returns ``[A, 2, 68, 2]``."""
    fields = np.zeros((_A, 2, NUM_LANDMARKS, 2), np.float32)
    for au, motion in _MOTION.items():
        a = _AU_INDEX[au]
        for i, d in motion.items():
            fields[a, 0, i] = np.array(d) * _MOTION_GAIN
        if ACTION_UNITS[au].bilateral:
            midline = np.array([_FLIP[i] == i for i in range(NUM_LANDMARKS)])
            fields[a, 0, midline] /= 2
            fields[a, 1] = fields[a, 0][_FLIP] * [-1.0, 1.0]
        else:  # a central AU moves the face once, through its "right side" entry
            fields[a, 1] = 0
    return fields


_MOTION_FIELDS = _motion_fields()


def deform(shape: np.ndarray, intensity: np.ndarray, side_gain: np.ndarray) -> np.ndarray:
    """Move neutral landmarks ``[68, 2]`` by AU intensities ``[A]`` and side gains ``[A, 2]``."""
    weights = intensity[:, None] / 5.0 * side_gain  # [A, 2]
    return shape + np.einsum("as,asld->ld", weights, _MOTION_FIELDS)


# ---------------------------------------------------------------------------------- drawing
_SPLINE_STEPS = 6
_t = np.linspace(0, 1, _SPLINE_STEPS, endpoint=False)[:, None]
_CATMULL_ROM = np.hstack([-_t**3 + 2 * _t**2 - _t, 3 * _t**3 - 5 * _t**2 + 2,
                          -3 * _t**3 + 4 * _t**2 + _t, _t**3 - _t**2]) / 2  # [steps, 4]


def _spline(points: np.ndarray, closed: bool = False) -> np.ndarray:
    """A smooth Catmull-Rom curve through every one of ``points`` ``[K, 2]`` -> ``[K', 2]``."""
    if closed:
        padded = np.concatenate([points[-1:], points, points[:2]])
    else:
        padded = np.concatenate([2 * points[:1] - points[1:2], points,
                                 2 * points[-1:] - points[-2:-1]])
    segments = len(points) if closed else len(points) - 1
    control = padded[np.arange(segments)[:, None] + np.arange(4)]  # [S, 4, 2]
    curve = np.einsum("tk,skd->std", _CATMULL_ROM, control).reshape(-1, 2)
    return curve if closed else np.concatenate([curve, points[-1:]])


def _fixed(points: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(points) * (1 << _SHIFT)).astype(np.int32)


def _rgb(colour: np.ndarray) -> tuple[float, float, float]:
    return tuple(255 * min(max(float(c), 0.0), 1.0) for c in colour)


class _Painter:
    """Draws one face on a ``RENDER_SIZE`` canvas from deformed face-frame landmarks.

    ``dark`` and ``light`` are texture layers (0..255) that later darken / brighten the colour
    canvas multiplicatively, so wrinkles and bulges take on the local skin colour.
    """

    def __init__(self, identity: Identity, shape: np.ndarray, nuisance: Nuisance):
        size = RENDER_SIZE
        self.identity, self.shape, self.nuisance = identity, shape, nuisance
        self.u = _IOD_FRACTION * size
        self.cos, self.sin = np.cos(nuisance.yaw), np.sin(nuisance.yaw)
        self.pts = self.project(shape, _LANDMARK_DEPTH)  # [68, 2] canvas pixels
        self.rgb = np.empty((size, size, 3), np.uint8)
        self.dark = np.zeros((size, size), np.uint8)
        self.light = np.zeros((size, size), np.uint8)
        self.face_mask = np.zeros((size, size), np.uint8)

    def project(self, points: np.ndarray, depth: np.ndarray | None = None) -> np.ndarray:
        """Face frame ``[K, 2]`` -> canvas pixels ``[K, 2]``, turning the head by the yaw."""
        depth = _depth(points[:, 0]) if depth is None else depth
        x = points[:, 0] * self.cos + depth * self.sin
        return np.stack([RENDER_SIZE / 2 + self.u * x,
                         RENDER_SIZE * _EYE_LEVEL + self.u * points[:, 1]], 1)

    def at(self, landmark: int, side: int = 0, lateral: float = 0.0, down: float = 0.0,
           ) -> np.ndarray:
        """Canvas point offset (IOD units) from a landmark; side 1 mirrors to the subject's left."""
        index = int(_FLIP[landmark]) if side else landmark
        direction = 1.0 if side else -1.0
        return self.pts[index] + self.u * np.array([direction * lateral * self.cos, down])

    def fill(self, target: np.ndarray, points: np.ndarray, value) -> None:
        cv2.fillPoly(target, [_fixed(points)], value, cv2.LINE_AA, _SHIFT)

    def stroke(self, target: np.ndarray, points: np.ndarray, value, width: float) -> None:
        """A smooth line through ``points`` ``[K, 2]``, ``width`` in IOD units."""
        curve = _spline(np.asarray(points, np.float64)) if len(points) > 2 else points
        cv2.polylines(target, [_fixed(curve)], False, value, max(1, round(width * self.u)),
                      cv2.LINE_AA, _SHIFT)

    def blob(self, target: np.ndarray, centre: np.ndarray, axes: tuple[float, float], value,
             ) -> None:
        """A filled ellipse, ``axes`` in IOD units."""
        cv2.ellipse(target, tuple(_fixed(centre).tolist()),
                    tuple(_fixed(np.array(axes) * self.u).tolist()), 0, 0, 360, value, -1,
                    cv2.LINE_AA, _SHIFT)

    def head(self) -> None:
        """Background, hair, neck, shoulders, ears and the skin of the face."""
        ident, shape = self.identity, self.shape
        ramp = np.linspace(1.1, 0.8, RENDER_SIZE, dtype=np.float32)[:, None, None]
        self.rgb[:] = np.clip(ramp * ident.background * 255, 0, 255).astype(np.uint8)
        half_width = (shape[16, 0] - shape[0, 0]) / 2
        ear_level = (shape[0, 1] + shape[16, 1]) / 2
        chin = ident.shape[8, 1]  # neutral: hair, neck and clothes must not move with the AUs
        theta = np.linspace(np.pi, 2 * np.pi, 25)
        top = ident.hairline - 0.45
        hair = np.stack([1.16 * half_width * np.cos(theta),
                         ear_level + (ear_level - top) * np.sin(theta)], 1)
        hair_bottom = chin + 0.7 if ident.long_hair else ear_level + 0.45
        hair_sides = np.array([[1.2 * half_width, hair_bottom], [-1.2 * half_width, hair_bottom]])
        self.fill(self.rgb, self.project(np.concatenate([hair, hair_sides])), _rgb(ident.hair))
        neck = np.array([[-.5, .6], [-.55, chin + .9], [.55, chin + .9], [.5, .6]])
        neck[:, 0] *= half_width
        self.fill(self.rgb, self.project(neck), _rgb(ident.skin * 0.8))
        shoulders = np.array([[-.62, chin + .55], [-2.6, chin + 1.2], [-3.2, 6], [3.2, 6],
                              [2.6, chin + 1.2], [.62, chin + .55]]) * [half_width, 1]
        self.fill(self.rgb, self.project(shoulders), _rgb(ident.clothes))
        for side in (0, 1):
            self.blob(self.rgb, self.at(1, side, 0.07, -0.1), (0.12 * self.cos, 0.26),
                      _rgb(ident.skin * 0.9))
        # forehead: an ellipse over the jaw, cut by a hairline that dips towards the temples
        theta = np.linspace(0, np.pi, 31)
        x = half_width * np.cos(theta)
        arc = ear_level - (ear_level - top + 0.1) * np.sin(theta)
        forehead = np.stack([x, np.maximum(arc, ident.hairline + 0.6 * (x / half_width) ** 4)], 1)
        outline = np.concatenate([_spline(self.pts[:17]), self.project(forehead)])
        self.fill(self.face_mask, outline, 255)
        self.fill(self.rgb, outline, _rgb(ident.skin))
        self.stroke(self.dark, self.pts[3:14], 40, 0.05)  # jaw line shadow

    def brows(self) -> None:
        colour = _rgb(self.identity.hair * 0.55 + self.identity.skin * 0.15)
        for brow in (self.pts[17:22], self.pts[26:21:-1]):  # outer -> inner
            line = _spline(brow)
            tangent = np.gradient(line, axis=0)
            normal = np.stack([tangent[:, 1], -tangent[:, 0]], 1)
            normal *= np.sign(normal[:, 1:2].mean()) * -1  # point up the face
            normal /= np.linalg.norm(normal, axis=1, keepdims=True) + 1e-6
            half = self.identity.brow_thickness * self.u * np.linspace(0.35, 0.65, len(line))
            upper = line + normal * half[:, None] * 1.1
            lower = line - normal * half[:, None] * 0.9
            self.fill(self.rgb, np.concatenate([upper, lower[::-1]]), colour)

    def inside(self, outline: np.ndarray, base: tuple[float, float, float],
               paint: Callable[[np.ndarray, np.ndarray], None]) -> None:
        """Paint only inside the closed ``outline`` ``[K, 2]``: ``paint(crop, origin)`` draws on a
        crop pre-filled with ``base`` whose top-left pixel is ``origin`` on the canvas."""
        x0, y0 = np.maximum(np.floor(outline.min(0)).astype(int) - 2, 0)
        x1, y1 = np.ceil(outline.max(0)).astype(int) + 3
        origin, roi = np.array([x0, y0]), self.rgb[y0:y1, x0:x1]
        mask = np.zeros(roi.shape[:2], np.uint8)
        cv2.fillPoly(mask, [_fixed(outline - origin)], 255, cv2.LINE_AA, _SHIFT)
        if not mask.any():
            return
        crop = np.empty_like(roi)
        crop[:] = base
        paint(crop, origin)
        alpha = mask[..., None].astype(np.float32) / 255
        roi[:] = (crop * alpha + roi * (1 - alpha)).astype(np.uint8)

    def eyes(self) -> None:
        sclera = _rgb(np.array([0.93, 0.9, 0.87]) * (0.7 + 0.3 * self.identity.skin))
        for first in (36, 42):
            ring = self.pts[first:first + 6]
            width = np.linalg.norm(ring[3] - ring[0])
            # the iris stays put between the corners, so a moving lid covers or bares it
            centre = (ring[0] + ring[3]) / 2 + np.array(self.nuisance.gaze) * width - [
                0, 0.02 * self.u]
            radius = 0.24 * width / self.u

            def iris(crop: np.ndarray, origin: np.ndarray, centre=centre, r=radius) -> None:
                self.blob(crop, centre - origin, (r, r), _rgb(self.identity.iris))
                self.blob(crop, centre - origin, (r * 0.45, r * 0.45), (15, 10, 10))
                self.blob(crop, centre - origin + [0.3 * r * self.u, -0.3 * r * self.u],
                          (r * 0.18, r * 0.18), (245, 245, 245))

            self.inside(_spline(ring, closed=True), sclera, iris)
            upper, lower = ring[:4], np.concatenate([ring[3:], ring[:1]])
            self.stroke(self.rgb, upper, _rgb(self.identity.hair * 0.3), 0.03)
            self.stroke(self.dark, lower, 70, 0.015)
            self.stroke(self.dark, upper + [0, -0.09 * self.u], 45, 0.02)  # lid crease

    def nose(self) -> None:
        p, u = self.pts, self.u
        self.stroke(self.dark, [p[27] + [0.09 * u, 0], p[29] + [0.1 * u, 0], p[30] + [.08 * u, 0]],
                    35, 0.07)
        self.stroke(self.dark, p[31:36] + [0, 0.02 * u], 45, 0.04)
        self.blob(self.light, p[30] + [0, -0.03 * u], (0.06, 0.05), 30)
        for side in (0, 1):
            self.blob(self.rgb, (self.at(31, side) + self.at(32, side)) / 2 - [0, 0.02 * u],
                      (0.045 * self.cos, 0.022), _rgb(self.identity.skin * 0.35))
            self.stroke(self.dark, [self.at(31, side, 0.0, 0.0), self.at(31, side, 0.05, -0.05),
                                    self.at(31, side, 0.02, -0.13)], 90, 0.02)

    def mouth(self) -> None:
        p, lips = self.pts, self.identity.lips

        def teeth(crop: np.ndarray, origin: np.ndarray) -> None:  # a row of upper teeth
            edge = _spline(p[60:65]) - origin
            self.fill(crop, np.concatenate([edge, edge[::-1] + [0, 0.07 * self.u]]),
                      (235, 230, 215))

        self.inside(_spline(p[60:68], closed=True), (70, 20, 25), teeth)  # lips apart
        upper = np.concatenate([_spline(p[48:55]), _spline(p[60:65])[::-1]])
        lower = np.concatenate([_spline(p[[54, 55, 56, 57, 58, 59, 48]]),
                                _spline(p[[60, 67, 66, 65, 64]])])
        self.fill(self.rgb, upper, _rgb(lips))
        self.fill(self.rgb, lower, _rgb(lips * 1.1))
        self.stroke(self.rgb, p[[48, 60, 61, 62, 63, 64, 54]], _rgb(lips * 0.5), 0.015)
        self.stroke(self.dark, p[[59, 58, 57, 56, 55]] + [0, 0.05 * self.u], 50, 0.05)

    def cues(self, intensity: np.ndarray, side_gain: np.ndarray) -> None:
        """AU texture: wrinkles, furrows, folds, bulges; opacity grows with intensity."""
        dark, light, at = self.dark, self.light, self.at
        for au in ALL_AUS:
            a = _AU_INDEX[au]
            sides = (0, 1) if ACTION_UNITS[au].bilateral else (0,)
            for side in sides:
                s = float(intensity[a] / 5 * side_gain[a, side]) * 255 * _CUE_GAIN
                if s < 8:  # below ~3 grey levels of ink: invisible, skip the work
                    continue
                if au == 1:  # horizontal forehead wrinkles above the inner brow
                    for k in range(3):
                        y = -0.22 - 0.13 * k
                        self.stroke(dark, [at(21, side, -.22, y + .025), at(21, side, 0, y),
                                           at(21, side, .3, y + .03)], .25 * s, .025)
                elif au == 2:  # wrinkles above the outer brow
                    for k in range(2):
                        y = -0.2 - 0.13 * k
                        self.stroke(dark, [at(19, side, -.1, y), at(18, side, 0, y),
                                           at(17, side, .05, y + .05)], .22 * s, .025)
                elif au == 4:  # vertical furrow between the brows, shadow under the brow
                    self.stroke(dark, [at(21, side, -.07, -.12), at(21, side, -.09, .1)],
                                .45 * s, .022)
                    self.stroke(dark, [at(19, side, 0, .07), at(21, side, 0, .07)], .2 * s, .06)
                elif au == 5:  # bright upper lid skin as the lid retracts
                    self.stroke(light, [at(37, side, 0, -.06), at(38, side, 0, -.06)], .3 * s,
                                .04)
                elif au == 6:  # cheek bulge, infraorbital furrow, crow's feet
                    centre = (at(40, side) + at(41, side)) / 2
                    self.blob(light, centre + self.u * np.array([0, .3]), (.22 * self.cos, .1),
                              .18 * s)
                    self.stroke(dark, [at(36, side, 0, .1), at(41, side, 0, .13),
                                       at(40, side, 0, .12)], .3 * s, .025)
                    for dy in (-.08, 0, .08):
                        self.stroke(dark, [at(36, side, .06, dy / 4), at(36, side, .2, dy)],
                                    .4 * s, .025)
                elif au == 7:  # tensed lower lid
                    lid = [at(36, side, 0, .03), at(41, side, 0, .03), at(40, side, 0, .03),
                           at(39, side, 0, .03)]
                    self.stroke(dark, lid, .35 * s, .025)
                elif au == 9:  # wrinkles across the nose root and along the nose side
                    for k in range(3):
                        self.stroke(dark, [at(28, side, .02, -.06 + .06 * k),
                                           at(28, side, .14, -.1 + .07 * k)], .45 * s, .025)
                    self.stroke(dark, [at(27, side, -.02, -.03), at(27, side, .12, -.05)],
                                .35 * s, .025)
                elif au == 10:  # upper nasolabial furrow deepens
                    self.stroke(dark, [at(31, side, .05, -.02), at(31, side, .1, .08),
                                       at(49, side, .08, 0)], .35 * s, .025)
                elif au == 12:  # nasolabial fold lateral to the raised lip corner
                    fold = [at(31, side, .06, -.05), at(31, side, .16, .06),
                            at(48, side, .12, 0), at(48, side, .1, .14)]
                    self.stroke(dark, fold, .45 * s, .03)
                    self.stroke(light, [q + [(1 if side else -1) * .05 * self.u, 0]
                                        for q in fold[:3]], .25 * s, .05)
                elif au == 14:  # dimple beside the lip corner
                    self.stroke(dark, [at(48, side, .1, -.05), at(48, side, .13, 0),
                                       at(48, side, .1, .05)], .5 * s, .025)
                elif au == 15:  # fold running down from the lip corner
                    self.stroke(dark, [at(48, side, .02, .03), at(48, side, .06, .15)], .4 * s,
                                .025)
                elif au == 17:  # chin boss bulge with "orange peel" pits, mentolabial crease
                    centre = (at(57) + at(8)) / 2
                    self.blob(light, centre, (.22, .1), .25 * s)
                    for pit in self.identity.chin_pits:
                        self.blob(dark, centre + pit * self.u, (.012, .025), .4 * s)
                    self.stroke(dark, [at(57, 0, .15, .1), at(57, 0, 0, .13),
                                       at(57, 1, .15, .1)], .45 * s, .025)
                elif au == 20:  # horizontal stretch lines beyond the lip corner
                    self.stroke(dark, [at(48, side, .05, .01), at(48, side, .22, .04)], .35 * s,
                                .025)
                elif au == 23:  # tightened red margin: darker lip border, vertical lip lines
                    self.stroke(dark, self.pts[48:55], .25 * s, .025)
                    for i in (50, 51, 52, 56, 57, 58):
                        self.stroke(dark, [at(i, 0, 0, -.01), at(i, 0, 0, .03 if i < 55 else
                                                                   -.03)], .3 * s, .025)
                elif au == 24:  # bulges above and below the pressed lips
                    self.stroke(dark, [at(49, 0, 0, -.07), at(51, 0, 0, -.09),
                                       at(53, 0, 0, -.07)], .3 * s, .025)
                    self.stroke(dark, [at(59, 0, 0, .08), at(57, 0, 0, .1), at(55, 0, 0, .08)],
                                .3 * s, .025)

    def compose(self) -> np.ndarray:
        """Canvas with texture, face-edge shading and lighting. Returns ``[S, S, 3]`` uint8."""
        sigma = 0.015 * self.u  # keep 1-px strokes soft like skin creases
        layers = cv2.GaussianBlur(cv2.merge([self.dark, self.light]), (0, 0), sigma)
        dark, light = (layers[..., k].astype(np.float32) / 255 for k in (0, 1))
        # the wide rim blur runs at quarter resolution: it is smooth anyway and 16x cheaper
        quarter = cv2.resize(self.face_mask, (RENDER_SIZE // 4, RENDER_SIZE // 4),
                             interpolation=cv2.INTER_AREA)
        rim = cv2.resize(cv2.GaussianBlur(quarter, (0, 0), 0.05 * self.u),
                         (RENDER_SIZE, RENDER_SIZE)).astype(np.float32) / 255
        edge = 1 - 0.25 * (1 - rim) * (self.face_mask > 0)
        # the light gradient is applied in the face frame: after the random pose warp it is
        # still a random linear gradient, and here it costs no extra full-image pass
        ramp = np.linspace(-0.5, 0.5, RENDER_SIZE, dtype=np.float32)
        nuisance = self.nuisance
        shade = (1 - dark) * (1 + 0.6 * light) * edge * nuisance.brightness * (
            1 + nuisance.light[0] * ramp[None, :] + nuisance.light[1] * ramp[:, None])
        gain = cv2.merge([shade * w for w in nuisance.white_balance])
        return cv2.multiply(self.rgb.astype(np.float32), gain, dtype=cv2.CV_8U)  # saturates


def _apply_nuisance(canvas: np.ndarray, landmarks: np.ndarray, nuisance: Nuisance,
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Pose, gamma, blur and noise on the uint8 canvas ``[S, S, 3]`` and its landmarks."""
    size = RENDER_SIZE
    centre = (size - 1) / 2
    matrix = cv2.getRotationMatrix2D((centre, centre), nuisance.rotation, nuisance.scale)
    matrix[:, 2] += np.array(nuisance.shift) * size
    image = cv2.warpAffine(canvas, matrix, (size, size), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REPLICATE)
    landmarks = landmarks @ matrix[:, :2].T + matrix[:, 2]
    if nuisance.gamma != 1.0:
        lut = (np.linspace(0, 1, 256) ** nuisance.gamma * 255).round().astype(np.uint8)
        image = cv2.LUT(image, lut)
    if nuisance.blur > 0:
        image = cv2.GaussianBlur(image, (0, 0), nuisance.blur)
    if nuisance.noise > 0:  # one luminance noise field, like a sensor, and 3x cheaper than RGB
        noise = np.random.default_rng(nuisance.noise_seed).standard_normal(
            (size, size, 1), np.float32) * nuisance.noise
        image = np.clip(image + noise, 0, 255).astype(np.uint8)
    return image, landmarks.astype(np.float32)


# ---------------------------------------------------------------------------------- data set
def _check_index(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


class SynthAU:
    """Deterministic procedural face renderer: a sample is a pure function of
    (seed, subject, index).

    ``sample(subject, index)`` draws an expression and nuisances from the sample's own random
    stream; ``render`` draws given intensities and nuisances, e.g. to isolate one AU.
    """

    def __init__(self, seed: int = 0, image_size: int = RENDER_SIZE,
                 cache_dir: str | Path | None = None):
        self.seed = _check_index("seed", seed)
        if _check_index("image_size", image_size) < 16:
            raise ValueError(f"image_size must be at least 16 pixels, got {image_size}")
        self.image_size = int(image_size)
        self._identities: dict[int, Identity] = {}
        # rendered samples kept on disk (one .npz each): a pure function of the key, so safe to
        # share between runs and processes
        self.cache_dir = None if cache_dir is None else \
            Path(cache_dir).expanduser() / f"seed{self.seed}-px{self.image_size}"

    def subject_id(self, subject: int) -> str:
        """The subject's name, e.g. ``"S007"``."""
        return f"S{_check_index('subject', subject):03d}"

    def identity(self, subject: int) -> Identity:
        """The subject's fixed appearance (cached)."""
        subject = _check_index("subject", subject)
        if subject not in self._identities:
            rng = np.random.default_rng([_TAG_IDENTITY, self.seed, subject, 0])
            self._identities[subject] = _make_identity(rng)
        return self._identities[subject]

    def _expression(self, subject: int, index: int) -> tuple:
        """The sample's random stream after drawing its expression: (rng, intensity, side_gain)."""
        rng = np.random.default_rng([_TAG_SAMPLE, self.seed, _check_index("subject", subject),
                                     _check_index("index", index)])
        return (rng, *draw_expression(rng, self.identity(subject).expressiveness))

    def labels(self, subject: int, index: int) -> np.ndarray:
        """``[len(ALL_AUS)]`` uint8 labels of a sample, without rendering it (fast statistics)."""
        return (self._expression(subject, index)[1] >= INTENSITY_THRESHOLD).astype(np.uint8)

    def sample(self, subject: int, index: int, frame: int = 0) -> dict:
        """One labelled face: image ``[H, W, 3]`` uint8 RGB, landmarks ``[68, 2]`` (x, y) pixels,
        intensity ``[len(ALL_AUS)]`` float32 0..5, labels ``[len(ALL_AUS)]`` uint8, subject id.

        ``frame > 0`` gives another frame of the sample's clip: the same expression (same
        labels) under freshly drawn pose, light and camera nuisances, the pair of frames a video
        hands a self-supervised method for free. Frame 0 is the sample itself.
        """
        name = f"{index:05d}.npz" if _check_index("frame", frame) == 0 else \
            f"{index:05d}-{frame}.npz"
        cached = None if self.cache_dir is None else self.cache_dir / f"{subject:04d}" / name
        if cached is not None and cached.exists():
            with np.load(cached) as stored:
                image, landmarks = stored["image"], stored["landmarks"]
                intensity = stored["intensity"]
        else:
            rng, intensity, side_gain = self._expression(subject, index)
            if frame:
                rng = np.random.default_rng([_TAG_FRAME, self.seed, subject, index, frame])
            image, landmarks = self.render(subject, intensity, Nuisance.random(rng), side_gain)
            if cached is not None:
                save_atomically(cached, image=image, landmarks=landmarks, intensity=intensity)
        return {"image": image, "landmarks": landmarks, "intensity": intensity,
                "labels": (intensity >= INTENSITY_THRESHOLD).astype(np.uint8),
                "subject": self.subject_id(subject)}

    def render(self, subject: int, intensity: np.ndarray, nuisance: Nuisance | None = None,
               side_gain: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``subject`` with AU ``intensity`` ``[A]`` (ALL_AUS order, 0..5).

        ``nuisance`` defaults to none (frontal, clean); ``side_gain`` ``[A, 2]`` scales each AU on
        the subject's right / left side (default: symmetric). Returns the image
        ``[H, W, 3]`` uint8 RGB and the landmarks ``[68, 2]`` float32 (x, y) in its pixels.
        """
        intensity = np.asarray(intensity, np.float32)
        if intensity.shape != (_A,) or not np.all((intensity >= 0) & (intensity <= 5)):
            raise ValueError(f"intensity must be {_A} values in 0..5 in ALL_AUS order {ALL_AUS}, "
                             f"got shape {intensity.shape}")
        gain = np.ones((_A, 2), np.float32) if side_gain is None else np.asarray(side_gain)
        if gain.shape != (_A, 2):
            raise ValueError(f"side_gain must have shape ({_A}, 2), got {gain.shape}")
        nuisance = nuisance or Nuisance()
        identity = self.identity(subject)
        painter = _Painter(identity, deform(identity.shape, intensity, gain), nuisance)
        painter.head()
        painter.brows()
        painter.eyes()
        painter.nose()
        painter.mouth()
        painter.cues(intensity, gain)
        image, landmarks = _apply_nuisance(painter.compose(), painter.pts, nuisance)
        if self.image_size != RENDER_SIZE:
            ratio = self.image_size / RENDER_SIZE
            image = cv2.resize(image, (self.image_size, self.image_size),
                               interpolation=cv2.INTER_AREA)
            landmarks = (landmarks + 0.5) * ratio - 0.5  # pixel centres, not corners, scale
        return image, landmarks


def save_atomically(path: Path, **arrays: np.ndarray) -> None:
    """Writes ``arrays`` to the ``.npz`` file ``path`` so that no reader sees a partial one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.stem}.{os.getpid()}.npz")
    np.savez(partial, **arrays)
    os.replace(partial, path)


def split_subjects(split: str) -> list[int]:
    """Subject indices of a default split (``SYNTHAU_SPLITS``)."""
    if split not in SYNTHAU_SPLITS:
        raise ValueError(f"unknown SynthAU split {split!r}; choose one of {list(SYNTHAU_SPLITS)}")
    return list(SYNTHAU_SPLITS[split])


def unlabeled_subjects(count: int) -> list[int]:
    """``count`` subjects for unlabeled pretraining: the ``"unlabeled"`` split first, then the
    subjects after every labelled one (never a train / val / test subject)."""
    if count < 1:
        raise ValueError(f"need at least one unlabeled SynthAU subject, got {count}")
    first = split_subjects("unlabeled")
    after = max(s for split in SYNTHAU_SPLITS for s in SYNTHAU_SPLITS[split]) + 1
    return (first + list(range(after, after + count - len(first))))[:count]


# ------------------------------------------------------------------------------ sample grid
def sample_grid(dataset: SynthAU, subjects: list[int], rows: int, cols: int,
                landmarks: bool = False) -> np.ndarray:
    """A ``rows x cols`` RGB grid of samples, each captioned with subject id and active AUs."""
    size, caption = dataset.image_size, 40
    grid = np.full((rows * (size + caption), cols * size, 3), 255, np.uint8)
    for tile in range(rows * cols):
        subject, index = subjects[tile % len(subjects)], tile // len(subjects)
        sample = dataset.sample(subject, index)
        y, x = tile // cols * (size + caption), tile % cols * size
        image = sample["image"].copy()
        if landmarks:
            for point in sample["landmarks"]:
                cv2.circle(image, tuple(_fixed(point).tolist()), 1 << _SHIFT, (0, 255, 0), -1,
                           cv2.LINE_AA, _SHIFT)
        grid[y:y + size, x:x + size] = image
        keys = [f"AU{n}" for n, on in zip(ALL_AUS, sample["labels"], strict=True) if on]
        lines = [f"{sample['subject']} #{index}", " ".join(keys) or "(no AU)"]
        for k, text in enumerate(lines):
            cv2.putText(grid, text, (x + 4, y + size + 15 + 17 * k), cv2.FONT_HERSHEY_SIMPLEX,
                        0.42, (0, 0, 0), 1, cv2.LINE_AA)
    return grid


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Write a PNG grid of SynthAU samples.", allow_abbrev=False)
    parser.add_argument("--grid", type=Path, required=True, help="output PNG path")
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--cols", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", default="train", choices=list(SYNTHAU_SPLITS))
    parser.add_argument("--size", type=int, default=RENDER_SIZE, help="tile size in pixels")
    parser.add_argument("--landmarks", action="store_true", help="overlay the 68 landmarks")
    args = parser.parse_args(argv)
    if args.rows < 1 or args.cols < 1:
        parser.error("--rows and --cols must be at least 1")
    try:
        grid = sample_grid(SynthAU(args.seed, args.size), split_subjects(args.split), args.rows,
                           args.cols, args.landmarks)
        args.grid.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(args.grid), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR)):
            raise OSError(f"could not write {args.grid}; check the directory and the .png suffix")
    except Exception as err:
        from aukit.cli import report_user_error  # Lightning loads only when something failed

        report_user_error(err, "python -m aukit.data.synthau")
        raise
    print(f"wrote {args.grid} ({args.rows}x{args.cols} samples, split {args.split!r})")


if __name__ == "__main__":
    main()
