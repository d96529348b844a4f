"""Export: TorchScript and ONNX round trips equal PyTorch, the model card, bad input."""

from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch

from aukit.checkpoint import META_KEY
from aukit.export import export, main, run_exported
from aukit.inference import load_predictor
from finetune.module import HiVAFinetuner

AUS = ["AU1", "AU12", "AU25"]


def save_finetune(path: Path, use_text: bool = False, stage: str = "finetune",
                  architecture: str = "hiva", **encoder) -> Path:
    """A tiny finetune checkpoint as the trainer writes it (metadata, data and callback state);
    ``encoder``: encoder settings over embed_dim 32."""
    # graph_top_k < A: the exported graph includes the top-k adjacency mask
    module = HiVAFinetuner(aus=AUS, image_size=64, architecture=architecture,
                           encoder={"embed_dim": 32, **encoder},
                           heads=dict(use_text=use_text, graph_top_k=2),
                           text=dict(cache_dir=str(path.parent / "text-cache")))
    checkpoint = {"state_dict": module.state_dict(), "epoch": 3, "global_step": 120,
                  "datamodule_hyper_parameters": {"dataset": "disfa", "fold": 2},
                  "callbacks": {"ModelCheckpoint{'monitor': 'val/f1_mean'}": {
                      "monitor": "val/f1_mean", "best_model_score": torch.tensor(0.5731),
                      "best_model_path": "runs/best.ckpt"}}}
    module.on_save_checkpoint(checkpoint)
    checkpoint[META_KEY]["stage"] = stage
    torch.save(checkpoint, path)
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return save_finetune(tmp_path_factory.mktemp("ckpt") / "ft.ckpt")


@pytest.fixture(scope="module")
def torchscript(ckpt, tmp_path_factory) -> Path:
    """The CLI's TorchScript export of ``ckpt`` (model and card in one folder)."""
    out = tmp_path_factory.mktemp("export")
    main(["--ckpt", str(ckpt), "--format", "torchscript", "--out", str(out)])
    return out / "au_detector.pt"


def _reference(ckpt: Path, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        return load_predictor(ckpt)(images)


def test_torchscript_round_trip_matches_pytorch_with_a_free_batch_size(ckpt, torchscript):
    images = torch.randn(5, 3, 64, 64)
    probs, maps = _reference(ckpt, images)
    with torch.no_grad():
        got_probs, got_maps = torch.jit.load(str(torchscript))(images)
    assert probs.shape == (5, 3) and maps.shape[:2] == (5, 3)
    torch.testing.assert_close(got_probs, probs, atol=1e-4, rtol=0)
    torch.testing.assert_close(got_maps, maps, atol=1e-4, rtol=0)


def test_the_model_card_says_what_the_model_is_and_how_to_feed_it(torchscript):
    card = torchscript.with_suffix(".md").read_text()
    for fact in ("AU12", "Lip Corner Puller", "disfa", "fold: `2`", "val/f1_mean` = 0.5731",
                 "canonical template", "0.485", "Intended use", "activation_maps", "64x64"):
        assert fact in card, fact


def test_onnx_round_trip_matches_pytorch(ckpt, tmp_path):
    path = export(ckpt, "onnx", tmp_path, name="detector")
    assert path.with_suffix(".md").is_file()
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]  # landmarks and text baked in
    assert [o.name for o in session.get_outputs()] == ["probabilities", "activation_maps"]
    images = torch.randn(1, 3, 64, 64)
    expected = _reference(ckpt, images)
    for got, want in zip(session.run(None, {"image": images.numpy()}), expected, strict=True):
        np.testing.assert_allclose(got, want.numpy(), atol=1e-4, rtol=0)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_landmarks_input_export_takes_each_face_s_landmarks(ckpt, tmp_path, fmt):
    main(["--ckpt", str(ckpt), "--format", fmt, "--out", str(tmp_path), "--landmarks-input"])
    path = tmp_path / f"au_detector.{'onnx' if fmt == 'onnx' else 'pt'}"
    predictor = load_predictor(ckpt)
    images = torch.randn(4, 3, 64, 64)
    template = predictor.landmarks.expand(4, -1, -1)
    moved = template + torch.tensor([6.0, -4.0])  # the face sits 6 px right, 4 px up
    with torch.no_grad():
        want, at_template = predictor(images, moved), predictor(images)
    got = run_exported(path, images.numpy(), moved.numpy())
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w.numpy(), atol=1e-4, rtol=0)
    # the landmarks are an input, not baked in: other landmarks, other maps
    assert not np.allclose(got[1], at_template[1].numpy(), atol=1e-4)
    if fmt == "onnx":
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == ["image", "landmarks"]
    card = path.with_suffix(".md").read_text()
    assert "`landmarks` float32 `[B, 68, 2]`" in card and "not an input" not in card


@pytest.mark.slow  # loads the MiniLM text encoder
def test_a_text_model_exports_with_its_description_features_baked_in(tmp_path):
    ckpt = save_finetune(tmp_path / "text.ckpt", use_text=True)
    path = export(ckpt, "onnx", tmp_path, text_cache_dir=tmp_path / "text-cache")
    predictor = load_predictor(ckpt, tmp_path / "text-cache")
    assert predictor.text_tokens.shape[0] == len(AUS)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = predictor(images)
    for got, want in zip(session.run(None, {"image": images.numpy()}), expected, strict=True):
        np.testing.assert_allclose(got, want.numpy(), atol=1e-4, rtol=0)
    assert "description bank" in path.with_suffix(".md").read_text()


def test_the_linear_baseline_exports_probabilities_only(tmp_path):
    ckpt = save_finetune(tmp_path / "linear.ckpt", architecture="linear")
    path = export(ckpt, "torchscript", tmp_path)
    with torch.no_grad():
        outputs = torch.jit.load(str(path))(torch.randn(2, 3, 64, 64))
    assert len(outputs) == 1 and outputs[0].shape == (2, 3)


def test_bad_input_is_refused_clearly(ckpt, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export(tmp_path / "missing.ckpt", "onnx", tmp_path)
    with pytest.raises(ValueError, match="format must be one of"):
        export(ckpt, "tflite", tmp_path)
    stage1 = save_finetune(tmp_path / "s1.ckpt", stage="pretrain")
    with pytest.raises(ValueError, match="pretrain checkpoint.*no AU head"):
        export(stage1, "onnx", tmp_path)


@pytest.mark.parametrize("kwargs", [{"architecture": "region"}, {"conv_stem": False},
                                    {"feature_stage": 2, "roi_size": 3, "roi_extent": 0.2}],
                         ids=["region-baseline", "patchify-stem", "roi-pooling"])
def test_other_models_and_stems_round_trip_through_onnx(tmp_path, kwargs):
    ckpt = save_finetune(tmp_path / "model.ckpt", **kwargs)
    predictor = load_predictor(ckpt)
    assert predictor.model.encoder.backbone.conv_stem == kwargs.get("conv_stem", True)
    path = export(ckpt, "onnx", tmp_path)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images = torch.randn(2, 3, 64, 64)
    expected = _reference(ckpt, images)
    got = session.run(None, {"image": images.numpy()})
    assert len(got) == 2  # probabilities and activation maps
    for out, want in zip(got, expected, strict=True):
        np.testing.assert_allclose(out, want.numpy(), atol=1e-4, rtol=0)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_the_geometry_branch_exports_with_the_landmarks_as_an_input(tmp_path, fmt):
    ckpt = save_finetune(tmp_path / "model.ckpt", geometry=True)
    main(["--ckpt", str(ckpt), "--format", fmt, "--out", str(tmp_path), "--landmarks-input"])
    path = tmp_path / f"au_detector.{'onnx' if fmt == 'onnx' else 'pt'}"
    predictor = load_predictor(ckpt)
    assert predictor.model.encoder.region.geometry is not None
    images = torch.randn(2, 3, 64, 64)
    smiling = predictor.landmarks.expand(2, -1, -1).clone()
    smiling[1, [48, 54]] += torch.tensor([[-2.0, -1.5], [2.0, -1.5]])  # lip corners up and out
    with torch.no_grad():
        want = predictor(images, smiling)
    got = run_exported(path, images.numpy(), smiling.numpy())
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w.numpy(), atol=1e-4, rtol=0)
