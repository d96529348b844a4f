"""``last.ckpt`` is the newest state in both stages, and ``--ckpt_path last`` finds it."""

from pathlib import Path

import pytest
import torch
from test_finetune import run_finetune
from test_pretrain import Killed

from aukit import landmarks
from aukit.checkpoint import read_checkpoint
from aukit.cli import UserError

SHORT = ["--trainer.max_epochs", "3", "--trainer.limit_train_batches", "2",
         "--trainer.limit_val_batches", "1", "--trainer.check_val_every_n_epoch", "2",
         "--test_after_fit", "false"]


def _step(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=False)["global_step"]


@pytest.mark.slow
def test_finetune_last_checkpoint_is_the_end_of_training_not_the_best(tmp_path):
    # validation runs after epoch 2 only: the best checkpoint is step 4, training ends at 6
    cli = run_finetune(tmp_path, *SHORT)
    best = Path(cli.trainer.checkpoint_callback.best_model_path)
    last = best.parent / "last.ckpt"
    assert _step(best) == 4 and _step(last) == 6 == cli.trainer.global_step
    assert read_checkpoint(last, "finetune")["state_dict"].keys() == \
        read_checkpoint(best, "finetune")["state_dict"].keys()


@pytest.mark.slow
def test_ckpt_path_last_resumes_the_newest_run_and_says_where_it_looked(tmp_path, capsys):
    first = run_finetune(tmp_path, *SHORT)
    folder = Path(first.trainer.logger.log_dir) / "checkpoints"
    resumed = run_finetune(tmp_path, *SHORT, "--ckpt_path", "last",
                           "--trainer.max_epochs", "4")
    assert resumed.trainer.ckpt_path == str(folder / "last.ckpt")
    assert f"resuming from {folder / 'last.ckpt'}" in capsys.readouterr().err
    assert resumed.trainer.global_step == 8  # 6 restored + one more epoch of 2
    with pytest.raises(UserError, match=r"--ckpt_path last: no last.ckpt under .*empty"):
        run_finetune(tmp_path / "empty", *SHORT, "--ckpt_path", "last")


@pytest.mark.slow
def test_a_killed_finetune_resumed_from_last_equals_an_uninterrupted_one(tmp_path, monkeypatch):
    # the straight run finds the landmarks (building the detector), the others read them from
    # the cache: neither may change what the run draws
    monkeypatch.setenv("AUKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(landmarks, "_detector", None)
    straight = run_finetune(tmp_path / "straight", *SHORT)
    # dies at the start of step 5; the newest state is last.ckpt of the epoch end at step 4
    kill = ["--trainer.callbacks+=test_pretrain.KillAtStep", "--trainer.callbacks.step=5"]
    with pytest.raises(Killed):
        run_finetune(tmp_path / "killed", *SHORT, *kill)
    resumed = run_finetune(tmp_path / "killed", *SHORT, "--ckpt_path", "last")
    assert _step(Path(resumed.trainer.ckpt_path)) == 4 and resumed.trainer.global_step == 6
    for (name, a), (_, b) in zip(straight.model.state_dict().items(),
                                 resumed.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
