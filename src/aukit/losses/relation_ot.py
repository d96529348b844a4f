"""Stage-1 relation loss ("improved OT"): InfoNCE over images on entropic OT costs between AU sets.

Each view of an image gives ``A`` AU embeddings. Two sets are compared with entropic optimal
transport whose cost is ``1 - cos`` plus an identity prior (moving AU i's mass onto AU j != i
costs ``identity_prior`` more) and whose marginals are AU saliencies (softmax of learned masses).
The OT cost between the two views of one image is the positive; its costs to other images are
the negatives, so images with the same AU relation structure end up close.

Solvers (``solver=``), all unrolled for a fixed number of log-domain Sinkhorn iterations in the
same order as POT's ``sinkhorn_log`` (column potential first), so they agree in value and gradient:

- ``"torch"`` (default): ours, batched, with a hand-written backward that recomputes the plans
  from the saved potentials instead of storing ``iters`` autograd graphs of ``[P, A, A]``.
  Measured with ``scripts/bench_ot.py`` (B=256 views, A=12, 65,536 problems, 50 iterations,
  forward + backward) on CPU (AMD EPYC, 2 torch threads): see docs/benchmarks.md, "Relation OT
  solver"; it is the faster of the two batched solvers there, hence the default.
- ``"pot"``: POT's batched solver ``ot.batch.solve_batch(method="log_sinkhorn", grad="autodiff")``.
- ``"pot_loop"``: a Python loop over ``ot.sinkhorn2`` - slow; the reference in tests.
"""

from __future__ import annotations

from collections.abc import Callable

import ot
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from aukit.losses.region_contrastive import symmetric_info_nce
from aukit.utils.distributed import gather_with_grad, world_size

# log-marginals are clamped here so a saturated mass softmax never gives log(0) = -inf
_MIN_LOG_MASS = -60.0


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


def _logsumexp_(x: Tensor, dim: int, out: Tensor) -> Tensor:
    """``logsumexp`` into ``out``, overwriting ``x``: about 2x faster than ``torch.logsumexp``
    on CPU here, and reusing buffers avoids page-faulting fresh ``[A, A, P]`` blocks each step."""
    peak = x.amax(dim, keepdim=True)
    torch.sum(x.sub_(peak).exp_(), dim, out=out)
    return out.log_().add_(peak.squeeze(dim))


class _SinkhornLog(torch.autograd.Function):
    """Unrolled log-domain Sinkhorn; backward replays the iterations from the saved potentials.

    Forward, with ``f = -C / eps`` and ``u = v = 0``, ``iters`` times (POT's order)::

        v = log b - LSE_i(f + u)        u = log a - LSE_j(f + v)

    and plan = ``exp(f + u + v)``. Saving the two LSE results of every step (``[T, A, P]`` each)
    is enough to rebuild each step's softmax in the backward pass, which is what makes 65k
    problems fit in memory where plain autograd keeps several ``[P, A, A]`` tensors per iteration.
    Internally the problem index is the last, contiguous dim (``[A, A, P]``): the reductions over
    12 AUs then become elementwise operations across problems, which vectorise.
    """

    @staticmethod
    def forward(ctx: FunctionCtx, cost: Tensor, log_a: Tensor, log_b: Tensor, epsilon: float,
                iters: int) -> Tensor:
        f = (cost / -epsilon).permute(1, 2, 0).contiguous()  # [A, A, P]
        log_a, log_b = log_a.T.contiguous(), log_b.T.contiguous()  # [A, P]
        lse_v = f.new_empty(iters, *log_b.shape)  # [T, A, P]
        lse_u = f.new_empty(iters, *log_a.shape)  # [T, A, P]
        work = torch.empty_like(f)
        u = torch.zeros_like(log_a)
        for t in range(iters):
            v = log_b - _logsumexp_(torch.add(f, u[:, None], out=work), 0, out=lse_v[t])
            u = log_a - _logsumexp_(torch.add(f, v[None], out=work), 1, out=lse_u[t])
        plan = torch.add(f, u[:, None], out=work).add_(v[None]).exp_()
        ctx.save_for_backward(f, log_a, log_b, plan, lse_v, lse_u)
        ctx.epsilon = epsilon
        return plan.permute(2, 0, 1)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_plan: Tensor) -> tuple[Tensor | None, ...]:
        f, log_a, log_b, plan, lse_v, lse_u = ctx.saved_tensors
        grad_f = grad_plan.permute(1, 2, 0).contiguous().mul_(plan)  # d/d(log plan) [A, A, P]
        grad_u, grad_v = grad_f.sum(dim=1), grad_f.sum(dim=0)
        grad_log_a, grad_log_b = torch.zeros_like(log_a), torch.zeros_like(log_b)
        work = plan  # no longer needed: reuse its memory
        for t in range(lse_v.shape[0] - 1, -1, -1):
            # u_t = log a - LSE_j(f + v_t): its Jacobian is minus the row softmax of f + v_t
            grad_log_a += grad_u
            v = log_b - lse_v[t]
            torch.add(f, v[None], out=work).sub_(lse_u[t][:, None]).exp_().mul_(grad_u[:, None])
            grad_f -= work
            grad_v -= work.sum(dim=0)
            # v_t = log b - LSE_i(f + u_{t-1}) with u_0 = 0: minus the column softmax
            grad_log_b += grad_v
            u_prev = log_a - lse_u[t - 1] if t > 0 else torch.zeros_like(log_a)
            torch.add(f, u_prev[:, None], out=work).sub_(lse_v[t][None]).exp_()
            grad_f -= work.mul_(grad_v[None])
            grad_u = -work.sum(dim=1)
            grad_v = torch.zeros_like(grad_v)
        grad_cost = (grad_f / -ctx.epsilon).permute(2, 0, 1)
        return grad_cost, grad_log_a.T, grad_log_b.T, None, None


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
    # ot.batch updates the row potential first and POT's sinkhorn_log the column one; solving the
    # transposed problem makes the unrolled iterations (values and gradients) identical.
    result = ot.batch.solve_batch(cost.transpose(1, 2), reg=epsilon, a=b, b=a, max_iter=iters,
                                  tol=0.0, method="log_sinkhorn", grad="autodiff")
    return result.value_linear


def _pot_loop_ot(cost: Tensor, a: Tensor, b: Tensor, epsilon: float, iters: int) -> Tensor:
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
