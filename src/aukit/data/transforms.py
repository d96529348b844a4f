"""Albumentations pipelines over (face image, 68 landmarks) that keep landmarks on the face.

Landmarks use the continuous pixel convention of ``aukit.au_maps`` (pixel ``j`` spans
``[j, j + 1)``). A horizontal flip also permutes landmark indices with ``FLIP_PERMUTATION``, so
index 36-41 is the subject's right eye again and bilateral AU maps swap sides with the image.
"""

from __future__ import annotations

import random
from typing import Literal

import albumentations as A
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2
from torch import Tensor

from aukit.au import FLIP_PERMUTATION, NUM_LANDMARKS
from aukit.au_maps import canonical_landmarks

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

Strength = Literal["weak", "strong"]


def hflip_face(image: Tensor, landmarks: Tensor) -> tuple[Tensor, Tensor]:
    """Mirror a face: image ``[..., C, H, W]`` and landmarks ``[..., 68, 2]`` (x' = W - x).

    Landmark indices are permuted so every index names the same facial point as before.
    """
    flipped = landmarks[..., list(FLIP_PERMUTATION), :].clone()
    flipped[..., 0] = image.shape[-1] - flipped[..., 0]
    return image.flip(-1), flipped


def denormalize(image: Tensor) -> Tensor:
    """Undo the ImageNet normalisation: ``[..., 3, H, W]`` -> float in [0, 255] for display."""
    if image.ndim < 3 or image.shape[-3] != 3:
        raise ValueError(f"expected an RGB image tensor [..., 3, H, W], got {tuple(image.shape)}")
    mean = image.new_tensor(IMAGENET_MEAN)[:, None, None]
    std = image.new_tensor(IMAGENET_STD)[:, None, None]
    return ((image * std + mean) * 255).clamp(0, 255)


def normalize_images(images: Tensor) -> Tensor:
    """uint8 images ``[..., 3, H, W]`` in [0, 255] -> float32 normalised with ImageNet mean/std,
    on the images' device (one fused pass on the GPU); float images are returned unchanged.

    The data modules hand uint8 batches (4x fewer bytes through worker queues and host-to-device
    copies); the stage modules call this on the device (``StageModule.on_after_batch_transfer``).
    """
    if images.dtype != torch.uint8:
        return images
    if images.ndim < 3 or images.shape[-3] != 3:
        raise ValueError(f"expected RGB images [..., 3, H, W], got {tuple(images.shape)}")
    mean = torch.tensor(IMAGENET_MEAN, device=images.device)[:, None, None] * 255
    inv_std = 1 / (torch.tensor(IMAGENET_STD, device=images.device)[:, None, None] * 255)
    return (images.float() - mean) * inv_std


def _with_landmarks(transform: A.BasicTransform) -> A.Compose:
    # remove_invisible=False: all 68 points survive, even when a crop leaves some outside
    return A.Compose([transform], keypoint_params=A.KeypointParams(format="xy",
                                                                   remove_invisible=False))


def _crop(size: int, train: bool, strength: Strength) -> A.BasicTransform:
    if not train:
        return A.Resize(size, size)
    if strength == "weak":
        return A.RandomResizedCrop((size, size), scale=(0.8, 1.0), ratio=(0.9, 1 / 0.9))
    return A.RandomResizedCrop((size, size), scale=(0.5, 1.0), ratio=(0.8, 1.25))


def _warp(strength: Strength) -> A.BasicTransform:
    if strength == "weak":
        return A.Affine(rotate=(-10, 10), translate_percent=(-0.05, 0.05), scale=(0.95, 1.05),
                        p=0.8)
    return A.Affine(rotate=(-15, 15), p=0.8)


def _colour(strength: Strength) -> list[A.BasicTransform]:
    if strength == "weak":
        return [A.RandomBrightnessContrast(0.2, 0.2, p=0.8)]
    # SimCLR's recipe: strong jitter, some grayscale, blur
    return [A.ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8), A.ToGray(p=0.2),
            A.GaussianBlur(sigma_limit=(0.1, 2.0), p=0.5)]


def _check_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 \
            or image.shape[2] != 3:
        what = (f"{image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray)
                else type(image).__name__)
        raise ValueError(f"image must be a uint8 RGB numpy array [H, W, 3], got {what}; "
                         "convert grayscale or BGR (cv2.imread) images with "
                         "cv2.cvtColor(img, cv2.COLOR_GRAY2RGB / cv2.COLOR_BGR2RGB)")
    return image


def _check_landmarks(landmarks: np.ndarray) -> np.ndarray:
    points = np.asarray(landmarks, dtype=np.float32)
    if points.shape != (NUM_LANDMARKS, 2) or not np.isfinite(points).all():
        raise ValueError(f"landmarks must be finite (x, y) pixel coordinates [{NUM_LANDMARKS}, 2]"
                         f" (iBUG-68), got shape {points.shape}; pass None to use the canonical"
                         " face")
    return points


class FaceTransform:
    """``(image uint8 [H, W, 3] RGB, landmarks [68, 2] | None) -> {"image", "landmarks"}``.

    The output image is float32 ``[3, S, S]`` normalised with ImageNet mean/std, or uint8
    ``[3, S, S]`` with ``normalize=False`` (then ``normalize_images`` does it later, batched on
    the device: what the training data modules do), the landmarks float32 ``[68, 2]`` pixel
    coordinates in it (points may leave the crop; none are dropped).
    Without landmarks the canonical face of the input size is used, so attention maps still
    follow the augmentation. ``train=False`` only resizes; ``strength`` picks the weak
    (finetuning) or strong (contrastive pretraining) recipe; ``hflip`` is the flip probability
    in training. ``seed`` makes the augmentation sequence reproducible; in DataLoader workers the
    stream is reseeded from torch's per-worker seed (mixed with ``seed``) so workers differ.
    """

    def __init__(self, image_size: int, train: bool, strength: Strength = "weak",
                 hflip: float = 0.5, seed: int | None = None, normalize: bool = True) -> None:
        if not isinstance(image_size, int) or image_size <= 0:
            raise ValueError(f"image_size must be a positive int, got {image_size!r}")
        if strength not in ("weak", "strong"):
            raise ValueError(f"strength must be 'weak' or 'strong', got {strength!r}")
        if not 0.0 <= hflip <= 1.0:
            raise ValueError(f"hflip is a probability in [0, 1], got {hflip}")
        self.image_size, self.train, self.strength = image_size, train, strength
        self.hflip, self.seed, self.normalize = hflip, seed, normalize
        # (pipeline, half-pixel shift): albumentations' Affine maps keypoints with the image's
        # warp matrix, whose pixel centres sit at integers, while resize and crop use ours
        self._geometric = [(_with_landmarks(_crop(image_size, train, strength)), 0.0)]
        if train:
            self._geometric.append((_with_landmarks(_warp(strength)), 0.5))
        colour = _colour(strength) if train else []
        normalise = [A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD)] if normalize else []
        self._photometric = A.Compose([*colour, *normalise, ToTensorV2()])
        self._worker_seed: int | None = None
        self._reseed(seed)

    def __repr__(self) -> str:
        return (f"FaceTransform(image_size={self.image_size}, train={self.train}, "
                f"strength={self.strength!r}, hflip={self.hflip}, seed={self.seed}, "
                f"normalize={self.normalize})")

    def _reseed(self, seed: int | None) -> None:
        # one generator pair drives every stage and the flip, so one seed fixes everything
        self._rng = np.random.default_rng(seed)
        py_random = random.Random(seed)
        for pipeline in (*(p for p, _ in self._geometric), self._photometric):
            pipeline.set_random_state(self._rng, py_random)

    def reseed_for(self, key: int) -> None:
        """Make the next draws a pure function of (``seed``, ``key``): one sample's augmentation
        that is the same in any worker and after a resume (see ``aukit.data.sampling``)."""
        info = torch.utils.data.get_worker_info()
        self._worker_seed = None if info is None else info.seed  # no worker reseed on top
        self._reseed(int(np.random.SeedSequence([self.seed or 0, key]).generate_state(1)[0]))

    def _follow_worker_seed(self) -> None:
        # albumentations keeps its own RNG, which forked DataLoader workers would inherit as
        # identical copies (the same augmentations in every worker)
        info = torch.utils.data.get_worker_info()
        if info is None or info.seed == self._worker_seed:
            return
        self._worker_seed = info.seed
        entropy = [info.seed] if self.seed is None else [info.seed, self.seed]
        self._reseed(int(np.random.SeedSequence(entropy).generate_state(1)[0]))

    def __call__(self, image: np.ndarray,
                 landmarks: np.ndarray | None = None) -> dict[str, Tensor]:
        image = np.ascontiguousarray(_check_image(image))
        if landmarks is None:
            landmarks = canonical_landmarks(image.shape[:2])
        points = _check_landmarks(landmarks)
        self._follow_worker_seed()
        for pipeline, shift in self._geometric:
            out = pipeline(image=image, keypoints=points - shift)
            image, points = out["image"], np.asarray(out["keypoints"], np.float32) + shift
        tensor = self._photometric(image=image)["image"]
        result = torch.from_numpy(points[:, :2].copy())
        if self.train and self._rng.random() < self.hflip:
            tensor, result = hflip_face(tensor, result)
        return {"image": tensor.contiguous(), "landmarks": result}


def eval_transform(image_size: int, normalize: bool = True) -> FaceTransform:
    """Resize only."""
    return FaceTransform(image_size, train=False, normalize=normalize)


def train_transform(image_size: int, seed: int | None = None,
                    normalize: bool = True) -> FaceTransform:
    """Weak finetuning augmentation: mild crop, rotation/shift, brightness/contrast, flip."""
    return FaceTransform(image_size, train=True, strength="weak", seed=seed, normalize=normalize)


def pretrain_transform(image_size: int, seed: int | None = None,
                       normalize: bool = True) -> FaceTransform:
    """Strong SimCLR-like augmentation for contrastive views."""
    return FaceTransform(image_size, train=True, strength="strong", seed=seed,
                         normalize=normalize)
