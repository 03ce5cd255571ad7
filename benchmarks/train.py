"""Training throughput (examples/s) and time to the first step for backbone presets.

  python benchmarks/train.py                       # small CPU defaults
  python benchmarks/train.py --models unet_ddpm_cifar10,dit_s2 --image_size 32 \
      --channels 3 --batch_sizes 64,128 --steps 20  # on a GPU

Prints one table row per (model, batch size): parameters, devices, time to the first step
(trace + compile + run), steady-state steps/s and examples/s (median over timed steps).
Data are random arrays (throughput does not depend on the values); the loss is L_simple.

  python benchmarks/train.py --options --models unet_tiny --batch_sizes 32 --rounds 5

instead times the train-step options side by side on one model and batch size: the plain
step, steps_per_call=4 (4 steps per call), grad_accum=2, remat and bfloat16 compute; the two
scans once as `make_train_step` compiles them on this backend (unrolled on CPU) and once as a
rolled `lax.scan` ("scan"). Each is compiled first; then every round times `--steps` optimiser
steps of each option in turn (interleaved, so a change in the machine's load hits all of them
alike), and the table gives the median examples/s over the rounds, the min-max spread and the
ratio to the plain step, with the load average (`os.getloadavg`) before and after.
`--option_names=steps_per_call=4,grad_accum=2` times a subset (with the plain step).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from diffjax.parallel import set_cpu_device_count  # noqa: E402

set_cpu_device_count()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from diffjax import parallel  # noqa: E402
from diffjax.losses import simple  # noqa: E402
from diffjax.models import get_model  # noqa: E402
from diffjax.processes import get_process  # noqa: E402
from diffjax.train.builders import make_apply  # noqa: E402
from diffjax.train.components import Components, make_loss_fn  # noqa: E402
from diffjax.train.optim import make_optimizer  # noqa: E402
from diffjax.train.spec import CondSpec, EmaSpec, OptimSpec  # noqa: E402
from diffjax.train.state import create_train_state, param_count  # noqa: E402
from diffjax.train.step import make_train_step  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", default="unet_tiny,dit_tiny", help="comma-separated presets")
    p.add_argument("--model_kwargs", default="", help="e.g. ch=32,num_groups=8 (ints/floats)")
    p.add_argument("--image_size", type=int, default=8)
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--batch_sizes", default="32,64", help="comma-separated global batch sizes")
    p.add_argument("--steps", type=int, default=10, help="timed steps after the first")
    p.add_argument("--devices", type=int, default=0, help="use the first N devices (0: all)")
    p.add_argument("--options", action="store_true", help="time the train-step options")
    p.add_argument("--rounds", type=int, default=5, help="--options: interleaved rounds")
    p.add_argument(
        "--option_names", default="", help="--options: a comma-separated subset (default: all)"
    )
    return p.parse_args(argv)


def _kwargs(text: str) -> dict:
    out = {}
    for item in filter(None, text.split(",")):
        k, v = item.split("=")
        out[k] = int(v) if v.lstrip("-").isdigit() else float(v)
    return out


def _components(name, kwargs, shape) -> Components:
    """The model `name` (eps prediction, no labels) with L_simple on the VP process."""
    kwargs = {"learn_sigma": False, **kwargs} if name.startswith("dit") else kwargs  # eps only
    net = get_model(name, in_channels=shape[-1], num_classes=None, **kwargs)
    x = np.zeros((1, *shape), np.float32)
    return Components(
        init_params=lambda k: net.init(k, x, np.full((1,), 0.5, np.float32))["params"],
        apply=make_apply(net),
        process=get_process("vp"),
        loss=simple,
        loss_kwargs={},
        batches=None,
        data_key="image",
        example_shape=shape,
    )


def bench(name, kwargs, shape, batch, steps, mesh) -> dict:
    """Time the first step and `steps` further steps of one model at one batch size."""
    c = _components(name, kwargs, shape)
    tx = make_optimizer(OptimSpec(learning_rate=1e-4))
    state = parallel.replicate(create_train_state(jax.random.PRNGKey(0), c.init_params, tx), mesh)
    step = make_train_step(make_loss_fn(c, CondSpec()), tx, EmaSpec(), mesh)
    data = np.random.default_rng(0).normal(size=(batch, *shape)).astype(np.float32)
    key, times = jax.random.PRNGKey(1), []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        state, metrics = step(state, parallel.shard_batch({"image": data}, mesh), key)
        jax.block_until_ready(metrics["loss"])
        times.append(time.perf_counter() - t0)
    per_step = float(np.median(times[1:])) if steps else float("nan")
    return dict(
        params=param_count(state.params), first=times[0], sps=1 / per_step, eps=batch / per_step
    )


# option name -> (model kwargs, make_train_step kwargs)
OPTIONS = {
    "plain": ({}, {}),
    "steps_per_call=4": ({}, {"steps_per_call": 4}),
    "steps_per_call=4 scan": ({}, {"steps_per_call": 4, "unroll": False}),
    "grad_accum=2": ({}, {"grad_accum": 2}),
    "grad_accum=2 scan": ({}, {"grad_accum": 2, "unroll": False}),
    "remat": ({"remat": True}, {}),
    "bfloat16": ({"dtype": jnp.bfloat16}, {}),
}


def bench_options(name, kwargs, shape, batch, steps, rounds, mesh, names=()) -> dict:
    """{option: [examples/s of each round]} of the OPTIONS (or those in `names`; 'plain' is
    always kept, as the ratios' reference) on one model and batch size, each compiled first and
    then timed for `steps` optimiser steps per round, round-robin."""
    unknown = sorted(set(names) - set(OPTIONS))
    if unknown:
        raise ValueError(f"unknown --option_names {unknown}; expected some of {list(OPTIONS)}")
    chosen = {k: v for k, v in OPTIONS.items() if not names or k in names or k == "plain"}
    tx = make_optimizer(OptimSpec(learning_rate=1e-4))
    data = np.random.default_rng(0).normal(size=(batch, *shape)).astype(np.float32)
    sharded, key = parallel.shard_batch({"image": data}, mesh), jax.random.PRNGKey(1)
    runs = {}
    for option, (model_kw, step_kw) in chosen.items():
        c = _components(name, {**kwargs, **model_kw}, shape)
        state = create_train_state(jax.random.PRNGKey(0), c.init_params, tx)
        fn = make_train_step(make_loss_fn(c, CondSpec()), tx, EmaSpec(), mesh, **step_kw)
        k = step_kw.get("steps_per_call", 1)
        arg = sharded if k == 1 else (sharded,) * k
        t0 = time.perf_counter()
        state, metrics = fn(parallel.replicate(state, mesh), arg, key)
        jax.block_until_ready(metrics["loss"])
        runs[option] = dict(fn=fn, arg=arg, k=k, state=state, first=time.perf_counter() - t0)
        print(f"  compiled {option} in {runs[option]['first']:.1f} s", flush=True)
    out = {option: {"first": r["first"], "eps": []} for option, r in runs.items()}
    for _ in range(rounds):
        for option, r in runs.items():
            calls = max(steps // r["k"], 1)
            t0 = time.perf_counter()
            for _ in range(calls):
                r["state"], metrics = r["fn"](r["state"], r["arg"], key)
            jax.block_until_ready(metrics["loss"])
            out[option]["eps"].append(calls * r["k"] * batch / (time.perf_counter() - t0))
    return out


def main_options(args, mesh, shape) -> None:
    name, batch = args.models.split(",")[0], int(args.batch_sizes.split(",")[0])
    load0 = os.getloadavg()
    names = [n for n in args.option_names.split(",") if n]
    r = bench_options(
        name, _kwargs(args.model_kwargs), shape, batch, args.steps, args.rounds, mesh, names
    )
    load1 = os.getloadavg()
    base = float(np.median(r["plain"]["eps"]))
    print(f"{name}, batch {batch}, {args.steps} steps x {args.rounds} interleaved rounds")
    print(f"{'option':<24}{'first step s':>14}{'ex/s median':>13}{'min-max':>17}{'ratio':>8}")
    for option, v in r.items():
        eps = np.asarray(v["eps"])
        spread = f"{eps.min():.0f}-{eps.max():.0f}"
        print(
            f"{option:<24}{v['first']:>14.2f}{np.median(eps):>13.0f}{spread:>17}"
            f"{np.median(eps) / base:>8.2f}"
        )
    print(f"load average (1, 5, 15 min): before {load0}, after {load1}")


def main(argv=None):
    args = parse_args(argv)
    devices = jax.devices()[: args.devices or None]
    mesh = parallel.make_mesh(devices)
    shape = (args.image_size, args.image_size, args.channels)
    print(f"device: {devices[0].device_kind} x {len(devices)}; image {shape}")
    if args.options:
        main_options(args, mesh, shape)
        return
    print(f"{'model':<20}{'batch':>7}{'params':>12}{'first step s':>14}{'steps/s':>10}{'ex/s':>10}")
    for name in args.models.split(","):
        for batch in map(int, args.batch_sizes.split(",")):
            r = bench(name, _kwargs(args.model_kwargs), shape, batch, args.steps, mesh)
            print(
                f"{name:<20}{batch:>7}{r['params']:>12,}{r['first']:>14.2f}{r['sps']:>10.2f}"
                f"{r['eps']:>10.0f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
