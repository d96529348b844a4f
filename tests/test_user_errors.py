"""User errors (data, configuration, checkpoints) end in one message that names the file, row or
value and the fix, with exit status 2; the traceback shows only with AUKIT_DEBUG=1, and errors
that are bugs keep theirs."""

import csv
import os
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from test_install import installed_script
from torch.utils.data import DataLoader

from aukit import cli
from aukit.checkpoint import META_KEY
from aukit.cli import AUCLI, OOM_HINT, UserError, check_ckpt_path, user_error_message
from aukit.configs import config_flags, finetune_configs
from aukit.data.datamodules import AUDataModule, ManifestDataModule, UnlabeledFaceDataModule
from aukit.data.datasets import ImageFolderDataset
from aukit.data.transforms import eval_transform
from finetune.cli import FinetuneCLI
from finetune.module import HiVAFinetuner
from pretrain.module import RegionRelationPretrainer

TINY = [*config_flags(["trainer/cpu.yaml", *finetune_configs("csv")]),
        "--trainer.enable_progress_bar", "false", "--trainer.max_epochs", "1",
        "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1",
        "--data.image_size", "64", "--data.batch_size", "2", "--data.num_workers", "0",
        "--data.val_subjects", "0.25", "--model.encoder.backbone", "swin_test",
        "--model.encoder.embed_dim", "32", "--model.heads.use_text", "false"]


def run(tmp_path: Path, command: str, *args: str, debug: bool = False) -> tuple[int, str]:
    """The installed console script ``command`` with ``args``, run from ``tmp_path`` (not the
    repository): (exit status, stderr)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "NO_ALBUMENTATIONS_UPDATE": "1", "CUDA_VISIBLE_DEVICES": "",
           "TORCH_HOME": str(tmp_path / "torch"), "AUKIT_CACHE": str(tmp_path / "cache")}
    for name in ("AUKIT_DEBUG", "PYTHONPATH"):
        env.pop(name, None)
    if debug:
        env["AUKIT_DEBUG"] = "1"
    done = subprocess.run([installed_script(command), *args], cwd=tmp_path, env=env, text=True,
                          capture_output=True, timeout=600)
    return done.returncode, done.stderr


def message(status: int, stderr: str, prog: str) -> str:
    """The one error message, checked: status 2, no traceback, a few lines at most."""
    assert status == 2 and "Traceback" not in stderr, stderr[-4000:]
    text = stderr[stderr.index(f"{prog}: error: "):]
    assert text.rstrip().endswith("(set AUKIT_DEBUG=1 to see the traceback)")
    assert len(text.splitlines()) <= 8, text
    return text


def finetune_args(tmp_path: Path, *extra: str) -> list[str]:
    return ["fit", *TINY, "--trainer.default_root_dir", str(tmp_path / "root"),
            "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"), *extra]


def write_manifest(folder: Path, name: str, rows: list[list], columns=("AU1", "AU12"),
                   landmarks: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / name).open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "subject", *(["landmarks"] if landmarks else []), *columns])
        writer.writerows(rows)
    return folder / name


@pytest.fixture
def faces(tmp_path: Path) -> list[list]:
    """Rows ``[image, subject, AU1, AU12]`` of 8 good faces of 4 subjects under ``tmp_path``."""
    rows = []
    for i in range(8):
        path = tmp_path / "img" / f"{i}.png"
        path.parent.mkdir(exist_ok=True)
        cv2.imwrite(str(path), np.random.default_rng(i).integers(0, 255, (64, 64, 3), np.uint8))
        rows.append([f"img/{i}.png", f"S{i // 2}", i % 2, (i // 2) % 2])
    return rows


def save_checkpoint(path: Path, stage: str) -> Path:
    """A stage-1 checkpoint as ``make pretrain`` writes it, its stage relabelled to ``stage``."""
    module = RegionRelationPretrainer(aus="all", image_size=64, encoder=dict(backbone="swin_test",
                                                                             embed_dim=32))
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    module.on_save_checkpoint(checkpoint)
    checkpoint[META_KEY]["stage"] = stage
    torch.save(checkpoint, path)
    return path


# ------------------------------------------------------------------ through the command line
@pytest.mark.slow
def test_bad_manifest_rows_end_in_one_message_naming_each_row(tmp_path, faces):
    np.save(tmp_path / "five.npy", np.zeros((5, 2), np.float32))
    rows = [r[:2] + [""] + r[2:] for r in faces]
    rows[1][0] = "img/missing.png"
    rows[2][3] = 2
    rows[3][2] = "five.npy"
    manifest = write_manifest(tmp_path, "train.csv", rows, landmarks=True)
    text = message(*run(tmp_path, "aukit-finetune", *finetune_args(
        tmp_path, "--data.manifest", str(manifest), "--data.test_manifest", str(manifest))),
        "aukit-finetune")
    assert "has 3 bad row(s) of 8" in text and "skip_bad_rows" in text
    assert "row 2 (line 3)" in text and "missing.png does not exist" in text
    assert "row 3 (line 4)" in text and "AU1 = '2' is not a label" in text
    assert "row 4 (line 5)" in text and "shape (5, 2)" in text


@pytest.mark.slow
def test_an_unknown_au_column_ends_in_one_message(tmp_path, faces):
    manifest = write_manifest(tmp_path, "train.csv", faces, columns=("AU1", "AU99"))
    text = message(*run(tmp_path, "aukit-finetune", *finetune_args(
        tmp_path, "--data.manifest", str(manifest), "--data.test_manifest", str(manifest))),
        "aukit-finetune")
    assert f"{manifest}, header: column 'AU99'" in text.splitlines()[0]


@pytest.mark.slow
def test_a_manifest_run_without_a_test_manifest_fails_before_training(tmp_path, faces):
    manifest = write_manifest(tmp_path, "train.csv", faces)
    text = message(*run(tmp_path, "aukit-finetune",
                        *finetune_args(tmp_path, "--data.manifest", str(manifest))),
                   "aukit-finetune")
    assert "--data.test_manifest" in text and "--test_after_fit false" in text
    assert not list(tmp_path.rglob("*.ckpt"))  # nothing was trained


def test_testing_a_manifest_run_without_a_test_manifest_is_refused(tmp_path, faces):
    manifest = write_manifest(tmp_path, "train.csv", faces)
    args = finetune_args(tmp_path, "--data.manifest", str(manifest))
    with pytest.raises(UserError, match="ManifestDataModule has no test split.*"
                                        "--data.test_manifest <test.csv>"):
        FinetuneCLI(HiVAFinetuner, AUDataModule, args=["test", *args[1:]])


def test_a_data_module_error_is_a_user_error_through_the_cli(tmp_path):
    # jsonargparse wraps what the data module (subclass mode) raises; the message is unwrapped
    with pytest.raises(ValueError) as info:
        FinetuneCLI(HiVAFinetuner, AUDataModule, run=False, args=[
            *finetune_args(tmp_path, "--data.manifest", str(tmp_path / "nope.csv"))[1:]])
    assert user_error_message(info.value) == (
        f"manifest {tmp_path / 'nope.csv'} does not exist; give the path of a CSV or JSON "
        "manifest")


@pytest.mark.slow
def test_a_stage1_checkpoint_given_to_finetune_says_how_to_use_it(tmp_path, faces):
    manifest = write_manifest(tmp_path, "train.csv", faces)
    stage1 = save_checkpoint(tmp_path / "s1.ckpt", "pretrain")
    args = ["test", *finetune_args(tmp_path, "--data.manifest", str(manifest),
                                   "--data.test_manifest", str(manifest),
                                   "--ckpt_path", str(stage1))[1:]]
    text = message(*run(tmp_path, "aukit-finetune", *args), "aukit-finetune")
    assert "is a stage-1 (pretrain) checkpoint" in text
    assert f"make finetune PRETRAINED={stage1}" in text and f"--model.pretrained {stage1}" in text
    assert "Parser key" not in text
    # AUKIT_DEBUG=1: the same error with its traceback
    status, stderr = run(tmp_path, "aukit-finetune", *args, debug=True)
    assert status == 1 and "Traceback" in stderr and "UserError" in stderr


@pytest.mark.slow
def test_an_empty_pretraining_folder_ends_in_one_message(tmp_path):
    (tmp_path / "faces").mkdir()
    text = message(*run(tmp_path, "aukit-pretrain", "fit", "-c", "trainer/cpu.yaml", "-c",
                        "pretrain/synthau.yaml", "--trainer.logger", "false",
                        "--trainer.default_root_dir", str(tmp_path), "--trainer.callbacks", "[]",
                        "--data.image_size", "64", "--data.batch_size", "8",
                        "--data.source", str(tmp_path / "faces")), "aukit-pretrain")
    assert f"no images found under {tmp_path / 'faces'}" in text



@pytest.mark.slow
def test_a_pretraining_folder_without_person_ids_ends_in_one_message_naming_both_fixes(tmp_path):
    faces = tmp_path / "faces"
    faces.mkdir()
    for i in range(8):
        cv2.imwrite(str(faces / f"{i}.png"), np.full((64, 64, 3), 20 * i, np.uint8))
    text = message(*run(tmp_path, "aukit-pretrain", "fit", "-c", "trainer/cpu.yaml", "-c",
                        "pretrain/synthau.yaml", "--trainer.logger", "false",
                        "--trainer.default_root_dir", str(tmp_path), "--trainer.callbacks", "[]",
                        "--data.image_size", "64", "--data.batch_size", "8",
                        "--data.landmarks", "template", "--data.source", str(faces)),
                   "aukit-pretrain")
    assert ("the expression loss (off: --model.losses.expression_weight 0) and same-person "
            "negatives (off: --model.losses.negatives batch) need each face's person id") in text
    assert "subjects.csv" in text and "sub-folder of their own" in text
    assert "clip positives" not in text  # the warning comes only when training starts

# ------------------------------------------------------------------ predict and export
def test_predict_and_export_print_one_message_or_the_traceback_when_debugging(
        tmp_path, capsys, monkeypatch):
    from aukit.export import main as export
    from aukit.predict import main as predict

    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    stage1 = save_checkpoint(tmp_path / "s1.ckpt", "pretrain")
    with pytest.raises(SystemExit) as exit_info:
        predict(["--input", str(notes), "--ckpt", str(stage1), "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("aukit-predict: error: ")
    assert "could not be decoded" in err and len(err.splitlines()) == 2
    with pytest.raises(SystemExit) as exit_info:
        export(["--ckpt", str(stage1), "--format", "onnx", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("aukit-export: error: ")
    assert "no AU head" in err and len(err.splitlines()) == 2
    monkeypatch.setenv("AUKIT_DEBUG", "1")
    with pytest.raises(ValueError, match="no AU head"):
        export(["--ckpt", str(stage1), "--format", "onnx", "--out", str(tmp_path / "out")])


# ------------------------------------------------------------------ what counts as a user error
def test_errors_the_library_raises_for_users_are_user_errors(tmp_path):
    with pytest.raises(ValueError) as info:
        ManifestDataModule()
    assert user_error_message(info.value).startswith("ManifestDataModule needs --data.manifest")
    assert user_error_message(UserError("bad")) == "bad"
    assert user_error_message(MisconfigurationException("no logger")) == "no logger"
    assert OOM_HINT in user_error_message(torch.OutOfMemoryError(f"CUDA OOM\n{OOM_HINT}"))
    with pytest.raises(FileNotFoundError) as info:
        open(tmp_path / "nope.yaml")  # the OS names the path, wherever it is opened
    assert "nope.yaml" in user_error_message(info.value)


def test_the_same_types_thrown_by_bugs_keep_their_traceback(monkeypatch):
    with pytest.raises(ValueError) as info:
        np.zeros(3).reshape(2)  # thrown by numpy, not by an aukit `raise`
    assert user_error_message(info.value) is None
    assert user_error_message(torch.OutOfMemoryError("CUDA OOM")) is None
    assert user_error_message(KeyError("model")) is None
    monkeypatch.setattr(cli, "_own_file", lambda filename: filename == __file__)
    with pytest.raises(ValueError) as info:
        _first, _second = [1, 2, 3]  # an unpacking bug in "our" code: no explicit raise
    assert user_error_message(info.value) is None
    with pytest.raises(ValueError) as info:
        raise ValueError("explicit, for users")
    assert user_error_message(info.value) == "explicit, for users"


def test_an_error_in_a_dataloader_worker_is_read_from_its_traceback_text(tmp_path):
    for i in range(2):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.zeros((64, 64, 3), np.uint8))
    dataset = ImageFolderDataset(tmp_path, eval_transform(64, normalize=False), views=1)
    (tmp_path / "1.png").write_bytes(b"overwritten since the folder was checked")
    with pytest.raises(OSError) as info:
        next(iter(DataLoader(dataset, batch_size=2, num_workers=1)))
    assert "Original Traceback" in str(info.value)
    text = user_error_message(info.value)
    assert text.startswith(f"cannot read image {tmp_path / '1.png'}") and "corrupt" in text
    assert "Traceback" not in text


def test_a_checkpoint_of_the_other_stage_is_refused_with_its_use(tmp_path):
    stage1 = save_checkpoint(tmp_path / "s1.ckpt", "pretrain")
    stage2 = save_checkpoint(tmp_path / "s2.ckpt", "finetune")
    check_ckpt_path(str(stage1), "pretrain")
    check_ckpt_path(str(stage2), "finetune")
    with pytest.raises(UserError, match="stage-1 .*`make finetune PRETRAINED="):
        check_ckpt_path(str(stage1), "finetune")
    with pytest.raises(UserError, match="stage-2 .*aukit-finetune test"):
        check_ckpt_path(str(stage2), "pretrain")
    (tmp_path / "junk.ckpt").write_text("junk")
    with pytest.raises(UserError, match="--ckpt_path checkpoint .*junk.ckpt could not be read"):
        check_ckpt_path(str(tmp_path / "junk.ckpt"), "finetune")


def test_a_misspelt_flag_is_refused_not_taken_as_a_prefix(tmp_path, capsys):
    """argparse would take --trainer.max_step as --trainer.max_steps, --dev as --device."""
    with pytest.raises(SystemExit) as exit_info:
        AUCLI(RegionRelationPretrainer, UnlabeledFaceDataModule, run=False,
              args=["-c", "conf/trainer/cpu.yaml", "-c", "conf/pretrain/synthau.yaml",
                    "--trainer.max_step", "3"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --trainer.max_step 3" in capsys.readouterr().err
    from aukit.predict import main as predict

    with pytest.raises(SystemExit) as exit_info:
        predict(["--input", "x.png", "--ckpt", "x.ckpt", "--dev", "cpu"])
    assert exit_info.value.code == 2 and "unrecognized arguments: --dev" in capsys.readouterr().err
