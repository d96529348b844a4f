import pytest
import torch

from aukit.models.cross_attention import CDCA, DDCA

B, A, N, T, E = 2, 4, 9, 5, 16


def ddca_inputs():
    mask = torch.ones(A, T, dtype=torch.bool)
    mask[:, 3:] = False  # the last two tokens of every AU are padding
    return dict(v=torch.randn(B, A, E), patches=torch.randn(B, N, E),
                text_tokens=torch.randn(A, T, E), text_mask=mask, text_vec=torch.randn(A, E))


@pytest.fixture
def ddca():
    return DDCA(E, num_heads=4).eval()


def test_ddca_shapes_and_activation_maps_sum_to_one(ddca):
    v_out, t_out, act = ddca(**ddca_inputs())
    assert v_out.shape == t_out.shape == (B, A, E) and act.shape == (B, A, N)
    assert (act >= 0).all()
    torch.testing.assert_close(act.sum(-1), torch.ones(B, A))


@pytest.mark.parametrize("changed", ["text_tokens", "text_vec"])
def test_ddca_is_block_diagonal(ddca, changed):
    inputs = ddca_inputs()
    before = ddca(**inputs)
    j = 1
    inputs[changed] = inputs[changed].clone()
    inputs[changed][j, :3] += torch.randn_like(inputs[changed][j, :3])
    after = ddca(**inputs)
    others = [k for k in range(A) if k != j]
    changed_any = False
    for out_before, out_after in zip(before, after, strict=True):
        assert torch.equal(out_before[:, others], out_after[:, others])
        changed_any |= not torch.allclose(out_before[:, j], out_after[:, j])
    assert changed_any


def test_ddca_ignores_padded_tokens(ddca):
    inputs = ddca_inputs()
    before = ddca(**inputs)
    inputs["text_tokens"] = inputs["text_tokens"].clone()
    inputs["text_tokens"][:, 3:] = torch.randn(A, T - 3, E) * 100
    for out_before, out_after in zip(before, ddca(**inputs), strict=True):
        torch.testing.assert_close(out_before, out_after, rtol=0, atol=0)


def test_activation_map_peaks_at_the_matching_patch():
    ddca = DDCA(E, num_heads=1).eval()
    attn = ddca.text_to_vision.attn
    with torch.no_grad():  # identity query/key projections: the score is a plain dot product
        attn.in_proj_weight[: 2 * E] = torch.cat([torch.eye(E), torch.eye(E)])
        attn.in_proj_bias.zero_()
        ddca.text_to_vision.norm_q.weight.fill_(1)
        ddca.text_to_vision.norm_ctx.weight.fill_(1)
    inputs = ddca_inputs()
    inputs["v"] = torch.zeros(B, A, E)
    inputs["patches"] = torch.randn(B, N, E) * 0.1
    where = torch.tensor([[2, 5, 7, 0], [8, 1, 3, 6]])  # [B, A]: AU k's patch in image b
    for b in range(B):
        for k in range(A):
            inputs["patches"][b, where[b, k]] = inputs["text_vec"][k] * 3
    _, _, act = ddca(**inputs)
    assert torch.equal(act.argmax(-1), where)


def test_ddca_gradients_reach_all_inputs_and_parameters():
    ddca = DDCA(E)
    inputs = {k: x.requires_grad_(x.is_floating_point()) for k, x in ddca_inputs().items()}
    v_out, t_out, act = ddca(**inputs)
    (v_out.square().mean() + t_out.square().mean() + act.square().mean()).backward()
    for name in ("v", "patches", "text_tokens", "text_vec"):
        assert inputs[name].grad.abs().sum() > 0, name
    assert all(p.grad is not None for p in ddca.parameters())


@pytest.mark.parametrize("key, value, message", [
    ("patches", torch.randn(B, N, E + 1), "project the tokens"),
    ("text_tokens", torch.randn(A + 1, T, E), "text_tokens"),
    ("text_mask", torch.ones(A, T), "bool"),
    ("text_mask", torch.zeros(A, T, dtype=torch.bool), "no unmasked text token"),
    ("text_vec", torch.randn(A, E + 1), "text_vec"),
])
def test_ddca_bad_inputs_are_explained(ddca, key, value, message):
    inputs = ddca_inputs()
    inputs[key] = value
    with pytest.raises(ValueError, match=message):
        ddca(**inputs)


def test_cdca_mixes_across_aus_and_backpropagates():
    cdca = CDCA(E).eval()
    v, t = torch.randn(B, A, E), torch.randn(B, A, E)
    v_out, t_out = cdca(v, t)
    assert v_out.shape == t_out.shape == (B, A, E)
    t2 = t.clone()
    t2[:, 1] += torch.randn(B, E)
    v2 = v.clone()
    v2[:, 1] += torch.randn(B, E)
    # full attention: AU 0's visual output depends on AU 1's text, its text output on AU 1's
    # visual feature
    assert not torch.allclose(v_out[:, 0], cdca(v, t2)[0][:, 0])
    assert not torch.allclose(t_out[:, 0], cdca(v2, t)[1][:, 0])
    v.requires_grad_(), t.requires_grad_()
    sum(o.square().mean() for o in cdca.train()(v, t)).backward()
    assert v.grad.abs().sum() > 0 and t.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in cdca.parameters())


def test_cdca_shape_mismatch_is_explained():
    with pytest.raises(ValueError, match="same shape"):
        CDCA(E)(torch.randn(B, A, E), torch.randn(B, A + 1, E))
