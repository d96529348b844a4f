import math

import pytest
import torch
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from aukit.au import au_keys
from aukit.metrics import AUMetrics, format_f1_table

AUS = au_keys("disfa")


def random_batches(n_batches: int = 4, batch: int = 37) -> list[tuple[torch.Tensor, ...]]:
    """Random probs (with ties), labels and masks; AU9 (index 4) has no positive labels."""
    batches = []
    for _ in range(n_batches):
        probs = torch.randint(0, 21, (batch, len(AUS))) / 20  # coarse: ties and exact 0.5
        labels = (torch.rand(batch, len(AUS)) < 0.3).long()
        labels[:, 4] = 0
        mask = torch.rand(batch, len(AUS)) < 0.8
        labels[~mask] = 9  # BP4D's "unknown" under the mask
        batches.append((probs, labels, mask))
    return batches


def sklearn_metrics(batches, k: int) -> dict[str, float]:
    probs, labels, mask = (torch.cat(parts) for parts in zip(*batches, strict=True))
    y_true = labels[mask[:, k], k].numpy()
    scores = probs[mask[:, k], k].numpy()
    y_pred = (scores >= 0.5).astype(int)
    out = {
        "f1": f1_score(y_true, y_pred, zero_division=0),
        "precision": precision_score(y_true, y_pred, zero_division=0),
        "recall": recall_score(y_true, y_pred, zero_division=0),
        "accuracy": accuracy_score(y_true, y_pred),
    }
    out["auc"] = roc_auc_score(y_true, scores) if 0 < y_true.sum() < len(y_true) else math.nan
    return out


def accumulate(metric: AUMetrics, batches) -> AUMetrics:
    for batch in batches:
        metric.update(*batch)
    return metric


def test_matches_sklearn_per_au_over_several_updates():
    batches = random_batches()
    result = accumulate(AUMetrics(AUS), batches).compute()
    aucs = []
    for k, au in enumerate(AUS):
        expected = sklearn_metrics(batches, k)
        for name, value in expected.items():
            got = float(result[f"{name}_{au}"])
            if math.isnan(value):
                assert math.isnan(got), (name, au)
            else:
                assert got == pytest.approx(value, abs=1e-6), (name, au)
        aucs.append(expected["auc"])
    assert math.isnan(aucs[4])  # AU9 has one class only
    f1_mean = sum(float(result[f"f1_{au}"]) for au in AUS) / len(AUS)
    assert float(result["f1_mean"]) == pytest.approx(f1_mean, abs=1e-9)
    known = [a for a in aucs if not math.isnan(a)]
    assert float(result["auc_mean"]) == pytest.approx(sum(known) / len(known), abs=1e-6)


def test_zero_division_follows_sklearn():
    # AU1: nothing present, nothing predicted -> sklearn gives F1 = P = R = 0, accuracy 1
    probs = torch.tensor([[0.1, 0.9], [0.2, 0.8]])
    labels = torch.tensor([[0, 1], [0, 1]])
    result = AUMetrics(["AU1", "AU2"]).forward(probs, labels, torch.ones(2, 2, dtype=torch.bool))
    assert float(result["f1_AU1"]) == 0.0 and float(result["accuracy_AU1"]) == 1.0
    assert float(result["f1_AU2"]) == 1.0 and float(result["f1_mean"]) == 0.5
    assert math.isnan(float(result["auc_AU1"])) and math.isnan(float(result["auc_mean"]))


def test_an_au_without_known_labels_is_na_and_left_out_of_the_means():
    batches = random_batches()
    for _, _, mask in batches:
        mask[:, 2] = False  # AU4: no known label in this split
    result = accumulate(AUMetrics(AUS), batches).compute()
    for name in ("f1", "precision", "recall", "accuracy", "auc"):
        assert math.isnan(float(result[f"{name}_AU4"])), name
    labelled = [k for k in range(len(AUS)) if k != 2]
    f1 = [sklearn_metrics(batches, k)["f1"] for k in labelled]
    for k, value in zip(labelled, f1, strict=True):
        assert float(result[f"f1_{AUS[k]}"]) == pytest.approx(value, abs=1e-6)
    assert float(result["f1_mean"]) == pytest.approx(sum(f1) / len(f1), abs=1e-9)
    table = format_f1_table(result, AUS)
    assert "| AU4 | n/a | n/a | n/a | n/a |" in table
    assert (f"n/a: no known labels for that AU in this split; the means are over the "
            f"{len(AUS) - 1} of {len(AUS)} AUs that have some.") in table


def test_ddp_style_merge_equals_single_object():
    batches = random_batches(n_batches=6)
    single = accumulate(AUMetrics(AUS), batches).compute()
    rank0 = accumulate(AUMetrics(AUS), batches[0::2])
    rank1 = accumulate(AUMetrics(AUS), batches[1::2])
    rank0.merge_state(rank1)
    merged = rank0.compute()
    assert merged.keys() == single.keys()
    for key, value in single.items():
        torch.testing.assert_close(merged[key], value, equal_nan=True, atol=1e-12, rtol=0)


def test_bad_input_is_explained():
    metric = AUMetrics(["AU1", "AU2"])
    ones = torch.ones(3, 2)
    with pytest.raises(ValueError, match="A=2"):
        metric.update(torch.ones(3, 3), torch.ones(3, 3), torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="sigmoid"):
        metric.update(ones * 3, ones, ones.bool())
    with pytest.raises(ValueError, match="mask unknown"):
        metric.update(ones / 2, ones * 9, ones.bool())
    with pytest.raises(ValueError, match="repeats"):
        AUMetrics(["AU1", "AU1"])


def test_format_f1_table():
    result = accumulate(AUMetrics(AUS), random_batches(n_batches=1)).compute()
    table = format_f1_table({f"val/{k}": v for k, v in result.items()}, AUS, prefix="val/")
    lines = table.splitlines()
    assert lines[0] == "| AU | F1 | Precision | Recall | AUC |"
    assert len(lines) == 2 + len(AUS) + 1 + 2  # + a blank line and the AUC footnote
    assert lines[2].startswith(f"| AU1 | {100 * float(result['f1_AU1']):.1f} |")
    assert "n/a" in lines[2 + 4]  # AU9's AUC
    assert lines[-1] == f"AUC n/a: the AU's known labels hold one class only; the AUC mean is " \
                        f"over {len(AUS) - 1} AUs."
    with pytest.raises(KeyError, match="prefix"):
        format_f1_table(result, AUS, prefix="val/")
