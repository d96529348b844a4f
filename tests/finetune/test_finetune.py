"""Stage 2 end to end: fit + test through the CLI, stage-1 hand-over, model selection, bad input."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from aukit.checkpoint import META_KEY
from aukit.checkpointing import last_checkpoint_path
from aukit.configs import config_flags, finetune_configs
from aukit.data.datamodules import AUDataModule, SynthAUDataModule
from aukit.optim import parameter_groups
from finetune.cli import FinetuneCLI
from finetune.module import HiVAFinetuner
from pretrain.module import RegionRelationPretrainer

# what `make finetune` composes (conf/ as shipped)
SYNTHAU = config_flags(["trainer/cpu.yaml", *finetune_configs("synthau")])
TINY = ["--trainer.accelerator", "cpu", "--trainer.devices", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--data.image_size", "64", "--data.batch_size", "8", "--data.num_workers", "0",
        "--data.synthau_samples_per_subject", "2", "--data.synthau_eval_samples_per_subject", "2",
        "--model.encoder.embed_dim", "32", "--model.text.per_step", "2"]


def run_finetune(tmp_path: Path, *extra: str, subcommand: str = "fit") -> FinetuneCLI:
    args = [subcommand, *SYNTHAU, *TINY,
            "--trainer.logger.init_args.save_dir", str(tmp_path),
            "--model.text.cache_dir", str(tmp_path / "text-cache"), *extra]
    return FinetuneCLI(HiVAFinetuner, AUDataModule, args=args)


def save_stage1(path: Path, image_size: int = 64, stage: str = "pretrain",
                **encoder) -> RegionRelationPretrainer:
    """A stage-1 checkpoint of a fresh encoder: ``encoder`` settings over swin_test, 32 dims."""
    module = RegionRelationPretrainer(aus="all", image_size=image_size,
                                      encoder={"backbone": "swin_test", "embed_dim": 32,
                                               **encoder})
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    checkpoint[META_KEY]["stage"] = stage
    torch.save(checkpoint, path)
    return module


class NoTestDuringFit(SynthAUDataModule):
    """Fails if the test split is requested while fitting: selection must use val only."""

    def test_dataloader(self):
        if self.trainer is not None and self.trainer.training:
            raise AssertionError("the test split was read during fit")
        return super().test_dataloader()


@pytest.mark.slow
def test_fit_then_test_writes_checkpoints_and_a_per_au_report(tmp_path, capsys, caplog):
    caplog.set_level("INFO")
    cli = run_finetune(tmp_path, "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "2",
                       "--trainer.limit_val_batches", "2", "--trainer.limit_test_batches", "2")
    callback = cli.trainer.checkpoint_callback
    assert callback.monitor == "val/f1_mean" and Path(callback.best_model_path).is_file()
    assert (Path(callback.best_model_path).parent / "last.ckpt").is_file()
    meta = torch.load(callback.best_model_path, weights_only=False)[META_KEY]
    assert meta["stage"] == "finetune" and meta["aus"] == [1, 2, 4, 6, 7, 10, 12, 14, 15, 17,
                                                           23, 24]
    out = capsys.readouterr().out + caplog.text
    assert "initialised from scratch" in out and "| AU12" in out
    report_dir = Path(cli.trainer.logger.log_dir)
    report = json.loads((report_dir / "test_report.json").read_text())
    assert set(report["aus"]) == set(cli.model.au_names)
    assert all(f"f1_{au}" in report["metrics"] for au in report["aus"])
    csv = (report_dir / "test_report.csv").read_text().splitlines()
    assert csv[0].startswith("au,f1") and len(csv) == len(report["aus"]) + 2
    # the `test` subcommand evaluates a checkpoint on its own
    tested = run_finetune(tmp_path / "t", "--ckpt_path", callback.best_model_path,
                          "--trainer.limit_test_batches", "1", subcommand="test")
    assert (Path(tested.trainer.logger.log_dir) / "test_report.json").is_file()
    assert tested.trainer.logged_metrics["test/f1_mean"] >= 0


@pytest.mark.slow
def test_model_selection_reads_the_validation_split_only(tmp_path):
    args = ["fit", *SYNTHAU, "--data", f"{__name__}.NoTestDuringFit", *TINY,
            "--trainer.logger.init_args.save_dir", str(tmp_path), "--test_after_fit", "false",
            "--model.text.cache_dir", str(tmp_path / "cache"), "--model.heads.use_text", "false",
            "--trainer.max_epochs", "3", "--trainer.limit_train_batches", "2",
            "--trainer.limit_val_batches", "2"]
    cli = FinetuneCLI(HiVAFinetuner, AUDataModule, args=args)
    assert isinstance(cli.datamodule, NoTestDuringFit)
    callback = cli.trainer.checkpoint_callback
    best = torch.load(callback.best_model_path, weights_only=False)
    scores = [s for s in callback.best_k_models.values()]
    assert float(callback.best_model_score) == max(float(s) for s in scores)
    assert best["epoch"] < 3


def test_stage1_checkpoint_initialises_backbone_and_region(tmp_path):
    stage1 = save_stage1(tmp_path / "s1.ckpt")
    module = HiVAFinetuner.from_stage1(tmp_path / "s1.ckpt", aus=["AU12", "AU1"], image_size=64,
                                       encoder=dict(embed_dim=32), heads=dict(use_text=False))
    for name, value in stage1.encoder.backbone.state_dict().items():
        assert torch.equal(module.model.encoder.backbone.state_dict()[name], value), name
    rows = [list(stage1.au_numbers).index(a) for a in (12, 1)]
    assert torch.equal(module.model.encoder.region.au_queries,
                       stage1.encoder.region.au_queries[rows])
    assert module.model_config["encoder"]["backbone"] == "swin_test"


def test_pretrained_parts_backbone_leaves_the_region_encoder_fresh(tmp_path):
    stage1 = save_stage1(tmp_path / "s1.ckpt")
    kwargs = dict(aus=["AU12", "AU1"], image_size=64, encoder=dict(embed_dim=32),
                  heads=dict(use_text=False))
    torch.manual_seed(0)
    fresh = HiVAFinetuner(**kwargs)
    torch.manual_seed(0)
    module = HiVAFinetuner.from_stage1(tmp_path / "s1.ckpt", pretrained_parts="backbone",
                                       **kwargs)
    for name, value in stage1.encoder.backbone.state_dict().items():
        assert torch.equal(module.model.encoder.backbone.state_dict()[name], value), name
    for name, value in fresh.model.encoder.region.state_dict().items():
        assert torch.equal(module.model.encoder.region.state_dict()[name], value), name
    with pytest.raises(ValueError, match="--model.pretrained_parts"):
        HiVAFinetuner(pretrained_parts="region", **kwargs)


def test_a_stage1_encoder_with_other_settings_is_refused_naming_each_flag(tmp_path):
    save_stage1(tmp_path / "s1.ckpt", num_heads=4, region_depth=1)
    kwargs = dict(aus=["AU12"], image_size=64, heads=dict(use_text=False),
                  pretrained=str(tmp_path / "s1.ckpt"))

    def encoder(**settings):
        return {"encoder": {"embed_dim": 32, **settings}}

    # the head count changes no parameter shape: without the check it would silently re-split
    with pytest.raises(ValueError, match=r"num_heads=4 but this model uses num_heads=2; set "
                                         r"--model.encoder.num_heads 4"):
        HiVAFinetuner(**kwargs, **encoder(num_heads=2))
    with pytest.raises(ValueError, match=r"embed_dim=32, region_depth=1 .* embed_dim=16, "
                                         r"region_depth=2; set --model.encoder.embed_dim 32 "
                                         r"--model.encoder.region_depth 1"):
        HiVAFinetuner(**kwargs, **encoder(embed_dim=16, region_depth=2))
    with pytest.raises(ValueError, match="image_size=64.*--data.image_size 64"):
        HiVAFinetuner(**{**kwargs, "image_size": 96}, **encoder())
    HiVAFinetuner(**kwargs, **encoder(dropout=0.3))  # a training setting: not compared
    # the backbone alone: only its settings count, the region encoder is this model's own
    module = HiVAFinetuner(**kwargs, **encoder(num_heads=2, region_depth=2, geometry=True),
                           pretrained_parts="backbone")
    assert module.model_config["encoder"]["geometry"] is True
    with pytest.raises(ValueError, match="--data.image_size 64"):
        HiVAFinetuner(**{**kwargs, "image_size": 96}, **encoder(), pretrained_parts="backbone")


def test_stage1_weights_arrive_when_training_starts_and_never_over_a_resumed_run(tmp_path):
    from types import SimpleNamespace

    stage1 = save_stage1(tmp_path / "s1.ckpt")
    expected = stage1.encoder.region.au_queries[[list(stage1.au_numbers).index(12)]]
    for resumed in ("last.ckpt", None):
        module = HiVAFinetuner(aus=["AU12"], image_size=64, encoder=dict(embed_dim=32),
                               heads=dict(use_text=False),
                               pretrained=str(tmp_path / "s1.ckpt"))
        assert not torch.equal(module.model.encoder.region.au_queries, expected)  # not read yet
        module._trainer = SimpleNamespace(ckpt_path=resumed)
        module.on_fit_start()
        assert torch.equal(module.model.encoder.region.au_queries, expected) == (resumed is None)
    with torch.no_grad():
        module.model.encoder.region.au_queries.zero_()  # "trained"
    module.on_fit_start()  # a second fit of the same module keeps its weights
    assert not module.model.encoder.region.au_queries.any()


@pytest.mark.parametrize("conv_stem", [True, False])
def test_the_region_baseline_adopts_the_stage1_stem_and_weights(tmp_path, conv_stem):
    stage1 = save_stage1(tmp_path / "s1.ckpt", conv_stem=conv_stem)
    module = HiVAFinetuner.from_stage1(tmp_path / "s1.ckpt", aus=["AU12", "AU1"], image_size=64,
                                       encoder=dict(embed_dim=32), architecture="region")
    assert module.model_config["encoder"]["conv_stem"] is conv_stem
    assert module.model.encoder.backbone.conv_stem is conv_stem
    for name, value in stage1.encoder.backbone.state_dict().items():
        assert torch.equal(module.model.encoder.backbone.state_dict()[name], value), name
    rows = [list(stage1.au_numbers).index(a) for a in (12, 1)]
    assert torch.equal(module.model.encoder.region.au_queries,
                       stage1.encoder.region.au_queries[rows])


def test_roi_pooling_is_handed_over_from_stage1(tmp_path):
    stage1 = save_stage1(tmp_path / "s1.ckpt", roi_size=3, roi_extent=0.2)
    module = HiVAFinetuner.from_stage1(tmp_path / "s1.ckpt", aus=["AU12", "AU1"], image_size=64,
                                       encoder=dict(embed_dim=32, roi_size=3, roi_extent=0.2),
                                       architecture="region")
    assert torch.equal(module.model.encoder.region.roi_proj.weight,
                       stage1.encoder.region.roi_proj.weight)
    with pytest.raises(ValueError, match="roi_size=3.*--model.encoder.roi_size 3"):
        HiVAFinetuner(aus=["AU12"], image_size=64, encoder=dict(embed_dim=32),
                      architecture="region",
                      pretrained=str(tmp_path / "s1.ckpt"))


def test_the_geometry_branch_is_handed_over_from_stage1(tmp_path):
    stage1 = save_stage1(tmp_path / "s1.ckpt", geometry=True)
    module = HiVAFinetuner.from_stage1(tmp_path / "s1.ckpt", aus=["AU12", "AU1"], image_size=64,
                                       encoder=dict(embed_dim=32),  # geometry: stage 1's
                                       heads=dict(use_text=False))
    assert module.model_config["encoder"]["geometry"] is True
    region, rows = module.model.encoder.region, [list(stage1.au_numbers).index(a) for a in (12, 1)]
    assert torch.equal(region.geometry.project.weight,
                       stage1.encoder.region.geometry.project.weight)
    assert torch.equal(region.geometry_embed, stage1.encoder.region.geometry_embed[rows])
    with pytest.raises(ValueError, match="geometry=True.*--model.encoder.geometry True"):
        HiVAFinetuner(aus=["AU12"], image_size=64, encoder=dict(embed_dim=32, geometry=False),
                      heads=dict(use_text=False),
                      pretrained=str(tmp_path / "s1.ckpt"))


def test_frozen_parts_do_not_train_and_a_part_that_is_off_is_skipped(tmp_path):
    save_stage1(tmp_path / "s1.ckpt", geometry=True)
    module = HiVAFinetuner.from_stage1(tmp_path / "s1.ckpt", aus=["AU12", "AU1"], image_size=64,
                                       encoder=dict(embed_dim=32), heads=dict(use_text=False),
                                       freeze=["encoder.region.geometry",
                                               "encoder.region.geometry_embed"])
    region = module.model.encoder.region
    frozen = {id(p) for p in [*region.geometry.parameters(), region.geometry_embed]}
    trained = {id(p) for group in parameter_groups(module.model, 1e-3, 0.05)
               for p in group["params"]}
    assert frozen and not frozen & trained and id(module.model.encoder.region.au_queries) in trained
    scratch = HiVAFinetuner(aus=["AU12"], image_size=64, encoder=dict(embed_dim=32),
                            heads=dict(use_text=False),
                            # no geometry branch: nothing to freeze
                            freeze=["encoder.region.geometry"])
    assert all(p.requires_grad for p in scratch.model.parameters())
    with pytest.raises(ValueError, match="--model.freeze names 'region.wings'"):
        HiVAFinetuner(aus=["AU12"], image_size=64, encoder=dict(embed_dim=32),
                      heads=dict(use_text=False),
                      freeze=["region.wings"])


@pytest.mark.parametrize("kwargs,message", [
    ({"image_size": 128}, "image_size=64.*image_size=128"),
    ({"image_size": 64, "conv_stem": False}, "conv_stem=True.*--model.encoder.conv_stem True"),
    ({"backbone": "swin_tiny", "image_size": 64}, "backbone='swin_test'"),
])
def test_a_mismatched_stage1_checkpoint_is_refused(tmp_path, kwargs, message):
    save_stage1(tmp_path / "s1.ckpt")
    image_size = kwargs.pop("image_size")
    with pytest.raises(ValueError, match=message):
        HiVAFinetuner(aus=["AU12"], image_size=image_size, encoder=dict(embed_dim=32, **kwargs),
                      heads=dict(use_text=False), pretrained=str(tmp_path / "s1.ckpt"))


def test_a_finetune_checkpoint_is_not_a_stage1_checkpoint(tmp_path):
    save_stage1(tmp_path / "ft.ckpt", stage="finetune")
    with pytest.raises(ValueError, match="is a finetune checkpoint.*make pretrain"):
        HiVAFinetuner(aus=["AU12"], image_size=64, encoder=dict(embed_dim=32),
                      heads=dict(use_text=False),
                      pretrained=str(tmp_path / "ft.ckpt"))


def test_resuming_finetuning_from_a_stage1_checkpoint_is_refused():
    module = HiVAFinetuner(aus=["AU12"], image_size=64, encoder=dict(embed_dim=32),
                           heads=dict(use_text=False))
    with pytest.raises(ValueError, match="--model.pretrained, not --ckpt_path"):
        module.on_load_checkpoint({META_KEY: {"stage": "pretrain"}})


def test_description_bank_missing_an_au_fails_before_training(tmp_path):
    bank = yaml.safe_load(Path("conf/au_descriptions.yaml").read_text())
    del bank["descriptions"]["AU12"]
    path = tmp_path / "bank.yaml"
    path.write_text(yaml.safe_dump(bank))
    with pytest.raises(ValueError, match="AU12"):
        run_finetune(tmp_path, "--model.text.descriptions", str(path), "--trainer.max_epochs", "1")


def test_text_weights_that_cannot_be_had_offline_fail_fast(tmp_path):
    from aukit.text.features import load_text_features

    # the model is sized for the text encoder without loading it ...
    module = HiVAFinetuner(aus=["AU12"], image_size=64, encoder=dict(embed_dim=32),
                           text=dict(encoder="open_clip:ViT-B-16", pretrained="openai",
                                     cache_dir=str(tmp_path)))
    assert module.model.text_proj.in_features == 512 and module.descriptions.features is None
    # ... which happens at set-up, before training, through this function
    with pytest.raises(OSError, match="--model.text.weights"):
        load_text_features("open_clip:ViT-B-16", ["AU12"], pretrained="openai",
                           cache_dir=tmp_path)


def test_a_model_for_other_aus_is_refused_by_the_data(tmp_path):
    import lightning as L

    module = HiVAFinetuner(aus=["AU1", "AU2"], image_size=64, encoder=dict(embed_dim=32),
                           heads=dict(use_text=False))
    data = SynthAUDataModule(image_size=64, batch_size=4, synthau_samples_per_subject=1,
                             synthau_eval_samples_per_subject=1)
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, logger=False,
                        default_root_dir=tmp_path, enable_progress_bar=False)
    with pytest.raises(ValueError, match="predicts.*but the data has"):
        trainer.fit(module, datamodule=data)


@pytest.mark.slow
def test_a_tiny_run_learns_its_training_faces_beyond_chance(tmp_path):
    """End to end through the CLI, a few minutes of CPU budget: the model must really learn the
    faces it trains on (held-out generalisation needs longer runs: see bench-finetune)."""
    args = ["fit", *SYNTHAU,
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--trainer.logger.init_args.save_dir", str(tmp_path), "--test_after_fit", "false",
            "--model.text.cache_dir", str(tmp_path / "cache"), "--model.encoder.embed_dim", "32",
            "--model.text.per_step", "2", "--data.aus", "[AU25,AU26,AU12,AU4]",
            "--data.image_size", "64", "--data.batch_size", "12", "--data.num_workers", "0",
            "--data.label_fraction", "0.2", "--data.synthau_samples_per_subject", "4",
            "--data.synthau_eval_samples_per_subject", "1", "--trainer.max_epochs", "40",
            "--trainer.check_val_every_n_epoch", "20", "--model.optim.warmup_epochs", "1",
            "--model.optim.lr", "2e-3"]
    cli = FinetuneCLI(HiVAFinetuner, AUDataModule, args=args)
    labels, mask = cli.datamodule.split_labels("train")
    rate = (labels * mask).sum(0) / mask.sum(0)
    chance = float((2 * rate / (1 + rate)).mean())  # F1 of predicting "present" everywhere
    cli.trainer.test(cli.model, dataloaders=cli.datamodule.split_dataloader("train"))
    f1 = float(cli.trainer.callback_metrics["test/f1_mean"])
    auc = float(cli.trainer.callback_metrics["test/auc_mean"])
    assert f1 > chance + 0.05 and auc > 0.7, (f1, chance, auc)


def test_a_finetune_checkpoint_loads_without_its_stage1_file(tmp_path, capsys, caplog):
    """Stage 2 from a stage-1 file, then that file is deleted: the stage-2 checkpoint still
    loads, through load_from_checkpoint, the inference predictor, `test --ckpt_path` and a
    resumed `fit`, and gives the trained model's outputs."""
    from aukit.au_maps import canonical_landmarks
    from aukit.inference import load_predictor

    stage1_path = tmp_path / "moved" / "s1.ckpt"
    stage1_path.parent.mkdir()
    save_stage1(stage1_path, conv_stem=True, feature_stage=2, roi_size=4, roi_extent=0.15)
    tiny = ["--model.pretrained", str(stage1_path), "--model.heads.use_text", "false",
            "--data.aus", "[AU1,AU12]"]
    cli = run_finetune(tmp_path / "fit", *tiny, "--test_after_fit", "false",
                       "--trainer.max_steps", "2", "--trainer.limit_val_batches", "1")
    ckpt = last_checkpoint_path(cli.trainer)
    trained = cli.model.eval()
    stage1_path.unlink()
    stage1_path.parent.rmdir()

    checkpoint = torch.load(ckpt, weights_only=False)
    assert checkpoint["hyper_parameters"]["pretrained"] is None
    # the config it was built from
    assert checkpoint[META_KEY]["model"]["encoder"]["conv_stem"] is True
    assert checkpoint[META_KEY]["pretrained"] == str(stage1_path)  # where it came from
    loaded = HiVAFinetuner.load_from_checkpoint(ckpt).eval()
    assert loaded.hparams.encoder["conv_stem"] is True
    assert loaded.model.encoder.backbone.conv_stem is True
    assert loaded.hparams.encoder["backbone"] == "swin_test" and loaded.hparams.image_size == 64
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    landmarks = torch.from_numpy(canonical_landmarks(64))[None].expand(2, -1, -1)
    with torch.no_grad():
        expected = trained(images, landmarks)["logits"]
        torch.testing.assert_close(loaded(images, landmarks)["logits"], expected)
        probabilities = load_predictor(ckpt, tmp_path / "text-cache")(images)[0]
    torch.testing.assert_close(probabilities, expected.sigmoid())
    # the fit command line reused for `test`, stage-1 path and all
    tested = run_finetune(tmp_path / "test", *tiny, "--ckpt_path", ckpt,
                          "--trainer.limit_test_batches", "1", subcommand="test")
    assert tested.trainer.logged_metrics["test/f1_mean"] >= 0
    caplog.set_level("INFO")
    resumed = run_finetune(tmp_path / "resume", *tiny, "--ckpt_path", ckpt, "--test_after_fit",
                           "false", "--trainer.max_steps", "3", "--trainer.limit_val_batches", "1")
    assert resumed.trainer.global_step == 3
    assert f"resumed from {ckpt} (stage-1 initialisation: {stage1_path})" in (
        capsys.readouterr().out + caplog.text)
    resaved = torch.load(last_checkpoint_path(resumed.trainer), weights_only=False)
    assert resaved[META_KEY]["pretrained"] == str(stage1_path)
