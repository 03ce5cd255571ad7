"""Learned variances end to end (Nichol & Dhariwal 2021): the launchers' sampling options for a
learned-variance model, and the exact discrete bound with learned vs fixed variances on the same
trained mean (behind launch/sample.py --variance and launch/evaluate.py --variance_bpd_num).

A model trained with the `hybrid` loss outputs [eps | v] (2C channels). The 'ddpm' sampler with
variance='learned' reads v (`kernels.learned_log_variance`, eq. 15); every other solver and
ddpm's fixed variances use only the mean channels (`learned_variance=True`).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.kernels import split_learned_variance
from diffjax.losses.common import check_data, data_dims
from diffjax.losses.decoders import prior_kl
from diffjax.losses.vlb import _noised, step_terms
from diffjax.processes import Process
from diffjax.typing import Array, ModelFn

VARIANCES = ("learned", "small", "large")
# the solvers that read a learned variance (with variance='learned'); others use the mean only
USES_LEARNED_VARIANCE = ("ddpm",)


def learns_variance(spec) -> bool:
    """Whether the run's model outputs [mean | v] (a U-Net or DiT with learn_sigma=True)."""
    return bool(getattr(spec.model, "learn_sigma", False))


def sample_options(spec, sspec, variance: str | None = None):
    """`sspec` (a SampleSpec) with the options a (learned-variance) model needs.

    `variance` ('small' | 'large' | 'learned', or None: the config's) sets ddpm's variance. A
    learned-variance model gets learned_variance=True (every solver then reads its mean
    channels; ddpm with variance='learned' also reads v).

    Raises:
      ValueError: variance='learned' for a model without learned variances, or with a solver
        that cannot use it (anything but 'ddpm'); `variance` for a solver other than ddpm.
    """
    kwargs = dict(sspec.kwargs)
    if variance is not None:
        if variance not in VARIANCES:
            raise ValueError(f"--variance={variance!r}: expected one of {VARIANCES}")
        if sspec.solver not in USES_LEARNED_VARIANCE:
            raise ValueError(
                f"--variance={variance!r} sets the ancestral variance of 'ddpm'; solver "
                f"{sspec.solver!r} has no such option (use --solver=ddpm)"
            )
        kwargs["variance"] = variance
    learned = learns_variance(spec)
    if kwargs.get("variance") == "learned" or kwargs.get("learned_variance"):
        if not learned:
            raise ValueError(
                "variance='learned' needs a model trained with a learned variance (learn_sigma="
                f"True, e.g. experiments/improved_ddpm.py); this {type(spec.model).__name__} "
                "outputs only the mean: use variance='small' or 'large'"
            )
        if kwargs.get("variance") == "learned" and sspec.solver not in USES_LEARNED_VARIANCE:
            raise ValueError(
                f"solver {sspec.solver!r} cannot use a learned variance: only "
                f"{USES_LEARNED_VARIANCE} with variance='learned' samples with it"
            )
    if learned:
        kwargs["learned_variance"] = True
    return dataclasses.replace(sspec, kwargs=kwargs)


def variance_bounds(
    model: ModelFn, key: Array, x0, process: Process, *, cond=None, decoder: str = "discretized"
) -> dict[str, Array]:
    """The exact discrete bound L_T + sum_{n>=2} L_{n-1} + L_0 per example, in bits/dim, of a
    learned-variance eps-model with each of its variances on the same mean: 'learned' (v, eq. 15
    of Nichol & Dhariwal 2021), 'small' (beta-tilde) and 'large' (beta), from one model call
    per step (one scan over n = 1..T). Each equals `losses.vlb(..., terms='all', variance=...)`
    with the same key (the same noise per example and step).

    Args:
      model: model(x_t, t [B]) -> [B, ..., 2C] ([eps | v]).
      x0: data [B, ...] (8-bit images in [-1, 1] for the 'discretized' decoder).
    Returns:
      {variance: bits/dim [B]} for each of VARIANCES.
    """
    if process.num_steps is None:
        raise ValueError(f"the discrete bound needs a Discrete chain; got {type(process).__name__}")
    x0 = check_data(x0)
    _, noise_key = jax.random.split(key)  # vlb's split: its noise is the second key

    def body(carry, n):
        nn = jnp.full((x0.shape[0],), n, jnp.int32)
        t, x_t, _ = _noised(noise_key, x0, nn, process)
        out = model(x_t, t) if cond is None else model(x_t, t, cond)
        mean, _ = split_learned_variance(out)
        terms = [
            step_terms(o, x0, x_t, nn, process, v, decoder, "eps")
            for v, o in (("learned", out), ("small", mean), ("large", mean))
        ]
        return carry, jnp.stack(terms)  # [3, B]

    _, terms = jax.lax.scan(body, None, jnp.arange(1, process.num_steps + 1))  # [T, 3, B]
    nats = prior_kl(process, x0)[None] + jnp.sum(terms, axis=0)  # [3, B]
    bpd = nats / (data_dims(x0) * math.log(2.0))
    return {v: bpd[i] for i, v in enumerate(VARIANCES)}


def variance_bits_per_dim(key, spec, c, state, num: int, batch_size: int = 32) -> dict:
    """launch/evaluate.py's learned-vs-fixed report: the exact bound in bits/dim over `num` data
    examples with learned, small and large variances on the run's trained (EMA) mean, each with
    its standard error over examples, and the paired differences learned - small and
    learned - large with theirs (the same examples and noise, so the difference is sharper)."""
    from diffjax.train.evaluate import data_examples

    if not learns_variance(spec):
        raise ValueError(
            "the learned-vs-fixed bound needs a learned-variance model (learn_sigma=True, e.g. "
            f"experiments/improved_ddpm.py); this run's {type(spec.model).__name__} has none"
        )
    if num < 2:
        raise ValueError(f"the bound's standard error needs num >= 2 examples; got {num}")
    data = data_examples(spec, num)
    decoder = "discretized" if data.ndim == 4 else "gaussian"
    model = lambda x, t: c.apply(state.ema_params, x, t, None, train=False, key=None)  # noqa: E731
    bound = jax.jit(lambda k, x: variance_bounds(model, k, x, c.process, decoder=decoder))
    parts = [bound(jax.random.fold_in(key, i), data[i : i + batch_size])
             for i in range(0, num, batch_size)]  # fmt: skip
    per = {v: np.concatenate([np.asarray(p[v]) for p in parts]) for v in VARIANCES}
    stderr = lambda a: float(np.std(a, ddof=1) / np.sqrt(len(a)))  # noqa: E731
    out = {"num": int(num), "decoder": decoder}
    for v in VARIANCES:
        out[f"{v}_bpd"], out[f"{v}_bpd_stderr"] = float(per[v].mean()), stderr(per[v])
    for v in ("small", "large"):
        diff = per["learned"] - per[v]
        out[f"learned_minus_{v}"], out[f"learned_minus_{v}_stderr"] = (
            float(diff.mean()),
            stderr(diff),
        )
    return out


def variance_sample_quality(key, spec, c, state, steps: int, num: int, workdir=None) -> list:
    """`evaluate_solvers` rows of 'ddpm' at `steps` with each variance (learned, small, large)
    on the same model, keys and data (and the config's other ddpm options, e.g. clip_x0):
    classifier-FD for one-channel images."""
    from diffjax.train.evaluate import evaluate_solvers

    rows = []
    for v in VARIANCES:
        base = spec.sample.kwargs if spec.sample.solver == "ddpm" else {}
        kwargs = {**base, "variance": v, "learned_variance": True}
        sample = dataclasses.replace(spec.sample, solver="ddpm", kwargs=kwargs)
        vspec = dataclasses.replace(spec, sample=sample)
        row = evaluate_solvers(key, vspec, c, state, [("ddpm", steps)], num, False, workdir)[0]
        rows.append({"variance": v, **row})
    return rows
