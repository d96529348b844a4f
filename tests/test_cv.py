"""Cross-validation runner: the results table from fold reports, and a one-epoch run of one
fold on a tiny BP4D tree through the real ``finetune`` subprocesses."""

import csv
import json

import pytest
from test_readers import make_bp4d

from aukit.cv import PUBLISHED, main, results_table

AUS = ["AU1", "AU2"]


def report(f1: tuple[float, float]) -> dict:
    return {"aus": AUS, "metrics": {"f1_AU1": f1[0], "f1_AU2": f1[1]}}


def test_table_has_folds_fold_means_and_published_numbers():
    reports = {k: {"last": report((0.1 * k, 0.5)), "best": report((0.2 * k, 0.3))}
               for k in (1, 2, 3)}
    rows, markdown = results_table("disfa", AUS, reports)
    assert rows[0] == ["checkpoint", "fold", "AU1", "AU2", "mean"]
    last = {r[1]: r[2:] for r in rows[1:] if r[0] == "last"}
    assert last["fold 2 (test part2)"] == ["20.00", "50.00", "35.00"]
    assert last["mean of 3 folds"] == ["20.00", "50.00", "35.00"]
    best = {r[1]: r[2:] for r in rows[1:] if r[0] == "best"}
    assert best["mean of 3 folds"] == ["40.00", "30.00", "35.00"]
    assert "| ME-GraphAU | 63.1 |" in markdown and "60.6" in markdown
    assert all(f"| {m} |" in markdown for m in PUBLISHED)
    assert "not a public benchmark" in results_table("synthau", AUS, reports)[1]


@pytest.mark.slow
def test_one_epoch_fold_on_a_tiny_bp4d_tree(tmp_path, monkeypatch):
    root = make_bp4d(tmp_path / "bp4d", frames=4)
    out = tmp_path / "cv"
    main(["--dataset", "bp4d", "--data-root", str(root), "--folds", "1", "--out", str(out), "--",
          "--trainer.max_epochs", "1", "--data.image_size", "64", "--model.backbone", "swin_test",
          "--data.batch_size", "4",
          "--data.num_workers", "0", "--data.val_subjects", "[M011]", "--model.use_text", "false",
          "--model.embed_dim", "32", "--trainer.limit_train_batches", "2",
          "--trainer.limit_val_batches", "1"])
    reports = json.loads((out / "fold1" / "reports.json").read_text())
    assert set(reports) == {"last", "best"} and len(reports["last"]["aus"]) == 12
    with (out / "results.csv").open() as f:
        rows = list(csv.reader(f))
    assert [r[1] for r in rows[1:]] == ["fold 1 (test part1)", "mean of 1 folds"] * 2
    text = (out / "results.md").read_text()
    assert "manifest sha256" in text and "| ME-GraphAU | 65.5 |" in text
    fit_log = (out / "fold1" / "fit.log").read_text()
    assert "fold 1 (tests on part1)" in fit_log and "'F001', 'F018'" in fit_log


def test_a_second_run_into_the_same_folder_is_refused_not_mixed(tmp_path):
    from aukit.cv import run_fold

    stale = tmp_path / "fold1" / "fit" / "checkpoints"
    stale.mkdir(parents=True)
    (stale / "last.ckpt").write_bytes(b"an earlier run")
    with pytest.raises(FileExistsError, match="--skip-finished"):
        run_fold("synthau", 1, None, "conf/finetune/synthau.yaml", "conf/trainer/cpu.yaml",
                 tmp_path, [])
    assert (stale / "last.ckpt").read_bytes() == b"an earlier run"
