"""timm Swin Transformer wrapper that returns the feature tokens of one stage."""

from __future__ import annotations

import timm
import torch
from timm.layers import to_2tuple
from torch import Tensor, nn

# Short names for the sizes we use; any other timm Swin name is accepted as it is.
# "swin_test" is a tiny 3-stage Swin for CPU smoke runs and tests (window 4 so 128 px works).
BACKBONE_PRESETS: dict[str, tuple[str, dict]] = {
    "swin_test": ("swin_tiny_patch4_window7_224",
                  dict(embed_dim=32, depths=(1, 1, 2), num_heads=(1, 2, 4), window_size=4)),
    "swin_tiny": ("swin_tiny_patch4_window7_224", {}),
    "swin_small": ("swin_small_patch4_window7_224", {}),
    "swin_base": ("swin_base_patch4_window7_224", {}),
}


# presets trained from scratch on a few thousand faces default to the convolutional stem: with
# the 4x4 patchify stem they do not find SynthAU's AU cues (docs/benchmarks.md, "Backbone stem")
CONV_STEM_DEFAULT = frozenset({"swin_test"})


def default_conv_stem(name: str) -> bool:
    """Whether backbone ``name`` uses ``ConvStem`` when ``conv_stem`` is not set."""
    return name in CONV_STEM_DEFAULT


class ConvStem(nn.Module):
    """Swin's patch embedding as early convolutions: two 3x3 stride-2 conv + BatchNorm + GELU,
    then a 1x1 projection ("Early convolutions help transformers see better", Xiao et al.
    2021). A drop-in ``embed_layer`` for timm's Swin: stride 4 like the 4x4 patchify, NHWC out.
    """

    def __init__(self, img_size: int | tuple[int, int] = 224, patch_size: int = 4,
                 in_chans: int = 3, embed_dim: int = 96, norm_layer: type[nn.Module] | None = None,
                 output_fmt: str = "NHWC", device=None, dtype=None, **_: object):
        super().__init__()
        if to_2tuple(patch_size) != (4, 4) or output_fmt != "NHWC":
            raise ValueError(f"ConvStem replaces a 4x4 patch embedding with NHWC output, got "
                             f"patch_size={patch_size}, output_fmt={output_fmt}")
        dd = {"device": device, "dtype": dtype}
        self.img_size = to_2tuple(img_size)
        self.patch_size = (4, 4)
        self.grid_size = (self.img_size[0] // 4, self.img_size[1] // 4)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        hidden = max(embed_dim // 2, 16)
        self.convs = nn.Sequential(
            nn.Conv2d(in_chans, hidden, 3, 2, 1, bias=False, **dd), nn.BatchNorm2d(hidden, **dd),
            nn.GELU(),
            nn.Conv2d(hidden, embed_dim, 3, 2, 1, bias=False, **dd),
            nn.BatchNorm2d(embed_dim, **dd), nn.GELU())
        self.proj = nn.Conv2d(embed_dim, embed_dim, 1, **dd)
        self.norm = norm_layer(embed_dim, **dd) if norm_layer else nn.Identity()

    def forward(self, images: Tensor) -> Tensor:
        """[B, 3, H, W] -> [B, H / 4, W / 4, D]."""
        return self.norm(self.proj(self.convs(images)).permute(0, 2, 3, 1))


def resolve_backbone(name: str) -> tuple[str, dict]:
    """Preset or timm Swin name -> (timm model name, constructor overrides)."""
    if name in BACKBONE_PRESETS:
        return BACKBONE_PRESETS[name]
    if name.startswith("swin") and timm.is_model(name):
        return name, {}
    known = sorted(BACKBONE_PRESETS) + timm.list_models("swin*")[:8]
    raise ValueError(f"unknown backbone {name!r}: expected a preset or a timm Swin model name, "
                     f"e.g. {', '.join(known)} ... (see timm.list_models('swin*'))")


def check_window_fit(image_size: int, patch_size: int, window_size: int, num_stages: int,
                     backbone: str) -> None:
    """Swin needs every stage's grid to be a multiple of the window (or no larger than it)."""
    for stage in range(num_stages):
        stride = patch_size * 2 ** stage
        grid = image_size // stride
        if image_size % stride or (grid > window_size and grid % window_size):
            good = [s for s in range(stride, 4 * image_size, stride)
                    if all((s // (patch_size * 2 ** t)) % window_size == 0
                           or s // (patch_size * 2 ** t) <= window_size
                           for t in range(num_stages))
                    and all(s % (patch_size * 2 ** t) == 0 for t in range(num_stages))]
            near = sorted(good, key=lambda s: abs(s - image_size))[:3]
            raise ValueError(
                f"image size {image_size} does not fit backbone {backbone!r}: stage {stage + 1} "
                f"grid {image_size / stride:g} is not a multiple of window {window_size}. "
                f"Use an image size such as {', '.join(map(str, sorted(near)))}.")


class SwinBackbone(nn.Module):
    """A timm Swin truncated after ``feature_stage`` (1-based), giving tokens of that stage.

    ``conv_stem`` swaps the 4x4 patchify for ``ConvStem`` (None: the preset's default,
    ``default_conv_stem``); ImageNet weights exist for the patchify stem only.
    """

    def __init__(self, name: str = "swin_test", image_size: int = 128, pretrained: bool = False,
                 feature_stage: int = 3, conv_stem: bool | None = None):
        super().__init__()
        timm_name, overrides = resolve_backbone(name)
        self.name = name
        self.conv_stem = default_conv_stem(name) if conv_stem is None else conv_stem
        if self.conv_stem:
            if pretrained:
                raise ValueError(f"ImageNet weights of {name!r} are for the 4x4 patchify stem; "
                                 "set --model.encoder.conv_stem false to use them, or "
                                 "--model.encoder.pretrained_backbone false to train the conv stem")
            overrides = {**overrides, "embed_layer": ConvStem}
        model = self._create(timm_name, pretrained, img_size=image_size, **overrides)
        num_stages = len(model.layers)
        if not 1 <= feature_stage <= num_stages:
            raise ValueError(f"feature_stage must be in 1..{num_stages} for {name!r}, "
                             f"got {feature_stage}")
        window = model.layers[0].blocks[0].window_size[0]
        patch = model.patch_embed.patch_size[0]
        check_window_fit(image_size, patch, window, feature_stage, name)
        model.prune_intermediate_layers(indices=[feature_stage - 1], prune_norm=True)
        self.model = model
        self.feature_stage = feature_stage
        self.out_dim: int = model.feature_info[feature_stage - 1]["num_chs"]
        side = image_size // (patch * 2 ** (feature_stage - 1))
        self.grid: tuple[int, int] = (side, side)
        self._channels_last = False

    def use_channels_last(self) -> None:
        """Keep the patch-embedding convolution and its input images in NHWC memory layout
        (``aukit.performance``); values and state-dict keys are unchanged."""
        self.to(memory_format=torch.channels_last)
        self._channels_last = True

    @property
    def compiled(self) -> bool:
        """Whether ``nn.Module.compile`` was called on this backbone (keys stay unprefixed)."""
        return getattr(self, "_compiled_call_impl", None) is not None

    @staticmethod
    def _create(timm_name: str, pretrained: bool, **kwargs) -> nn.Module:
        try:
            return timm.create_model(timm_name, pretrained=pretrained, num_classes=0, **kwargs)
        except Exception as err:  # timm raises many kinds when the hub cannot be reached
            if not pretrained:
                raise
            # OSError: a user error (cli.user_error_message), printed without a traceback
            raise OSError(
                f"could not load ImageNet weights for {timm_name!r} ({type(err).__name__}: {err}). "
                "Pretrained weights are downloaded from the Hugging Face hub: run once online "
                "(without HF_HUB_OFFLINE=1) to fill the cache, or set "
                "--model.encoder.pretrained_backbone false."
            ) from err

    def forward(self, images: Tensor) -> Tensor:
        """[B, 3, H, W] -> tokens [B, N, D] with N = h * w in row-major order."""
        if self._channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        (features,) = self.model.forward_intermediates(
            images, indices=[self.feature_stage - 1], intermediates_only=True)
        return features.flatten(2).transpose(1, 2)  # [B, D, h, w] -> [B, N, D]
