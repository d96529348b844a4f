"""Cross-validation runner (``aukit-cv``): the results table from fold reports, and a one-epoch
run of one fold on a tiny BP4D tree through subprocesses of the installed ``aukit-finetune``."""

import csv
import json
import math

import pytest
from test_readers import make_bp4d

from aukit.configs import finetune_configs
from aukit.data.protocol import dataset_parts
from finetune.cv import PUBLISHED, finetune_args, main, results_table

AUS = ["AU1", "AU2"]
DISFA = [s for part in dataset_parts("disfa") for s in part]


def report(f1: tuple[float, float]) -> dict:
    return {"aus": AUS, "metrics": {"f1_AU1": f1[0], "f1_AU2": f1[1]}}


def three_folds() -> dict[int, dict[str, dict]]:
    return {k: {"last": report((0.1 * k, 0.5)), "best": report((0.2 * k, 0.3))}
            for k in (1, 2, 3)}


def test_table_has_folds_fold_means_and_published_numbers():
    reports = three_folds()
    rows, markdown = results_table("disfa", AUS, reports, set(DISFA))
    assert rows[0] == ["checkpoint", "fold", "AU1", "AU2", "mean", "subjects_found",
                       "subjects_listed"]
    last = {r[1]: r[2:] for r in rows[1:] if r[0] == "last"}
    assert last["fold 2 (test part2)"] == ["20.00", "50.00", "35.00", "9", "9"]
    assert last["mean of 3 folds"] == ["20.00", "50.00", "35.00", "27", "27"]
    best = {r[1]: r[2:] for r in rows[1:] if r[0] == "best"}
    assert best["mean of 3 folds"] == ["40.00", "30.00", "35.00", "27", "27"]
    assert markdown.splitlines()[0] == "All 27 of 27 fold-list subjects found, all 3 folds run."
    assert "| fold 2 (test part2) | 9 of 9 | 20.0 | 50.0 | 35.0 |" in markdown
    assert "### Published average F1 (3-fold, same part lists)" in markdown
    assert "| ME-GraphAU | 63.1 |" in markdown and "60.6" in markdown
    assert all(f"| {m} |" in markdown for m in PUBLISHED) and "NOT" not in markdown
    synthau = {s for part in dataset_parts("synthau") for s in part}
    assert "not a public benchmark" in results_table("synthau", AUS, reports, synthau)[1]


def test_missing_subjects_are_counted_and_published_numbers_marked_not_comparable():
    missing = ["SN001", "SN009", "SN016", "SN021", "SN003", "SN004"]  # 3 of part1, 1, 2
    rows, markdown = results_table("disfa", AUS, three_folds(), set(DISFA) - set(missing))
    lines = markdown.splitlines()
    assert lines[0] == ("**NOT comparable with published results: 21 of 27 fold-list subjects "
                        f"found (missing {', '.join(sorted(missing, key=DISFA.index))}).**")
    assert "| fold 1 (test part1) | 6 of 9 | 10.0 |" in markdown
    assert "| fold 3 (test part3) | 7 of 9 |" in markdown
    assert "| mean of 3 folds | 21 of 27 (all parts) |" in markdown
    assert "same part lists" not in markdown
    assert ("### Published average F1 (3-fold, full part lists): NOT comparable with the "
            "numbers above") in lines
    assert lines.count(lines[0]) == 2  # at the top and under the published numbers
    found = {(r[0], r[1]): r[-2:] for r in rows[1:]}
    assert found["last", "fold 2 (test part2)"] == ["8", "9"]
    assert found["best", "mean of 3 folds"] == ["21", "27"]


def test_fewer_folds_than_three_are_not_comparable():
    reports = {1: three_folds()[1]}
    markdown = results_table("disfa", AUS, reports, set(DISFA))[1]
    assert markdown.splitlines()[0] == ("**NOT comparable with published results: 1 of 3 folds "
                                        "run.**")
    assert "same part lists" not in markdown


def test_an_au_without_labels_in_a_fold_is_na_and_left_out_of_the_means():
    reports = three_folds()
    reports[2]["last"] = report((0.2, math.nan))  # AU2: no known label in part2
    rows, markdown = results_table("disfa", AUS, reports, set(DISFA))
    last = {r[1]: r[2:5] for r in rows[1:] if r[0] == "last"}
    assert last["fold 2 (test part2)"] == ["20.00", "n/a", "20.00"]
    assert last["mean of 3 folds"] == ["20.00", "50.00", "30.00"]  # avg: (30 + 20 + 40) / 3
    assert "| fold 2 (test part2) | 9 of 9 | 20.0 | n/a | 20.0 |" in markdown
    assert ("n/a: no known labels for that AU in that fold's test part; the fold's avg leaves "
            "it out") in markdown


def test_a_folds_arguments_compose_the_data_sets_configs_and_build(tmp_path):
    from aukit.data.datamodules import AUDataModule, BP4DDataModule
    from finetune.cli import FinetuneCLI
    from finetune.module import HiVAFinetuner

    root = make_bp4d(tmp_path / "bp4d", frames=2)
    args = finetune_args(2, str(root), finetune_configs("bp4d"), "trainer/cpu.yaml", tmp_path,
                         "fit", ["--data.image_size", "64", "--model.encoder.backbone", "swin_test",
                                 "--model.heads.use_text", "false"])
    assert args[:8] == ["-c", "trainer/cpu.yaml", "-c", "finetune/base.yaml", "-c",
                        "data/bp4d.yaml", "-c", "finetune/bp4d.yaml"]
    cli = FinetuneCLI(HiVAFinetuner, AUDataModule, run=False, args=args)
    assert isinstance(cli.datamodule, BP4DDataModule) and cli.datamodule.fold == 2
    assert cli.trainer.logger.log_dir == str(tmp_path / "fit")


@pytest.mark.slow
def test_one_epoch_fold_on_a_tiny_bp4d_tree(tmp_path, monkeypatch):
    root = make_bp4d(tmp_path / "bp4d", frames=4)
    out = tmp_path / "cv"
    monkeypatch.chdir(tmp_path)  # the default configs are the shipped ones, found from anywhere
    monkeypatch.delenv("PYTHONPATH", raising=False)
    main(["--dataset", "bp4d", "--data-root", str(root), "--folds", "1", "--out", str(out), "--",
          "--trainer.max_epochs", "1", "--data.image_size", "64",
          "--model.encoder.backbone", "swin_test", "--data.batch_size", "4",
          "--data.num_workers", "0", "--data.val_subjects", "[M011]",
          "--model.heads.use_text", "false",
          "--model.encoder.embed_dim", "32", "--trainer.limit_train_batches", "2",
          "--trainer.limit_val_batches", "1"])
    reports = json.loads((out / "fold1" / "reports.json").read_text())
    assert set(reports) == {"last", "best"} and len(reports["last"]["aus"]) == 12
    with (out / "results.csv").open() as f:
        rows = list(csv.reader(f))
    assert [r[1] for r in rows[1:]] == ["fold 1 (test part1)", "mean of 1 folds"] * 2
    assert rows[1][-2:] == ["2", "14"] and rows[2][-2:] == ["6", "41"]
    text = (out / "results.md").read_text()
    assert "manifest sha256" in text and "| ME-GraphAU | 65.5 |" in text
    assert "NOT comparable with published results: 6 of 41 fold-list subjects found" in text
    fit_log = (out / "fold1" / "fit.log").read_text()
    assert "fold 1 (tests on part1)" in fit_log and "'F001', 'F018'" in fit_log


def test_a_second_run_into_the_same_folder_is_refused_not_mixed(tmp_path):
    from finetune.cv import run_fold

    stale = tmp_path / "fold1" / "fit" / "checkpoints"
    stale.mkdir(parents=True)
    (stale / "last.ckpt").write_bytes(b"an earlier run")
    with pytest.raises(FileExistsError, match="--skip-finished"):
        run_fold(1, None, finetune_configs("synthau"), "trainer/cpu.yaml", tmp_path, [])
    assert (stale / "last.ckpt").read_bytes() == b"an earlier run"


def test_a_fold_whose_test_part_has_no_data_is_refused_before_any_fold_trains(tmp_path, capsys,
                                                                              monkeypatch):
    monkeypatch.delenv("AUKIT_DEBUG", raising=False)
    root = make_bp4d(tmp_path / "bp4d", subjects=("F001", "F018", "M011", "F003"), frames=2)
    out = tmp_path / "cv"
    with pytest.raises(SystemExit) as exit_info:
        main(["--dataset", "bp4d", "--data-root", str(root), "--out", str(out)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "bp4d fold 3: the data has no subject of the test part" in err
    assert "aukit-cv --folds" in err and "Traceback" not in err
    third = dataset_parts("bp4d")[2]
    named = err.split("none of ", 1)[1].split(")", 1)[0].split(", ")
    assert named == list(third)  # the part's subjects, not every missing one
    assert not (out / "fold1").exists()  # nothing trained


def test_a_run_that_never_validated_says_so_and_how_to_fix_it(tmp_path):
    import torch

    from finetune.cv import _best_and_last

    torch.save({"global_step": 8, "callbacks": {"ModelCheckpoint{'monitor': 'val/f1_mean'}":
                                                {"best_model_path": ""}}}, tmp_path / "last.ckpt")
    with pytest.raises(FileNotFoundError, match=r"validation never ran in its 8 training steps"
                                                r".*--trainer.val_check_interval N"):
        _best_and_last(tmp_path)
