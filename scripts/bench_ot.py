"""Benchmark the relation-loss solvers: forward + backward of the relation loss on CPU or --device.

    python scripts/bench_ot.py [--batch 256 --aus 12 --dim 128 --iters 50 --gw-iters 5
                                --repeats 5 --loop-sample 512 --fgw-loop-sample 32 --threads 1
                                --sections ot fgw --out docs/benchmarks.md]

OT formulation (``SECTION``): (a) our batched torch solver, (b) POT's ``ot.batch``, (c) a Python
loop of ``ot.sinkhorn2``. FGW formulation (``FGW_SECTION``): (a) ours, (b) ours with
``proximal=True``, the scheme of (c) POT's batched ``ot.batch.solve_gromov_batch`` (envelope
gradients, like ours), (d) a Python loop of
``ot.gromov.entropic_fused_gromov_wasserstein2`` (our scheme; POT backpropagates through its
iterations). The loops are timed on ``--loop-sample`` / ``--fgw-loop-sample`` random
(view-1, view-2) pairs and extrapolated linearly to all ``batch**2`` problems. Values are
compared on those sampled pairs. The Markdown tables are printed and written to ``--out``.
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

from aukit.losses.region_contrastive import symmetric_info_nce
from aukit.losses.relation_ot import (
    au_structure,
    entropic_fgw,
    entropic_ot,
    ot_cost_matrix,
    pairwise_fgw_costs,
    pairwise_ot_costs,
    relation_ot_loss,
)
from aukit.utils.report import machine, write_section

SECTION = "## How fast is the relation loss? OT solver"
FGW_SECTION = "## How fast is the relation loss? FGW solver"


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


def max_abs_diff(x: torch.Tensor, y: torch.Tensor) -> str:
    return f"{float((x - y).abs().max()):.1e}"


def markdown_table(timings: dict[str, float], diffs: dict[str, str], loop: str, batch: str,
                   n_sample: int, diff_column: str) -> str:
    """One row per contender: time, speed-ups over the loop and POT's batched solver, value
    difference."""
    lines = [
        f"| solver | median ms (fwd+bwd) | x faster than loop | x faster than {batch} "
        f"| {diff_column} |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, ms in timings.items():
        shown = f"{ms:,.0f} (extrapolated from {n_sample} problems)" if name == loop \
            else f"{ms:,.0f}"
        lines.append(f"| {name} | {shown} | {timings[loop] / ms:,.1f} | "
                     f"{timings[batch] / ms:,.2f} | {diffs[name]} |")
    return "\n".join(lines)


def ot_table(args: argparse.Namespace, z1: torch.Tensor, z2: torch.Tensor, m1: torch.Tensor,
             m2: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
             device: torch.device) -> str:
    """The OT formulation: our solver, ``ot.batch`` and a loop of ``ot.sinkhorn2``."""
    B = len(z1)
    ot_kwargs = dict(epsilon=0.05, iters=args.iters, identity_prior=0.5)

    def loss_step(solver: str) -> Callable[[], None]:
        return lambda: relation_ot_loss(z1, z2, m1, m2, formulation="ot", solver=solver,
                                        **ot_kwargs).backward()

    # the loop contender: the same cost construction and solve on a sample of pairs
    def loop_costs() -> torch.Tensor:
        cost = ot_cost_matrix(z1[rows], z2[cols], ot_kwargs["identity_prior"])  # [S, A, A]
        a, b = m1[rows].softmax(-1), m2[cols].softmax(-1)
        return entropic_ot(cost, a, b, ot_kwargs["epsilon"], args.iters, solver="pot_loop")

    loop, batch = "ot.sinkhorn2 loop", "ot.batch (POT, batched)"
    timings = median_ms({
        "torch (ours, batched)": loss_step("torch"),
        batch: loss_step("pot"),
        loop: lambda: loop_costs().sum().backward(),
    }, args.repeats, device)
    timings[loop] *= B * B / len(rows)  # linear extrapolation to all problems
    with torch.no_grad():
        reference = loop_costs()
        diffs = {name: max_abs_diff(pairwise_ot_costs(z1, z2, m1, m2, solver=solver,
                                                      **ot_kwargs)[rows, cols], reference)
                 for name, solver in (("torch (ours, batched)", "torch"), (batch, "pot"))}
    diffs[loop] = max_abs_diff(reference, reference)
    return markdown_table(timings, diffs, loop, batch, len(rows), "max abs diff vs loop")


def fgw_table(args: argparse.Namespace, z1: torch.Tensor, z2: torch.Tensor, rows: torch.Tensor,
              cols: torch.Tensor, device: torch.device) -> str:
    """The FGW formulation: ours (entropic and proximal), ``ot.batch.solve_gromov_batch`` and a
    loop of ``ot.gromov.entropic_fused_gromov_wasserstein2``."""
    B = len(z1)
    fgw_kwargs = dict(alpha=args.alpha, epsilon=0.05, iters=args.iters, gw_iters=args.gw_iters)

    def info_nce(costs: torch.Tensor) -> torch.Tensor:  # as relation_ot_loss, temperature 0.1
        return symmetric_info_nce(-costs / 0.1, -costs.T / 0.1, gathered=False)

    def proximal_costs() -> torch.Tensor:
        return entropic_fgw(ot_cost_matrix(z1[:, None], z2[None], 0.0), au_structure(z1)[:, None],
                            au_structure(z2)[None], proximal=True, **fgw_kwargs)

    def pot_batch_costs() -> torch.Tensor:
        # every pair's problem materialised, as ot.batch wants it: [B * B, A, A]
        num_aus = z1.shape[1]
        feature_cost = ot_cost_matrix(z1[:, None], z2[None], 0.0).reshape(-1, num_aus, num_aus)
        struct1 = au_structure(z1)[:, None].expand(B, B, num_aus, num_aus).flatten(0, 1)
        struct2 = au_structure(z2)[None].expand(B, B, num_aus, num_aus).flatten(0, 1)
        # ot.batch updates the row potential first and ours the column one: solve the transpose
        return ot.batch.solve_gromov_batch(
            struct2, struct1, reg=fgw_kwargs["epsilon"], M=feature_cost.mT, alpha=args.alpha,
            max_iter=args.gw_iters, tol=0.0, max_iter_inner=args.iters, tol_inner=0.0,
            grad="envelope", symmetric=True).value.reshape(B, B)

    def loop_costs() -> torch.Tensor:
        return torch.stack([
            ot.gromov.entropic_fused_gromov_wasserstein2(
                ot_cost_matrix(z1[i], z2[j], 0.0), au_structure(z1[i]), au_structure(z2[j]),
                loss_fun="square_loss", epsilon=fgw_kwargs["epsilon"], alpha=args.alpha,
                symmetric=True, max_iter=args.gw_iters, tol=0.0, numItermax=args.iters,
                stopThr=0.0, warn=False)
            for i, j in zip(rows.tolist(), cols.tolist(), strict=True)])

    ours, proximal = "ours, batched", "ours, batched, proximal=True"
    loop, batch = "entropic_fused_gromov_wasserstein2 loop", "ot.batch.solve_gromov_batch"
    timings = median_ms({
        ours: lambda: relation_ot_loss(z1, z2, **fgw_kwargs).backward(),
        proximal: lambda: info_nce(proximal_costs()).backward(),
        batch: lambda: info_nce(pot_batch_costs()).backward(),
        loop: lambda: loop_costs().sum().backward(),
    }, args.repeats, device)
    timings[loop] *= B * B / len(rows)  # linear extrapolation to all problems
    with torch.no_grad():
        pot_batch = pot_batch_costs()
        diffs = {ours: max_abs_diff(pairwise_fgw_costs(z1, z2, **fgw_kwargs)[rows, cols],
                                    loop_costs()) + " (vs loop)",
                 proximal: max_abs_diff(proximal_costs(), pot_batch) + " (vs ot.batch)",
                 batch: "-", loop: "-"}
    return markdown_table(timings, diffs, loop, batch, len(rows),
                          "max abs diff vs POT, same scheme")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=256, help="views per side: batch**2 problems")
    parser.add_argument("--aus", type=int, default=12)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--iters", type=int, default=50, help="Sinkhorn iterations (per FGW step)")
    parser.add_argument("--gw-iters", type=int, default=5, help="FGW linearisations")
    parser.add_argument("--alpha", type=float, default=0.5, help="FGW structure weight")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--loop-sample", type=int, default=512)
    parser.add_argument("--fgw-loop-sample", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for every solver; 1 keeps timings stable on a shared "
                             "machine (OpenMP barriers stall when cores are oversubscribed)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--sections", nargs="+", choices=["ot", "fgw"], default=["ot", "fgw"],
                        help="formulations to benchmark")
    parser.add_argument("--out", default="docs/benchmarks.md",
                        help="Markdown file to update; '' to only print")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    B, A, D = args.batch, args.aus, args.dim
    z1, z2 = (torch.randn(B, A, D, generator=gen).to(device).requires_grad_() for _ in range(2))
    m1, m2 = (torch.randn(B, A, generator=gen).to(device).requires_grad_() for _ in range(2))
    pairs = torch.randperm(B * B, generator=gen).to(device)
    ot_pairs = pairs[:min(args.loop_sample, B * B)]
    fgw_pairs = pairs[:min(args.fgw_loop_sample, B * B)]

    command = "python scripts/bench_ot.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    setting = (f"- command: `{command.strip()}`\n"
               f"- machine: {machine()}\n"
               f"- date: {datetime.date.today().isoformat()}; torch {torch.__version__}, "
               f"POT {ot.__version__}")
    if "ot" in args.sections:
        ot_text = (f"{SECTION}\n\n"
                   f"Relation loss forward + backward for B={B} views, A={A} AUs, D={D} "
                   f"({B * B:,} OT problems of {A}x{A}), {args.iters} log-domain Sinkhorn "
                   f"iterations, float32, median of {args.repeats} runs after a warm-up. Max abs "
                   f"diff: OT costs on the {len(ot_pairs)} sampled problems against the loop."
                   f"\n\n{setting}\n\n"
                   f"{ot_table(args, z1, z2, m1, m2, ot_pairs // B, ot_pairs % B, device)}\n")
        print(ot_text)
        if args.out:
            write_section(args.out, SECTION, ot_text)
    if "fgw" in args.sections:
        fgw_text = (f"{FGW_SECTION}\n\n"
                    f"Relation loss (`formulation=\"fgw\"`) forward + backward for B={B} views, "
                    f"A={A} AUs, D={D} ({B * B:,} FGW problems of {A}x{A}), alpha={args.alpha}, "
                    f"{args.gw_iters} linearisations of {args.iters} Sinkhorn iterations each, "
                    f"float32, median of {args.repeats} runs after a warm-up. Ours and the loop "
                    f"run the entropic scheme (POT's `solver=\"PGD\"`), `proximal=True` and "
                    f"`ot.batch` the proximal one; max abs diff: FGW values against POT's solver "
                    f"with the same scheme (the loop: on its {len(fgw_pairs)} sampled problems)."
                    f"\n\n{setting}\n\n"
                    f"{fgw_table(args, z1, z2, fgw_pairs // B, fgw_pairs % B, device)}\n")
        print(fgw_text)
        if args.out:
            write_section(args.out, FGW_SECTION, fgw_text)


if __name__ == "__main__":
    main()
