"""Stage-1 relation loss: InfoNCE over images on transport distances between AU sets.

Each view of an image gives ``A`` AU embeddings; the distance between the two views of one image
is the positive, its distances to other images are the negatives. Two formulations
(``relation_ot_loss(formulation=...)``):

- ``"fgw"`` (default): entropic fused Gromov-Wasserstein. A face's AU relations are its AU-AU
  cosine matrix; the distance adds to the ``1 - cos`` matching cost of the AUs (weight
  ``1 - alpha``) the mismatch between the two faces' relation matrices under the matching
  (weight ``alpha``), so images close in this loss relate their AUs alike. Uniform marginals.
  Solved by ``entropic_fgw``: ``gw_iters`` linearisations of the GW term, each an entropic OT
  solved by the base-2 Sinkhorn below, all ``B * B`` problems at once. Its plans are those of
  POT's ``entropic_fused_gromov_wasserstein``; its gradients hold the plan fixed (see there).
- ``"ot"`` (the previous formulation, kept for ablations): entropic OT whose cost is ``1 - cos``
  plus an identity prior (moving AU i's mass onto AU j != i costs ``identity_prior`` more) and
  whose marginals are AU saliencies (softmax of learned masses). Measured: between the two views
  of one image all mass stays on the diagonal, so the positive is a saliency-weighted sum of
  per-AU cosine distances - the region loss again, with no relation between AUs.

OT solvers (``solver=``, ``"ot"`` only), all unrolled for a fixed number of log-domain Sinkhorn
iterations in the same order as POT's ``sinkhorn_log`` (column potential first), so they agree
in value and gradient:

- ``"torch"`` (default): ours, batched, with a hand-written backward that recomputes each
  step's softmax from saved potentials instead of keeping ``iters`` autograd graphs; the
  fastest and leanest of the three (``make bench-pretrain`` times them side by side:
  docs/benchmarks.md, "How fast is the relation loss?"), hence the default.
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
# problems per cache-sized block of the torch solver on CPU (the fastest of 256..65536 in
# `make bench-pretrain`'s solver timings)
_CPU_CHUNK = 1024
# the torch solver works in base 2 (exp2 is cheaper than exp on CPU); exp2 of float32 below
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
    with torch.autocast(z1.device.type, enabled=False):  # autocast would round cos to bfloat16
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


def au_structure(z: Tensor) -> Tensor:
    """Intra-face AU relation matrix: cosine similarities between one face's AU embeddings.

    Args:
        z: ``[..., A, D]`` AU embeddings.

    Returns:
        ``[..., A, A]`` symmetric, in float32 or wider.
    """
    unit = F.normalize(z.to(torch.promote_types(z.dtype, torch.float32)), dim=-1)
    with torch.autocast(z.device.type, enabled=False):
        return unit @ unit.mT


def _matmul_problems_last(x: Tensor, y: Tensor) -> Tensor:
    """``[K, M, P] @ [M, L, P] -> [K, L, P]``, one problem per index of the last dim.

    ``M`` broadcast multiply-adds across problems: faster on CPU than ``einsum``, which would
    permute to a ``bmm`` of tiny matrices.
    """
    out = x[:, 0, None] * y[0]
    for k in range(1, x.shape[1]):
        out.addcmul_(x[:, k, None], y[k])
    return out


def _fgw_plan_chunk(f_fixed: Tensor, struct1: Tensor, struct2: Tensor, log_a: Tensor,
                    log_b: Tensor, cross_scale: float, iters: int, gw_iters: int,
                    proximal: bool) -> Tensor:
    """FGW plans ``[A, A', P]`` by ``gw_iters`` linearise-then-Sinkhorn steps, in base 2.

    ``f_fixed`` ``[A, A', P]`` is the plan-independent part of ``-cost / (eps ln 2)``; the
    linearised GW term adds ``cross_scale * S1 T S2^T``. Structures ``[A, A, P]``, ``[A', A', P]``;
    log2-marginals ``[A, P]``, ``[A', P]``.
    """
    plan = torch.exp2(log_a[:, None] + log_b[None])  # the independent coupling p q^T
    for _ in range(gw_iters):
        cross = _matmul_problems_last(_matmul_problems_last(struct1, plan),
                                      struct2.transpose(0, 1))  # S1 T S2^T
        f = torch.add(f_fixed, cross, alpha=cross_scale)
        if proximal:  # KL(T | T_k) in place of the entropy
            f += plan.log2()
        plan = _forward_chunk(f, log_a, log_b, iters)[0]
    return plan


@torch.no_grad()
def _fgw_plans(feature_cost: Tensor, struct1: Tensor, struct2: Tensor, lead: torch.Size,
               alpha: float, epsilon: float, iters: int, gw_iters: int, proximal: bool) -> Tensor:
    """Plans ``[..., A, A']`` of FGW problems with uniform marginals; the inputs' leading dims
    broadcast to ``lead``."""
    n, m = feature_cost.shape[-2:]
    feature_cost = feature_cost.expand(*lead, n, m).reshape(-1, n, m)  # [P, A, A']
    struct1 = struct1.expand(*lead, n, n).reshape(-1, n, n)  # [P, A, A]
    struct2 = struct2.expand(*lead, m, m).reshape(-1, m, m)  # [P, A', A']
    num_problems = feature_cost.shape[0]
    log_a = feature_cost.new_full((n, 1), -math.log2(n))
    log_b = feature_cost.new_full((m, 1), -math.log2(m))
    # the square loss' plan-independent part (POT's constC): (S1^2 p) 1^T + 1 (S2^2 q)^T
    const = (struct1.square().mean(-1)[:, :, None]
             + struct2.square().mean(-1)[:, None, :])  # [P, A, A']
    # the cost linearised at T is (1 - alpha) M + 2 alpha (const - 2 S1 T S2^T)
    f_fixed = ((1 - alpha) * feature_cost + 2 * alpha * const) * (-_LOG2E / epsilon)
    chunk = _CPU_CHUNK if feature_cost.device.type == "cpu" else max(num_problems, 1)
    plans = [
        _problems_first(_fgw_plan_chunk(
            _problems_last(f_c), _problems_last(s1_c), _problems_last(s2_c),
            log_a.expand(n, len(f_c)), log_b.expand(m, len(f_c)), 4 * alpha * _LOG2E / epsilon,
            iters, gw_iters, proximal))
        for f_c, s1_c, s2_c in zip(f_fixed.split(chunk), struct1.split(chunk),
                                   struct2.split(chunk), strict=True)
    ]
    return torch.cat(plans).reshape(*lead, n, m)


def entropic_fgw(feature_cost: Tensor, struct1: Tensor, struct2: Tensor, alpha: float = 0.5,
                 epsilon: float = 0.05, iters: int = 50, gw_iters: int = 5,
                 proximal: bool = False) -> Tensor:
    """Entropic fused Gromov-Wasserstein values (square loss, uniform marginals), batched.

    Each problem couples ``A`` nodes with ``A'`` nodes; its value is

        (1 - alpha) <M, T> + alpha sum_{k,l,m,n} (S1[k, m] - S2[l, n])^2 T[k, l] T[m, n]

    at the plan ``T`` of POT's ``ot.gromov.entropic_fused_gromov_wasserstein`` (``solver="PGD"``,
    ``loss_fun="square_loss"``, ``max_iter=gw_iters``, ``tol=0``, ``numItermax=iters``,
    ``stopThr=0``): from ``T = p q^T``, ``gw_iters`` times, the cost is linearised at ``T``
    (``(1 - alpha) M + 2 alpha L(S1, S2) x T``) and ``T`` is replaced by the entropic OT plan of
    that cost (``iters`` Sinkhorn iterations from zero potentials, column update first, here in
    the log domain). With ``proximal=True`` each step also adds ``-epsilon log T`` to the cost
    (a KL step from the previous plan instead of an entropy penalty): the scheme of POT's batched
    ``ot.batch.solve_gromov_batch`` (and of ``solver="PPA"``), which tends to unregularised FGW.

    The value is the objective above at the plan found, with the plan's own marginals in the GW
    term, as ``solve_gromov_batch`` reports it; POT's ``entropic_fused_gromov_wasserstein2``
    puts ``p``, ``q`` there, the same once Sinkhorn has converged (the rows always are: the row
    update comes last). The plan is found without autograd and the value differentiated with
    the plan held fixed (envelope theorem), as ``solve_gromov_batch(grad="envelope")`` and POT's
    exact GW solvers do, so memory does not grow with the iterations
    (``entropic_fused_gromov_wasserstein2`` instead backpropagates through every iteration,
    which gives other gradients). Runs in float32 or wider, whatever autocast says.

    Args:
        feature_cost: ``[..., A, A']`` feature cost ``M`` between the two node sets.
        struct1: ``[..., A, A]`` symmetric structure matrices of the first sets.
        struct2: ``[..., A', A']`` symmetric structure matrices of the second sets; the leading
            dims of all three broadcast.
        alpha: weight of the structure (GW) term, in ``[0, 1]``; 0 is feature OT alone.
        epsilon: entropic regularisation (``epsilon`` in POT).
        iters: Sinkhorn iterations per linearisation.
        gw_iters: linearisations (``max_iter`` in POT, which runs them all with ``tol=0``).
        proximal: the proximal-point scheme of POT's batched solver instead of entropic FGW.

    Returns:
        ``[...]`` FGW values.
    """
    _check_fgw(alpha, epsilon, iters, gw_iters)
    n, m = feature_cost.shape[-2:]
    if struct1.shape[-2:] != (n, n) or struct2.shape[-2:] != (m, m):
        raise ValueError(f"expected feature_cost [..., A, A'], struct1 [..., A, A] and struct2 "
                         f"[..., A', A'], got {tuple(feature_cost.shape)}, "
                         f"{tuple(struct1.shape)}, {tuple(struct2.shape)}")
    with torch.autocast(feature_cost.device.type, enabled=False):
        dtype = _solver_dtype(feature_cost)
        feature_cost, struct1, struct2 = (t.to(dtype) for t in (feature_cost, struct1, struct2))
        lead = torch.broadcast_shapes(feature_cost.shape[:-2], struct1.shape[:-2],
                                      struct2.shape[:-2])
        plan = _fgw_plans(feature_cost, struct1, struct2, lead, alpha, epsilon, iters, gw_iters,
                          proximal)  # [..., A, A']
        rows, cols = plan.sum(-1), plan.sum(-2)  # [..., A], [..., A']
        linear = (feature_cost * plan).sum((-2, -1))
        quadratic = (torch.einsum("...km,...k,...m->...", struct1.square(), rows, rows)
                     + torch.einsum("...ln,...l,...n->...", struct2.square(), cols, cols)
                     - 2 * (struct1 * (plan @ struct2 @ plan.mT)).sum((-2, -1)))
        return (1 - alpha) * linear + alpha * quadratic


def _check_fgw(alpha: float, epsilon: float, iters: int, gw_iters: int) -> None:
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha (the FGW structure weight) must be in [0, 1], got {alpha}")
    if epsilon <= 0 or iters < 1 or gw_iters < 1:
        raise ValueError(f"need epsilon > 0, iters >= 1 and gw_iters >= 1, got epsilon={epsilon}, "
                         f"iters={iters}, gw_iters={gw_iters}")


def pairwise_fgw_costs(z1: Tensor, z2: Tensor, alpha: float = 0.5, epsilon: float = 0.05,
                       iters: int = 50, gw_iters: int = 5) -> Tensor:
    """FGW distance between every view-1 face and every view-2 face, in one batched solve.

    The feature cost between AU ``k`` of one face and AU ``l`` of the other is ``1 - cos``; the
    structure of a face is its AU-AU cosine matrix (``au_structure``), so two faces are close
    only if their AUs match *and* relate to each other alike.

    Args:
        z1: ``[B, A, D]`` view-1 AU embeddings (the local queries).
        z2: ``[B2, A, D]`` view-2 AU embeddings (the keys, gathered under DDP).
        alpha, epsilon, iters, gw_iters: see ``entropic_fgw``.

    Returns:
        ``[B, B2]`` FGW values (``B * B2`` problems of size ``A x A``).
    """
    if z1.ndim != 3 or z2.ndim != 3:
        raise ValueError(f"expected z1 [B, A, D] and z2 [B2, A, D], got {tuple(z1.shape)} and "
                         f"{tuple(z2.shape)}")
    feature_cost = ot_cost_matrix(z1[:, None], z2[None], identity_prior=0.0)  # [B, B2, A, A]
    return entropic_fgw(feature_cost, au_structure(z1)[:, None], au_structure(z2)[None], alpha,
                        epsilon, iters, gw_iters)


RELATIONS = ("fgw", "ot")


def relation_ot_loss(z1: Tensor, z2: Tensor, mass1: Tensor | None = None,
                     mass2: Tensor | None = None, temperature: float = 0.1, epsilon: float = 0.05,
                     iters: int = 50, formulation: str = "fgw", alpha: float = 0.5,
                     gw_iters: int = 5, identity_prior: float = 0.5, solver: str = "torch",
                     gather: bool = True, groups: Tensor | None = None) -> Tensor:
    """Symmetric InfoNCE over images on logits ``-distance / temperature``.

    The distance between a view-1 face and a view-2 face is, by ``formulation``:

    - ``"fgw"`` (default): entropic fused Gromov-Wasserstein (``pairwise_fgw_costs``) with
      uniform AU marginals; it compares how each face's AUs relate to each other (weight
      ``alpha``) as well as the AUs themselves. ``mass1``, ``mass2``, ``identity_prior`` and
      ``solver`` are not used.
    - ``"ot"``: entropic OT (``pairwise_ot_costs``) with the identity prior and the AU saliency
      marginals ``mass1``, ``mass2`` (required). Between two views of one face its plan stays on
      the diagonal, so the positive is a weighted sum of per-AU distances. ``alpha`` and
      ``gw_iters`` are not used.

    Without DDP one ``[B, B]`` distance matrix serves both directions (rows: view 1 -> 2,
    columns: 2 -> 1); under DDP each rank's local rows are the queries and the other view's
    sets are gathered with gradients.

    Args:
        z1: ``[B, A, D]`` AU embeddings of view 1.
        z2: ``[B, A, D]`` AU embeddings of view 2 (same images).
        mass1: ``[B, A]`` AU saliency logits of view 1 (``"ot"`` only).
        mass2: ``[B, A]`` AU saliency logits of view 2 (``"ot"`` only).
        temperature: softmax temperature on the negated distances.
        epsilon: entropic regularisation.
        iters: Sinkhorn iterations (per GW linearisation for ``"fgw"``).
        formulation: ``"fgw"`` or ``"ot"``.
        alpha, gw_iters: see ``entropic_fgw``.
        identity_prior, solver: see ``pairwise_ot_costs``.
        gather: all-gather keys across DDP ranks (a no-op without a process group); not with
            ``groups``.
        groups: ``[B]`` integer person ids, or None; given, each face's negatives are only the
            same person's other faces (``region_contrastive_loss``).

    Returns:
        A scalar loss.
    """
    if formulation not in RELATIONS:
        raise ValueError(f"unknown relation formulation {formulation!r}; choose one of "
                         f"{list(RELATIONS)}")
    if z1.shape != z2.shape:
        raise ValueError(f"the two views must have equal shapes, got z {tuple(z1.shape)} vs "
                         f"{tuple(z2.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if formulation == "fgw":
        _check_fgw(alpha, epsilon, iters, gw_iters)
        mass1 = mass2 = None  # not gathered either: FGW's marginals are uniform
    elif mass1 is None or mass2 is None or mass1.shape != mass2.shape:
        raise ValueError("formulation 'ot' needs AU saliency logits mass1 and mass2, both [B, A]")

    def distances(z_a: Tensor, z_b: Tensor, mass_a: Tensor | None, mass_b: Tensor | None
                  ) -> Tensor:
        """``[B_a, A, D]``, ``[B_b, A, D]`` (and masses ``[B_a, A]``, ``[B_b, A]`` for
        ``"ot"``) -> ``[B_a, B_b]``."""
        if formulation == "fgw":
            return pairwise_fgw_costs(z_a, z_b, alpha, epsilon, iters, gw_iters)
        return pairwise_ot_costs(z_a, z_b, mass_a, mass_b, epsilon, iters, identity_prior, solver)

    def keys(x: Tensor | None) -> Tensor | None:
        return None if x is None else gather_with_grad(x)

    gathered = gather and groups is None and world_size() > 1
    if gathered:
        costs12 = distances(z1, keys(z2), mass1, keys(mass2))  # [B, W * B]
        costs21 = distances(keys(z1), z2, keys(mass1), mass2).T  # [B, W * B]
    else:
        costs12 = distances(z1, z2, mass1, mass2)  # [B, B]
        costs21 = costs12.T
    return symmetric_info_nce(-costs12 / temperature, -costs21 / temperature, gathered, groups)
