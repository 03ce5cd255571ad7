"""Step-by-step cross-check against diffusers' schedulers on identical inputs (skipped when
diffusers is absent; it is not a dependency). The grid is diffusers' 'trailing' timesteps k on the
linear T = 1000 chain, which diffjax reads as t = (k + 1) / T (diffusers' alphas_cumprod[k] is
alpha-bar_{k+1}), plus the final sigma; the model is the exact mixture eps in float64 on both
sides. diffusers keeps its sigmas in float32, hence agreement to ~1e-6, not 1e-15.
Measured max differences over the trajectory (10 steps): DPM-Solver++(2M) 6.9e-7, 3M with
third_order='diffusers' 5.1e-7 (1.0e-2 with diffjax's default 'taylor' weights), multistep
DPM-Solver order 2 9.5e-7 and order 3 ('diffusers') 9.5e-7, UniPC-2 bh2 6.4e-7.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax import processes, schedules, toy
from diffjax.samplers import sample

diffusers = pytest.importorskip("diffusers")
torch = pytest.importorskip("torch")

T = 1000
CHAIN = processes.discrete(schedules.linear_betas(T))
KW = dict(num_train_timesteps=T, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")

CASES = [
    ("DPMSolverMultistepScheduler", dict(solver_order=2), "dpm_solver_pp", {}),
    ("DPMSolverMultistepScheduler", dict(solver_order=3), "dpm_solver_pp",
     {"order": 3, "third_order": "diffusers"}),
    ("DPMSolverMultistepScheduler", dict(solver_order=2, algorithm_type="dpmsolver",
     final_sigmas_type="sigma_min"), "dpm_solver_multistep", {"order": 2}),
    ("DPMSolverMultistepScheduler", dict(solver_order=3, algorithm_type="dpmsolver",
     final_sigmas_type="sigma_min"), "dpm_solver_multistep",
     {"order": 3, "third_order": "diffusers"}),
    ("UniPCMultistepScheduler", dict(solver_order=2), "unipc", {}),
]  # fmt: skip


@pytest.mark.parametrize("cls, config, name, opts", CASES)
def test_matches_diffusers_step_by_step(x64, cls, config, name, opts):
    config = {"final_sigmas_type": "zero", "timestep_spacing": "trailing", **config}
    sched = getattr(diffusers, cls)(**KW, **config)
    sched.set_timesteps(10)
    mix = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), toy.ring(k=4, radius=1.5, std=0.3))
    model = toy.exact_model(mix, CHAIN, "eps")
    x_init = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (8, 2), jnp.float64))
    ks = sched.timesteps.numpy()
    last = 0.0 if config["final_sigmas_type"] == "zero" else 1.0 / T
    ts = np.append((ks + 1) / T, last)
    x, theirs = torch.tensor(x_init), [x_init]
    for k in sched.timesteps:
        eps = model(jnp.asarray(x.numpy()), jnp.full((8,), (int(k) + 1) / T))
        x = sched.step(torch.tensor(np.asarray(eps)), k, x).prev_sample
        theirs.append(x.numpy())
    _, info = sample(jax.random.PRNGKey(0), model, CHAIN, (8, 2), solver=name, ts=ts,
                     x_init=x_init, return_info=True, return_trajectory=True, **opts)  # fmt: skip
    diff = np.max(np.abs(np.asarray(info["trajectory"]) - np.stack(theirs)))
    assert diff < 2e-5, f"max difference {diff:.2e}"


@pytest.mark.parametrize("steps", [10, 4])
def test_euler_ancestral_matches_diffusers_with_the_same_noise(x64, steps):
    """`euler_ancestral` (eta = 1) against EulerAncestralDiscreteScheduler with the same per-step
    draws: diffusers draws step i's z from a seeded torch generator; an identically seeded one
    gives the same z to diffjax as `noise[i]`. diffusers' state is the scaled y = x_t / alpha_t
    (its model input is y / sqrt(sigma^2 + 1) = x_t), so its trajectory is compared as alpha_t y.
    Measured max differences in x_t: 7.1e-7 (10 steps) and 4.4e-7 (4 steps)."""
    sched = diffusers.EulerAncestralDiscreteScheduler(**KW, timestep_spacing="trailing")
    sched.set_timesteps(steps)
    mix = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), toy.ring(k=4, radius=1.5, std=0.3))
    model = toy.exact_model(mix, CHAIN, "eps")
    x_init = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (8, 2), jnp.float64))
    ks = sched.timesteps.numpy().astype(np.int64)
    ts = np.append((ks + 1) / T, 0.0)
    alpha = np.asarray(CHAIN.alpha(jnp.asarray(ts)))
    draws = torch.Generator().manual_seed(7)
    noise = np.stack([torch.randn((8, 2), generator=draws, dtype=torch.float64).numpy()
                      for _ in range(steps)])  # fmt: skip
    generator = torch.Generator().manual_seed(7)
    y, theirs = torch.tensor(x_init / alpha[0]), [x_init]
    for i, k in enumerate(sched.timesteps):
        x_t = sched.scale_model_input(y, k)
        eps = model(jnp.asarray(x_t.numpy()), jnp.full((8,), (int(k) + 1) / T))
        y = sched.step(torch.tensor(np.asarray(eps)), k, y, generator=generator).prev_sample
        theirs.append(alpha[i + 1] * y.numpy())
    _, info = sample(jax.random.PRNGKey(0), model, CHAIN, (8, 2), solver="euler_ancestral",
                     ts=ts, x_init=x_init, noise=noise, return_info=True,
                     return_trajectory=True)  # fmt: skip
    diff = np.max(np.abs(np.asarray(info["trajectory"]) - np.stack(theirs)))
    print(f"euler_ancestral vs diffusers, {steps} steps: max difference {diff:.2e}")
    assert diff < 2e-6, f"max difference {diff:.2e}"
    # the noise matters: a different draw moves the path far beyond that agreement
    other = sample(jax.random.PRNGKey(0), model, CHAIN, (8, 2), solver="euler_ancestral", ts=ts,
                   x_init=x_init, noise=noise[::-1])  # fmt: skip
    assert np.max(np.abs(np.asarray(other) - theirs[-1])) > 1e-2
