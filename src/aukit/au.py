"""AU knowledge base: FACS metadata, dataset AU lists and landmark-defined AU centres.

Landmarks follow the iBUG 68-point convention, 0-based: jaw 0-16, the subject's right brow 17-21
and left brow 22-26, nose 27-35, right eye 36-41, left eye 42-47, outer lips 48-59, inner lips
60-67. "Right" is the subject's right, i.e. the image left in a frontal face.

An AU centre is the mean of a few landmarks plus an offset measured in inter-ocular distances
(IOD) in the face frame: +x points from the right eye to the left eye, +y points down the face.
Bilateral AUs list the centre on the subject's right side; the left centre is its mirror image
(landmark indices through ``FLIP_PERMUTATION``, x offset negated).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

NUM_LANDMARKS = 68

# index i of a mirrored face holds the landmark that was at FLIP_PERMUTATION[i]
FLIP_PERMUTATION: tuple[int, ...] = (
    tuple(range(16, -1, -1))  # jaw 0..16
    + tuple(range(26, 16, -1))  # brows 17..26
    + (27, 28, 29, 30)  # nose bridge
    + (35, 34, 33, 32, 31)  # nostrils
    + (45, 44, 43, 42, 47, 46)  # right eye <- left eye
    + (39, 38, 37, 36, 41, 40)  # left eye <- right eye
    + (54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55)  # outer lips
    + (64, 63, 62, 61, 60, 67, 66, 65)  # inner lips
)


@dataclass(frozen=True)
class AUCentre:
    """Where an AU acts: mean of ``landmarks`` shifted by ``offset`` (IOD units, face frame)."""

    landmarks: tuple[int, ...]
    offset: tuple[float, float] = (0.0, 0.0)

    def mirrored(self) -> AUCentre:
        return AUCentre(tuple(FLIP_PERMUTATION[i] for i in self.landmarks),
                        (-self.offset[0], self.offset[1]))


@dataclass(frozen=True)
class ActionUnit:
    """One FACS Action Unit."""

    number: int
    name: str
    muscle: str
    region: str
    bilateral: bool
    centre: AUCentre

    @property
    def key(self) -> str:
        """The column / metric name, e.g. ``"AU12"``."""
        return f"AU{self.number}"

    @property
    def centres(self) -> tuple[AUCentre, ...]:
        """One centre for a central AU; (subject's right, subject's left) for a bilateral AU."""
        return (self.centre, self.centre.mirrored()) if self.bilateral else (self.centre,)


_C = AUCentre
ACTION_UNITS: dict[int, ActionUnit] = {au.number: au for au in (
    ActionUnit(1, "Inner Brow Raiser", "frontalis, pars medialis", "brow", True,
               _C((21,), (0.0, -0.3))),
    ActionUnit(2, "Outer Brow Raiser", "frontalis, pars lateralis", "brow", True,
               _C((18,), (0.0, -0.3))),
    ActionUnit(4, "Brow Lowerer", "corrugator supercilii, depressor supercilii, procerus",
               "brow", True, _C((21,), (0.12, 0.05))),
    ActionUnit(5, "Upper Lid Raiser", "levator palpebrae superioris", "eye", True,
               _C((37, 38), (0.0, -0.08))),
    ActionUnit(6, "Cheek Raiser", "orbicularis oculi, pars orbitalis", "cheek", True,
               _C((40, 41), (-0.05, 0.35))),
    ActionUnit(7, "Lid Tightener", "orbicularis oculi, pars palpebralis", "eye", True,
               _C((40, 41), (0.0, 0.05))),
    ActionUnit(9, "Nose Wrinkler", "levator labii superioris alaeque nasi", "nose", True,
               _C((31,), (0.0, -0.35))),
    ActionUnit(10, "Upper Lip Raiser", "levator labii superioris", "mouth", True,
               _C((50,), (0.0, -0.1))),
    ActionUnit(12, "Lip Corner Puller", "zygomaticus major", "mouth", True, _C((48,))),
    ActionUnit(14, "Dimpler", "buccinator", "cheek", True, _C((48,), (-0.15, 0.0))),
    ActionUnit(15, "Lip Corner Depressor", "depressor anguli oris", "mouth", True,
               _C((48,), (0.0, 0.15))),
    ActionUnit(17, "Chin Raiser", "mentalis", "chin", False, _C((57, 8))),
    ActionUnit(20, "Lip Stretcher", "risorius, platysma", "mouth", True,
               _C((59,), (-0.1, 0.05))),
    ActionUnit(23, "Lip Tightener", "orbicularis oris", "mouth", False, _C((48, 54))),
    ActionUnit(24, "Lip Pressor", "orbicularis oris", "mouth", False, _C((51, 57))),
    ActionUnit(25, "Lips Part", "depressor labii inferioris, relaxed mentalis", "mouth", False,
               _C((62, 66))),
    ActionUnit(26, "Jaw Drop", "masseter, temporalis and internal pterygoid relaxed", "jaw",
               False, _C((57,), (0.0, 0.15))),
)}

ALL_AUS: tuple[int, ...] = tuple(sorted(ACTION_UNITS))
DATASET_AUS: dict[str, tuple[int, ...]] = {
    "bp4d": (1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24),
    "disfa": (1, 2, 4, 6, 9, 12, 25, 26),
    "synthau": (1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24),
    "all": ALL_AUS,
}


def parse_au(au: int | str) -> int:
    """``12``, ``"12"``, ``"AU12"`` or ``"au12"`` -> ``12``; anything else is a clear error."""
    text = str(au).strip()
    digits = text[2:] if text.upper().startswith("AU") else text
    if not digits.isdigit() or int(digits) not in ACTION_UNITS:
        known = ", ".join(f"AU{n}" for n in ALL_AUS)
        raise ValueError(f"unknown Action Unit {au!r}; the knowledge base has {known}")
    return int(digits)


def au_numbers(aus: Iterable[int | str] | str) -> tuple[int, ...]:
    """An AU list from a dataset name (``"bp4d"``) or AU names/numbers; order kept, no repeats."""
    if isinstance(aus, str):
        if aus.lower() not in DATASET_AUS:
            raise ValueError(f"unknown AU set {aus!r}; choose one of {sorted(DATASET_AUS)} "
                             "or give a list such as ['AU1', 'AU12']")
        return DATASET_AUS[aus.lower()]
    numbers = tuple(parse_au(a) for a in aus)
    if len(set(numbers)) != len(numbers):
        raise ValueError(f"AU list {list(aus)} names an AU twice")
    if not numbers:
        raise ValueError("the AU list is empty")
    return numbers


def au_keys(aus: Iterable[int | str] | str) -> list[str]:
    """``["AU1", "AU2", ...]`` for an AU list or dataset name."""
    return [f"AU{n}" for n in au_numbers(aus)]
