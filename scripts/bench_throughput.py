"""``make bench``: training-step images/s per backbone, data pipeline images/s per worker, peak
memory and (on a GPU) model FLOPs utilisation. Writes ``## Throughput`` of docs/benchmarks.md.

Model steps run on synthetic uint8 batches already on the device (normalisation on the device,
forward + backward + AdamW step of the real stage modules; bf16 autocast on a GPU), so they
measure the model, not the data; the speed switches of ``aukit.performance`` (channels-last,
torch.compile) are compared on the finetune step of the last backbone. The data pipeline runs one
process (= one DataLoader worker) over the same faces as PNG/JPEG files, as a memory-mapped crop
store and rendered by SynthAU. ``--loader-workers N`` then feeds that finetune step from a real
DataLoader (crop store, train augmentation, N workers, pinned memory) and reports how much of the
synthetic-batch speed is kept, i.e. whether the device waits on data.

    python scripts/bench_throughput.py                      # CPU: a few minutes
    python scripts/bench_throughput.py --batch 256 --steps 20 --peak-tflops 790 \
        --variants plain channels_last compile --loader-workers 16          # one H100
"""

from __future__ import annotations

import argparse
import csv
import resource
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import cv2
import torch
from torch.utils.flop_counter import FlopCounterMode

from aukit.au import DATASET_AUS
from aukit.au_maps import canonical_landmarks
from aukit.data.crop_store import CropStore, write_crop_store
from aukit.data.datasets import ManifestDataset, SynthAUDataset
from aukit.data.manifest import read_manifest
from aukit.data.synthau import SynthAU, split_subjects
from aukit.data.transforms import train_transform
from aukit.performance import Performance
from aukit.text.features import load_text_features
from aukit.utils.report import machine, today, write_section
from finetune.module import HiVAFinetuner
from pretrain.module import RegionRelationPretrainer

HEADING = {"cpu": "## How fast is a training step? CPU",
           "cuda": "## How fast is a training step? GPU"}
VARIANTS = {"plain": {}, "channels_last": {"channels_last": True}, "compile": {"compile": True},
            "channels_last+compile": {"channels_last": True, "compile": True}}
IMAGE_SIZE = {"swin_test": 128}  # others 224; swin_test's windows need a multiple of 64
AUS = list(DATASET_AUS["bp4d"])


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def build(stage: str, backbone: str, size: int, text: bool,
          text_weights: str | None = None) -> torch.nn.Module:
    if stage == "pretrain":
        return RegionRelationPretrainer(aus=AUS, image_size=size, encoder=dict(backbone=backbone))
    module = HiVAFinetuner(aus=[f"AU{a}" for a in AUS], image_size=size,
                           encoder=dict(backbone=backbone),
                           heads=dict(use_text=text), text=dict(weights=text_weights))
    if text:  # what setup() does from the data module: encode the description bank once
        module.descriptions.set(load_text_features(
            "minilm", module.au_numbers, weights=text_weights, min_per_au=4))
    return module


def synthetic_batch(stage: str, batch: int, size: int, device: torch.device) -> dict:
    landmarks = torch.as_tensor(canonical_landmarks((size, size)), device=device)
    views = (batch, 2) if stage == "pretrain" else (batch,)
    out = {"image": torch.randint(0, 256, (*views, 3, size, size), dtype=torch.uint8,
                                  device=device),
           "landmarks": landmarks.expand(*views, 68, 2).contiguous()}
    if stage == "finetune":
        out["labels"] = (torch.rand(batch, len(AUS), device=device) < 0.2).float()
        out["label_mask"] = torch.ones(batch, len(AUS), dtype=torch.bool, device=device)
    return out


def train_step(module: torch.nn.Module, optimizer: torch.optim.Optimizer,
               device: torch.device) -> Callable[[dict], None]:
    """One training step on a device batch: normalise, forward, backward, AdamW."""
    autocast = torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda")

    def step(batch: dict) -> None:
        with autocast:
            loss = module.training_step(module.on_after_batch_transfer(dict(batch), 0), 0)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def prepared(stage: str, backbone: str, device: torch.device, text: bool | str, variant: str):
    """The stage module on the device with ``variant``'s switches, its optimiser and step
    (``text``: False, True, or a MiniLM model folder)."""
    size = IMAGE_SIZE.get(backbone, 224)
    weights = text if isinstance(text, str) else None
    module = build(stage, backbone, size, bool(text), weights).to(device).train()
    Performance(**VARIANTS[variant]).setup(None, module, "fit")
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4)
    return module, size, train_step(module, optimizer, device)


def bench_step(stage: str, backbone: str, batch: int, steps: int, device: torch.device,
               text: bool | str, peak_flops: float, variant: str = "plain",
               flops_image: float | None = None) -> dict:
    """Median images/s of a training step, FLOPs per image, MFU, peak memory."""
    module, size, step = prepared(stage, backbone, device, text, variant)
    data = synthetic_batch(stage, batch, size, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(3 if VARIANTS[variant].get("compile") else 1):
        step(data)  # warm-up: allocator, kernels, cuDNN autotuning, compilation
    sync()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step(data)
        sync()
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    images = batch * (2 if stage == "pretrain" else 1)  # pretraining encodes two views
    if flops_image is None:  # counted on the plain model (a compiled one hides its operators)
        counter = FlopCounterMode(display=False)
        with counter:
            step(data)
        flops_image = counter.get_total_flops() / images
    return {"stage": stage, "backbone": backbone, "variant": variant, "size": size,
            "batch": batch, "images_s": images / seconds, "gflop_image": flops_image / 1e9,
            "mfu": flops_image * images / seconds / peak_flops if device.type == "cuda" else None,
            "memory_mb": peak_memory_mb(device)}


def write_faces(folder: Path, count: int,
                suffixes: tuple[str, ...] = (".png", ".jpg")) -> dict[str, Path]:
    """``count`` SynthAU faces (256 px) as files of each suffix -> manifest path per suffix."""
    synth = SynthAU(seed=0)
    subjects = split_subjects("train")
    manifests = {}
    for suffix in suffixes:
        manifests[suffix] = folder / f"m{suffix}.csv"
        with manifests[suffix].open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["image", "subject", "AU1"])
            for i in range(count):
                sample = synth.sample(subjects[i % len(subjects)], i)
                cv2.imwrite(str(folder / f"{i}{suffix}"),
                            cv2.cvtColor(sample["image"], cv2.COLOR_RGB2BGR))
                writer.writerow([f"{i}{suffix}", sample["subject"], 0])
    return manifests


def bench_loader(backbone: str, batch: int, steps: int, workers: int, device: torch.device,
                 text: bool | str, variant: str, faces: int = 512) -> dict:
    """The finetune step fed by a DataLoader over a crop store (train augmentation, ``workers``
    processes, pinned memory): images/s and the share of the loop spent waiting for a batch."""
    module, size, step = prepared("finetune", backbone, device, text, variant)
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        manifest = read_manifest(write_faces(folder, faces, (".jpg",))[".jpg"])
        store = CropStore(write_crop_store(manifest, folder / "store"))
        dataset = ManifestDataset(manifest, train_transform(size, seed=0, normalize=False),
                                  store=store)
        warm = 3
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=batch, sampler=range(batch * (steps + warm)), drop_last=True,
            num_workers=workers, pin_memory=device.type == "cuda",
            prefetch_factor=4 if workers else None)
        labels = (torch.rand(batch, len(AUS), device=device) < 0.2).float()
        mask = torch.ones(batch, len(AUS), dtype=torch.bool, device=device)
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        waited, batches = 0.0, iter(loader)
        for i in range(steps + warm):
            if i == warm:
                sync()
                start, waited = time.perf_counter(), 0.0
            fetch = time.perf_counter()
            item = next(batches)
            waited += time.perf_counter() - fetch
            step({"image": item["image"].to(device, non_blocking=True),
                  "landmarks": item["landmarks"].to(device, non_blocking=True),
                  "labels": labels, "label_mask": mask})
        sync()
        seconds = time.perf_counter() - start
    return {"backbone": backbone, "variant": variant, "workers": workers, "batch": batch,
            "images_s": batch * steps / seconds, "wait_share": waited / seconds}


def rate(read: Callable[[int], object], count: int) -> float:
    read(0)
    start = time.perf_counter()
    for i in range(count):
        read(i)
    return count / (time.perf_counter() - start)


def bench_data(count: int, size: int) -> list[tuple[str, float, float]]:
    """(source, decode-only images/s, decode + train augmentation images/s), one process."""
    synth = SynthAU(seed=0)
    subjects = split_subjects("train")[:max(1, count // 8)]
    rendered = SynthAUDataset(subjects, 8, AUS, train_transform(size, seed=0, normalize=False))
    rows = [("SynthAU (render)", rate(lambda i: synth.sample(subjects[i % len(subjects)], i),
                                      count), rate(lambda i: rendered[i], count))]
    with tempfile.TemporaryDirectory() as folder:
        manifests = write_faces(Path(folder), count)
        store = CropStore(write_crop_store(read_manifest(manifests[".jpg"]),
                                           Path(folder) / "store"))
        for name, suffix, source in (("JPEG files", ".jpg", None), ("PNG files", ".png", None),
                                     ("crop store (memory-mapped)", ".jpg", store)):
            dataset = ManifestDataset(read_manifest(manifests[suffix]),
                                      train_transform(size, seed=0, normalize=False), store=source)
            decode = (lambda i, d=dataset: d.store.read(d.manifest.images[i])) if source else \
                (lambda i, d=dataset: cv2.imread(str(d.manifest.images[i])))
            rows.append((name, rate(decode, count), rate(lambda i, d=dataset: d[i], count)))
    return rows


def report(steps: list[dict], loaders: list[dict], data: list[tuple[str, float, float]], args,
           device) -> str:
    gpu = device.type == "cuda"
    memory = "peak allocated MiB" if gpu else "peak RSS MiB (process, cumulative)"
    lines = [HEADING[device.type], "",
             f"- command: `{('python scripts/bench_throughput.py ' + args.argv).strip()}`",
             f"- machine: {machine()}; device {device}; "
             f"{'bf16 autocast' if gpu else 'float32'}",
             f"- date: {today()}; torch {torch.__version__}", "",
             f"Training step (uint8 batch on the device, normalised there, forward + backward + "
             f"AdamW; median of {steps[0]['steps']} timed steps; pretraining encodes 2 views per "
             "image, counted as 2 images, so its batch is halved). GFLOP/image is "
             "FlopCounterMode's count of forward + backward at 2 FLOPs per multiply-add (the "
             "issue's ~46 GFLOP for swin_base counts "
             "multiply-adds of the full 4-stage model; ours stops after stage 3 and adds the "
             f"HiVA heads). MFU = GFLOP/image x images/s / {args.peak_tflops:g} TFLOP/s:", "",
             f"| stage | backbone | switches | px | batch | images/s | GFLOP/image | MFU | "
             f"{memory} |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in steps:
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"
        lines.append(f"| {r['stage']} | {r['backbone']} | {r['variant']} | {r['size']} | "
                     f"{r['batch']} | {r['images_s']:,.1f} | {r['gflop_image']:.1f} | {mfu} | "
                     f"{r['memory_mb']:,.0f} |")
    if loaders:
        lines += ["", "The same finetune step fed by a DataLoader over a memory-mapped crop store "
                  "(train augmentation on the workers, uint8 pinned batches); 'kept' is its "
                  "images/s over the synthetic-batch images/s of the same switches, 'waiting' "
                  "the share of the loop the host spent blocked on the next batch:", "",
                  "| backbone | switches | workers | batch | images/s | kept | waiting |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        for r in loaders:
            synthetic = next(s["images_s"] for s in steps if s["stage"] == "finetune"
                             and s["backbone"] == r["backbone"] and s["variant"] == r["variant"])
            lines.append(f"| {r['backbone']} | {r['variant']} | {r['workers']} | {r['batch']} | "
                         f"{r['images_s']:,.1f} | {100 * r['images_s'] / synthetic:.0f}% | "
                         f"{100 * r['wait_share']:.0f}% |")
    lines += ["", f"Data pipeline, one process = one DataLoader worker, {args.data_samples} "
              f"SynthAU faces of 256 px, train augmentation to {args.data_size} px (uint8 out):",
              "", "| source | read/decode images/s | + augmentation images/s |",
              "|---|---:|---:|"]
    lines += [f"| {name} | {read:,.0f} | {full:,.0f} |" for name, read, full in data]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=["swin_test", "swin_tiny", "swin_base"])
    parser.add_argument("--batch", type=int, help="per step (default 2 on CPU, 128 on a GPU)")
    parser.add_argument("--steps", type=int, help="timed steps (default 2 on CPU, 20 on a GPU)")
    parser.add_argument("--no-text", action="store_true", help="finetune HiVA without text")
    parser.add_argument("--text-weights", help="MiniLM model folder (default: the package's)")
    parser.add_argument("--variants", nargs="+", default=["plain"], choices=list(VARIANTS),
                        help="speed switches compared on the last backbone's finetune step")
    parser.add_argument("--loader-workers", type=int, nargs="*", default=[],
                        help="also feed that step from a real DataLoader with these worker counts")
    parser.add_argument("--peak-tflops", type=float, default=790.0,
                        help="the device's bf16 matmul peak for MFU (H100 SXM: ~790 measured)")
    parser.add_argument("--data-samples", type=int, default=48)
    parser.add_argument("--data-size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", default="docs/benchmarks.md", help="'' prints only")
    args = parser.parse_args()
    args.argv = " ".join(sys.argv[1:])
    torch.set_num_threads(args.threads)
    # the stage modules log through a trainer; here they run without one on purpose
    warnings.filterwarnings("ignore", message=".*self.log.*")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device.type == "cuda"
    batch, steps = args.batch or (128 if gpu else 2), args.steps or (20 if gpu else 2)
    text = False if args.no_text else (args.text_weights or True)
    results, loaders = [], []
    for backbone in args.backbones:  # small to large, so the cumulative peak RSS is per model
        last = backbone == args.backbones[-1]
        for stage in ("pretrain", "finetune"):
            variants = args.variants if last and stage == "finetune" else ["plain"]
            flops = None
            # pretraining encodes 2 views: half the batch, the same images per step
            size = batch // 2 if stage == "pretrain" else batch
            for variant in variants:
                r = bench_step(stage, backbone, size, steps, device, text,
                               args.peak_tflops * 1e12, variant, flops)
                r["steps"], flops = steps, r["gflop_image"] * 1e9
                results.append(r)
                print(f"{stage:9s} {backbone:10s} {variant:22s} {r['images_s']:9.1f} images/s "
                      f"{r['gflop_image']:6.1f} GFLOP/image", flush=True)
        for workers in args.loader_workers if last else []:
            for variant in args.variants:
                loaders.append(bench_loader(backbone, batch, steps, workers, device, text,
                                            variant))
                print(f"loader    {backbone:10s} {variant:22s} {workers:2d} workers "
                      f"{loaders[-1]['images_s']:9.1f} images/s", flush=True)
    data = bench_data(args.data_samples, args.data_size)
    section = report(results, loaders, data, args, device)
    print(section)
    if args.out:
        write_section(args.out, HEADING[device.type], section)


if __name__ == "__main__":
    main()
