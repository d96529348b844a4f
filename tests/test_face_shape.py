"""The face frame: the camera and the crop taken out, the eyes on the canonical face's, and
mirror images that match a flipped image."""

import math

import pytest
import torch

from aukit.data.synthau import SynthAU
from aukit.data.transforms import hflip_face
from aukit.face_shape import canonical_shape, mirror_shape, normalise_shape


@pytest.fixture(scope="module")
def faces() -> torch.Tensor:
    """SynthAU landmarks [8, 68, 2] at 128 px: two people x 4 expressions."""
    synth = SynthAU(image_size=128)
    return torch.stack([torch.from_numpy(synth.sample(s, i)["landmarks"])
                        for s in (130, 131) for i in range(4)])


def test_the_face_frame_ignores_the_camera_and_the_crop(faces):
    angle = math.radians(25)
    rotation = torch.tensor([[math.cos(angle), -math.sin(angle)],
                             [math.sin(angle), math.cos(angle)]])
    squash = torch.tensor([[1.2, 0.1], [0.0, 0.9]])  # a crop of another aspect ratio, a shear
    moved = 1.7 * faces @ (rotation @ squash).T + torch.tensor([13.0, -4.0])
    shape = normalise_shape(faces)
    assert torch.allclose(normalise_shape(moved), shape, atol=1e-4)
    # the eyes land near the canonical face's, one inter-ocular distance apart
    right, left = shape[:, 36:42].mean(1), shape[:, 42:48].mean(1)
    assert torch.allclose(right, torch.tensor([-0.5, 0.0]).expand_as(right), atol=0.1)
    assert torch.allclose(left, torch.tensor([0.5, 0.0]).expand_as(left), atol=0.1)


def test_mirroring_twice_is_the_identity_and_matches_a_flipped_image(faces):
    shape = normalise_shape(faces)
    assert torch.equal(mirror_shape(mirror_shape(shape)), shape)
    _, flipped = hflip_face(torch.zeros(len(faces), 3, 128, 128), faces)
    assert torch.allclose(normalise_shape(flipped), mirror_shape(shape), atol=1e-4)


def test_the_canonical_face_is_symmetric_with_unit_eye_distance():
    face = canonical_shape()
    assert torch.allclose(mirror_shape(face[None])[0], face, atol=1e-6)
    right, left = face[36:42].mean(0), face[42:48].mean(0)
    assert torch.isclose((left - right).norm(), torch.tensor(1.0), atol=1e-5)
