import pytest
import torch

from aukit.models.graph import AUDynamicGraph, row_normalise

B, A, E = 3, 6, 16


def test_shapes_rows_sum_to_one_and_gradients():
    graph = AUDynamicGraph(E, A, top_k=None)
    x = torch.randn(B, A, E, requires_grad=True)
    y, adj = graph(x)
    assert y.shape == (B, A, E) and adj.shape == (B, A, A)
    torch.testing.assert_close(adj.sum(-1), torch.ones(B, A))
    assert (adj > 0).all()  # dense without top-k
    y.square().mean().backward()
    assert x.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in graph.parameters())


def test_adjacency_is_per_sample():
    graph = AUDynamicGraph(E, A)
    _, adj = graph(torch.randn(B, A, E))
    assert not torch.allclose(adj[0], adj[1])


@pytest.mark.parametrize("top_k", [1, 2, 4])
def test_top_k_restricts_neighbours_and_keeps_self(top_k):
    graph = AUDynamicGraph(E, A, top_k=top_k)
    adj = graph.adjacency(torch.randn(B, A, E))
    assert ((adj > 0).sum(-1) <= top_k + 1).all()
    assert (adj.diagonal(dim1=1, dim2=2) > 0).all()
    torch.testing.assert_close(adj.sum(-1), torch.ones(B, A))


def test_prior_is_row_normalised_and_mixed():
    prior = torch.rand(A, A) * 5
    prior[2] = 0  # an AU never active in training keeps only itself
    for weight in (0.0, 0.3, 1.0):
        graph = AUDynamicGraph(E, A, prior=prior, prior_weight=weight)
        x = torch.randn(B, A, E)
        dynamic = AUDynamicGraph(E, A)
        dynamic.load_state_dict(graph.state_dict(), strict=False)
        expected = (1 - weight) * dynamic.adjacency(x) + weight * row_normalise(prior)
        torch.testing.assert_close(graph.adjacency(x), expected)
    assert graph.adjacency(x)[:, 2, 2].eq(1).all()


def test_prior_is_saved_in_the_state_dict():
    graph = AUDynamicGraph(E, A, prior=torch.rand(A, A))
    assert "prior" in graph.state_dict()


@pytest.mark.parametrize("kwargs, message", [
    (dict(prior=torch.rand(A + 1, A + 1)), "co-occurrence prior"),
    (dict(prior=-torch.rand(A, A)), "non-negative"),
    (dict(top_k=0), "top_k"),
    (dict(temperature=0.0), "temperature"),
    (dict(prior_weight=1.5), "prior_weight"),
])
def test_bad_arguments_are_explained(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AUDynamicGraph(E, A, **kwargs)


def test_wrong_number_of_aus_is_explained():
    with pytest.raises(ValueError, match=f"\\[B, {A}, E\\]"):
        AUDynamicGraph(E, A)(torch.randn(B, A + 1, E))
