"""Scale-out correctness: keyed samplers under DDP, and 2-process CPU (gloo) DDP runs of both
stages through their CLIs: one checkpoint set, loadable, and test metrics equal to one process."""

import json
import os
import subprocess
from pathlib import Path

import lightning as L
import pytest
import torch
from test_install import installed_script
from torch.utils.data import Dataset

from aukit.checkpoint import load_stage1_encoder, read_checkpoint
from aukit.cli import OOM_HINT, check_trainer
from aukit.configs import config_flags, finetune_configs
from aukit.data.datamodules import AUDataModule, make_loader
from aukit.data.sampling import ResumableDataLoader
from aukit.models.encoder import AUEncoder, encoder_config
from finetune.cli import FinetuneCLI
from finetune.module import HiVAFinetuner

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
          "--trainer.enable_model_summary", "false", "--data.image_size", "64",
          "--data.batch_size", "4", "--data.num_workers", "0", "--model.encoder.embed_dim", "32"]
DDP = ["--trainer.devices", "2", "--trainer.strategy", "ddp"]
# 20 test subjects x 1 sample: 5 batches of 4 on one process, 3 per rank (4, 4, 2) under DDP
FINETUNE = [*config_flags(["trainer/cpu.yaml", *finetune_configs("synthau")]), *COMMON,
            "--data.synthau_samples_per_subject", "1",
            "--data.synthau_eval_samples_per_subject", "1", "--model.text.per_step", "2"]


class Keys(Dataset):
    def __init__(self, size: int):
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, key: int) -> int:
        return key


def served(loader) -> list[int]:
    return [int(k) for batch in loader for k in batch]


def test_training_ranks_split_each_epoch_and_resume_their_own_share():
    size, batch = 11, 2
    loaders = [ResumableDataLoader(Keys(size), batch, seed=3, num_replicas=2, rank=r)
               for r in range(2)]
    for epoch in (0, 1):
        for loader in loaders:
            loader.sampler.set_epoch(epoch)
        keys = [served(loader) for loader in loaders]
        assert len(keys[0]) == len(keys[1]) == 6  # padded so both ranks step equally often
        assert {k % size for k in keys[0] + keys[1]} == set(range(size))
        assert all(k // size == epoch for k in keys[0] + keys[1])
    # stopped after 2 batches of epoch 1: a fresh loader of each rank serves the rest only
    for rank, loader in enumerate(loaders):
        full = served(loader)
        resumed = ResumableDataLoader(Keys(size), batch, seed=3, num_replicas=2, rank=rank)
        resumed.load_state_dict({"epoch": 1, "consumed": 2})
        resumed.sampler.set_epoch(1)
        assert served(resumed) == full[2 * batch:]


def test_evaluation_ranks_see_every_sample_exactly_once():
    parts = [served(make_loader(Keys(7), 2, 0, shuffle=False, replicas=(2, r))) for r in range(2)]
    assert sorted(parts[0] + parts[1]) == list(range(7))


def test_lightning_keeps_our_samplers_under_ddp():
    # a DistributedSampler is left in place; anything else would be re-wrapped (skip lost)
    loader = ResumableDataLoader(Keys(5), 2, num_replicas=2, rank=1)
    assert isinstance(loader.sampler, torch.utils.data.DistributedSampler)


def test_gpu_settings_the_machine_cannot_meet_name_the_fix(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla V100")
    with pytest.raises(ValueError, match="16-mixed"):
        check_trainer("gpu", 1, "bf16-mixed")
    with pytest.raises(ValueError, match="has 2: use --trainer.devices 2"):
        check_trainer("gpu", 8, "16-mixed")
    check_trainer("cpu", 8, "bf16-mixed")  # CPU autocast has bf16
    check_trainer("gpu", -1, "16-mixed")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without GPU")
def test_gpu_preset_without_a_gpu_points_to_the_cpu_preset():
    with pytest.raises(ValueError, match="-c trainer/cpu.yaml"):
        FinetuneCLI(HiVAFinetuner, AUDataModule, run=False,
                    args=[*config_flags(["trainer/gpu.yaml", *finetune_configs("synthau")]),
                          "--data.image_size", "64", "--model.heads.use_text", "false"])


class OutOfMemory(L.Callback):
    def on_train_batch_start(self, *args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")


def test_a_batch_that_does_not_fit_names_the_fix(tmp_path):
    with pytest.raises(torch.OutOfMemoryError, match="lower --data.batch_size"):
        FinetuneCLI(HiVAFinetuner, AUDataModule, trainer_defaults={"callbacks": [OutOfMemory()]},
                    args=["fit", *FINETUNE, "--model.heads.use_text", "false",
                          "--trainer.logger.init_args.save_dir", str(tmp_path)])
    assert "accumulate_grad_batches" in OOM_HINT


def cli(command: str, *args: str, timeout: int = 240) -> str:
    """The installed console script ``command`` (Lightning's DDP launcher re-runs it per rank)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1",
           "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    done = subprocess.run([installed_script(command), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


@pytest.mark.slow
def test_two_process_pretrain_writes_one_loadable_checkpoint(tmp_path):
    cli("aukit-pretrain", "fit", "-c", "conf/trainer/cpu.yaml", "-c", "conf/pretrain/synthau.yaml",
        *COMMON, *DDP, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
        "--trainer.logger.init_args.save_dir", str(tmp_path),
        "--data.synthau_subjects", "8", "--data.synthau_samples_per_subject", "2",
        "--data.faces_per_subject", "2", "--data.probe.samples_per_subject", "1",
        "--model.losses.proj_dim", "16", "--model.losses.ot_iters", "10",
        # the geometry branch, whose least-squares sums must add every rank's faces
        "--model.encoder.geometry", "true", "--model.losses.geometry_weight", "1",
        "--model.losses.expression_weight", "0")
    runs = sorted(p.name for p in (tmp_path / "pretrain").iterdir())
    assert runs == ["version_0"]  # one run folder: rank 1 did not log or checkpoint apart
    checkpoints = sorted((tmp_path / "pretrain/version_0/checkpoints").iterdir())
    assert [p.name for p in checkpoints] == ["last.ckpt"]
    checkpoint = read_checkpoint(checkpoints[0], "pretrain")
    assert checkpoint["global_step"] == 2
    # both ranks served the same number of batches; rank 0 saved that count for an exact resume
    assert checkpoint["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [
        {"epoch": 0, "consumed": 2}]
    # the geometry map's least-squares sums hold both ranks' faces: 2 steps x 2 ranks x 4 faces
    # x 2 views
    assert checkpoint["state_dict"]["objective.geometry_fit.count"].item() == 32
    config = checkpoint["aukit"]["encoder"]  # conf/pretrain/synthau.yaml's, at the test's size
    assert config["image_size"] == 64 and config["roi_size"] == 4 and config["geometry"]
    encoder = AUEncoder((1, 2, 4), **encoder_config(config))
    load_stage1_encoder(checkpoints[0], encoder)
    state = checkpoint["state_dict"]
    for name, value in encoder.state_dict().items():
        if "au_queries" not in name and "geometry_embed" not in name:  # rows of 17 AUs there
            assert torch.equal(value, state[f"encoder.{name}"]), name


@pytest.mark.slow
def test_two_process_finetune_test_metrics_equal_one_process(tmp_path):
    text_cache = ["--model.text.cache_dir", str(tmp_path / "text")]
    cli("aukit-finetune", "fit", *FINETUNE, *DDP, *text_cache, "--trainer.max_epochs", "1",
        "--trainer.limit_train_batches", "2", "--trainer.logger.init_args.save_dir",
        str(tmp_path / "ddp"))
    run = tmp_path / "ddp/finetune/version_0"
    assert sorted(p.name for p in (tmp_path / "ddp/finetune").iterdir()) == ["version_0"]
    best = [p for p in (run / "checkpoints").iterdir() if p.name.startswith("best")]
    assert len(best) == 1 and (run / "checkpoints/last.ckpt").is_file()
    ddp_report = json.loads((run / "test_report.json").read_text())
    assert Path(ddp_report["checkpoint"]) == best[0]

    FinetuneCLI(HiVAFinetuner, AUDataModule,
                args=["test", *FINETUNE, *text_cache, "--trainer.devices", "1",
                      "--ckpt_path", str(best[0]), "--trainer.logger.init_args.save_dir",
                      str(tmp_path / "single")])
    single = json.loads((tmp_path / "single/finetune/version_0/test_report.json").read_text())
    for key, value in single["metrics"].items():
        assert ddp_report["metrics"][key] == pytest.approx(value, abs=1e-6, nan_ok=True), key


