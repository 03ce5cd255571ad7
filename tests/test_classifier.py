"""The small FD classifier: accuracy on real 8x8 digits, its features, the workdir cache."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.datasets import load_digits

from diffjax.train.classifier import (
    classifier_accuracy,
    classifier_features,
    classifier_logits,
    load_classifier,
    train_classifier,
)

STEPS = 200


@pytest.fixture(scope="module")
def digits():
    """sklearn's bundled 8x8 digits (1797 real images, values 0..16) in [-1, 1], split 1400/397."""
    data = load_digits()
    x = (data.images / 8.0 - 1.0).astype(np.float32)[..., None]  # [N, 8, 8, 1]
    perm = np.random.default_rng(0).permutation(len(x))
    x, y = x[perm], data.target[perm].astype(np.int32)
    return (x[:1400], y[:1400]), (x[1400:], y[1400:])


@pytest.fixture(scope="module")
def trained(digits, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("classifier"))
    (x, y), _ = digits
    params = train_classifier(
        jax.random.PRNGKey(0), x, y, steps=STEPS, batch_size=64, workdir=workdir
    )
    return params, workdir


def test_accuracy_on_held_out_digits(digits, trained):
    # Chance is 0.1; a small CNN reaches ~0.97 here. With 397 test images the binomial standard
    # deviation at 0.95 is 0.011, so 0.9 is > 4 of them below what training should reach.
    params, _ = trained
    _, (x_test, y_test) = digits
    assert classifier_accuracy(params, x_test, y_test) > 0.9


def test_features_are_the_penultimate_layer(digits, trained):
    # logits = features @ W + b with the last Dense layer's params, so the features are exactly
    # its input; they are post-ReLU (non-negative) and of width `hidden` = 128.
    params, _ = trained
    _, (x_test, _) = digits
    feats = classifier_features(params, x_test, batch_size=150)  # three batches
    assert feats.shape == (len(x_test), 128) and bool(jnp.all(feats >= 0))
    dense = params["params"]["logits"]
    np.testing.assert_allclose(
        classifier_logits(params, x_test), feats @ dense["kernel"] + dense["bias"][None], atol=1e-4
    )


def _frechet(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance of Gaussians fitted to feature sets [N, F] (Heusel et al. 2017, Sec. 3),
    in float64 numpy (independent of diffjax.metrics)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # tr sqrt(cov_a cov_b) = tr sqrt(S cov_b S), S = cov_a^(1/2): symmetric PSD, so eigh is safe
    # even when dead ReLU features make the covariances singular.
    lam, q = np.linalg.eigh(cov_a)
    s = (q * np.sqrt(np.clip(lam, 0.0, None))) @ q.T
    tr_sqrt = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh(s @ cov_b @ s), 0.0, None)))
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a + cov_b) - 2.0 * tr_sqrt)


def test_frechet_distance_of_features_separates_distributions(digits, trained):
    # Two samples of the same distribution (train vs test digits) must be much closer in feature
    # space than digits 0-4 vs digits 5-9 (different classes, so different feature clusters).
    params, _ = trained
    (x, _), (x_test, y_test) = digits
    f_train = np.asarray(classifier_features(params, x[:400]), np.float64)
    f_test = np.asarray(classifier_features(params, x_test), np.float64)
    same = _frechet(f_train, f_test)
    split = _frechet(f_test[y_test < 5], f_test[y_test >= 5])
    print(f"FD same distribution {same:.3f}, FD digits 0-4 vs 5-9 {split:.3f}")
    assert same < split / 3, (same, split)


def test_cache_trains_once(digits, trained):
    params, workdir = trained
    (x, y), _ = digits
    # A different key would give different params if it retrained: equality means it loaded.
    again = train_classifier(
        jax.random.PRNGKey(1), x, y, steps=STEPS, batch_size=64, workdir=workdir
    )
    jax.tree.map(np.testing.assert_array_equal, again, params)
    jax.tree.map(np.testing.assert_array_equal, load_classifier(workdir), params)
    # Different data (or settings) must not reuse the cache: a fingerprint mismatch is a miss.
    assert load_classifier(workdir, fingerprint="other-data") is None


@pytest.mark.slow
def test_mnist_shaped_uint8_input():
    # 28x28x1 uint8 (MNIST layout), two separable synthetic classes: bright top vs bright bottom.
    rng = np.random.default_rng(0)
    x = rng.integers(0, 60, size=(64, 28, 28), dtype=np.uint8)
    y = np.arange(64) % 2
    x[y == 0, :14] += 180
    x[y == 1, 14:] += 180
    params = train_classifier(jax.random.PRNGKey(0), x, y, steps=30, batch_size=16, hidden=32)
    assert classifier_features(params, x).shape == (64, 32)
    assert classifier_accuracy(params, x, y) == 1.0


@pytest.mark.parametrize(
    "images,labels,kwargs,match",
    [
        (np.zeros((4, 8, 8)), np.zeros(3, np.int32), {}, "labels must be integers"),
        (np.zeros((4, 8, 8)), np.array([0, 1, 2, 5]), dict(num_classes=3), r"\[0, 2\]"),
        (np.zeros((4, 8)), np.zeros(4, np.int32), {}, "images must be"),
        (np.zeros((4, 8, 8)), np.zeros(4, np.int32), dict(steps=0), "steps"),
    ],
    ids=["length", "range", "ndim", "steps"],
)
def test_bad_input(images, labels, kwargs, match):
    with pytest.raises(ValueError, match=match):
        train_classifier(jax.random.PRNGKey(0), images, labels, **kwargs)
