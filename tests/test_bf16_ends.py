"""bfloat16 numerics at the ends of time: every process x loss x prediction kind is finite at
t in {0, 1e-6, 1 - 1e-6, 1} with bfloat16 data and a bfloat16 model, except where the exact
value is infinite (a uniformly weighted score target -eps / sigma at sigma(0) = 0), and the one
parametrisation with no finite bound (an eps / score model's VLB on a zero-terminal-SNR chain)
is a clear error before any work. Sampling and a bfloat16 training run stay finite."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax
from diffjax import losses
from tests.helpers import KINDS, PROCESSES

ENDS = np.array([0.0, 1e-6, 1.0 - 1e-6, 1.0])
B = ENDS.size
W = (jax.random.normal(jax.random.PRNGKey(1), (4, 8)) * 0.3).astype(jnp.bfloat16)


def bf16_model(x, t, cond=None):
    """A small network computing in bfloat16: [B, 4] -> [B, 4] (t enters as a feature)."""
    h = jnp.tanh(x.astype(jnp.bfloat16) @ W + t.astype(jnp.bfloat16)[:, None])  # [B, 8]
    return (h[:, :4] * h[:, 4:]).astype(x.dtype)


def learned_variance_model(x, t, cond=None):
    h = bf16_model(x, t)
    return jnp.concatenate([h, jnp.tanh(h)], axis=-1)  # eps, then v in [-1, 1]


X0 = jnp.linspace(-1.0, 1.0, 4 * B).reshape(B, 4).astype(jnp.bfloat16)


def cases(name):
    """(loss name, options) of every loss x prediction kind that applies to process `name`."""
    out = [("simple", {}), ("dsm", {}), ("cfm", {})]
    out += [("weighted", {"prediction": k}) for k in KINDS]
    out += [("continuous_vlb", {"prediction": k}) for k in ("eps", "x0", "v")]
    if name.startswith("discrete"):
        out += [("vlb", {"prediction": k}) for k in KINDS] + [("hybrid", {})]
    return out


def infinite_exactly(name, loss, options):
    """The per-example mask where the loss's exact value is infinite: a uniformly weighted
    score target -eps / sigma(t) at sigma(0) = 0 (every process but VE and the OT flow)."""
    process = PROCESSES[name]
    if loss == "weighted" and options.get("prediction") == "score":
        return np.asarray(process.sigma(jnp.asarray(ENDS, jnp.float32))) == 0.0
    return np.zeros(B, bool)


# One process of each singular kind runs in the default suite (sigma(0) = 0: VP; alpha(1) = 0:
# rectified flow and the zero-terminal-SNR chain); the rest of the sweep is slow-marked.
FAST = ("vp", "rectified_flow", "discrete_zsnr")


def sweep(names=PROCESSES):
    return [n if n in FAST else pytest.param(n, marks=pytest.mark.slow) for n in names]


@pytest.mark.parametrize("name", sweep())
def test_losses_finite_at_the_ends_in_bfloat16(name):
    process, t = PROCESSES[name], jnp.asarray(ENDS, jnp.bfloat16)
    zero_terminal = float(process.alpha(jnp.float32(1.0))) == 0.0
    for loss, options in cases(name):
        fn = losses.LOSSES[loss]
        model = learned_variance_model if loss == "hybrid" else bf16_model
        no_bound = loss in ("vlb", "hybrid") and options.get("prediction", "eps") in (
            "eps",
            "score",
        )
        if zero_terminal and no_bound:
            with pytest.raises(ValueError, match=r"alpha_T = 0.*'v'"):
                fn(model, jax.random.PRNGKey(0), X0, process, t=t, **options)
            continue
        _, aux = fn(model, jax.random.PRNGKey(0), X0, process, t=t, **options)
        per_example = np.asarray(aux["per_example"], np.float32)
        assert per_example.shape == (B,), (loss, options)
        expected_inf = infinite_exactly(name, loss, options)
        assert np.isfinite(per_example[~expected_inf]).all(), (name, loss, options, per_example)
        assert np.isinf(per_example[expected_inf]).all(), (name, loss, options, per_example)


def test_vlb_times_keep_the_chain_steps_in_bfloat16():
    # bfloat16 rounds 999 / 1000 to 1: the bound's step times are kept in float32, so the last
    # step's posterior is q(x_999 | x_1000, x0), not a degenerate s = t = 1 (which gave NaN).
    process = PROCESSES["discrete"]
    t = jnp.asarray(ENDS, jnp.bfloat16)
    lo, aux_bf = losses.vlb(bf16_model, jax.random.PRNGKey(0), X0, process, t=t, prediction="x0")
    _, aux_32 = losses.vlb(
        bf16_model, jax.random.PRNGKey(0), X0.astype(jnp.float32), process, t=t, prediction="x0"
    )
    # the same steps n = (1, 1, 1000, 1000) and, to bfloat16 data resolution, the same terms
    np.testing.assert_allclose(
        np.asarray(aux_bf["t"], np.float32), np.asarray(aux_32["t"]), rtol=0, atol=0
    )
    np.testing.assert_allclose(
        np.asarray(aux_bf["nats"], np.float32), np.asarray(aux_32["nats"]), rtol=2e-2, atol=1e-2
    )


@pytest.mark.parametrize("name", sweep())
@pytest.mark.parametrize(
    "prediction, solver",
    [("eps", "ddim"), pytest.param("x0", "euler", marks=pytest.mark.slow),
     pytest.param("v", "heun", marks=pytest.mark.slow)],
)  # fmt: skip
def test_bfloat16_sampling_stays_finite(name, prediction, solver):
    # bfloat16 rounds the default t_max = 1 - 1e-3 of an alpha(1) = 0 process to 1, where an
    # eps model's x0 is 0 / 0: sample runs its loop in float32 and returns bfloat16.
    process = PROCESSES[name]
    x_init = jax.random.normal(jax.random.PRNGKey(2), (B, 4), jnp.bfloat16)
    out = diffjax.sample(
        jax.random.PRNGKey(3),
        bf16_model,
        process,
        (B, 4),
        solver=solver,
        steps=4,
        prediction=prediction,
        x_init=x_init,
    )
    assert out.dtype == jnp.bfloat16 and out.shape == (B, 4)
    assert np.isfinite(np.asarray(out, np.float32)).all(), (name, prediction, solver)


def test_bfloat16_training_run_is_finite(tmp_path):
    # the MLP computing in bfloat16 on a rectified flow (alpha(1) = 0) with an eps model: the
    # loop's finite check (checkpoint.require_finite) would raise on any NaN loss or parameter
    from diffjax.train import checkpoint
    from diffjax.train.loop import train_and_evaluate
    from tests.test_checkpoint_safety import toy_config

    config = toy_config(**{"train.num_steps": 4, "model.kwargs.dtype": "bfloat16"})
    config.process.name = "rectified_flow"
    state = train_and_evaluate(config, str(tmp_path))
    assert int(state.step) == 4
    leaves = jax.tree.leaves((state.params, state.ema_params))
    assert all(np.isfinite(np.asarray(x, np.float32)).all() for x in leaves)
    stored, step = checkpoint.stored_config(str(tmp_path / "checkpoints"))
    assert step == 4 and stored["model"]["kwargs"]["dtype"] == "bfloat16"


def test_bfloat16_training_times_avoid_t_0():
    # t ~ U(0, 1) drawn in float32 and rounded to bfloat16: P(t = 0) is that of a float32 draw
    # below bfloat16's smallest normal (~1e-38), not the 1/128 of bfloat16's own 128-value draw.
    t = np.asarray(PROCESSES["vp"].draw_t(jax.random.PRNGKey(5), 100_000, jnp.bfloat16), np.float32)
    assert (t > 0).all() and (t <= 1).all()
    assert len(np.unique(t)) > 1000  # finer than bfloat16's 2^-7 spacing near t = 0
    # still U(0, 1): mean and variance within 5 standard errors
    assert abs(t.mean() - 0.5) < 5 * np.sqrt(1 / 12 / t.size)
    assert abs(t.var() - 1 / 12) < 5 * np.sqrt(1 / 180 / t.size) + 1e-3  # + bf16 rounding
