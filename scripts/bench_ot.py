"""Benchmark the relation-OT solvers: forward + backward of the relation loss on CPU (or --device).

    python scripts/bench_ot.py [--batch 256 --aus 12 --dim 128 --iters 50 --repeats 5
                                --loop-sample 512 --threads 1 --out docs/benchmarks.md]

Contenders: (a) our batched torch solver, (b) POT's ``ot.batch``, (c) a Python loop of
``ot.sinkhorn2``. The loop is timed on ``--loop-sample`` random (view-1, view-2) pairs and
extrapolated linearly to all ``batch**2`` problems. Values are compared on those sampled pairs.
The Markdown table is printed and written to ``--out`` under ``## Relation OT solver``.
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import statistics
import sys
import time
from collections.abc import Callable

import ot
import torch

from aukit.losses.relation_ot import (
    entropic_ot,
    ot_cost_matrix,
    pairwise_ot_costs,
    relation_ot_loss,
)
from aukit.utils.report import machine, write_section

SECTION = "## Relation OT solver"


def median_ms(steps: dict[str, Callable[[], None]], repeats: int,
              device: torch.device) -> dict[str, float]:
    """Median wall time in ms of each step after one warm-up round. The contenders take turns
    within each round so that load from other processes hits them alike."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for round_ in range(repeats + 1):
        for name, step in steps.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if round_:
                times[name].append(1e3 * (time.perf_counter() - start))
    return {name: statistics.median(values) for name, values in times.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=256, help="views per side: batch**2 problems")
    parser.add_argument("--aus", type=int, default=12)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--loop-sample", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for every solver; 1 keeps timings stable on a shared "
                             "machine (OpenMP barriers stall when cores are oversubscribed)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--out", default="docs/benchmarks.md",
                        help="Markdown file to update; '' to only print")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    B, A, D = args.batch, args.aus, args.dim
    z1, z2 = (torch.randn(B, A, D, generator=gen).to(device).requires_grad_() for _ in range(2))
    m1, m2 = (torch.randn(B, A, generator=gen).to(device).requires_grad_() for _ in range(2))
    ot_kwargs = dict(epsilon=0.05, iters=args.iters, identity_prior=0.5)

    def loss_step(solver: str) -> Callable[[], None]:
        return lambda: relation_ot_loss(z1, z2, m1, m2, solver=solver, **ot_kwargs).backward()

    # the loop contender: the same cost construction and solve on a sample of pairs
    n_sample = min(args.loop_sample, B * B)
    pairs = torch.randperm(B * B, generator=gen)[:n_sample].to(device)
    rows, cols = pairs // B, pairs % B

    def loop_costs() -> torch.Tensor:
        cost = ot_cost_matrix(z1[rows], z2[cols], ot_kwargs["identity_prior"])  # [S, A, A]
        a, b = m1[rows].softmax(-1), m2[cols].softmax(-1)
        return entropic_ot(cost, a, b, ot_kwargs["epsilon"], args.iters, solver="pot_loop")

    timings = median_ms({
        "torch (ours, batched)": loss_step("torch"),
        "ot.batch (POT, batched)": loss_step("pot"),
        "ot.sinkhorn2 loop": lambda: loop_costs().sum().backward(),
    }, args.repeats, device)
    timings["ot.sinkhorn2 loop"] *= B * B / n_sample  # linear extrapolation to all problems
    with torch.no_grad():
        reference = loop_costs()
        diffs = {name: float((pairwise_ot_costs(z1, z2, m1, m2, solver=solver, **ot_kwargs)
                              [rows, cols] - reference).abs().max())
                 for name, solver in (("torch (ours, batched)", "torch"),
                                      ("ot.batch (POT, batched)", "pot"))}
    diffs["ot.sinkhorn2 loop"] = 0.0

    loop_ms, batch_ms = timings["ot.sinkhorn2 loop"], timings["ot.batch (POT, batched)"]
    lines = [
        "| solver | median ms (fwd+bwd) | x faster than loop | x faster than ot.batch "
        "| max abs diff vs loop |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, ms in timings.items():
        shown = f"{ms:,.0f} (extrapolated from {n_sample} problems)" if "loop" in name \
            else f"{ms:,.0f}"
        lines.append(f"| {name} | {shown} | {loop_ms / ms:,.1f} | {batch_ms / ms:,.2f} | "
                     f"{diffs[name]:.1e} |")
    table = "\n".join(lines)
    command = "python scripts/bench_ot.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    text = (f"{SECTION}\n\n"
            f"Relation loss forward + backward for B={B} views, A={A} AUs, D={D} "
            f"({B * B:,} OT problems of {A}x{A}), {args.iters} log-domain Sinkhorn iterations, "
            f"float32, median of {args.repeats} runs after a warm-up. Max abs diff: OT costs on "
            f"the {n_sample} sampled problems against the loop.\n\n"
            f"- command: `{command.strip()}`\n"
            f"- machine: {machine()}\n"
            f"- date: {datetime.date.today().isoformat()}; torch {torch.__version__}, "
            f"POT {ot.__version__}\n\n{table}\n")
    print(text)
    if args.out:
        write_section(args.out, SECTION, text)


if __name__ == "__main__":
    main()
