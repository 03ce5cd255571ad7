"""Guidance and inpainting against closed forms of Gaussian and Gaussian-mixture data."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax
from diffjax import guidance
from diffjax.inpaint import inpaint
from tests.helpers import Gaussian

# A 1-D two-class mixture of isotropic Gaussians in D dims: class k ~ N(mu_k, s_k^2 I).
MU = jnp.array([[-2.0, 1.0], [2.0, 0.5]])
S = jnp.array([0.5, 0.8])
W = jnp.array([0.3, 0.7])


def _log_class_densities(process, x, t):
    """log w_k + log N(x; alpha mu_k, (alpha^2 s_k^2 + sigma^2) I), [B, K]."""
    a, s = process.alpha(t)[:, None], process.sigma(t)[:, None]
    var = a**2 * S[None] ** 2 + s**2  # [B, K]
    sq = jnp.sum((x[:, None, :] - a[..., None] * MU[None]) ** 2, -1)
    return jnp.log(W)[None] - 0.5 * sq / var - 0.5 * x.shape[-1] * jnp.log(2 * jnp.pi * var)


def _score_model(process, label=None):
    def log_p(x, t):
        ld = _log_class_densities(process, x, t)
        ld = ld if label is None else ld[:, label]
        return jnp.sum(jax.nn.logsumexp(ld, -1) if label is None else ld)

    return lambda x, t, *cond: jax.grad(log_p)(x, t)


def test_classifier_guidance_with_bayes_classifier_gives_class_conditional_score(key):
    """grad log p_t(x) + grad log p_t(y | x) = grad log p_t(x | y) exactly (Bayes' rule)."""
    p = diffjax.vp()
    x = jax.random.normal(key, (5, 2)) * 2
    t = jnp.linspace(0.1, 0.9, 5)

    def logp_y(x_t, t_, y):
        ld = _log_class_densities(p, x_t, t_)
        return jnp.take_along_axis(ld, y[:, None], 1)[:, 0] - jax.nn.logsumexp(ld, -1)

    y = jnp.ones((5,), jnp.int32)
    guided = guidance.classifier(_score_model(p), logp_y, y, 1.0)
    np.testing.assert_allclose(guided(x, t), _score_model(p, label=1)(x, t), rtol=1e-4, atol=1e-5)
    # the same through an eps-model, converted with the process
    eps_model = lambda x_t, t_: diffjax.convert(
        _score_model(p)(x_t, t_), "score", "eps", x_t, t_, p
    )
    g_eps = guidance.classifier(eps_model, logp_y, y, 1.0, process=p, prediction="eps")
    ref = diffjax.convert(_score_model(p, label=1)(x, t), "score", "eps", x, t, p)
    np.testing.assert_allclose(g_eps(x, t), ref, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="process"):
        guidance.classifier(eps_model, logp_y, y, 1.0, prediction="eps")


def test_cfg_is_the_guidance_combination(key):
    def model(x, t, c):
        return x * c[:, None] + t[:, None]

    x, t = jax.random.normal(key, (4, 3)), jnp.full((4,), 0.5)
    cond, neg = jnp.full((4,), 2.0), jnp.full((4,), -1.0)
    for scale in (0.0, 1.0, 7.5):
        out = guidance.cfg(model, cond, neg, scale)(x, t)
        ref = model(x, t, neg) + scale * (model(x, t, cond) - model(x, t, neg))
        np.testing.assert_allclose(out, ref, rtol=1e-6)
    # at scale 1 it is the conditional model; the negative prompt drops out
    np.testing.assert_allclose(
        guidance.cfg(model, cond, neg, 1.0)(x, t), model(x, t, cond), rtol=1e-6
    )


def _gaussian_eps_model(process, cov):
    """Exact eps-prediction for data N(0, cov): eps = sigma (alpha^2 cov + sigma^2 I)^-1 x_t
    (the oracle of tests/helpers.py)."""
    return Gaussian(np.zeros(cov.shape[0]), np.asarray(cov)).model(process, "eps")


def test_inpainting_keeps_known_and_samples_the_conditional(key):
    """Independent dims: the generated coordinate must follow its own marginal N(0, 4);
    correlated dims with RePaint resampling: its mean approaches rho x_known."""
    p = diffjax.discrete(diffjax.schedules.linear_betas(200, 1e-4, 0.1))
    n = 4000
    known = jnp.tile(jnp.array([[1.5, 0.0]]), (n, 1))
    mask = jnp.array([1.0, 0.0])
    out = inpaint(
        key, _gaussian_eps_model(p, jnp.diag(jnp.array([1.0, 4.0]))), p, known, mask, steps=200
    )
    np.testing.assert_array_equal(out[:, 0], known[:, 0])
    # 5-sigma Monte Carlo bounds: mean sd 2/sqrt(n), variance sd 4 sqrt(2/n)
    assert abs(float(out[:, 1].mean())) < 5 * 2 / np.sqrt(n)
    assert abs(float(out[:, 1].var()) - 4.0) < 5 * 4 * np.sqrt(2 / n) + 0.1

    rho = 0.9
    cov = jnp.array([[1.0, rho], [rho, 1.0]])
    errs = []
    for jumps in (1, 10):
        out = inpaint(
            jax.random.fold_in(key, jumps),
            _gaussian_eps_model(p, cov),
            p,
            known[:1000],
            mask,
            steps=50,
            jumps=jumps,
        )
        errs.append(abs(float(out[:, 1].mean()) - rho * 1.5))
    # exact conditional mean 1.35; replacement alone is biased, resampling must reduce the bias
    assert errs[1] < errs[0] and errs[1] < 0.15, errs


def test_inpaint_bad_options(key):
    p = diffjax.vp()
    m = lambda x, t: x
    # every fixed-step solver inpaints now ('euler' included); the adaptive one is refused
    with pytest.raises(ValueError, match="'dopri5'"):
        inpaint(key, m, p, jnp.zeros((2, 2)), jnp.ones((2, 2)), solver="dopri5")
    with pytest.raises(ValueError, match="jumps"):
        inpaint(key, m, p, jnp.zeros((2, 2)), jnp.ones((2, 2)), jumps=0)


def test_cfg_with_a_negative_prompt_gives_the_tilted_target_score(key):
    """Per-class exact scores of the mixture's components (class k: N(alpha mu_k, v_k I),
    v_k = alpha^2 s_k^2 + sigma^2), prompt c = 1, negative prompt n = 0 in place of the
    unconditional model: cfg's score is the score of the tilted target
    p_c(x)^w p_n(x)^(1 - w), which for isotropic Gaussians is again Gaussian, with precision
    P = w / v_c + (1 - w) / v_n and mean (w mu_c / v_c + (1 - w) mu_n / v_n) / P, so its score
    is -P (x - mean): a closed form independent of cfg's linear combination. w = 3 pushes away
    from the negative class (the mean moves past mu_c, away from mu_n); also for eps-models."""
    p = diffjax.vp()
    x = jax.random.normal(key, (6, 2)) * 2
    t = jnp.linspace(0.05, 0.95, 6)

    def class_score(x_t, t_, y):  # grad_x log N(x; alpha mu_y, v_y I), y [B] in {0, 1}
        ld = lambda x: jnp.sum(jnp.take_along_axis(_log_class_densities(p, x, t_), y[:, None], 1))
        return jax.grad(ld)(x_t)

    def eps_model(x_t, t_, y):
        return diffjax.convert(class_score(x_t, t_, y), "score", "eps", x_t, t_, p)

    pos, neg = jnp.ones((6,), jnp.int32), jnp.zeros((6,), jnp.int32)
    guided = jax.jit(
        lambda w: [guidance.cfg(m, pos, neg, w)(x, t) for m in (class_score, eps_model)]
    )
    a, s = p.alpha(t)[:, None], p.sigma(t)[:, None]
    v = a**2 * S[None] ** 2 + s**2  # [B, K]
    for w in (0.0, 1.0, 3.0, 7.5):
        prec = w / v[:, 1:] + (1 - w) / v[:, :1]  # [B, 1]
        mean = (w * a * MU[1][None] / v[:, 1:] + (1 - w) * a * MU[0][None] / v[:, :1]) / prec
        want = -prec * (x - mean)
        got, got_eps = guided(w)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(got_eps, -s * want, rtol=1e-4, atol=1e-4)
