"""``last.ckpt`` is the newest state in both stages, and ``--ckpt_path last`` finds it."""

from pathlib import Path

import pytest
import torch
from test_finetune import run_finetune

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
