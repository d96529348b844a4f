"""Export a finetune checkpoint as a standalone AU detector (ONNX or TorchScript) + model card.

``python -m aukit.export --ckpt best.ckpt --format onnx|torchscript --out DIR [--name NAME]
[--landmarks-input]`` writes ``DIR/NAME.onnx`` (or ``DIR/NAME.pt``) and ``DIR/NAME.md``, the
model card.

The exported graph is ``image [B, 3, S, S] -> probabilities [B, A]`` and, for HiVA,
``activation_maps [B, A, h, w]``; the batch size is free. The evaluation-time text features (all
descriptions of every AU) are baked in (see ``aukit.inference``). The AU regions come from the
canonical template's 68 landmarks, baked in, so the input is an aligned, normalised face crop
and nothing else; with ``--landmarks-input`` the graph takes each face's own 68 landmarks as a
second input, ``landmarks [B, 68, 2]`` in crop pixels (what ``aukit-predict`` feeds the model).
Every export is checked against the PyTorch model on a batch size other than the traced one and
refused beyond ``1e-4``.
"""

from __future__ import annotations

import argparse
import datetime
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aukit.au import ACTION_UNITS
from aukit.checkpoint import META_KEY
from aukit.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from aukit.inference import (
    THRESHOLD,
    AUPredictor,
    predictor_from_checkpoint,
    read_finetune_checkpoint,
)
from aukit.text.bank import load_description_bank

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
TOLERANCE = 1e-4
ONNX_OPSET = 17
INPUT_NAMES = ["image", "landmarks"]


def _save(predictor: AUPredictor, example: tuple[torch.Tensor, ...], fmt: str,
          path: Path) -> None:
    """Trace ``predictor`` on ``example``: ``(images,)`` or ``(images, landmarks)``."""
    # tracing sees Python checks on constant tensors (text masks, shapes) and warns that they
    # are frozen; they are constants of the exported model, so the warnings are noise
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if fmt == "torchscript":
            torch.jit.trace(predictor, example, check_trace=False).save(str(path))
            return
        inputs = INPUT_NAMES[:len(example)]
        names = [*inputs, *predictor.output_names]
        # the TorchScript-based exporter: the dynamo one cannot pass the models' input checks
        torch.onnx.export(predictor, example, str(path), dynamo=False, input_names=inputs,
                          output_names=names[len(inputs):],
                          dynamic_axes={n: {0: "batch"} for n in names},
                          opset_version=ONNX_OPSET)


def run_exported(path: str | Path, images: np.ndarray,
                 landmarks: np.ndarray | None = None) -> list[np.ndarray]:
    """Outputs of an exported model (``.onnx`` via onnxruntime, ``.pt`` via torch.jit) for
    images float32 ``[B, 3, S, S]`` (and, for a ``--landmarks-input`` export, landmarks float32
    ``[B, 68, 2]`` in crop pixels)."""
    inputs = (images,) if landmarks is None else (images, landmarks)
    path = Path(path)
    if path.suffix == FORMATS["onnx"]:
        try:
            import onnxruntime
        except ImportError as err:
            raise ImportError("checking an ONNX export needs onnxruntime: pip install "
                              "onnxruntime (or aukit[dev])") from err
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, dict(zip(INPUT_NAMES, inputs, strict=False)))
    with torch.no_grad():
        return [t.numpy() for t in torch.jit.load(str(path))(*map(torch.from_numpy, inputs))]


def max_difference(path: Path, predictor: AUPredictor, images: torch.Tensor,
                   landmarks: torch.Tensor | None = None) -> float:
    """Largest absolute difference between the exported model's outputs and PyTorch's."""
    with torch.no_grad():
        expected = predictor(images, landmarks)
    got = run_exported(path, images.numpy(), None if landmarks is None else landmarks.numpy())
    return max(float(np.abs(g - e.numpy()).max()) for g, e in zip(got, expected, strict=True))


def _metrics(checkpoint: dict[str, Any]) -> list[str]:
    lines = []
    for name, state in checkpoint.get("callbacks", {}).items():
        if name.startswith("ModelCheckpoint") and state.get("best_model_score") is not None:
            lines.append(f"- best `{state['monitor']}` = {float(state['best_model_score']):.4f} "
                         f"(validation split; checkpoint `{state.get('best_model_path', '')}`)")
    return lines or ["- none stored in the checkpoint; run `aukit-finetune test` on a "
                     "labelled set for per-AU F1"]


def model_card(checkpoint: dict[str, Any], ckpt_path: Path, exported: Path,
               predictor: AUPredictor, difference: float, landmarks_input: bool = False) -> str:
    """The Markdown model card of an exported checkpoint."""
    meta, data = checkpoint[META_KEY], checkpoint.get("datamodule_hyper_parameters", {})
    cfg, size = meta["config"], predictor.image_size
    units = [ACTION_UNITS[a] for a in meta["aus"]]
    au_rows = [f"| {k} | {u.key} | {u.name} | {u.region} |" for k, u in enumerate(units)]
    # the data module's class (checkpoints before the split by source saved a "dataset" name)
    dataset = (data.get("dataset") or str(data.get("_class_path", "")).rpartition(".")[2]
               or "unknown (no datamodule hyperparameters in the checkpoint)")
    facts = ("fold", "data_root", "manifest", "val_subjects", "label_fraction", "seed")
    data_lines = [f"- data set: **{dataset}**"] + [
        f"- {key}: `{data[key]}`" for key in facts if data.get(key) is not None]
    text = ["- text: none (learned AU embeddings)"]
    if predictor.text_tokens is not None:
        bank = load_description_bank(meta["text"]["descriptions"], meta["aus"])
        text = [f"- text encoder `{meta['text']['encoder']}`; description bank `{bank.source}` "
                f"(version {bank.version}, sha256 `{bank.digest()[:16]}`), all "
                f"{sum(map(len, bank.for_aus(meta['aus'])))} descriptions baked in"]
    outputs = ["- `probabilities` float32 `[B, A]`: sigmoid of each AU's logit, AUs in the order "
               f"below; an AU is present when its probability is >= {THRESHOLD}"]
    if predictor.has_maps:
        h, w = predictor.model.encoder.grid
        outputs.append(f"- `activation_maps` float32 `[B, A, {h}, {w}]`: DDCA text->vision "
                       "attention of each AU over the backbone's token grid (each map sums to 1); "
                       "upsample onto the crop to display")
    landmark_input = [f"- `landmarks` float32 `[B, 68, 2]`: the face's 68 landmarks (iBUG "
                      f"order), x then y, in pixels of the {size}x{size} input crop"
                      ] if landmarks_input else []
    landmark_note = [
        "- Landmarks: give each face's own 68 points, mapped into the crop by the alignment's "
        "similarity transform (`aukit-predict` does this with dlib's 68-point model); the AU "
        "attention maps sit where they say."] if landmarks_input else [
        "- Landmarks are not an input: the AU attention maps use the canonical template's 68 "
        "points, which is where alignment puts every face. A face that is not aligned this way "
        "gets wrong AU regions (export with `--landmarks-input` to feed each face's own)."]
    synthetic = ["- **Trained on synthetic faces (SynthAU).** It demonstrates the pipeline; its "
                 "outputs on real faces are not AU measurements."] if dataset == "synthau" else []
    return "\n".join([
        f"# Model card: {exported.name}",
        "",
        f"Facial Action Unit (AU) occurrence detector exported by `aukit.export` on "
        f"{datetime.date.today().isoformat()} from `{ckpt_path}` (epoch "
        f"{checkpoint.get('epoch', '?')}, step {checkpoint.get('global_step', '?')}); "
        f"torch {torch.__version__}.",
        "",
        "## Model",
        f"- architecture `{meta['architecture']}`, backbone `{meta['backbone']}`, input "
        f"{size}x{size}",
        "- components: " + ", ".join(f"{k}={cfg['heads'][k]}" for k in (
            "use_graph", "use_ddca", "use_cdca", "use_text")),
        f"- stage-1 initialisation: `{meta.get('pretrained') or 'none'}`",
        *text,
        "",
        "## AU set",
        "| output index | AU | name | region |",
        "|---:|---|---|---|",
        *au_rows,
        "",
        "## Training data",
        *data_lines,
        "",
        "## Metrics",
        *_metrics(checkpoint),
        "",
        "## Inputs and outputs",
        f"- `image` float32 `[B, 3, {size}, {size}]`, RGB, one aligned face per row",
        *landmark_input,
        *outputs,
        f"- the exported model matches the PyTorch model within {difference:.1e} "
        f"(checked at export; tolerance {TOLERANCE:g})",
        "",
        "## Preprocessing (do exactly this)",
        "1. Detect the face and its 5 points (eye centres, nose tip, mouth corners) with MTCNN "
        "(`facenet-pytorch`).",
        "2. Align with a similarity transform onto the canonical template "
        "(`aukit.data.prepare.align_face`, 256x256 crop, OpenFace mean face).",
        f"3. Resize to {size}x{size} (bilinear), scale to [0, 1], normalise with mean "
        f"{IMAGENET_MEAN} and std {IMAGENET_STD}, channels first.",
        *landmark_note,
        "- `aukit-predict` does all of this for images, folders and videos.",
        "",
        "## Intended use and limits",
        "- Research on facial behaviour: frame-level AU occurrence, and where the model looks "
        "(activation maps). AUs describe muscle movements, not emotions or intentions.",
        *synthetic,
        "- Not for decisions about people (hiring, policing, health, credit, surveillance), and "
        "not a clinical instrument.",
        "- Trained on one data set's faces, poses, lighting and demographics (BP4D and DISFA are "
        "young adults in a lab, mostly frontal); expect lower accuracy on other populations, "
        "profile views, occlusion, low resolution and spontaneous in-the-wild video. Check it on "
        "labelled data of your own setting before trusting it.",
        f"- Single frames, no temporal smoothing; the threshold {THRESHOLD} is the protocol's, "
        "never tuned on test data.",
        "",
    ])


def export(ckpt: str | Path, fmt: str, out: str | Path, name: str = "au_detector",
           text_cache_dir: str | Path | None = None, landmarks_input: bool = False) -> Path:
    """Export ``ckpt`` to ``out/name{.onnx,.pt}`` with its model card ``out/name.md``; returns
    the model path. ``landmarks_input``: the graph takes each face's 68 landmarks as a second
    input instead of the template's. Raises if the export differs from PyTorch by more than
    ``TOLERANCE``."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {sorted(FORMATS)}, got {fmt!r}")
    ckpt = Path(ckpt)
    checkpoint = read_finetune_checkpoint(ckpt)
    predictor = predictor_from_checkpoint(checkpoint, text_cache_dir)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}{FORMATS[fmt]}"
    generator = torch.Generator().manual_seed(0)
    size = predictor.image_size

    def example(batch: int) -> tuple[torch.Tensor, ...]:
        images = torch.randn(batch, 3, size, size, generator=generator)
        if not landmarks_input:
            return (images,)
        # the template moved by up to 3 px per point: landmarks other than the baked-in ones
        shift = 3 * (2 * torch.rand(batch, 68, 2, generator=generator) - 1)
        return images, predictor.landmarks.expand(batch, -1, -1) + shift

    _save(predictor, example(2), fmt, path)
    # another batch size than the traced one: the batch dimension must stay free
    difference = max_difference(path, predictor, *example(3))
    if not difference <= TOLERANCE:
        raise RuntimeError(f"the exported {fmt} model differs from PyTorch by {difference:.2e} "
                           f"(> {TOLERANCE:g}); please report this with the checkpoint's config")
    card = model_card(checkpoint, ckpt, path, predictor, difference, landmarks_input)
    path.with_suffix(".md").write_text(card)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False, prog="aukit-export",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True, help="a finetune checkpoint (.ckpt)")
    parser.add_argument("--format", required=True, choices=sorted(FORMATS))
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--name", default="au_detector", help="file name without suffix")
    parser.add_argument("--landmarks-input", action="store_true",
                        help="the exported model takes each face's 68 landmarks (crop pixels) "
                             "as a second input instead of the template's")
    parser.add_argument("--text-cache-dir", default=None,
                        help="where text features are cached (default ~/.cache/aukit/text)")
    args = parser.parse_args(argv)
    try:
        path = export(args.ckpt, args.format, args.out, args.name, args.text_cache_dir,
                      args.landmarks_input)
    except Exception as err:
        from aukit.cli import report_user_error  # Lightning loads only when something failed

        report_user_error(err, "aukit-export")
        raise
    print(f"exported {path} and its model card {path.with_suffix('.md')}")


if __name__ == "__main__":
    main()
