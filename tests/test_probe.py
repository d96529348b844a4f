"""The frozen-feature linear probe: each AU's logistic regression reads only that AU's row, its
scores agree with sklearn's, and an encoder gone non-finite is refused."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.preprocessing import StandardScaler

from aukit.probe import extract_au_features, probe_f1


def _split(n: int, seed: int) -> dict[str, np.ndarray]:
    """Features [n, 2, 4]: row 0 holds AU "a"'s label plus noise, row 1 is noise only."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, (n, 2))
    features = rng.normal(size=(n, 2, 4)).astype(np.float32)
    features[:, 0, 0] += 3 * labels[:, 0]
    return {"features": features, "labels": labels, "mask": np.ones((n, 2), dtype=bool)}


def test_each_au_reads_its_own_row_and_the_scores_agree_with_sklearn():
    train, test = _split(400, 0), _split(200, 1)
    scores = probe_f1(train, test, feature_index=[0, 1], au_names=["a", "b"])
    assert scores["f1_a"] > 0.9  # row 0 holds AU a
    # the reference: sklearn fitted on row 0 for AU a, as the probe does
    scaler = StandardScaler().fit(train["features"][:, 0])
    clf = LogisticRegression(max_iter=300, class_weight="balanced").fit(
        scaler.transform(train["features"][:, 0]), train["labels"][:, 0])
    predicted = clf.predict(scaler.transform(test["features"][:, 0]))
    assert scores["f1_a"] == pytest.approx(f1_score(test["labels"][:, 0], predicted), abs=1e-6)
    swapped = probe_f1(train, test, feature_index=[1, 0], au_names=["a", "b"])
    assert swapped["f1_a"] < 0.7  # AU a read from the noise row


def test_non_finite_features_are_refused_with_the_fix():
    batch = {"image": torch.zeros(2, 3, 8, 8, dtype=torch.uint8),
             "landmarks": torch.zeros(2, 68, 2), "labels": torch.zeros(2, 1),
             "label_mask": torch.ones(2, 1, dtype=torch.bool)}

    def encode(images, landmarks):
        return torch.full((len(images), 1, 4), float("nan"))

    with pytest.raises(FloatingPointError, match="probe an earlier checkpoint"):
        extract_au_features(encode, [batch])
