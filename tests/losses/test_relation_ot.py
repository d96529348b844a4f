import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import Tensor

from aukit.losses import relation_ot
from aukit.losses.region_contrastive import region_contrastive_loss
from aukit.losses.relation_ot import (
    au_structure,
    entropic_fgw,
    entropic_ot,
    ot_cost_matrix,
    pairwise_fgw_costs,
    pairwise_ot_costs,
    relation_ot_loss,
    sinkhorn_log,
)

P, A, D = 5, 4, 8
BATCHED = ["torch", "pot"]
FORMULATIONS = ["fgw", "ot"]


def random_problem(scale: str, dtype=torch.float64) -> tuple[torch.Tensor, ...]:
    if scale == "extreme":  # costs ~0 next to costs ~50
        near_zero = 1e-6 * torch.rand(P, A, A, dtype=dtype)
        large = 50 + torch.rand(P, A, A, dtype=dtype)
        cost = torch.where(torch.rand(P, A, A) < 0.5, near_zero, large)
    else:
        cost = 2 * torch.rand(P, A, A, dtype=dtype)
    a = torch.softmax(torch.randn(P, A, dtype=dtype), -1)
    b = torch.softmax(torch.randn(P, A, dtype=dtype), -1)
    return cost, a, b


def value_and_grads(solver: str, cost, a, b, epsilon: float, iters: int = 50):
    cost, a, b = (t.clone().requires_grad_() for t in (cost, a, b))
    value = entropic_ot(cost, a, b, epsilon, iters, solver)
    # unequal weights so that a gradient mixing up problems would show
    (value * torch.arange(1, P + 1, dtype=value.dtype)).sum().backward()
    return value.detach(), cost.grad, a.grad, b.grad


@pytest.mark.parametrize("solver", BATCHED)
@pytest.mark.parametrize(("scale", "epsilon"),
                         [("unit", 0.05), ("unit", 1e-3), ("extreme", 0.05), ("extreme", 1e-3)])
def test_solver_matches_sinkhorn2_loop_in_value_and_gradient(solver, scale, epsilon):
    problem = random_problem(scale)
    got = value_and_grads(solver, *problem, epsilon)
    reference = value_and_grads("pot_loop", *problem, epsilon)
    for name, g, r in zip(("value", "d cost", "d a", "d b"), got, reference, strict=True):
        assert torch.isfinite(g).all(), name
        torch.testing.assert_close(g, r, atol=1e-4, rtol=1e-6, msg=name)


def test_cpu_chunks_do_not_change_results(monkeypatch):
    problem = random_problem("unit")
    whole = value_and_grads("torch", *problem, 0.05)
    monkeypatch.setattr(relation_ot, "_CPU_CHUNK", 2)  # P = 5 -> chunks of 2, 2, 1
    for got, expected in zip(value_and_grads("torch", *problem, 0.05), whole, strict=True):
        torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("solver", BATCHED)
def test_pairwise_costs_match_loop_in_value_and_gradient_wrt_z(solver):
    z1, z2 = torch.randn(3, A, D, dtype=torch.float64), torch.randn(4, A, D, dtype=torch.float64)
    mass1, mass2 = torch.randn(3, A, dtype=torch.float64), torch.randn(4, A, dtype=torch.float64)
    results = []
    for s in (solver, "pot_loop"):
        leaves = [t.clone().requires_grad_() for t in (z1, mass1)]
        costs = pairwise_ot_costs(leaves[0], z2, leaves[1], mass2, solver=s)
        (costs * torch.randn(3, 4, generator=torch.Generator().manual_seed(1),
                             dtype=costs.dtype)).sum().backward()
        results.append((costs.detach(), leaves[0].grad, leaves[1].grad))
    assert results[0][0].shape == (3, 4)
    for got, reference in zip(*results, strict=True):
        torch.testing.assert_close(got, reference, atol=1e-4, rtol=1e-6)


def test_plan_marginals_match_a_and_b():
    cost, a, b = random_problem("unit")
    plan = sinkhorn_log(cost, a, b, epsilon=1e-3, iters=50)
    torch.testing.assert_close(plan.sum(-1), a, atol=1e-12, rtol=0)  # the row update comes last
    converged = sinkhorn_log(cost, a, b, epsilon=0.1, iters=300)
    torch.testing.assert_close(converged.sum(-2), b, atol=1e-8, rtol=0)


def test_float32_is_stable_for_tiny_epsilon_and_extreme_costs():
    cost, a, b = random_problem("extreme", torch.float32)
    cost.requires_grad_()
    plan = sinkhorn_log(cost, a, b, epsilon=1e-3, iters=50)
    assert plan.dtype == torch.float32 and torch.isfinite(plan).all()
    # cost / epsilon ~ 5e4 leaves float32 about 3 significant digits in the exponent
    torch.testing.assert_close(plan.sum(-1), a, atol=1e-4, rtol=1e-3)
    entropic_ot(cost, a, b, 1e-3, 50).sum().backward()
    assert torch.isfinite(cost.grad).all()


def test_cost_matrix_definition():
    z = torch.randn(P, A, D)
    cost = ot_cost_matrix(z, z, identity_prior=0.5)
    torch.testing.assert_close(torch.diagonal(cost, dim1=-2, dim2=-1), torch.zeros(P, A),
                               atol=1e-6, rtol=0)
    cos = torch.cosine_similarity(z[:, 0], z[:, 1], dim=-1)
    torch.testing.assert_close(cost[:, 0, 1], 1 - cos + 0.5)


@pytest.mark.parametrize("formulation", FORMULATIONS)
def test_autocast_bfloat16_gives_float32_finite_costs(formulation):
    layer = torch.nn.Linear(D, D)
    z1, z2 = torch.randn(3, A, D), torch.randn(3, A, D)
    mass1, mass2 = torch.randn(3, A), torch.randn(3, A)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        e1, e2 = layer(z1), layer(z2)
        assert e1.dtype == torch.bfloat16
        if formulation == "ot":
            costs = pairwise_ot_costs(e1, e2, mass1, mass2)
        else:
            costs = pairwise_fgw_costs(e1, e2)
        loss = relation_ot_loss(e1, e2, mass1, mass2, formulation=formulation)
        value = entropic_ot(*(t.bfloat16() for t in random_problem("unit")), 0.05, 20)
    loss.backward()
    assert costs.dtype == value.dtype == torch.float32
    assert torch.isfinite(costs).all() and torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())
    # the same bfloat16 embeddings without autocast: autocast must not round the cosines
    if formulation == "ot":
        reference = pairwise_ot_costs(e1.detach(), e2.detach(), mass1, mass2)
    else:
        reference = pairwise_fgw_costs(e1.detach(), e2.detach())
    torch.testing.assert_close(costs, reference, atol=1e-6, rtol=1e-5)


def random_fgw_problem(n: int = A, m: int = A + 1, num: int = 3) -> tuple[torch.Tensor, ...]:
    """``num`` FGW problems with ``n x m`` couplings: cosine structures, as in the loss, and
    Euclidean ones, so the test is not tied to one kind of matrix. Both in ``[-1, 1]``: for
    larger structures (costs / epsilon in the hundreds) POT's Sinkhorn, scaling rather than
    log-domain, no longer converges in any number of iterations the test can afford."""
    x1, x2 = (torch.randn(num, k, 3, dtype=torch.float64) for k in (n, m))
    struct1, struct2 = au_structure(x1), au_structure(x2)
    for struct, x in ((struct1, x1), (struct2, x2)):
        dist = torch.cdist(x[::2], x[::2])
        struct[::2] = dist / dist.amax(dim=(1, 2), keepdim=True)
    return 2 * torch.rand(num, n, m, dtype=torch.float64), struct1, struct2


# enough iterations for the column marginals to converge, which POT's entropic FGW value assumes
FGW_SOLVE = dict(epsilon=0.1, iters=300, gw_iters=20)


def fgw_value_and_grads(value_fn, inputs):
    leaves = [t.clone().requires_grad_() for t in inputs]
    value = value_fn(*leaves)
    # unequal weights so that a gradient mixing up problems would show
    (value * torch.arange(1, len(value) + 1, dtype=value.dtype)).sum().backward()
    return value.detach(), *(leaf.grad for leaf in leaves)


def pot_fgw_loop(feature_cost, struct1, struct2, alpha: float, epsilon: float, iters: int,
                 gw_iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """POT's entropic FGW, one problem at a time: the value at the plan of
    ``entropic_fused_gromov_wasserstein`` by POT's ``loss_quadratic_batch`` (differentiable,
    with the plan held fixed), and ``entropic_fused_gromov_wasserstein2``'s value."""
    import ot

    values, values2 = [], []
    for cost, s1, s2 in zip(feature_cost, struct1, struct2, strict=True):
        p = torch.full((len(s1),), 1 / len(s1), dtype=cost.dtype)
        q = torch.full((len(s2),), 1 / len(s2), dtype=cost.dtype)
        solve = dict(loss_fun="square_loss", epsilon=epsilon, alpha=alpha, max_iter=gw_iters,
                     tol=0.0, numItermax=iters, stopThr=0.0, warn=False)
        fixed = (cost.detach(), s1.detach(), s2.detach(), p, q)
        plan = ot.gromov.entropic_fused_gromov_wasserstein(*fixed, **solve)
        values.append(ot.batch.loss_quadratic_batch(
            p[None], q[None], s1[None], s2[None], plan[None], M=cost[None], alpha=alpha,
            recompute_const=True)[0])
        values2.append(ot.gromov.entropic_fused_gromov_wasserstein2(*fixed, **solve))
    return torch.stack(values), torch.stack(values2)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_fgw_matches_pot_in_value_and_gradient(alpha):
    problem = random_fgw_problem()
    got = fgw_value_and_grads(
        lambda *leaves: entropic_fgw(*leaves, alpha=alpha, **FGW_SOLVE), problem)
    pot_fgw2 = []

    def pot(*leaves):
        values, values2 = pot_fgw_loop(*leaves, alpha, **FGW_SOLVE)
        pot_fgw2.append(values2)
        return values

    reference = fgw_value_and_grads(pot, problem)
    # the same plans: the same values and envelope gradients up to rounding
    for name, g, r in zip(("value", "d M", "d C1", "d C2"), got, reference, strict=True):
        assert torch.isfinite(g).all(), name
        torch.testing.assert_close(g, r, atol=1e-12, rtol=1e-10, msg=name)
    # POT's own FGW value takes the column marginals to be q, which holds once converged
    torch.testing.assert_close(got[0], pot_fgw2[0], atol=0, rtol=1e-4)


def test_pairwise_fgw_matches_pot_in_value_and_gradient_wrt_z():
    z1, z2 = torch.randn(2, A, D, dtype=torch.float64), torch.randn(3, A, D, dtype=torch.float64)

    def pot_pairwise(z1, z2):  # the same M, C1, C2, built for every pair, then POT one by one
        pairs = [(i, j) for i in range(len(z1)) for j in range(len(z2))]
        feature_cost = torch.stack([ot_cost_matrix(z1[i], z2[j], 0.0) for i, j in pairs])
        struct1 = torch.stack([au_structure(z1[i]) for i, _ in pairs])
        struct2 = torch.stack([au_structure(z2[j]) for _, j in pairs])
        return pot_fgw_loop(feature_cost, struct1, struct2, 0.5, **solve)[0]

    # the plans match whether or not Sinkhorn converged: few iterations do
    solve = dict(epsilon=0.05, iters=30, gw_iters=5)
    got = fgw_value_and_grads(
        lambda *z: pairwise_fgw_costs(*z, alpha=0.5, **solve).flatten(), (z1, z2))
    reference = fgw_value_and_grads(pot_pairwise, (z1, z2))
    for name, g, r in zip(("value", "d z1", "d z2"), got, reference, strict=True):
        torch.testing.assert_close(g, r, atol=1e-12, rtol=1e-10, msg=name)


def test_fgw_proximal_matches_pot_batched_solver():
    import ot

    if not hasattr(ot.batch, "solve_gromov_batch"):
        pytest.skip(f"POT {ot.__version__} has no ot.batch.solve_gromov_batch (POT >= 0.9.6)")

    def pot_batch(feature_cost, struct1, struct2):
        # ot.batch updates the row potential first and our Sinkhorn the column one: solving the
        # transposed problem makes the iterations identical
        return ot.batch.solve_gromov_batch(
            struct2, struct1, reg=0.05, M=feature_cost.mT, alpha=0.5, max_iter=10, tol=0.0,
            max_iter_inner=30, tol_inner=0.0, grad="envelope").value

    problem = random_fgw_problem()
    got = fgw_value_and_grads(lambda *leaves: entropic_fgw(
        *leaves, alpha=0.5, epsilon=0.05, iters=30, gw_iters=10, proximal=True), problem)
    reference = fgw_value_and_grads(pot_batch, problem)
    for name, g, r in zip(("value", "d M", "d C1", "d C2"), got, reference, strict=True):
        torch.testing.assert_close(g, r, atol=1e-10, rtol=1e-8, msg=name)


def test_fgw_cpu_chunks_and_broadcasting_do_not_change_results(monkeypatch):
    z1, z2 = torch.randn(2, A, D, dtype=torch.float64), torch.randn(3, A, D, dtype=torch.float64)
    whole = pairwise_fgw_costs(z1, z2, iters=20, gw_iters=3)
    monkeypatch.setattr(relation_ot, "_CPU_CHUNK", 4)  # 6 problems -> chunks of 4, 2
    torch.testing.assert_close(pairwise_fgw_costs(z1, z2, iters=20, gw_iters=3), whole,
                               atol=1e-12, rtol=0)
    # every pair solved on its own
    for i in range(2):
        for j in range(3):
            alone = entropic_fgw(ot_cost_matrix(z1[i], z2[j], 0.0), au_structure(z1[i]),
                                 au_structure(z2[j]), iters=20, gw_iters=3)
            torch.testing.assert_close(alone, whole[i, j], atol=1e-12, rtol=0)


def views_with_equal_au_matches(structure_kept: bool, batch: int = 4, theta: float = 0.5
                                ) -> tuple[torch.Tensor, torch.Tensor]:
    """View 1 has unit AU embeddings ``u_k`` in the first half of the channels; view 2 has
    ``cos(theta) u_k + sin(theta) w_k`` with ``w_k`` in the second half, so every cosine between
    view 1 and view 2, of this face or another, is ``cos(theta) <u_k, u'_l>`` either way: the same
    OT costs. Only the relations between a view-2 face's AUs differ: ``w_k = u_k`` moved to the
    second half keeps them; orthonormal ``w_k`` makes the AUs of each view-2 face less alike."""
    gen = torch.Generator().manual_seed(0)
    u = F.normalize(torch.randn(batch, A, D, generator=gen, dtype=torch.float64), dim=-1)
    if structure_kept:
        w = u
    else:
        w = torch.linalg.qr(torch.randn(batch, D, A, generator=gen, dtype=torch.float64))[0].mT
    z1 = torch.cat([u, torch.zeros_like(u)], dim=-1)  # [B, A, 2D]
    z2 = torch.cat([math.cos(theta) * u, math.sin(theta) * w], dim=-1)  # [B, A, 2D]
    return z1, z2


def test_fgw_sees_au_relations_that_ot_does_not():
    (z1, kept), (_, changed) = (views_with_equal_au_matches(k) for k in (True, False))
    # every per-AU match is the same in both cases, and so is every OT cost
    torch.testing.assert_close(torch.cosine_similarity(z1, kept, dim=-1),
                               torch.cosine_similarity(z1, changed, dim=-1))
    mass = torch.zeros(len(z1), A, dtype=torch.float64)
    ot_kept, ot_changed = (pairwise_ot_costs(z1, z2, mass, mass) for z2 in (kept, changed))
    torch.testing.assert_close(ot_kept, ot_changed, atol=1e-12, rtol=0)
    torch.testing.assert_close(*(relation_ot_loss(z1, z2, mass, mass, formulation="ot")
                                 for z2 in (kept, changed)), atol=1e-7, rtol=0)
    # FGW: the same without the structure term, and farther apart where the relations changed
    fgw_kept, fgw_changed = (pairwise_fgw_costs(z1, z2, alpha=0.0) for z2 in (kept, changed))
    torch.testing.assert_close(fgw_kept, fgw_changed, atol=1e-12, rtol=0)
    fgw_kept, fgw_changed = (pairwise_fgw_costs(z1, z2) for z2 in (kept, changed))
    assert (fgw_changed.diag() > fgw_kept.diag() + 1e-3).all()
    loss_kept, loss_changed = (relation_ot_loss(z1, z2) for z2 in (kept, changed))
    assert loss_changed > loss_kept + 1e-3


def structured_views(batch: int = 8) -> tuple[torch.Tensor, ...]:
    """Each image has its own AU relation structure; view 2 is a noisy copy of view 1."""
    z1 = torch.randn(batch, A, D)
    return z1, z1 + 0.1 * torch.randn_like(z1), torch.randn(batch, A), torch.randn(batch, A)


@pytest.mark.parametrize("formulation", FORMULATIONS)
def test_matched_relations_give_lower_loss(formulation):
    z1, z2, mass1, mass2 = structured_views()
    matched = relation_ot_loss(z1, z2, mass1, mass2, formulation=formulation)
    shuffled = torch.roll(torch.arange(len(z2)), 1)
    mismatched = relation_ot_loss(z1, z2[shuffled], mass1, mass2[shuffled],
                                  formulation=formulation)
    chance = math.log(len(z1))
    assert matched < 0.5 * chance and mismatched > 2 * chance


def _descend(leaves: list[Tensor], **kwargs) -> None:
    """8 SGD steps on ``relation_ot_loss(*leaves, **kwargs)``: every leaf gets a finite, nonzero
    gradient at every step and the loss falls by 30% or more."""
    optimiser = torch.optim.SGD(leaves, lr=2.0)
    losses = []
    for _ in range(8):
        optimiser.zero_grad()
        loss = relation_ot_loss(*leaves, iters=20, **kwargs)
        loss.backward()
        for leaf in leaves:
            assert torch.isfinite(leaf.grad).all() and leaf.grad.abs().sum() > 0
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_loss_decreases_and_gradients_reach_z_and_mass():
    _descend([t.requires_grad_() for t in (torch.randn(6, A, D), torch.randn(6, A, D),
                                           torch.randn(6, A), torch.randn(6, A))],
             formulation="ot")


def test_fgw_loss_decreases_and_gradients_reach_both_views():
    _descend([torch.randn(6, A, D).requires_grad_() for _ in range(2)], gw_iters=3)


def test_bad_input_is_explained():
    cost, a, b = random_problem("unit")
    with pytest.raises(ValueError, match="unknown OT solver"):
        entropic_ot(cost, a, b, 0.05, 10, solver="emd")
    with pytest.raises(ValueError, match="epsilon > 0"):
        entropic_ot(cost, a, b, 0.0, 10)
    with pytest.raises(ValueError, match=r"marginals a \[P, A\]"):
        sinkhorn_log(cost, a[:, :2], b, 0.05, 10)
    with pytest.raises(ValueError, match=r"mass1 \[B, A\]"):
        pairwise_ot_costs(torch.randn(2, A, D), torch.randn(2, A, D), torch.randn(2, A + 1),
                          torch.randn(2, A))
    z = torch.randn(2, A, D)
    for alpha in (-0.1, 1.5):
        with pytest.raises(ValueError, match=r"alpha \(the FGW structure weight\) must be in "
                                             r"\[0, 1\], got"):
            relation_ot_loss(z, z, alpha=alpha)
    with pytest.raises(ValueError, match="unknown relation formulation 'gw'; choose one of"):
        relation_ot_loss(z, z, formulation="gw")
    with pytest.raises(ValueError, match="formulation 'ot' needs AU saliency logits"):
        relation_ot_loss(z, z, formulation="ot")
    with pytest.raises(ValueError, match="gw_iters >= 1"):
        relation_ot_loss(z, z, gw_iters=0)
    with pytest.raises(ValueError, match=r"struct2 \[\.\.\., A', A'\]"):
        entropic_fgw(torch.rand(P, A, A + 1), torch.rand(P, A, A), torch.rand(P, A, A))


def _ddp_losses(leaves: list[torch.Tensor]) -> dict[str, tuple[torch.Tensor, list]]:
    """Each loss under test with the inputs it depends on."""
    return {"region": (region_contrastive_loss(*leaves[:2]), leaves[:2]),
            "relation_ot": (relation_ot_loss(*leaves, iters=20, formulation="ot"), leaves),
            "relation_fgw": (relation_ot_loss(*leaves[:2], iters=20, gw_iters=3), leaves[:2])}


def _ddp_worker(worker: int, init_file: str, inputs: list[torch.Tensor], out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=worker, world_size=2)
    try:
        half = len(inputs[0]) // 2
        local = [t[worker * half:(worker + 1) * half].clone().requires_grad_() for t in inputs]
        result = {}
        for name, (loss, used) in _ddp_losses(local).items():
            result[name] = (loss.detach(), torch.autograd.grad(loss, used))
        torch.save(result, f"{out}.{worker}")
    finally:
        dist.destroy_process_group()


def test_ddp_two_ranks_equal_single_process(tmp_path):
    """With keys gathered, the mean of the rank losses is the full-batch loss and each rank's
    gradient is world_size times the full-batch gradient of its rows (DDP averages them)."""
    inputs = list(structured_views(batch=6))
    out = str(tmp_path / "result")
    # fork: the workers need no fresh interpreter (seconds of imports); they use one thread
    mp.start_processes(_ddp_worker, args=(str(tmp_path / "init"), inputs, out), nprocs=2,
                       start_method="fork")
    ranks = [torch.load(f"{out}.{r}") for r in range(2)]
    leaves = [t.clone().requires_grad_() for t in inputs]
    for name, (loss, used) in _ddp_losses(leaves).items():
        grads = torch.autograd.grad(loss, used)
        torch.testing.assert_close((ranks[0][name][0] + ranks[1][name][0]) / 2, loss.detach())
        for k, grad in enumerate(grads):
            gathered = torch.cat([ranks[r][name][1][k] for r in range(2)])
            torch.testing.assert_close(gathered, 2 * grad, msg=f"{name} gradient {k}")


@pytest.mark.parametrize("formulation", ["fgw", "ot"])
def test_person_negatives_are_one_loss_per_person(formulation):
    """With ``groups`` each face's negatives are its own person's other faces: the loss is the
    mean of the per-person losses (equal-sized groups)."""
    torch.manual_seed(0)
    z1, z2 = torch.randn(6, 4, 8), torch.randn(6, 4, 8)
    m1, m2 = torch.randn(6, 4), torch.randn(6, 4)
    groups = torch.tensor([0, 0, 1, 1, 2, 2])
    loss = relation_ot_loss(z1, z2, m1, m2, formulation=formulation, groups=groups)
    per_person = [relation_ot_loss(z1[groups == g], z2[groups == g], m1[groups == g],
                                   m2[groups == g], formulation=formulation) for g in range(3)]
    torch.testing.assert_close(loss, torch.stack(per_person).mean(), rtol=1e-4, atol=1e-5)
