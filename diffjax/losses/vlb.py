"""The discrete-time variational bound of a DDPM chain (Ho et al. 2020; Nichol & Dhariwal 2021)
and the hybrid objective with learned variances, in nats per example and bits per dim."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from diffjax.checks import check_choice, is_concrete
from diffjax.kernels import (
    bcast,
    interpolate_log_variance,
    posterior,
    posterior_variances,
    split_learned_variance,
)
from diffjax.losses.common import (
    call_model,
    check_data,
    check_prediction,
    data_dims,
    finish,
    mean_over_data,
    sample_times,
    sum_over_data,
)
from diffjax.losses.decoders import (
    DECODERS,
    check_decoder_data,
    decoder_nll,
    normal_kl,
    prior_kl,
)
from diffjax.processes import Process
from diffjax.targets import convert
from diffjax.typing import Array, ModelFn

VARIANCES = ("small", "large", "learned")


def _check(process, variance, decoder, terms="sampled"):
    if process.num_steps is None:
        raise ValueError(
            "vlb needs a Discrete chain (processes.discrete, a process with num_steps = T); got "
            f"{type(process).__name__}, which is continuous in time; use continuous_vlb for "
            "continuous-time processes"
        )
    check_choice(variance, VARIANCES, "variance")
    check_choice(decoder, DECODERS, "decoder")
    check_choice(terms, ("sampled", "all"), "terms")


def _check_terminal_snr(process: Process, prediction: str) -> None:
    """An 'eps' or 'score' model has no x0-prediction where alpha_T = 0 (a zero-terminal-SNR
    chain, Lin et al. 2024): x0 = (x_T - sigma_T eps) / alpha_T, so L_{T-1} is infinite."""
    if prediction not in ("eps", "score"):
        return
    with jax.ensure_compile_time_eval():  # the chain is a constant table, even under jit
        alpha_T = float(process.alpha(jnp.ones((), jnp.float32)))
    if alpha_T == 0.0:
        raise ValueError(
            f"the bound of a {prediction!r} model is infinite on this chain: alpha_T = 0 (zero "
            "terminal SNR), where x0 = (x_T - sigma_T eps) / alpha_T is undefined; train a 'v' "
            "or 'x0' model on it (Lin et al. 2024), or use a chain with alpha_T > 0"
        )


def _time_dtype(dtype):
    """Chain times n / T in at least float32: bfloat16 (8 significant bits) rounds (T - 1) / T
    to 1 for T > 256, which would make the last step's posterior degenerate (s = t)."""
    return jnp.promote_types(dtype, jnp.float32)


def _draw_steps(key: Array, x0: Array, process: Process, t) -> Array:
    """Steps n [B] in {1..T}: n = round(t T) clipped to [1, T] from a given t, else drawn
    uniformly; the times are at least float32, so that n survives the round trip n / T."""
    proxy = jnp.zeros((x0.shape[0],) + (1,) * (x0.ndim - 1), _time_dtype(x0.dtype))
    t = sample_times(key, proxy, process, t)
    return jnp.clip(process.step_of_time(t), 1, process.num_steps)


def _step_times(process: Process, n: Array, dtype) -> tuple[Array, Array]:
    """(s, t) = ((n - 1) / T, n / T) [B], the ends of chain step n (at least float32)."""
    dtype = _time_dtype(dtype)
    return process.time_of_step(n - 1, dtype), process.time_of_step(n, dtype)


def _fixed_log_variances(process: Process, n: Array, dtype) -> tuple[Array, Array]:
    """(log beta-tilde_n, log beta_n) [B] at steps n [B], with beta-tilde_1 = 0 replaced by
    beta-tilde_2 (the 'clipped' posterior variance of Nichol & Dhariwal's reference code)."""
    T = process.num_steps
    # beta-tilde = sigma2_{t|s} sigma_s^2 / sigma_t^2 = (1 - SNR_t / SNR_s) sigma_s^2
    m = jnp.clip(n, 2, T) if T > 1 else n
    small, _ = posterior_variances(process, *_step_times(process, m, dtype))
    _, large = posterior_variances(process, *_step_times(process, n, dtype))  # beta_n on the grid
    tiny = jnp.finfo(dtype).tiny
    return jnp.log(jnp.maximum(small, tiny)), jnp.log(jnp.maximum(large, tiny))


def _model_log_variance(process, variance, v, n, x0):
    """log Sigma_theta(x_n, n) broadcastable against x0 ('small', 'large' or 'learned')."""
    log_small, log_large = _fixed_log_variances(process, n, x0.dtype)
    if variance == "small":
        return bcast(log_small, x0)
    if variance == "large":
        return bcast(log_large, x0)
    # kernels.learned_log_variance's interpolation between these extremes; at n = 1 towards the
    # clipped beta-tilde_2 (Nichol & Dhariwal 2021, eq. 15 and their code), not beta-tilde_1 = 0.
    return interpolate_log_variance(v, bcast(log_small, v), bcast(log_large, v))


def step_terms(out, x0, x_t, n, process, variance, decoder, prediction) -> Array:
    """The bound's term at step n for each example, [B] nats: L_0 = -log p(x0 | x_1) at n = 1,
    else L_{n-1} = KL(q(x_{n-1} | x_n, x0) || p(x_{n-1} | x_n)) (Ho et al. 2020, eq. 5).

    The model mean is `kernels.posterior` with x0 replaced by the x0-prediction; by linearity
    mu_q - mu_p = posterior mean of (x0 - x0_hat, x_t = 0), which has no cancellation.
    """
    s, t = _step_times(process, n, x0.dtype)
    mean_out, v = split_learned_variance(out) if variance == "learned" else (out, None)
    x0_hat = convert(mean_out, prediction, "x0", x_t, t, process)
    logvar_p = _model_log_variance(process, variance, v, n, x0)
    mean_diff, var_q = posterior(process, x0 - x0_hat, jnp.zeros_like(x_t), s, t)
    tiny = jnp.finfo(x0.dtype).tiny
    logvar_q = jnp.log(jnp.maximum(var_q, tiny))
    kl = sum_over_data(normal_kl(mean_diff, logvar_q, logvar_p))
    # At n = 1 the model mean is posterior(x0_hat, x_1, 0, 1/T) = x0_hat exactly.
    nll = decoder_nll(x0, x0_hat, logvar_p, decoder)
    return jnp.where(n == 1, nll, kl).astype(x0.dtype)  # computed in >= float32 (_time_dtype)


def _noise(key: Array, n: Array, x0: Array) -> Array:
    """eps [B, ...] for example i at step n_i from fold_in(fold_in(key, i), n_i), so that the
    'all' and 'sampled' modes see the same noise at the same (example, step)."""

    def one(i, n_i):
        k = jax.random.fold_in(jax.random.fold_in(key, i), n_i)
        return jax.random.normal(k, x0.shape[1:], x0.dtype)

    return jax.vmap(one)(jnp.arange(x0.shape[0]), n)


def _noised(key, x0, n, process):
    t = process.time_of_step(n, _time_dtype(x0.dtype))
    eps = _noise(key, n, x0)
    x_t = bcast(process.alpha(t), x0) * x0 + bcast(process.sigma(t), x0) * eps
    return t, x_t.astype(x0.dtype), eps


def _all_terms(model, key, x0, process, cond, out_shape, options):
    """(decoder L_0 [B], diffusion sum_{n>=2} L_{n-1} [B]) by a scan over every step n."""

    def body(carry, n):
        nn = jnp.full((x0.shape[0],), n, jnp.int32)
        t, x_t, _ = _noised(key, x0, nn, process)
        term = step_terms(
            call_model(model, x_t, t, cond, out_shape), x0, x_t, nn, process, **options
        )
        return carry, term

    _, terms = jax.lax.scan(body, None, jnp.arange(1, process.num_steps + 1))  # [T, B]
    return terms[0], jnp.sum(terms[1:], axis=0)


def vlb(
    model: ModelFn,
    key: Array,
    x0,
    process: Process,
    *,
    cond=None,
    t=None,
    variance: str = "small",
    decoder: str = "discretized",
    prediction: str = "eps",
    terms: str = "sampled",
) -> tuple[Array, dict]:
    """The variational bound -log p(x0) <= L_T + sum_{n=2}^T L_{n-1} + L_0 of a Discrete chain
    (Ho et al. 2020, eq. 5; Nichol & Dhariwal 2021, eqs. 4-7):

      L_T     = KL(q(x_T | x0) || N(0, I)),
      L_{n-1} = KL(q(x_{n-1} | x_n, x0) || N(mu_theta(x_n), Sigma_theta(x_n))),
      L_0     = -log p(x0 | x_1)  ('discretized': Ho et al. eq. 13 for 8-bit data in [-1, 1];
                                  'gaussian': N(x0; x0_hat, Sigma_1) for continuous data),

    mu_theta from the x0-prediction through `kernels.posterior`; Sigma_theta 'small'
    (beta-tilde_n), 'large' (beta_n) or 'learned' (model output [B, ..., 2C], Nichol & Dhariwal
    eq. 15). The decoder variance at n = 1 is beta_1 ('large') or the clipped beta-tilde_2
    ('small'; beta-tilde_1 = 0). terms='sampled' draws n ~ U{1..T} per example (or takes
    n = round(t T), clipped to [1, T], from a given t) and returns L_T + T L_n, unbiased;
    terms='all' sums every term (a scan over n; takes no t). The noise of example i at step n
    is drawn from fold_in(fold_in(key, i), n) in both modes.

    Returns:
      (bits/dim averaged over the batch, aux): 'per_example' bits/dim [B], 'nats' [B],
      'prior', 'decoder', 'diffusion' (nats [B], summing to 'nats'), 't' [B].
    References: Ho et al. 2020, eqs. 5, 13; Nichol & Dhariwal 2021, eqs. 4-7, 15.
    """
    _check(process, variance, decoder, terms)
    check_prediction(prediction)
    _check_terminal_snr(process, prediction)
    x0 = check_data(x0)
    check_decoder_data(x0, decoder)
    out_shape = x0.shape[:-1] + (2 * x0.shape[-1],) if variance == "learned" else x0.shape
    options = dict(variance=variance, decoder=decoder, prediction=prediction)
    t_key, noise_key = jax.random.split(key)
    T = process.num_steps
    if terms == "all":
        if t is not None:
            raise ValueError("terms='all' evaluates every step n = 1..T; do not pass t (got t)")
        decoder_term, diffusion = _all_terms(
            model, noise_key, x0, process, cond, out_shape, options
        )
        t_out = jnp.full((x0.shape[0],), 1.0, x0.dtype)
    else:
        n = _draw_steps(t_key, x0, process, t)
        t_out, x_t, _ = _noised(noise_key, x0, n, process)
        term = T * step_terms(
            call_model(model, x_t, t_out, cond, out_shape), x0, x_t, n, process, **options
        )
        decoder_term, diffusion = jnp.where(n == 1, term, 0.0), jnp.where(n == 1, 0.0, term)
    prior = prior_kl(process, x0)
    nats = prior + decoder_term + diffusion
    bpd = nats / (data_dims(x0) * math.log(2.0))
    return finish(bpd, t_out, nats=nats, prior=prior, decoder=decoder_term, diffusion=diffusion)


def hybrid(
    model: ModelFn,
    key: Array,
    x0,
    process: Process,
    *,
    cond=None,
    t=None,
    lam: float = 0.001,
    decoder: str = "discretized",
) -> tuple[Array, dict]:
    """L_hybrid = L_simple + lam L_vlb (Nichol & Dhariwal 2021, Sec. 3.1, lam = 0.001) for a model
    with learned variances (output [B, ..., 2C]: eps prediction, then v in [-1, 1]).

    Both terms use the same n ~ U{1..T} and noise. L_vlb is the unbiased estimate
    L_T + T L_n in bits/dim (as their reference code scales it), with
    `jax.lax.stop_gradient` on the eps half, so the bound trains only the variance.

    Returns: (scalar, aux with 'per_example', 't', 'simple' [B], 'vlb' [B] bits/dim).
    References: Nichol & Dhariwal 2021, "Improved Denoising Diffusion Probabilistic Models",
      Sec. 3.1, eq. 16.
    """
    _check(process, "learned", decoder)
    _check_terminal_snr(process, "eps")
    if is_concrete(lam) and not lam >= 0:
        raise ValueError(f"lam must be >= 0; got lam = {lam!r}")
    x0 = check_data(x0)
    check_decoder_data(x0, decoder)
    t_key, noise_key = jax.random.split(key)
    T = process.num_steps
    n = _draw_steps(t_key, x0, process, t)
    t_n, x_t, eps = _noised(noise_key, x0, n, process)
    out = call_model(model, x_t, t_n, cond, x0.shape[:-1] + (2 * x0.shape[-1],))
    eps_hat, v = split_learned_variance(out)
    simple_term = mean_over_data((eps - eps_hat) ** 2)
    frozen = jnp.concatenate([jax.lax.stop_gradient(eps_hat), v], axis=-1)
    options = dict(variance="learned", decoder=decoder, prediction="eps")
    nats = prior_kl(process, x0) + T * step_terms(frozen, x0, x_t, n, process, **options)
    vlb_bpd = nats / (data_dims(x0) * math.log(2.0))
    return finish(simple_term + lam * vlb_bpd, t_n, simple=simple_term, vlb=vlb_bpd)
