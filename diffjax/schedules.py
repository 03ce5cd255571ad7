"""Beta tables of discrete DDPM chains, computed in float64 numpy (they are constant tables).

Every function returns a float64 array of shape [T] holding beta_1 .. beta_T; a discrete chain
has alpha-bar_n = prod_{i <= n} (1 - beta_i) and lives on the time grid t_n = n / T.
"""

from __future__ import annotations

import numpy as np


def _check_steps(T) -> int:
    if isinstance(T, bool) or int(T) != T or T < 1:
        raise ValueError(f"number of steps T must be an integer >= 1; got T = {T!r}")
    return int(T)


def _check_ends(start, end) -> None:
    """The first and last beta of a linear-type table, each in (0, 1)."""
    for name, v in (("start", start), ("end", end)):
        if not (isinstance(v, (int, float, np.floating)) and 0.0 < float(v) < 1.0):
            raise ValueError(f"beta {name} must lie in (0, 1); got {name} = {v!r}")


def check_betas(betas) -> np.ndarray:
    """Validate a beta table: 1-D, finite, each beta in (0, 1); beta_T = 1 is allowed (zero
    terminal SNR, Lin et al. 2024). Returns it as float64."""
    b = np.asarray(betas, dtype=np.float64)
    if b.ndim != 1 or b.size < 1:
        raise ValueError(f"betas must be a non-empty 1-D table; got shape {b.shape}")
    bad = ~np.isfinite(b) | (b <= 0.0) | (b > 1.0)
    bad[:-1] |= b[:-1] >= 1.0
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"betas must lie in (0, 1) (only the last may equal 1); got betas[{i}] = {b[i]!r}"
        )
    return b


def alphas_cumprod(betas) -> np.ndarray:
    """alpha-bar_n for n = 0..T (alpha-bar_0 = 1), float64, shape [T + 1]."""
    b = check_betas(betas)
    return np.concatenate([[1.0], np.cumprod(1.0 - b)])


def linear_betas(T: int = 1000, start: float = 1e-4, end: float = 0.02) -> np.ndarray:
    """Linear schedule of Ho et al. (2020), Sec. 4: beta from 1e-4 to 0.02 over T = 1000."""
    T = _check_steps(T)
    _check_ends(start, end)
    return check_betas(np.linspace(start, end, T, dtype=np.float64))


def scaled_linear_betas(T: int = 1000, start: float = 0.00085, end: float = 0.012) -> np.ndarray:
    """Latent-diffusion (Stable Diffusion) schedule: linear in sqrt(beta)."""
    T = _check_steps(T)
    _check_ends(start, end)
    return check_betas(np.linspace(start**0.5, end**0.5, T, dtype=np.float64) ** 2)


def cosine_alpha_bar(t, s: float = 0.008) -> np.ndarray:
    """Nichol & Dhariwal (2021), eq. 17: alpha-bar(t) = f(t) / f(0),
    f(t) = cos^2((t + s) / (1 + s) pi / 2)."""
    f = lambda u: np.cos((u + s) / (1.0 + s) * np.pi / 2.0) ** 2  # noqa: E731
    return f(np.asarray(t, dtype=np.float64)) / f(0.0)


def cosine_betas(T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """Cosine schedule of Nichol & Dhariwal (2021), eq. 17, with beta clipped at 0.999."""
    T = _check_steps(T)
    abar = cosine_alpha_bar(np.arange(T + 1) / T, s)
    return check_betas(np.minimum(1.0 - abar[1:] / abar[:-1], max_beta))


def sigmoid_betas(
    T: int = 1000, start: float = 1e-4, end: float = 0.02, width: float = 6.0
) -> np.ndarray:
    """Sigmoid schedule (Xu et al. 2022, GeoDiff): beta = start + (end - start) sigmoid(u),
    u uniform on [-width, width]."""
    T = _check_steps(T)
    u = np.linspace(-width, width, T, dtype=np.float64)
    return check_betas(start + (end - start) / (1.0 + np.exp(-u)))


def rescale_zero_terminal_snr(betas) -> np.ndarray:
    """Lin et al. (2024), Algorithm 1: shift and scale sqrt(alpha-bar) so that alpha-bar_T = 0
    (zero terminal SNR) while alpha-bar_1 is unchanged. The last beta becomes exactly 1."""
    b = check_betas(betas)
    sqrt_abar = np.sqrt(np.cumprod(1.0 - b))
    first, last = sqrt_abar[0], sqrt_abar[-1]
    sqrt_abar = (sqrt_abar - last) * first / (first - last)
    abar = sqrt_abar**2
    alphas = np.concatenate([abar[:1], abar[1:] / abar[:-1]])
    out = 1.0 - alphas
    out[-1] = 1.0
    return check_betas(out)


BETA_SCHEDULES = {
    "linear": linear_betas,
    "scaled_linear": scaled_linear_betas,
    "cosine": cosine_betas,
    "sigmoid": sigmoid_betas,
}


def get_betas(name: str, T: int = 1000, *, zero_terminal_snr: bool = False, **kwargs) -> np.ndarray:
    """A beta table by name (`BETA_SCHEDULES`), optionally rescaled to zero terminal SNR."""
    if name not in BETA_SCHEDULES:
        raise ValueError(f"unknown beta schedule {name!r}; expected one of {tuple(BETA_SCHEDULES)}")
    betas = BETA_SCHEDULES[name](T, **kwargs)
    return rescale_zero_terminal_snr(betas) if zero_terminal_snr else betas
