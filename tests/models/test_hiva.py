import itertools

import pytest
import torch

from aukit.au_maps import canonical_landmarks
from aukit.models.hiva import HiVA

AUS = (1, 12, 26)
B, A, S, E, DT, T = 2, len(AUS), 32, 16, 12, 6
SWITCHES = ("use_graph", "use_ddca", "use_cdca", "use_text")
PARTS = {"use_graph": ("graph",), "use_ddca": ("ddca", "patch_proj"), "use_cdca": ("cdca",),
         "use_text": ("text_proj",)}


def build(**switches) -> HiVA:
    return HiVA(AUS, {"image_size": S, "embed_dim": E, "num_heads": 2}, text_dim=DT, **switches)


def inputs() -> dict:
    landmarks = torch.from_numpy(canonical_landmarks(S))
    mask = torch.ones(A, T, dtype=torch.bool)
    mask[:, -2:] = False
    return dict(images=torch.randn(B, 3, S, S),
                landmarks=landmarks + torch.randn(B, 68, 2) * 0.5,
                text_tokens=torch.randn(A, T, DT), text_mask=mask, text_vec=torch.randn(A, DT))


@pytest.mark.parametrize("flags", list(itertools.product([True, False], repeat=4)),
                         ids=lambda f: "".join("GDCT"[i] if on else "-" for i, on in enumerate(f)))
def test_forward_backward_for_every_switch_combination(flags):
    switches = dict(zip(SWITCHES, flags, strict=True))
    model = build(**switches)
    out = model(**inputs())
    h, w = model.encoder.backbone.grid
    for key in ("logits", "mlp_logits", "cos_logits"):
        assert out[key].shape == (B, A)
    assert out["au_features"].shape == (B, A, E)
    assert out["text_anchors"].shape == (A, E)
    assert out["act_maps"].shape == (B, A, h, w)
    torch.testing.assert_close(out["act_maps"].sum((-1, -2)), torch.ones(B, A))
    assert ("adjacency" in out) == switches["use_graph"]
    assert all(torch.isfinite(v).all() for v in out.values())
    torch.testing.assert_close(out["logits"], (out["mlp_logits"] + out["cos_logits"]) / 2)

    assert out["region_logits"].shape == (B, A)
    (out["logits"].sum() + out["region_logits"].sum()).backward()  # as the training loss does
    names = {n for n, p in model.named_parameters()}
    for switch, parts in PARTS.items():
        for part in parts:
            present = any(n.startswith(part + ".") for n in names)
            assert present == switches[switch], f"{part} present={present} with {switch}"
    assert any(n.startswith("au_embedding") for n in names) != switches["use_text"]
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient reaches {missing}"
    for part in {n.split(".")[0] for n in names}:
        grads = [p.grad.abs().sum() for n, p in model.named_parameters() if n.split(".")[0] == part]
        assert sum(grads) > 0, f"zero gradient in {part}"


def test_no_text_ablation_ignores_text_and_needs_none():
    model = build(use_text=False).eval()
    x = inputs()
    with_text = model(**x)["logits"]
    without = model(x["images"], x["landmarks"], None, None, None)["logits"]
    torch.testing.assert_close(with_text, without)


def test_text_is_required_when_on_and_checked():
    model = build()
    x = inputs()
    with pytest.raises(ValueError, match="use_text=False"):
        model(x["images"], x["landmarks"], None, None, None)
    x["text_vec"] = torch.randn(A + 1, DT)
    with pytest.raises(ValueError, match=f"{A} AUs"):
        model(**x)


def test_missing_landmarks_fall_back_to_the_canonical_face():
    model = build().eval()
    x = inputs()
    x["landmarks"] = torch.from_numpy(canonical_landmarks(S)).expand(B, -1, -1)
    expected = model(**x)["logits"]
    x["landmarks"] = None
    torch.testing.assert_close(model(**x)["logits"], expected)


def test_cooccurrence_prior_reaches_the_graph():
    prior = torch.eye(A)
    model = build(cooccurrence_prior=prior)
    torch.testing.assert_close(model.graph.prior, prior)


def test_a_reserved_prior_starts_as_the_identity_and_none_leaves_the_graph_without():
    assert torch.equal(build(cooccurrence_prior=True).graph.prior, torch.eye(A))
    assert build(cooccurrence_prior=False).graph.prior is None


def test_parameter_groups_cover_everything_once_with_layer_decay():
    from aukit.optim import parameter_groups

    model = build()
    lr, decay = 1e-3, 0.05
    groups = parameter_groups(model, lr, decay, layer_decay=0.5, layered="encoder.backbone.model")
    seen = [id(p) for g in groups for p in g["params"]]
    assert sorted(seen) == sorted(id(p) for p in model.parameters())
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    wd_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    queries = id(named["encoder.region.au_queries"])
    assert lr_of[queries] == lr and wd_of[queries] == 0
    assert lr_of[id(named["cosine_log_scale"])] == lr and wd_of[id(named["cosine_bias"])] == 0
    stem = lr_of[id(named["encoder.backbone.model.patch_embed.proj.weight"])]
    deep = lr_of[id(named["encoder.backbone.model.layers.2.blocks.1.mlp.fc1.weight"])]
    assert stem < deep < lr
    assert deep == pytest.approx(lr * 0.5)
    torch.optim.AdamW(groups, lr=lr)  # the groups are ready for a torch optimizer


def test_the_landmark_prior_ties_each_activation_map_to_its_au_region():
    """Untrained, DDCA's maps start from the landmark maps with the prior (distinct per AU, mass
    inside each AU's region) and from a near-uniform, AU-agnostic map without it."""
    from aukit.map_quality import au_regions, map_quality

    torch.manual_seed(0)
    size = 64
    landmarks = torch.from_numpy(canonical_landmarks(size)).expand(B, -1, -1)
    text = inputs()
    scores = {}
    for prior in (True, False):
        model = HiVA(AUS, {"image_size": size, "embed_dim": E, "num_heads": 2}, text_dim=DT,
                     map_prior=prior).eval()
        with torch.no_grad():
            maps = model(torch.randn(B, 3, size, size), landmarks, text["text_tokens"],
                         text["text_mask"], text["text_vec"])["act_maps"]
        regions = au_regions(landmarks, (size, size), maps.shape[-2:], AUS)
        scores[prior] = map_quality(maps, regions)
    assert scores[True]["mass_ratio_mean"] > 2 > scores[False]["mass_ratio_mean"]
    assert scores[True]["map_distinctness"] > 5 * scores[False]["map_distinctness"]
