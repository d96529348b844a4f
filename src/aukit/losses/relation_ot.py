"""Stage-1 relation loss ("improved OT"): InfoNCE over images on entropic OT costs between AU sets.

Each view of an image gives ``A`` AU embeddings. Two sets are compared with entropic optimal
transport whose cost is ``1 - cos`` plus an identity prior (moving AU i's mass onto AU j != i
costs ``identity_prior`` more) and whose marginals are AU saliencies (softmax of learned masses).
The OT cost between the two views of one image is the positive; its costs to other images are
the negatives, so images with the same AU relation structure end up close.

Solvers (``solver=``), all unrolled for a fixed number of log-domain Sinkhorn iterations in the
same order as POT's ``sinkhorn_log`` (column potential first), so they agree in value and gradient:

- ``"torch"`` (default): ours, batched, with a hand-written backward that recomputes each
  step's softmax from saved potentials instead of keeping ``iters`` autograd graphs. Measured
  with ``scripts/bench_ot.py`` (relation loss forward + backward, B=256 views, A=12: 65,536
  problems, 50 iterations) on CPU (AMD EPYC, 1 torch thread, shared 2-core box): 3.3 s vs
  18.9 s for ``"pot"`` and ~645 s (extrapolated) for ``"pot_loop"``; peak RSS 1.2 GB vs 5.4 GB
  for ``"pot"``. Hence the default. Not measured on GPU (none available); see
  docs/benchmarks.md, "Relation OT solver".
- ``"pot"``: POT's batched solver ``ot.batch.solve_batch(method="log_sinkhorn", grad="autodiff")``.
- ``"pot_loop"``: a Python loop over ``ot.sinkhorn2`` - slow; the reference in tests.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from aukit.losses.region_contrastive import symmetric_info_nce
from aukit.utils.distributed import gather_with_grad, world_size

_LOG2E = 1.0 / math.log(2)
# log-marginals are clamped here so a saturated mass softmax never gives log(0) = -inf
_MIN_LOG_MASS = -60.0
# problems per cache-sized block of the torch solver on CPU (1024 measured fastest of 256..65536)
_CPU_CHUNK = 1024
# the torch solver works in base 2 (exp2 is ~2.5x faster than exp on CPU); exp2 of float32 below
# -126 (underflow) takes a slower path, and every exponent is relative to a normaliser >= 1, so
# 2^-115 ~ 2e-35 stands in for 0 (even next to float64's 2e-16 resolution)
_EXP2_FLOOR = -115.0


def ot_cost_matrix(z1: Tensor, z2: Tensor, identity_prior: float) -> Tensor:
    """``C[..., i, j] = 1 - cos(z1_i, z2_j) + identity_prior * (i != j)`` in float32 or wider.

    Args:
        z1: ``[P, A, D]`` AU embeddings (any leading dims that broadcast against ``z2``).
        z2: ``[P, A, D]``.
        identity_prior: extra cost for transporting an AU onto a different AU (``>= 0``).

    Returns:
        ``[P, A, A]``.
    """
    if z1.shape[-2:] != z2.shape[-2:]:
        raise ValueError(f"z1 and z2 must end in the same [A, D], got {tuple(z1.shape)} and "
                         f"{tuple(z2.shape)}")
    if identity_prior < 0:
        raise ValueError(f"identity_prior must be >= 0, got {identity_prior}")
    dtype = torch.promote_types(z1.dtype, torch.float32)
    n1, n2 = F.normalize(z1.to(dtype), dim=-1), F.normalize(z2.to(dtype), dim=-1)
    cos = torch.einsum("...id,...jd->...ij", n1, n2)
    off_diagonal = 1.0 - torch.eye(z1.shape[-2], dtype=dtype, device=z1.device)
    return 1.0 - cos + identity_prior * off_diagonal


def _log2sumexp2_(x: Tensor, dim: int, out: Tensor) -> Tensor:
    """``log2(sum(2 ** x))`` over ``dim`` into ``out``, overwriting ``x`` (reusing buffers avoids
    page-faulting a fresh ``[A, A, P]`` block each step)."""
    peak = x.amax(dim, keepdim=True)
    torch.sum(x.sub_(peak).clamp_min_(_EXP2_FLOOR).exp2_(), dim, out=out)
    return out.log2_().add_(peak.squeeze(dim))


def _forward_chunk(f: Tensor, log_a: Tensor, log_b: Tensor, iters: int
                   ) -> tuple[Tensor, Tensor, Tensor]:
    """Base-2 Sinkhorn on ``f = -C / (eps ln 2)`` ``[A, A, P]``, log2-marginals ``[A, P]``.

    Returns the plan ``[A, A, P]`` and the log2-sum-exp2 of every column and row update
    ``[T, A, P]``.
    """
    lse_v = f.new_empty(iters, *log_b.shape)
    lse_u = f.new_empty(iters, *log_a.shape)
    work = torch.empty_like(f)
    u = torch.zeros_like(log_a)
    for t in range(iters):
        v = log_b - _log2sumexp2_(torch.add(f, u[:, None], out=work), 0, out=lse_v[t])
        u = log_a - _log2sumexp2_(torch.add(f, v[None], out=work), 1, out=lse_u[t])
    plan = torch.add(f, u[:, None], out=work).add_(v[None]).clamp_min_(_EXP2_FLOOR).exp2_()
    return plan, lse_v, lse_u


def _softmax2_(work: Tensor, f: Tensor, potential: Tensor, lse: Tensor) -> Tensor:
    """``2 ** (f + potential - lse)`` into ``work``: one Sinkhorn step's (row or column) softmax,
    rebuilt from its saved normaliser; ``potential`` and ``lse`` come pre-broadcast."""
    return torch.add(f, potential, out=work).sub_(lse).clamp_min_(_EXP2_FLOOR).exp2_()


def _backward_chunk(f: Tensor, log_a: Tensor, log_b: Tensor, plan: Tensor, lse_v: Tensor,
                    lse_u: Tensor, grad_plan: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Reverse of ``_forward_chunk``: gradients w.r.t. ``f`` ``[A, A, P]`` and the
    log2-marginals ``[A, P]``, given the plan's gradient ``[A, A, P]``."""
    grad_f = (grad_plan * plan).mul_(math.log(2))  # d/d(log2 plan)
    grad_u, grad_v = grad_f.sum(dim=1), grad_f.sum(dim=0)
    grad_log_a, grad_log_b = torch.zeros_like(log_a), torch.zeros_like(log_b)
    work = torch.empty_like(f)
    for t in range(lse_v.shape[0] - 1, -1, -1):
        # u_t = log a - LSE_j(f + v_t): its Jacobian is minus the row softmax of f + v_t
        grad_log_a += grad_u
        v = log_b - lse_v[t]
        weighted = _softmax2_(work, f, v[None], lse_u[t][:, None]).mul_(grad_u[:, None])
        grad_f -= weighted
        grad_v -= weighted.sum(dim=0)
        # v_t = log b - LSE_i(f + u_{t-1}) with u_0 = 0: minus the column softmax
        grad_log_b += grad_v
        u_prev = log_a - lse_u[t - 1] if t > 0 else torch.zeros_like(log_a)
        weighted = _softmax2_(work, f, u_prev[:, None], lse_v[t][None]).mul_(grad_v[None])
        grad_f -= weighted
        grad_u = -weighted.sum(dim=1)
        grad_v = torch.zeros_like(grad_v)
    return grad_f, grad_log_a, grad_log_b


def _problems_last(x: Tensor) -> Tensor:
    """``[P, ...] -> [..., P]``, contiguous."""
    return x.movedim(0, -1).contiguous()


def _problems_first(x: Tensor) -> Tensor:
    """``[..., P] -> [P, ...]`` (a view)."""
    return x.movedim(-1, 0)


def _base2_inputs(cost: Tensor, log_a: Tensor, log_b: Tensor, epsilon: float
                  ) -> tuple[Tensor, Tensor, Tensor]:
    """``[P, A, A]``, ``[P, A]``, ``[P, A]`` -> ``f = -C / (eps ln 2)`` ``[A, A, P]`` and the
    log2-marginals ``[A, P]``."""
    return (_problems_last(cost * (-_LOG2E / epsilon)), _problems_last(log_a * _LOG2E),
            _problems_last(log_b * _LOG2E))


class _SinkhornLog(torch.autograd.Function):
    """Unrolled log-domain Sinkhorn; backward replays the iterations from the saved potentials.

    Forward, with ``f = -C / eps`` and ``u = v = 0``, ``iters`` times (POT's order)::

        v = log b - LSE_i(f + u)        u = log a - LSE_j(f + v)

    and plan = ``exp(f + u + v)``, run in base 2 (all logs scaled by ``log2(e)``, ``exp2`` for
    ``exp``: same values, faster). Saving the two LSE results of every step (``[T, A, P]`` each)
    is enough to rebuild each step's softmax in the backward pass, so 65k problems fit in memory
    where plain autograd keeps several ``[P, A, A]`` tensors per iteration. The problem index is
    the last, contiguous dim (``[A, A, P]``), so the reductions over the AUs are elementwise
    operations across problems, which vectorise; and on CPU problems go through in chunks of
    ``_CPU_CHUNK`` so that each chunk's iterations run in cache instead of streaming from memory.
    """

    @staticmethod
    def forward(ctx: FunctionCtx, cost: Tensor, log_a: Tensor, log_b: Tensor, epsilon: float,
                iters: int) -> Tensor:
        # GPUs have no cache to fit and pay per kernel launch: one chunk there
        ctx.chunk = chunk = _CPU_CHUNK if cost.device.type == "cpu" else max(cost.shape[0], 1)
        plans, ctx.lse = [], []
        for cost_c, log_a_c, log_b_c in zip(cost.split(chunk), log_a.split(chunk),
                                            log_b.split(chunk), strict=True):
            plan, lse_v, lse_u = _forward_chunk(
                *_base2_inputs(cost_c, log_a_c, log_b_c, epsilon), iters)
            plans.append(_problems_first(plan))
            ctx.lse.append((lse_v, lse_u))
        plan = torch.cat(plans)  # [P, A, A]
        ctx.save_for_backward(cost, log_a, log_b, plan)
        ctx.epsilon = epsilon
        return plan

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_plan: Tensor) -> tuple[Tensor | None, ...]:
        cost, log_a, log_b, plan = ctx.saved_tensors
        grads = []
        for k, (lse_v, lse_u) in enumerate(ctx.lse):
            rows = slice(k * ctx.chunk, (k + 1) * ctx.chunk)
            grad_f, grad_log_a, grad_log_b = _backward_chunk(
                *_base2_inputs(cost[rows], log_a[rows], log_b[rows], ctx.epsilon),
                _problems_last(plan[rows]), lse_v, lse_u, _problems_last(grad_plan[rows]))
            grads.append((_problems_first(grad_f) * (-_LOG2E / ctx.epsilon),
                          _problems_first(grad_log_a) * _LOG2E,
                          _problems_first(grad_log_b) * _LOG2E))
        grad_cost, grad_log_a, grad_log_b = (torch.cat(parts) for parts in zip(*grads, strict=True))
        return grad_cost, grad_log_a, grad_log_b, None, None


def _check_problem(cost: Tensor, a: Tensor, b: Tensor, epsilon: float, iters: int) -> None:
    if cost.ndim != 3 or a.shape != cost.shape[:2] or b.shape != (cost.shape[0], cost.shape[2]):
        raise ValueError(f"expected cost [P, A, A'] with marginals a [P, A] and b [P, A'], got "
                         f"{tuple(cost.shape)}, {tuple(a.shape)}, {tuple(b.shape)}")
    if epsilon <= 0 or iters < 1:
        raise ValueError(f"need epsilon > 0 and iters >= 1, got epsilon={epsilon}, iters={iters}")


def _solver_dtype(cost: Tensor) -> torch.dtype:
    """float32 for half-precision costs (autocast), float64 kept for reference comparisons."""
    return torch.promote_types(cost.dtype, torch.float32)


def sinkhorn_log(cost: Tensor, a: Tensor, b: Tensor, epsilon: float, iters: int) -> Tensor:
    """Entropic OT plans by log-domain Sinkhorn with exactly ``iters`` iterations.

    No early stop, so the result is deterministic and differentiable; runs in float32 (or float64
    for float64 input) even under autocast; stable for tiny ``epsilon`` and large costs.

    Args:
        cost: ``[P, A, A]`` cost matrices.
        a: ``[P, A]`` row marginals, positive, each summing to 1.
        b: ``[P, A]`` column marginals, positive, each summing to 1.
        epsilon: entropic regularisation (``reg`` in POT).
        iters: number of Sinkhorn iterations (one column and one row update each).

    Returns:
        ``[P, A, A]`` transport plans; rows sum to ``a`` exactly, columns to ``b`` once converged.
    """
    _check_problem(cost, a, b, epsilon, iters)
    with torch.autocast(cost.device.type, enabled=False):
        dtype = _solver_dtype(cost)
        log_a = a.to(dtype).log().clamp_min(_MIN_LOG_MASS)
        log_b = b.to(dtype).log().clamp_min(_MIN_LOG_MASS)
        return _SinkhornLog.apply(cost.to(dtype), log_a, log_b, epsilon, iters)


def _torch_ot(cost: Tensor, a: Tensor, b: Tensor, epsilon: float, iters: int) -> Tensor:
    return (sinkhorn_log(cost, a, b, epsilon, iters) * cost).sum(dim=(1, 2))


def _pot_batch_ot(cost: Tensor, a: Tensor, b: Tensor, epsilon: float, iters: int) -> Tensor:
    import ot  # POT is the reference; the default torch solver runs without it

    # ot.batch updates the row potential first and POT's sinkhorn_log the column one; solving the
    # transposed problem makes the unrolled iterations (values and gradients) identical.
    result = ot.batch.solve_batch(cost.transpose(1, 2), reg=epsilon, a=b, b=a, max_iter=iters,
                                  tol=0.0, method="log_sinkhorn", grad="autodiff")
    return result.value_linear


def _pot_loop_ot(cost: Tensor, a: Tensor, b: Tensor, epsilon: float, iters: int) -> Tensor:
    import ot

    return torch.stack([
        ot.sinkhorn2(a_p, b_p, cost_p, reg=epsilon, method="sinkhorn_log", numItermax=iters,
                     stopThr=0.0)
        for cost_p, a_p, b_p in zip(cost, a, b, strict=True)
    ])


_SOLVERS: dict[str, Callable[[Tensor, Tensor, Tensor, float, int], Tensor]] = {
    "torch": _torch_ot, "pot": _pot_batch_ot, "pot_loop": _pot_loop_ot,
}


def entropic_ot(cost: Tensor, a: Tensor, b: Tensor, epsilon: float, iters: int,
                solver: str = "torch") -> Tensor:
    """Transport cost ``<plan, cost>`` of ``P`` entropic OT problems, ``[P, A, A]`` -> ``[P]``.

    ``solver`` is ``"torch"`` (batched, ours, default), ``"pot"`` (``ot.batch``) or ``"pot_loop"``
    (a loop of ``ot.sinkhorn2``, the reference); see the module docstring. Always computed in
    float32 or wider, whatever autocast says; differentiable w.r.t. ``cost``, ``a`` and ``b``.
    """
    if solver not in _SOLVERS:
        raise ValueError(f"unknown OT solver {solver!r}; choose one of {sorted(_SOLVERS)}")
    _check_problem(cost, a, b, epsilon, iters)
    with torch.autocast(cost.device.type, enabled=False):
        dtype = _solver_dtype(cost)
        return _SOLVERS[solver](cost.to(dtype), a.to(dtype), b.to(dtype), epsilon, iters)


def pairwise_ot_costs(z1: Tensor, z2: Tensor, mass1: Tensor, mass2: Tensor,
                      epsilon: float = 0.05, iters: int = 50, identity_prior: float = 0.5,
                      solver: str = "torch") -> Tensor:
    """OT cost between every view-1 AU set and every view-2 AU set, in one batched solve.

    Args:
        z1: ``[B, A, D]`` view-1 AU embeddings (the local queries).
        z2: ``[B2, A, D]`` view-2 AU embeddings (the keys, gathered under DDP).
        mass1: ``[B, A]`` unnormalised AU saliency logits of view 1; marginals are their softmax.
        mass2: ``[B2, A]`` same for view 2.
        epsilon, iters, identity_prior, solver: see ``entropic_ot`` and ``ot_cost_matrix``.

    Returns:
        ``[B, B2]`` OT costs (``B * B2`` problems of size ``A x A``).
    """
    if z1.ndim != 3 or z2.ndim != 3 or mass1.shape != z1.shape[:2] or mass2.shape != z2.shape[:2]:
        raise ValueError(f"expected z1 [B, A, D], z2 [B2, A, D], mass1 [B, A], mass2 [B2, A]; got "
                         f"{tuple(z1.shape)}, {tuple(z2.shape)}, {tuple(mass1.shape)}, "
                         f"{tuple(mass2.shape)}")
    batch1, batch2, num_aus = z1.shape[0], z2.shape[0], z1.shape[1]
    cost = ot_cost_matrix(z1[:, None], z2[None], identity_prior)  # [B, B2, A, A]
    with torch.autocast(cost.device.type, enabled=False):
        a = mass1.to(cost.dtype).log_softmax(-1).clamp_min(_MIN_LOG_MASS).exp()
        b = mass2.to(cost.dtype).log_softmax(-1).clamp_min(_MIN_LOG_MASS).exp()
    a = a[:, None].expand(batch1, batch2, num_aus).reshape(-1, num_aus)  # [B * B2, A]
    b = b[None].expand(batch1, batch2, num_aus).reshape(-1, num_aus)  # [B * B2, A]
    costs = entropic_ot(cost.reshape(-1, num_aus, num_aus), a, b, epsilon, iters, solver)
    return costs.reshape(batch1, batch2)


def relation_ot_loss(z1: Tensor, z2: Tensor, mass1: Tensor, mass2: Tensor,
                     temperature: float = 0.1, epsilon: float = 0.05, iters: int = 50,
                     identity_prior: float = 0.5, solver: str = "torch",
                     gather: bool = True) -> Tensor:
    """Symmetric InfoNCE over images on logits ``-OT cost / temperature``.

    The cost is always OT from a view-1 set to a view-2 set. Without DDP one ``[B, B]`` cost
    matrix serves both directions (rows: view 1 -> 2, columns: 2 -> 1); under DDP each rank's
    local rows are the queries and the other view's sets are gathered with gradients.

    Args:
        z1: ``[B, A, D]`` AU embeddings of view 1.
        z2: ``[B, A, D]`` AU embeddings of view 2 (same images).
        mass1: ``[B, A]`` AU saliency logits of view 1.
        mass2: ``[B, A]`` AU saliency logits of view 2.
        temperature: softmax temperature on the negated costs.
        epsilon, iters, identity_prior, solver: see ``pairwise_ot_costs``.
        gather: all-gather keys across DDP ranks (a no-op without a process group).

    Returns:
        A scalar loss.
    """
    if z1.shape != z2.shape or mass1.shape != mass2.shape:
        raise ValueError(f"the two views must have equal shapes, got z {tuple(z1.shape)} vs "
                         f"{tuple(z2.shape)}, mass {tuple(mass1.shape)} vs {tuple(mass2.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    kwargs = dict(epsilon=epsilon, iters=iters, identity_prior=identity_prior, solver=solver)
    gathered = gather and world_size() > 1
    if gathered:
        costs12 = pairwise_ot_costs(z1, gather_with_grad(z2), mass1, gather_with_grad(mass2),
                                    **kwargs)  # [B, W * B]
        costs21 = pairwise_ot_costs(gather_with_grad(z1), z2, gather_with_grad(mass1), mass2,
                                    **kwargs).T  # [B, W * B]
    else:
        costs12 = pairwise_ot_costs(z1, z2, mass1, mass2, **kwargs)  # [B, B]
        costs21 = costs12.T
    return symmetric_info_nce(-costs12 / temperature, -costs21 / temperature, gathered)
