import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from aukit.losses import relation_ot
from aukit.losses.region_contrastive import region_contrastive_loss
from aukit.losses.relation_ot import (
    entropic_ot,
    ot_cost_matrix,
    pairwise_ot_costs,
    relation_ot_loss,
    sinkhorn_log,
)

P, A, D = 5, 4, 8
BATCHED = ["torch", "pot"]


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


def test_autocast_bfloat16_gives_float32_finite_costs():
    layer = torch.nn.Linear(D, D)
    z1, z2 = torch.randn(3, A, D), torch.randn(3, A, D)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        e1, e2 = layer(z1), layer(z2)
        assert e1.dtype == torch.bfloat16
        costs = pairwise_ot_costs(e1, e2, torch.randn(3, A), torch.randn(3, A))
        loss = relation_ot_loss(e1, e2, torch.randn(3, A), torch.randn(3, A))
        value = entropic_ot(*(t.bfloat16() for t in random_problem("unit")), 0.05, 20)
    assert costs.dtype == value.dtype == torch.float32
    assert torch.isfinite(costs).all() and torch.isfinite(loss)


def structured_views(batch: int = 8) -> tuple[torch.Tensor, ...]:
    """Each image has its own AU relation structure; view 2 is a noisy copy of view 1."""
    z1 = torch.randn(batch, A, D)
    return z1, z1 + 0.1 * torch.randn_like(z1), torch.randn(batch, A), torch.randn(batch, A)


def test_matched_relations_give_lower_loss():
    z1, z2, mass1, mass2 = structured_views()
    matched = relation_ot_loss(z1, z2, mass1, mass2)
    shuffled = torch.roll(torch.arange(len(z2)), 1)
    mismatched = relation_ot_loss(z1, z2[shuffled], mass1, mass2[shuffled])
    chance = math.log(len(z1))
    assert matched < 0.5 * chance and mismatched > 2 * chance


def test_loss_decreases_and_gradients_reach_z_and_mass():
    leaves = [t.requires_grad_() for t in (torch.randn(6, A, D), torch.randn(6, A, D),
                                           torch.randn(6, A), torch.randn(6, A))]
    optimiser = torch.optim.SGD(leaves, lr=2.0)
    losses = []
    for _ in range(8):
        optimiser.zero_grad()
        loss = relation_ot_loss(*leaves, iters=20)
        loss.backward()
        for leaf in leaves:
            assert torch.isfinite(leaf.grad).all() and leaf.grad.abs().sum() > 0
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


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


def _ddp_worker(worker: int, init_file: str, inputs: list[torch.Tensor], out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=worker, world_size=2)
    try:
        half = len(inputs[0]) // 2
        local = [t[worker * half:(worker + 1) * half].clone().requires_grad_() for t in inputs]
        result = {}
        for name, loss in (("region", region_contrastive_loss(*local[:2])),
                           ("relation", relation_ot_loss(*local, iters=20))):
            grads = torch.autograd.grad(loss, local, allow_unused=True)
            result[name] = (loss.detach(), [g for g in grads if g is not None])
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
    for name, loss in (("region", region_contrastive_loss(*leaves[:2])),
                       ("relation", relation_ot_loss(*leaves, iters=20))):
        used = leaves[:2] if name == "region" else leaves
        grads = torch.autograd.grad(loss, used)
        torch.testing.assert_close((ranks[0][name][0] + ranks[1][name][0]) / 2, loss.detach())
        for k, grad in enumerate(grads):
            gathered = torch.cat([ranks[r][name][1][k] for r in range(2)])
            torch.testing.assert_close(gathered, 2 * grad, msg=f"{name} gradient {k}")
