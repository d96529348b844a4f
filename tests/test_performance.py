"""The device-side image pipeline and the speed switches of the trainer presets: uint8 batches
normalised on the device equal the CPU normalisation; channels-last and torch.compile change
neither outputs nor checkpoint keys; the CLI applies both from `performance:`."""

import numpy as np
import pytest
import torch
from test_finetune import run_finetune

from aukit.checkpointing import last_checkpoint_path
from aukit.data.transforms import FaceTransform, normalize_images
from aukit.models.backbone import SwinBackbone
from aukit.performance import Performance
from finetune.module import HiVAFinetuner


def _face(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (96, 80, 3), dtype=np.uint8)


@pytest.mark.parametrize("train", [False, True])
def test_uint8_then_device_normalisation_equals_the_cpu_normalisation(train):
    cpu = FaceTransform(64, train=train, seed=3)
    raw = FaceTransform(64, train=train, seed=3, normalize=False)
    for seed in range(3):  # same seed, same augmentation draws: only where normalising differs
        expected, got = cpu(_face(seed)), raw(_face(seed))
        assert got["image"].dtype == torch.uint8 and got["image"].shape == (3, 64, 64)
        torch.testing.assert_close(normalize_images(got["image"]), expected["image"],
                                   atol=1e-5, rtol=0)
        torch.testing.assert_close(got["landmarks"], expected["landmarks"])


def test_normalize_images_keeps_float_and_batch_shape_and_refuses_non_rgb():
    floats = torch.randn(2, 3, 8, 8)
    assert normalize_images(floats) is floats
    views = torch.randint(0, 256, (2, 2, 3, 8, 8), dtype=torch.uint8)  # pretraining [B, V, ...]
    out = normalize_images(views)
    assert out.dtype == torch.float32 and out.shape == views.shape
    torch.testing.assert_close(out[1, 0], normalize_images(views[1, 0]))
    with pytest.raises(ValueError, match=r"RGB images \[\.\.\., 3, H, W\]"):
        normalize_images(torch.zeros(2, 1, 8, 8, dtype=torch.uint8))


def test_stage_modules_normalise_uint8_batches_after_the_transfer():
    module = HiVAFinetuner(aus=["AU1", "AU2"], image_size=64, encoder=dict(backbone="swin_test",
                                                                           embed_dim=16),
                           heads=dict(use_text=False))
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    batch = module.on_after_batch_transfer({"image": images, "labels": torch.ones(2, 2)}, 0)
    torch.testing.assert_close(batch["image"], normalize_images(images))


@pytest.mark.parametrize("switch", ["channels_last", "compile"])
def test_switches_keep_outputs_and_checkpoint_keys(switch):
    torch.manual_seed(0)
    plain = SwinBackbone("swin_test", 64).eval()
    fast = SwinBackbone("swin_test", 64).eval()
    fast.load_state_dict(plain.state_dict())
    callback = Performance(channels_last=switch == "channels_last", compile=switch == "compile",
                           compile_backend="eager")  # eager: dynamo without a C++ toolchain
    callback.setup(None, torch.nn.ModuleDict({"backbone": fast}), "fit")
    assert fast.compiled == (switch == "compile")
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fast(images), plain(images), atol=1e-5, rtol=1e-5)
    assert list(fast.state_dict()) == list(plain.state_dict())
    plain.load_state_dict(fast.state_dict())  # a switched model's checkpoint loads into a plain one


@pytest.mark.slow
def test_the_cli_applies_the_performance_switches(tmp_path, caplog):
    caplog.set_level("INFO")
    cli = run_finetune(tmp_path, "--trainer.max_steps", "2", "--trainer.limit_val_batches", "1",
                       "--performance.channels_last", "true", "--performance.compile", "true",
                       "--performance.compile_backend", "eager")
    backbone = cli.model.model.encoder.backbone
    assert backbone.compiled and backbone._channels_last
    assert "performance: channels_last=True, compile=True" in caplog.text
    checkpoint = torch.load(last_checkpoint_path(cli.trainer), weights_only=False)
    assert not any("_orig_mod" in key for key in checkpoint["state_dict"])
    fresh = HiVAFinetuner.load_from_checkpoint(last_checkpoint_path(cli.trainer))
    assert not fresh.model.encoder.backbone.compiled  # loads into a plain model
