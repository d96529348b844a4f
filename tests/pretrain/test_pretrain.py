"""Stage 1 end to end: the CLI trains, checkpoints, probes, resumes exactly, refuses bad input."""

from pathlib import Path

import cv2
import lightning as L
import numpy as np
import pytest
import torch

from aukit.checkpoint import load_stage1_encoder, read_checkpoint
from aukit.cli import AUCLI
from aukit.data.datamodules import UnlabeledFaceDataModule
from aukit.losses.masked_pixels import block_mask
from aukit.models.encoder import AUEncoder, encoder_config
from pretrain.module import RegionRelationPretrainer

TINY = ["--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.logger", "false",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--data.image_size", "64", "--data.batch_size", "4", "--data.num_workers", "0",
        "--data.synthau_subjects", "8", "--data.synthau_samples_per_subject", "2",
        "--data.faces_per_subject", "2", "--data.probe.samples_per_subject", "2",
        "--model.encoder.embed_dim", "32", "--model.losses.proj_dim", "16",
        "--model.losses.ot_iters", "10"]


def run_pretrain(tmp_path: Path, *extra: str, config: bool = True,
                 callbacks: list | None = None) -> AUCLI:
    args = ["fit"]
    if config:
        args += ["-c", "conf/trainer/cpu.yaml", "-c", "conf/pretrain/synthau.yaml"]
    args += TINY + ["--trainer.default_root_dir", str(tmp_path), *extra]
    return AUCLI(RegionRelationPretrainer, UnlabeledFaceDataModule, args=args,
                 trainer_defaults={"callbacks": callbacks or []})


class Killed(RuntimeError):
    pass


class KillAtStep(L.Callback):
    """Simulates a crash: dies before running training step ``step``."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise Killed(f"killed at step {self.step}")


def checkpoint_callback_args(tmp_path: Path, every: int = 2) -> list[str]:
    return ["--trainer.callbacks+=aukit.checkpointing.LastCheckpoint",
            f"--trainer.callbacks.dirpath={tmp_path / 'ckpt'}",
            f"--trainer.callbacks.every_n_train_steps={every}"]


@pytest.mark.slow
def test_tiny_pretrain_writes_a_self_describing_checkpoint_and_probes(tmp_path, capsys):
    cli = run_pretrain(tmp_path, "--trainer.max_epochs", "1", "--trainer.limit_train_batches",
                       "2", "--trainer.logger", "true")
    last = Path(cli.trainer.checkpoint_callback.last_model_path)
    assert last.is_file()
    meta = read_checkpoint(last, "pretrain")["aukit"]
    assert meta["encoder"]["backbone"] == "swin_test" and meta["encoder"]["image_size"] == 64
    assert len(meta["aus"]) == 17 and meta["config"]["encoder"]["embed_dim"] == 32
    out = capsys.readouterr().out
    assert "linear probe (val)" in out and "finished: last checkpoint" in out
    probe = [c for c in cli.trainer.callbacks if type(c).__name__ == "LinearProbe"][0]
    assert 0.0 <= probe.last["f1_mean"] <= 1.0 and "f1_AU12" in probe.last
    # the checkpoint's encoder config rebuilds the encoder; AU rows follow the stage-2 AUs
    encoder = AUEncoder((12, 1), **encoder_config(meta["encoder"]))
    load_stage1_encoder(last, encoder)
    trained = cli.model.encoder.region.au_queries
    expected = trained[[list(cli.model.au_numbers).index(a) for a in (12, 1)]]
    assert torch.equal(encoder.region.au_queries, expected.detach())


@pytest.mark.slow
def test_resume_from_a_mid_epoch_checkpoint_gives_the_same_weights(tmp_path):
    common = ["--trainer.max_epochs", "2", "--trainer.limit_train_batches", "3",
              "--trainer.callbacks", "[]", "--data.num_workers", "0"]
    straight = run_pretrain(tmp_path / "a", *common, config=False)
    ckpt_args = checkpoint_callback_args(tmp_path / "b", every=4)
    # a run that dies after step 4 (mid epoch 2), then resumes from its last checkpoint
    with pytest.raises(Killed):
        run_pretrain(tmp_path / "b", *common, *ckpt_args, config=False,
                     callbacks=[KillAtStep(5)])
    mid = tmp_path / "b" / "ckpt" / "last.ckpt"
    assert read_checkpoint(mid, "pretrain")["global_step"] == 4
    resumed = run_pretrain(tmp_path / "c", *common, "--ckpt_path", str(mid), config=False)
    for (name, a), (_, b) in zip(straight.model.state_dict().items(),
                                 resumed.model.state_dict().items(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name


def test_every_loss_switch_trains_and_gradients_reach_the_encoder():
    batch = {"image": torch.randn(4, 2, 3, 64, 64),
             "landmarks": torch.from_numpy(np.tile(_template(64), (4, 2, 1, 1)))}
    for weights, relation in [((1, 0), "fgw"), ((0, 1), "fgw"), ((0, 1), "ot"), ((1, 1), "ot")]:
        module = RegionRelationPretrainer(
            aus="bp4d", image_size=64, encoder=dict(embed_dim=32),
            losses=dict(proj_dim=16, ot_iters=10, relation=relation, region_weight=weights[0],
                        relation_weight=weights[1]))
        loss = module.training_step(batch, 0)
        assert torch.isfinite(loss)
        loss.backward()
        grads = [p.grad for p in module.encoder.backbone.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        if relation == "ot":
            assert module.objective.au_mass.weight.grad.abs().sum() > 0
        else:  # FGW transports uniform marginals: no saliency head to leave untrained
            assert module.objective.au_mass is None


def test_masked_pixel_loss_alone_trains_the_backbone_and_never_sees_hidden_pixels():
    images = torch.randn(4, 2, 3, 64, 64)
    batch = {"image": images, "landmarks": torch.from_numpy(np.tile(_template(64), (4, 2, 1, 1)))}
    module = RegionRelationPretrainer(aus="bp4d", image_size=64, encoder=dict(embed_dim=32),
                                      losses=dict(proj_dim=16, region_weight=0, relation_weight=0,
                                                  masked_weight=1.0, mask_block=8))
    seen = []
    module.encoder.backbone.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    torch.manual_seed(1)
    loss = module.training_step(batch, 0)
    loss.backward()
    assert torch.isfinite(loss) and module.objective.pixel_decoder.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in module.encoder.backbone.parameters())
    torch.manual_seed(1)
    hidden = block_mask(4, (64, 64), 8, 0.5)[:, None]  # the same draw as in the step
    # alone, the loss encodes only the first view, hidden
    assert torch.equal(seen[0], images[:, 0].masked_fill(hidden, 0.0))
    with pytest.raises(ValueError, match="must divide the image size"):
        RegionRelationPretrainer(image_size=64, losses=dict(masked_weight=1.0, mask_block=24))


def _template(size: int) -> np.ndarray:
    from aukit.au_maps import canonical_landmarks

    return canonical_landmarks(size).astype(np.float32)


def test_all_losses_off_is_refused():
    with pytest.raises(ValueError, match="no stage-1 loss trains the encoder"):
        RegionRelationPretrainer(losses=dict(region_weight=0, relation_weight=0))



def test_person_negatives_train_and_need_person_ids():
    batch = {"image": torch.randn(4, 2, 3, 64, 64),
             "landmarks": torch.from_numpy(np.tile(_template(64), (4, 2, 1, 1))),
             "subject": ["S1", "S2", "S1", "S2"]}
    module = RegionRelationPretrainer(aus="bp4d", image_size=64, encoder=dict(embed_dim=32),
                                      losses=dict(proj_dim=16, ot_iters=10, negatives="person"))
    loss = module.training_step(batch, 0)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in module.encoder.backbone.parameters())
    with pytest.raises(ValueError, match="--model.losses.negatives batch"):
        module.training_step({k: v for k, v in batch.items() if k != "subject"}, 0)
    with pytest.raises(ValueError, match="--model.losses.negatives"):
        RegionRelationPretrainer(losses=dict(negatives="people"))

def test_single_view_batches_are_refused():
    module = RegionRelationPretrainer(image_size=64, encoder=dict(embed_dim=32))
    batch = {"image": torch.randn(2, 3, 64, 64), "landmarks": torch.zeros(2, 68, 2)}
    with pytest.raises(ValueError, match="two views per image"):
        module.training_step(batch, 0)


@pytest.mark.parametrize("override,message", [
    (["--model.encoder.backbone", "resnet50"], "unknown backbone 'resnet50'"),
    (["--data.image_size", "100"], "does not fit backbone"),
])
def test_bad_settings_fail_before_training(tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        run_pretrain(tmp_path, *override)


def test_empty_or_missing_image_folder_fails_before_training(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither 'synthau' nor an existing folder"):
        run_pretrain(tmp_path, "--data.source", str(tmp_path / "nope"))
    (tmp_path / "faces").mkdir()
    with pytest.raises(Exception, match="no images|No images|no image"):
        run_pretrain(tmp_path, "--data.source", str(tmp_path / "faces"),
                     "--trainer.callbacks", "[]")


def test_tiny_images_are_not_faces(tmp_path):
    folder = tmp_path / "faces"
    folder.mkdir()
    for i in range(4):
        cv2.imwrite(str(folder / f"{i}.png"), np.zeros((16, 16, 3), np.uint8))
    with pytest.raises(ValueError, match="16x16 px"):
        run_pretrain(tmp_path, "--data.source", str(folder), "--trainer.callbacks", "[]",
                     "--data.faces_per_subject", "0")



def write_face_folder(root: Path, layout: str) -> Path:
    """4 people x 4 noise 'faces' at 64 px: ``sub`` one sub-folder per person, ``csv`` flat
    with a subjects.csv, ``flat`` flat without person ids."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    rows = ["image,subject"]
    for person in range(4):
        for i in range(4):
            name = f"p{person}/{i}.png" if layout == "sub" else f"p{person}_{i}.png"
            (root / name).parent.mkdir(exist_ok=True)
            cv2.imwrite(str(root / name), rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
            rows.append(f"{name},p{person}")
    if layout == "csv":
        (root / "subjects.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.mark.parametrize("layout", ["sub", "csv"])
def test_the_default_recipe_pretrains_on_a_folder_with_person_ids(tmp_path, layout):
    """conf/pretrain/synthau.yaml as ``make pretrain DATA=folder`` runs it (the expression loss,
    same-person negatives and person-grouped batches on), on a folder of sub-folders per person
    or with a subjects.csv."""
    folder = write_face_folder(tmp_path / "faces", layout)
    cli = run_pretrain(tmp_path, "--data.source", str(folder), "--data.landmarks", "template",
                       "--trainer.callbacks", "[]", "--trainer.max_steps", "2",
                       "--data.batch_size", "8", "--data.faces_per_subject", "4")
    assert cli.trainer.global_step == 2
    objective = cli.model.objective
    assert objective.weights["expression"] > 0 and objective.negatives == "person"
    assert all(torch.isfinite(p).all() for p in cli.model.parameters())

class PoisonWeights(L.Callback):
    """Simulates divergence: sets one backbone weight to NaN before training step ``step``."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == self.step:
            with torch.no_grad():
                module.encoder.backbone.model.patch_embed.proj.weight[0, 0, 0, 0] = float("nan")


@pytest.mark.slow
def test_a_diverged_run_stops_with_the_fix_and_keeps_its_finite_checkpoints(tmp_path):
    with pytest.raises(FloatingPointError, match=r"loss became nan at step 3.*gradient_clip_val"):
        run_pretrain(tmp_path, "--trainer.max_steps", "6", *checkpoint_callback_args(tmp_path),
                     config=False, callbacks=[PoisonWeights(3)])
    saved = sorted((tmp_path / "ckpt").glob("*.ckpt"))
    assert saved  # the checkpoints written before the divergence are kept, all finite
    for path in saved:
        state = torch.load(path, weights_only=False)["state_dict"]
        assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())
