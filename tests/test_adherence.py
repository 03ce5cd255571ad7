"""The adherence classifier on synthetic items: the canvas split inverts `captions.compose`,
the counts follow their definitions, and a classifier of single items reads compositions."""

import jax
import numpy as np
import pytest

from diffjax.data.captions import compose
from diffjax.train import adherence as adh
from diffjax.train import classifier as clf

K, SIZE = 4, 8


def _items(seed: int, n: int):
    """Class k: a bright 2-pixel-wide vertical bar at column 2k on a dark noisy background,
    uint8 [n, 8, 8, 1] (2x2 pooling keeps the bars apart, so the square layout can read them)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(K, size=n)
    x = rng.normal(40.0, 20.0, size=(n, SIZE, SIZE, 1))
    for k in range(K):
        x[labels == k, :, 2 * k : 2 * k + 2] += 180.0
    return np.clip(x, 0, 255).astype(np.uint8), labels.astype(np.int32)


@pytest.mark.parametrize("layout", ["wide", "square"])
@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_split_canvas_inverts_compose(layout, dtype):
    """Each half of compose(a, b) is exactly item_view(a) / item_view(b)."""
    items, _ = _items(0, 6)
    if dtype == "float32":
        items = items.astype(np.float32) / 127.5 - 1.0
    canvases = np.stack([compose(items[i], items[i + 3], layout) for i in range(3)])
    left, right = adh.split_canvas(canvases, layout)
    np.testing.assert_allclose(left, adh.item_view(items[:3], layout), atol=1e-6)
    np.testing.assert_allclose(right, adh.item_view(items[3:], layout), atol=1e-6)
    assert left.shape == (3, SIZE, SIZE, 1)


def test_adherence_counts_follow_their_definitions():
    labels = np.array([[0, 1], [0, 1], [2, 3], [2, 2], [1, 0], [3, 1]])
    pred = np.array([[0, 1], [1, 0], [2, 0], [2, 2], [1, 0], [2, 2]])
    out = adh.adherence_from_predictions(pred, labels)
    # in order: rows 0, 3, 4; swapped: row 1; left right: 0, 2, 3, 4; right right: 0, 3, 4
    assert out["accuracy"] == pytest.approx(3 / 6)
    assert out["left"] == pytest.approx(4 / 6) and out["right"] == pytest.approx(3 / 6)
    assert out["swapped"] == pytest.approx(1 / 6)
    # distinct captioned pairs read as that pair: rows 0, 1, 4, of which 0 and 4 in order
    assert out["n_order"] == 3 and out["order_accuracy"] == pytest.approx(2 / 3)


def test_adherence_of_independent_predictions_is_at_chance():
    """Predictions independent of the captions: accuracy ~ 1/K^2, per position ~ 1/K,
    order accuracy ~ 1/2, each within 5 binomial standard deviations."""
    rng = np.random.default_rng(0)
    n = 20000
    out = adh.adherence_from_predictions(rng.integers(K, size=(n, 2)), rng.integers(K, size=(n, 2)))
    for name, p, m in (("accuracy", 1 / K**2, n), ("left", 1 / K, n),
                       ("order_accuracy", 0.5, out["n_order"])):  # fmt: skip
        assert abs(out[name] - p) < 5 * np.sqrt(p * (1 - p) / m), (name, out[name])


def test_classifier_of_single_items_reads_compositions(tmp_path, monkeypatch):
    """Trained on single items, it reads both halves: high accuracy in order, near zero when
    every composition is swapped (order_accuracy 0), and the cache trains only once."""
    key = jax.random.PRNGKey(0)
    items, labels = _items(1, 512)
    test_items, test_labels = _items(2, 256)
    kw = dict(steps=150, batch_size=64, widths=(), hidden=16, cache_dir=str(tmp_path))
    for layout in ("wide", "square"):
        params = adh.train_adherence_classifier(key, items, labels, layout=layout, **kw)
        assert adh.held_out_accuracy(params, test_items, test_labels, layout) > 0.97
        real = adh.pair_accuracy_on_real(key, params, test_items, test_labels, 200, layout)
        assert real["accuracy"] > 0.95 and real["order_accuracy"] > 0.95, real
        idx = np.arange(100)
        i, j = idx, (idx + 1) % 100  # distinct labels needed for a meaningful swap
        pairs = np.stack([test_labels[i], test_labels[j]], 1)
        keep = pairs[:, 0] != pairs[:, 1]
        swapped = np.stack(
            [compose(test_items[b], test_items[a], layout) for a, b in zip(i, j, strict=True)]
        )
        out = adh.adherence(params, swapped[keep], pairs[keep], layout)
        assert out["accuracy"] < 0.05 and out["swapped"] > 0.95 and out["order_accuracy"] < 0.05
        freq = adh.item_frequency(params, swapped, K, layout)
        want = np.bincount(pairs.ravel(), minlength=K) / pairs.size
        np.testing.assert_allclose(freq, want, atol=0.03)
    monkeypatch.setattr(clf, "_train", lambda *a, **k: pytest.fail("retrained despite cache"))
    again = adh.train_adherence_classifier(key, items, labels, layout="square", **kw)
    assert adh.held_out_accuracy(again, test_items, test_labels, "square") > 0.97


def test_adherence_bad_inputs():
    with pytest.raises(ValueError, match="wide canvas"):
        adh.split_canvas(np.zeros((2, 8, 8, 1), np.float32), "wide")
    with pytest.raises(ValueError, match="square canvas"):
        adh.split_canvas(np.zeros((2, 8, 16, 1), np.float32), "square")
    with pytest.raises(ValueError, match="layout"):
        adh.item_view(np.zeros((2, 8, 8, 1), np.uint8), "tall")
    with pytest.raises(ValueError, match="labels must be"):
        adh.adherence(None, np.zeros((2, 8, 16, 1), np.float32), np.zeros((3, 2), int))
    with pytest.raises(ValueError, match="\\[N, 2\\]"):
        adh.adherence_from_predictions(np.zeros((3,), int), np.zeros((3,), int))
