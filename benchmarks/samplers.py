"""Sampler benchmark: accuracy on the Gaussian-mixture oracle and loop overhead on a U-Net.

Table 1, for each solver and NFE budget: the sliced Wasserstein distance SW_2 of the samples to
fresh data (the line `null` gives SW_2 between two independent data sets of the same size, the
floor), and for deterministic solvers the RMS error against a tight dopri5 solve
(rtol = atol = 1e-7) of the same probability-flow ODE from the same noise.
Table 2: overhead = wall time of sampling / (NFE x wall time of one network call), compile
excluded, for a U-Net (diffjax.models.unet if present, else a plain jitted conv net).

Usage: python benchmarks/samplers.py [--num 5000] [--nfes 5,10,20,50,100,1000]
       [--solvers ddim,heun,...] [--size 32 --ch 32 --batch 16 --overhead-nfe 20]
"""

from __future__ import annotations

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from diffjax import processes, toy
from diffjax.metrics.lowdim import sliced_wasserstein
from diffjax.samplers import SOLVERS, sample

# model calls per grid interval; solver options used in the benchmark
PER_STEP = {"heun": 2, "rk4": 4, "dpm_solver": 3, "pc": 2, "annealed_langevin": 5}
OPTIONS = {
    "dpm_solver": {"order": 3},
    "pc": {"n_corrector": 1},
    "annealed_langevin": {"n_steps_each": 5, "step_lr": 2e-5},  # the paper's step_lr
}
DETERMINISTIC = {"ddim", "euler", "heun", "rk4", "dopri5", "dpm_solver", "dpm_solver_pp", "plms"}
DOPRI_TOLS = (1e-2, 1e-3, 1e-4, 1e-5)


def _sample(model, process, x_init, name, steps, **opts):
    key = jax.random.PRNGKey(1)
    kw = {**OPTIONS.get(name, {}), **opts}
    x, info = sample(key, model, process, x_init.shape, solver=name, steps=steps,
                     x_init=x_init, return_info=True, **kw)  # fmt: skip
    return np.asarray(x), int(info["nfe"])


def accuracy_table(args) -> None:
    mix, process = toy.random_mixture(seed=7, k=3, dim=2, scale=1.5), processes.vp()
    model = toy.exact_model(mix, process, "eps")
    x_init = process.prior_sample(jax.random.PRNGKey(0), (args.num, 2))
    data = toy.sample(jax.random.PRNGKey(100), mix, args.num)
    pkey = jax.random.PRNGKey(101)
    sw = lambda x: float(sliced_wasserstein(pkey, jnp.asarray(x, jnp.float32), data))  # noqa: E731
    ref, _ = _sample(model, process, x_init, "dopri5", None, rtol=1e-7, atol=1e-7)
    null = [sw(toy.sample(jax.random.PRNGKey(5 + i), mix, args.num)) for i in range(5)]
    print(f"\nGMM oracle (VP, eps model, {args.num} samples); null SW_2 (fresh data vs data, 5 "
          f"draws) = {np.mean(null):.4f} +- {np.std(null):.4f}; SW_2 of the reference ODE "
          f"solution = {sw(ref):.4f}")  # fmt: skip
    print("time s: median of 3 calls, compilation excluded")
    print(f"{'solver':<18}{'NFE':>6}{'SW_2':>10}{'ODE err':>12}{'time s':>9}")
    for name in args.solvers:
        runs = (
            [(None, {"rtol": tol, "atol": tol}) for tol in DOPRI_TOLS]
            if name == "dopri5"
            else [(nfe // PER_STEP.get(name, 1), {}) for nfe in args.nfes]
        )
        for steps, opts in runs:
            if steps is not None and steps < 1:
                continue
            x, nfe = _sample(model, process, x_init, name, steps, **opts)  # compiles
            times = []
            for _ in range(3):  # the time column excludes compilation: median of 3 calls
                t0 = time.perf_counter()
                _sample(model, process, x_init, name, steps, **opts)
                times.append(time.perf_counter() - t0)
            dt = float(np.median(times))
            err = np.sqrt(np.mean((x - ref) ** 2)) if name in DETERMINISTIC else float("nan")
            print(f"{name:<18}{nfe:>6}{sw(x):>10.3g}{err:>12.2e}{dt:>9.2f}")


def _network(args):
    """(model(x, t), description): the diffjax U-Net if available, else a plain conv net."""
    shape = (args.batch, args.size, args.size, args.channels)
    x = jnp.zeros(shape)
    t = jnp.zeros((args.batch,))
    try:
        from diffjax.models.unet import UNet

        net = UNet(ch=args.ch, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(8,),
                   dropout=0.0, in_channels=args.channels, num_groups=8)  # fmt: skip
        params = net.init(jax.random.PRNGKey(0), x, t)
        desc = "diffjax.models.unet.UNet"
        return (lambda x, t: net.apply(params, x, t)), desc, params
    except ImportError:
        ks = jax.random.split(jax.random.PRNGKey(0), 4)
        ws = [jax.random.normal(k, (3, 3, c_in, c_out)) * 0.1 for k, (c_in, c_out) in zip(
            ks, [(args.channels, args.ch), (args.ch, args.ch), (args.ch, args.ch),
                 (args.ch, args.channels)], strict=True)]  # fmt: skip

        def conv_net(x, t):
            h = x
            for w in ws:
                h = jax.lax.conv_general_dilated(
                    h, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
                )
                h = jax.nn.silu(h + t[:, None, None, None])
            return h

        return conv_net, "plain 4-layer conv net", ws


def overhead_table(args) -> None:
    model, desc, params = _network(args)
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
    x = jax.random.normal(jax.random.PRNGKey(0), (args.batch, args.size, args.size, args.channels))
    t = jnp.full((args.batch,), 0.5)
    call = jax.jit(model)
    call(x, t).block_until_ready()
    t0 = time.perf_counter()
    for _ in range(args.repeats):
        call(x, t).block_until_ready()
    t_call = (time.perf_counter() - t0) / args.repeats
    process = processes.vp()
    print(f"\nOverhead on {desc} ({n_params / 1e6:.2f}M params), batch {args.batch} x "
          f"{args.size}x{args.size}x{args.channels}; one call {1e3 * t_call:.1f} ms")  # fmt: skip
    print(f"{'solver':<18}{'NFE':>6}{'sample s':>10}{'overhead':>10}")
    for name in args.overhead_solvers:
        steps = None if name == "dopri5" else max(1, args.overhead_nfe // PER_STEP.get(name, 1))
        kw = {**OPTIONS.get(name, {}), **({"rtol": 1e-3, "atol": 1e-3} if steps is None else {})}
        run = functools.partial(
            sample, jax.random.PRNGKey(1), model, process, x.shape, solver=name, steps=steps,
            x_init=x, return_info=True, **kw,
        )  # fmt: skip
        jax.block_until_ready(run()[0])  # compile
        t0 = time.perf_counter()
        out, info = run()
        jax.block_until_ready(out)
        dt = time.perf_counter() - t0
        nfe = int(info["nfe"])
        print(f"{name:<18}{nfe:>6}{dt:>10.2f}{dt / (nfe * t_call):>10.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num", type=int, default=5000, help="GMM samples per run")
    p.add_argument("--nfes", default="5,10,20,50,100,1000")
    p.add_argument("--solvers", default=",".join(SOLVERS))
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--ch", type=int, default=32, help="U-Net base width")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--overhead-nfe", type=int, default=20)
    p.add_argument("--overhead-solvers", default="ddim,ddpm,heun,dpm_solver_pp,plms,pc,dopri5")
    p.add_argument("--skip-accuracy", action="store_true")
    p.add_argument("--skip-overhead", action="store_true")
    args = p.parse_args()
    args.nfes = [int(v) for v in args.nfes.split(",")]
    args.solvers = args.solvers.split(",")
    args.overhead_solvers = args.overhead_solvers.split(",")
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {jax.device_count()} device(s)")
    if not args.skip_accuracy:
        accuracy_table(args)
    if not args.skip_overhead:
        overhead_table(args)


if __name__ == "__main__":
    main()
