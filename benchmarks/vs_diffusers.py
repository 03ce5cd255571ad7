"""diffjax against PyTorch + diffusers, side by side in one process, the same network on both
sides (checked by parameter count; the MLP also by output on copied weights).

    pip install -e '.[bench]'     # torch==2.13.0 (CPU wheel) and diffusers: optional, never core
    python benchmarks/vs_diffusers.py                       # every section, 3 repeats
    python benchmarks/vs_diffusers.py --sections=mlp,unet --repeats=5 --unet-steps=10
    python benchmarks/vs_diffusers.py --sections=train --compile   # adds torch.compile

Sections (each prints a table of medians (min-max) over interleaved repeats, the sides
alternating order on every repeat, and the ratio diffjax time / torch time; < 1 means diffjax
is faster; the load average is printed with every table, since on a shared machine PyTorch
with 2 threads slows down far more than JAX or 1-thread PyTorch):

  mlp    sampling with one MLP (2-D points, hidden 256, 4 layers): DDIM 50, DPM-Solver++(2M) 20
         and DDPM 1000 steps, diffjax `sample` (one jitted scan) against diffusers' DDIM /
         DPMSolverMultistep / DDPM schedulers in the usual `for t in scheduler.timesteps` loop.
  unet   DDIM sampling of 64 images with the 1.11M-parameter DDPM U-Net (28x28x1, ch 32,
         ch_mult (1, 2, 2), 1 res block, attention at 7x7) against diffusers' UNet2DModel with
         the same blocks: diffjax through `sample()` on one device, and through the launcher's
         sampler (`diffjax.train.sampling.make_sampler`, the one function behind
         launch/sample.py, the training loop's grids and launch/evaluate.py) on all devices.
  train  train steps/s (forward, backward, Adam, EMA) of the 1.11M U-Net at batch 64 and the
         4.4M one (ch 64) at batch 32 with the launcher's step (`make_train_step`: data-parallel
         over every device, donated state) and on one device; FLOPs from XLA's cost analysis.
  first  time to the first train step and peak RSS, each side in a fresh subprocess (imports,
         model init, compile / first step); diffjax cold (empty compilation cache) and warm.

The process asks XLA for one CPU device per core and, on jaxlib 0.10, for its Eigen kernels
instead of the single-threaded YNNPACK fusions (`parallel.set_cpu_device_count`), as the
launch programs do. Timings exclude compilation except in `first`.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import subprocess
import sys
import tempfile
import time

if __name__ == "__main__":
    from diffjax.parallel import set_cpu_device_count

    set_cpu_device_count()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

T = 1000
BETAS = dict(num_train_timesteps=T, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
# (diffjax solver, its options, diffusers scheduler class, its options, steps)
SOLVER_PAIRS = {
    "ddim50": ("ddim", {}, "DDIMScheduler", {}, 50),
    "dpm++20": ("dpm_solver_pp", {}, "DPMSolverMultistepScheduler", {"solver_order": 2}, 20),
    "ddpm1000": ("ddpm", {}, "DDPMScheduler", {}, 1000),
}
# name -> U-Net: the two CPU sizes of issue #15 (MNIST-shaped) and DDPM's CIFAR-10 network
UNETS = {
    "1.11M": dict(ch=32, mult=(1, 2, 2), blocks=1, attn=(7,), size=28, cin=1),
    "4.4M": dict(ch=64, mult=(1, 2, 2), blocks=1, attn=(7,), size=28, cin=1),
    "35.7M": dict(ch=128, mult=(1, 2, 2, 2), blocks=2, attn=(16,), size=32, cin=3),
}
TRAIN_BATCH = {"1.11M": 64, "4.4M": 32, "35.7M": 128}
DEVICE = {"torch": "cpu", "bf16": False}  # set from the command line (benchmarks/gpu.sh)


def load() -> str:
    return "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def spread(xs) -> str:
    return f"{statistics.median(xs):.4g} ({min(xs):.3g}-{max(xs):.3g})"


def interleaved(fns: dict, repeats: int) -> dict[str, list[float]]:
    """Seconds per call of every fn, after one warm-up call each (compilation), the sides
    taking turns within every repeat and the order reversed on every other repeat."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for r in range(repeats):
        for name in list(fns) if r % 2 == 0 else list(reversed(fns)):
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
    return times


def print_table(title: str, rows: list[tuple[str, dict[str, list[float]], str]], unit: str):
    """rows: (case, {side: seconds}, reference side); ratio = median / median of reference."""
    print(f"\n## {title}  [{load()}; {jax.device_count()} XLA CPU devices]")
    print(f"{'case':<14}{'side':<34}{unit + ' median (min-max)':>30}{'ratio vs ref':>14}")
    for case, times, ref in rows:
        base = statistics.median(times[ref])
        for side, xs in times.items():
            ratio = statistics.median(xs) / base
            print(f"{case:<14}{side:<34}{spread(xs):>30}{ratio:>14.2f}")


# ----------------------------------------------------------------------------- the networks


def mlp_init(key, dim=2, hidden=256, depth=4):
    """Dense layers [dim + 1 -> hidden -> ... -> dim] (input x and t)."""
    sizes = [dim + 1] + [hidden] * depth + [dim]
    keys = jax.random.split(key, len(sizes) - 1)
    return [
        (jax.random.normal(k, (a, b)) / np.sqrt(a), jnp.zeros((b,)))
        for k, a, b in zip(keys, sizes[:-1], sizes[1:], strict=True)
    ]


def mlp_apply(params, x, t):
    h = jnp.concatenate([x, t[:, None]], axis=-1)
    for i, (w, b) in enumerate(params):
        h = h @ w + b
        if i < len(params) - 1:
            h = jax.nn.silu(h)
    return h


def torch_mlp(params):
    import torch

    layers = []
    for i, (w, b) in enumerate(params):
        lin = torch.nn.Linear(*w.shape)
        with torch.no_grad():
            lin.weight.copy_(torch.tensor(np.asarray(w).T))
            lin.bias.copy_(torch.tensor(np.asarray(b)))
        layers.append(lin)
        if i < len(params) - 1:
            layers.append(torch.nn.SiLU())
    return torch.nn.Sequential(*layers).eval()


def image_shape(name: str) -> tuple[int, int, int]:
    u = UNETS[name]
    return (u["size"], u["size"], u["cin"])


def diffjax_unet(name: str):
    from diffjax.models.unet import UNet

    u = UNETS[name]
    dtype = jnp.bfloat16 if DEVICE["bf16"] else jnp.float32  # compute; params stay float32
    return UNet(ch=u["ch"], ch_mult=u["mult"], num_res_blocks=u["blocks"],
                attn_resolutions=u["attn"], dropout=0.0, in_channels=u["cin"],
                dtype=dtype)  # fmt: skip


def diffusers_unet(name: str):
    """UNet2DModel with the blocks of `diffjax_unet` (attention with one head at the same
    resolutions; AttnDown/AttnUp blocks where diffjax attends)."""
    from diffusers import UNet2DModel

    u = UNETS[name]
    res = [u["size"] // 2**i for i in range(len(u["mult"]))]
    down = tuple("AttnDownBlock2D" if r in u["attn"] else "DownBlock2D" for r in res)
    up = tuple("AttnUpBlock2D" if r in u["attn"] else "UpBlock2D" for r in reversed(res))
    heads = max(u["ch"] * m for m, r in zip(u["mult"], res, strict=True) if r in u["attn"])
    return UNet2DModel(
        sample_size=u["size"], in_channels=u["cin"], out_channels=u["cin"],
        block_out_channels=tuple(u["ch"] * m for m in u["mult"]), layers_per_block=u["blocks"],
        down_block_types=down, up_block_types=up, attention_head_dim=heads, norm_num_groups=32,
        dropout=0.0,
    ).to(DEVICE["torch"])  # fmt: skip


def torch_sync():
    import torch

    if DEVICE["torch"].startswith("cuda"):
        torch.cuda.synchronize()


def count(params) -> int:
    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params))


def torch_threads(n: int):
    import torch

    torch.set_num_threads(n)


def with_threads(n: int, fn, k: int = 1):
    """A call of fn k times with torch limited to n threads."""

    def run():
        torch_threads(n)
        for _ in range(k):
            fn()

    return run


def times_k(fn, k: int):
    def run():
        for _ in range(k):
            fn()

    return run


# ----------------------------------------------------------------------------- sampling


def torch_loop(sched_cls, sched_opts, steps, net, shape, seed=0):
    """diffusers' loop: for k in timesteps: eps = net(x, k); x = scheduler.step(eps, k, x)."""
    import diffusers
    import torch

    sched = getattr(diffusers, sched_cls)(**BETAS, **sched_opts)

    def run():
        sched.set_timesteps(steps)
        g = torch.Generator(DEVICE["torch"]).manual_seed(seed)
        x = torch.randn(shape, generator=g, device=DEVICE["torch"])
        with torch.no_grad(), torch.autocast(DEVICE["torch"].split(":")[0], torch.bfloat16,
                                             enabled=DEVICE["bf16"]):  # fmt: skip
            for k in sched.timesteps:
                x = sched.step(net(x, k).float(), k, x, generator=g).prev_sample
        torch_sync()
        return x

    return run


def mlp_section(args) -> None:
    import torch

    from diffjax import processes, schedules
    from diffjax.samplers import sample

    chain = processes.discrete(schedules.linear_betas(T))
    params = mlp_init(jax.random.PRNGKey(0))
    net = torch_mlp(params)
    x = np.random.default_rng(0).normal(size=(8, 2)).astype(np.float32)
    t = np.linspace(0.1, 0.9, 8).astype(np.float32)
    with torch.no_grad():
        theirs = net(torch.cat([torch.tensor(x), torch.tensor(t)[:, None]], 1)).numpy()
    diff = np.max(np.abs(np.asarray(mlp_apply(params, jnp.asarray(x), jnp.asarray(t))) - theirs))
    n_torch = sum(p.numel() for p in net.parameters())
    print(f"\nMLP: {count(params)} parameters (torch {n_torch}); output max |diff| on copied "
          f"weights {diff:.1e}")  # fmt: skip
    model = jax.tree_util.Partial(mlp_apply, params)
    tnet = lambda x, k: net(torch.cat([x, torch.full((x.shape[0], 1), (int(k) + 1) / T)], 1))
    rows = []
    for batch in args.mlp_batches:
        for case in args.solvers:
            name, opts, cls, sopts, steps = SOLVER_PAIRS[case]
            if steps >= 1000 and batch not in args.ddpm_batches:
                continue
            kw = dict(solver=name, steps=steps, **opts)
            jx = functools.partial(_jax_sample, sample, model, chain, (batch, 2), kw)
            loop = torch_loop(cls, sopts, steps, tnet, (batch, 2))
            fns = {"diffjax sample()": jx}
            for n in args.threads:
                fns[f"diffusers loop, torch {n} thr"] = with_threads(n, loop)
            times = interleaved(fns, args.repeats)
            times = {k: [v / steps for v in vs] for k, vs in times.items()}
            ref = f"diffusers loop, torch {args.threads[0]} thr"
            rows.append((f"{case} B={batch}", times, ref))
    print_table("MLP sampling, seconds per step", rows, "s/step")


def _jax_sample(sample, model, process, shape, kw):
    return jax.block_until_ready(sample(jax.random.PRNGKey(1), model, process, shape, **kw))


def unet_apply_fn(module):
    def apply(params, x, t, y=None, *, train=False, key=None):
        return module.apply({"params": params}, x, t, y, train=train)

    return apply


def unet_section(args) -> None:
    from diffjax import processes, schedules
    from diffjax.samplers import sample
    from diffjax.train.components import Components
    from diffjax.train.sampling import make_sampler
    from diffjax.train.spec import CondSpec, SampleSpec

    chain = processes.discrete(schedules.linear_betas(T))
    name, batch, steps = args.unet_model, args.unet_batch, args.unet_steps
    shape = image_shape(name)
    module = diffjax_unet(name)
    x1 = jnp.zeros((1, *shape))
    params = jax.jit(lambda k: module.init(k, x1, jnp.zeros((1,)))["params"])(
        jax.random.PRNGKey(0))  # fmt: skip
    tnet = diffusers_unet(name).eval()
    print(f"\nU-Net: diffjax {count(params)} parameters, diffusers "
          f"{sum(p.numel() for p in tnet.parameters())}")  # fmt: skip
    apply = unet_apply_fn(module)
    c = Components(init_params=None, apply=apply, process=chain, loss=None, loss_kwargs={},
                   batches=None, data_key="image", example_shape=shape)  # fmt: skip
    from diffjax import parallel

    launcher = make_sampler(c, SampleSpec("ddim", steps, batch), CondSpec(), "eps", batch)
    repl = parallel.replicate(params, parallel.make_mesh())  # as a train state holds them
    model = jax.tree_util.Partial(lambda p, x, t: apply(p, x, t), params)
    key = jax.random.PRNGKey(1)
    fns = {
        "diffjax sample(), 1 device": lambda: jax.block_until_ready(
            sample(key, model, chain, (batch, *shape), solver="ddim", steps=steps)),
        f"diffjax launcher, {jax.device_count()} devices": lambda: jax.block_until_ready(
            launcher(repl, key)),
    }  # fmt: skip
    tmodel = lambda x, k: tnet(x, k).sample
    loop = torch_loop("DDIMScheduler", {}, steps, tmodel, (batch, shape[2], *shape[:2]))
    for n in args.threads:
        fns[f"diffusers loop, torch {n} thr"] = with_threads(n, loop)
    times = interleaved(fns, args.repeats)
    times = {k: [v / steps for v in vs] for k, vs in times.items()}
    ref = f"diffusers loop, torch {args.threads[0]} thr"
    print_table(f"U-Net ({name}) DDIM sampling, batch {batch}, {steps} steps, seconds per step",
                [(f"ddim B={batch}", times, ref)], "s/step")  # fmt: skip


# ----------------------------------------------------------------------------- training


def jax_train(name: str, batch: int, devices):
    """(step() running one launcher train step, params, FLOPs per step from XLA)."""
    import optax

    from diffjax import parallel
    from diffjax.train.spec import EmaSpec
    from diffjax.train.state import create_train_state
    from diffjax.train.step import make_train_step

    module, shape = diffjax_unet(name), image_shape(name)
    abar = jnp.cumprod(1.0 - jnp.linspace(1e-4, 0.02, T))

    def init_params(k):
        return module.init(k, jnp.zeros((1, *shape)), jnp.zeros((1,)))["params"]

    def loss_fn(params, key, batch, *, ema_params=None, frozen=None):
        x0 = batch["image"]
        k_key, n_key = jax.random.split(key)
        k = jax.random.randint(k_key, (x0.shape[0],), 0, T)
        eps = jax.random.normal(n_key, x0.shape)
        a = abar[k][:, None, None, None]
        xt = jnp.sqrt(a) * x0 + jnp.sqrt(1 - a) * eps
        loss = jnp.mean((module.apply({"params": params}, xt, (k + 1) / T) - eps) ** 2)
        return loss, {}

    mesh = parallel.make_mesh(devices)
    tx = optax.adam(2e-4)
    init = jax.jit(create_train_state, static_argnums=(1, 2),
                   out_shardings=parallel.replicated(mesh))  # fmt: skip
    holder = {"state": init(jax.random.PRNGKey(0), init_params, tx)}
    step_fn = make_train_step(loss_fn, tx, EmaSpec(0.9999), mesh)
    data = np.random.default_rng(0).uniform(-1, 1, (batch, *shape)).astype(np.float32)
    key = jax.random.PRNGKey(1)

    def step():
        state, metrics = step_fn(holder["state"], parallel.shard_batch({"image": data}, mesh), key)
        holder["state"] = state
        jax.block_until_ready(state.step)

    flops = float("nan")
    try:

        def plain(params, x):
            return jax.grad(lambda p: loss_fn(p, key, {"image": x})[0])(params)

        cost = jax.jit(plain).lower(holder["state"].params, data).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        flops = float(cost.get("flops", float("nan")))
    except Exception as err:  # cost analysis is best effort
        print(f"(no XLA cost analysis: {err})")
    return step, count(holder["state"].params), flops


def torch_train(name: str, batch: int, compile_: bool = False):
    import torch

    torch.manual_seed(0)
    net, (h, w, cin) = diffusers_unet(name).train(), image_shape(name)
    dev = DEVICE["torch"]
    fwd = torch.compile(net) if compile_ else net
    opt = torch.optim.Adam(net.parameters(), lr=2e-4)
    ema = [p.detach().clone() for p in net.parameters()]
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, T), 0).to(dev)
    data = torch.tensor(np.random.default_rng(0).uniform(-1, 1, (batch, cin, h, w)),
                        dtype=torch.float32, device=dev)  # fmt: skip

    def step():
        k = torch.randint(0, T, (batch,), device=dev)
        eps = torch.randn_like(data)
        a = abar[k][:, None, None, None]
        xt = a.sqrt() * data + (1 - a).sqrt() * eps
        with torch.autocast(dev.split(":")[0], torch.bfloat16, enabled=DEVICE["bf16"]):
            out = fwd(xt, k).sample
        loss = torch.mean((out.float() - eps) ** 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in net.parameters()], 1 - 0.9999)
        torch_sync()

    return step, sum(p.numel() for p in net.parameters())


def train_section(args) -> None:
    rows, notes = [], []
    for name in args.train_models:
        batch, k = args.train_batch[name], args.train_steps
        fns, counts = {}, {}
        step_all, counts["jax"], flops = jax_train(name, batch, None)
        step_one, _, _ = jax_train(name, batch, jax.devices()[:1])
        fns[f"diffjax step, {jax.device_count()} devices"] = times_k(step_all, k)
        fns["diffjax step, 1 device"] = times_k(step_one, k)
        tstep, counts["torch"] = torch_train(name, batch)
        for n in args.threads:
            fns[f"torch eager, {n} thr"] = with_threads(n, tstep, k)
        if args.compile:
            try:
                t0 = time.perf_counter()
                cstep, _ = torch_train(name, batch, compile_=True)
                torch_threads(args.threads[0])
                cstep()
                notes.append(f"torch.compile {name}: first step {time.perf_counter() - t0:.0f} s")
                fns[f"torch.compile, {args.threads[0]} thr"] = with_threads(
                    args.threads[0], cstep, k
                )
            except Exception as err:  # a broken compiler stack is reported, not fatal
                notes.append(f"torch.compile {name} failed: {type(err).__name__}: {err}"[:300])
        times = interleaved(fns, args.repeats)
        rate = {s: [k * batch / v for v in vs] for s, vs in times.items()}
        inv = {s: [1.0 / r for r in rs] for s, rs in rate.items()}  # s/example: ratio = time
        rows.append((f"{name} B={batch}", inv, f"torch eager, {args.threads[0]} thr"))
        sec = statistics.median(times[f"diffjax step, {jax.device_count()} devices"]) / k
        notes.append(
            f"{name}: params diffjax {counts['jax']} torch {counts['torch']}; XLA cost analysis "
            f"{flops / batch / 1e9:.3f} GFLOP per example per step (fwd+bwd), achieved "
            f"{flops / sec / 1e9:.1f} GFLOP/s on {jax.device_count()} devices"
            + (
                f" (MFU {flops / sec / 1e12 / args.peak_tflops:.1%} of {args.peak_tflops} TFLOP/s)"
                if args.peak_tflops
                else ""
            )
            + "; examples/s "
            + ", ".join(f"{s}: {statistics.median(r):.1f}" for s, r in rate.items())
        )
    print_table("U-Net train step (fwd, bwd, Adam, EMA), seconds per example", rows, "s/example")
    for n in notes:
        print("  " + n)


# ----------------------------------------------------------------------------- first step

CHILD = r"""
import os, resource, sys, time
t0 = time.perf_counter()
side, name, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[4])))
if side == "jax":
    from diffjax.parallel import set_cpu_device_count
    set_cpu_device_count()
    import jax
    jax.config.update("jax_compilation_cache_dir", sys.argv[5])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    import vs_diffusers as b
    t1 = time.perf_counter()
    step = b.jax_train_no_flops(name, batch)
else:
    import torch
    torch.set_num_threads(2)
    import vs_diffusers as b
    t1 = time.perf_counter()
    step, _ = b.torch_train(name, batch)
t2 = time.perf_counter()
step()
t3 = time.perf_counter()
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"RESULT import={t1 - t0:.2f} build={t2 - t1:.2f} first_step={t3 - t2:.2f} "
      f"total={t3 - t0:.2f} peak_rss_mb={rss:.0f}")
"""


def jax_train_no_flops(name: str, batch: int):
    """The launcher train step without the cost analysis (for the first-step child)."""
    import optax

    from diffjax import parallel
    from diffjax.train.spec import EmaSpec
    from diffjax.train.state import create_train_state
    from diffjax.train.step import make_train_step

    module, shape = diffjax_unet(name), image_shape(name)
    abar = jnp.cumprod(1.0 - jnp.linspace(1e-4, 0.02, T))

    def loss_fn(params, key, batch, *, ema_params=None, frozen=None):
        x0 = batch["image"]
        k = jax.random.randint(key, (x0.shape[0],), 0, T)
        eps = jax.random.normal(jax.random.fold_in(key, 1), x0.shape)
        a = abar[k][:, None, None, None]
        xt = jnp.sqrt(a) * x0 + jnp.sqrt(1 - a) * eps
        return jnp.mean((module.apply({"params": params}, xt, (k + 1) / T) - eps) ** 2), {}

    mesh, tx = parallel.make_mesh(), optax.adam(2e-4)
    init_params = lambda k: module.init(k, jnp.zeros((1, *shape)), jnp.zeros((1,)))["params"]
    init = jax.jit(create_train_state, static_argnums=(1, 2),
                   out_shardings=parallel.replicated(mesh))  # fmt: skip
    holder = {"state": init(jax.random.PRNGKey(0), init_params, tx)}
    step_fn = make_train_step(loss_fn, tx, EmaSpec(0.9999), mesh)
    data = np.zeros((batch, *shape), np.float32)

    def step():
        holder["state"], _ = step_fn(holder["state"], parallel.shard_batch({"image": data}, mesh),
                                     jax.random.PRNGKey(1))  # fmt: skip
        jax.block_until_ready(holder["state"].step)

    return step


def first_section(args) -> None:
    here = os.path.abspath(__file__)
    cache = tempfile.mkdtemp(prefix="diffjax-bench-cache-")  # empty: the first run is cold
    runs = [("torch", "torch eager (2 thr)"), ("jax", "diffjax cold cache"),
            ("jax", "diffjax warm cache"), ("torch", "torch eager again")]  # fmt: skip
    print(f"\n## time to first train step, fresh process each  [{load()}]")
    print(f"{'model':<8}{'side':<22}{'wall s':>8}  child breakdown")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    for name in args.train_models:
        batch = args.train_batch[name]
        for side, label in runs:
            t0 = time.perf_counter()
            out = subprocess.run(
                [sys.executable, "-c", CHILD, side, name, str(batch), here, cache],
                capture_output=True, text=True, env=env, timeout=900,
            )  # fmt: skip
            wall = time.perf_counter() - t0
            line = [s for s in out.stdout.splitlines() if s.startswith("RESULT")]
            detail = line[0][7:] if line else f"failed: {out.stderr[-300:]}"
            print(f"{name:<8}{label:<22}{wall:>8.1f}  {detail}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sections", default="mlp,unet,train,first")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", default="2,1", help="torch thread counts, reference first")
    p.add_argument("--solvers", default="ddim50,dpm++20,ddpm1000")
    p.add_argument("--mlp-batches", default="64,256")
    p.add_argument("--ddpm-batches", default="64", help="MLP batches for the 1000-step run")
    p.add_argument("--unet-model", default="1.11M", choices=sorted(UNETS))
    p.add_argument("--unet-batch", type=int, default=64)
    p.add_argument("--unet-steps", type=int, default=10, help="DDIM steps timed (per-step cost)")
    p.add_argument("--train-models", default="1.11M,4.4M", help="U-Nets for train and first")
    p.add_argument("--train-steps", type=int, default=3, help="train steps per timed repeat")
    p.add_argument("--compile", action="store_true", help="also time torch.compile")
    p.add_argument("--torch-device", default="cpu", help="cpu or cuda (benchmarks/gpu.sh)")
    p.add_argument("--bf16", action="store_true", help="bf16 compute, f32 params, both sides")
    p.add_argument("--peak-tflops", type=float, default=0.0, help="device peak, for MFU")
    p.add_argument(
        "--train-batch",
        dest="train_batch_override",
        default="",
        help="e.g. 35.7M=128 (default per model)",
    )
    args = p.parse_args(argv)
    args.threads = [int(n) for n in args.threads.split(",")]
    args.solvers = args.solvers.split(",")
    args.mlp_batches = [int(b) for b in args.mlp_batches.split(",")]
    args.ddpm_batches = [int(b) for b in args.ddpm_batches.split(",")]
    DEVICE.update(torch=args.torch_device, bf16=args.bf16)
    args.train_batch = dict(TRAIN_BATCH)
    for item in filter(None, args.train_batch_override.split(",")):
        name, value = item.split("=")
        args.train_batch[name] = int(value)
    args.train_models = args.train_models.split(",")
    import torch

    print(f"jax {jax.__version__} ({jax.device_count()} devices), torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs; {load()}")  # fmt: skip
    sections = {"mlp": mlp_section, "unet": unet_section, "train": train_section,
                "first": first_section}  # fmt: skip
    for name in args.sections.split(","):
        sections[name](args)


if __name__ == "__main__":
    main()
