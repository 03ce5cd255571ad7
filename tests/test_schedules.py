"""Beta tables against published values and their defining properties."""

import math
from fractions import Fraction

import numpy as np
import pytest

from diffjax import schedules


def test_linear_matches_the_closed_form_terminal_alpha_bar():
    # Ho et al. linear schedule, T = 1000: beta_i = 1e-4 + (i - 1) (0.02 - 1e-4) / 999 and
    # alpha-bar_T = prod_i (1 - beta_i), here in exact rational arithmetic per factor and a
    # float64 product (~4.04e-5, the value diffusers' DDPMScheduler reports; ENV-NOTES).
    T = 1000
    betas = [Fraction(1, 10_000) + (i - 1) * (Fraction(2, 100) - Fraction(1, 10_000)) / (T - 1)
             for i in range(1, T + 1)]  # fmt: skip
    abar_T = math.prod(float(1 - b) for b in betas)
    abar = schedules.alphas_cumprod(schedules.linear_betas())
    assert abar.shape == (T + 1,) and abar[0] == 1.0
    np.testing.assert_allclose(abar[-1], abar_T, rtol=1e-12)
    np.testing.assert_allclose(schedules.linear_betas(), [float(b) for b in betas], rtol=1e-14)
    np.testing.assert_allclose(schedules.linear_betas()[[0, -1]], [1e-4, 0.02])


def test_cosine_betas_reproduce_alpha_bar_and_clip():
    T, s = 1000, 0.008
    betas = schedules.cosine_betas(T, s)
    assert betas.max() == pytest.approx(0.999)  # Nichol & Dhariwal clip beta at 0.999
    abar = np.cumprod(1 - betas)
    ref = schedules.cosine_alpha_bar(np.arange(1, T + 1) / T, s)
    unclipped = betas < 0.999
    np.testing.assert_allclose(abar[unclipped], ref[unclipped], rtol=1e-10)


def test_scaled_linear_and_sigmoid_are_monotone_in_range():
    for betas in (schedules.scaled_linear_betas(), schedules.sigmoid_betas()):
        assert np.all(np.diff(betas) > 0) and betas.min() > 0 and betas.max() < 1
    np.testing.assert_allclose(
        np.sqrt(schedules.scaled_linear_betas()[[0, -1]]), np.sqrt([0.00085, 0.012])
    )


def test_zero_terminal_snr_rescaling():
    betas = schedules.linear_betas()
    new = schedules.rescale_zero_terminal_snr(betas)
    abar_old, abar_new = np.cumprod(1 - betas), np.cumprod(1 - new)
    assert abar_new[-1] == 0.0 and new[-1] == 1.0
    np.testing.assert_allclose(abar_new[0], abar_old[0], rtol=1e-12)
    # Lin et al. Alg. 1: sqrt(abar) is an affine map of the old sqrt(abar).
    a, b = np.polyfit(np.sqrt(abar_old), np.sqrt(abar_new), 1)
    np.testing.assert_allclose(np.sqrt(abar_new), a * np.sqrt(abar_old) + b, atol=1e-12)


@pytest.mark.parametrize("bad", [[0.1, 1.2], [0.0, 0.1], [-0.1], [1.0, 0.5], [np.nan], []])
def test_bad_betas_raise(bad):
    with pytest.raises(ValueError, match="betas"):
        schedules.check_betas(bad)


@pytest.mark.parametrize("T", [0, -3, 2.5])
def test_bad_step_count_raises(T):
    with pytest.raises(ValueError, match="T"):
        schedules.linear_betas(T)


def test_unknown_schedule_name():
    with pytest.raises(ValueError, match="'nope'"):
        schedules.get_betas("nope")
