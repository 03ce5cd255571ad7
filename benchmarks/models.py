"""Backbone presets: parameters, forward GFLOPs per example (XLA cost analysis of the compiled
forward) and forward / train-step (forward, backward, Adam) examples per second on one device.

    python benchmarks/models.py                      # CPU: the small presets; GPU: all
    python benchmarks/models.py --presets=dit_s2,unet_ddpm_cifar10 --batch=16
    python benchmarks/models.py --presets=all --flops-only   # counts and GFLOPs, no timing

XLA counts a multiply-add as 2 FLOPs; papers that quote "Gflops" from fvcore (DiT, Table 4)
count it as 1, so the DiT paper's numbers are about half of the column printed here.
"""

from __future__ import annotations

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from diffjax.models import MODELS, get_model

# name -> (input shape per example, number of classes given as labels or None)
SHAPES = {
    "mlp": ((2,), None),
    "unet_tiny": ((16, 16, 3), None),
    "unet_small": ((32, 32, 3), None),
    "unet_ddpm_cifar10": ((32, 32, 3), None),
    "unet_ddpm_256": ((256, 256, 3), None),
    "dit_tiny": ((8, 8, 4), 10),
    "dit_s2": ((32, 32, 4), 1000),
    "dit_b2": ((32, 32, 4), 1000),
    "dit_l2": ((32, 32, 4), 1000),
    "dit_xl2": ((32, 32, 4), 1000),
}
CPU_DEFAULT = ("mlp", "unet_tiny", "unet_small", "dit_tiny", "unet_ddpm_cifar10", "dit_s2")


def _inputs(name: str, batch: int):
    shape, n_classes = SHAPES[name]
    x = jnp.ones((batch, *shape), jnp.float32)
    t = jnp.linspace(0.1, 0.9, batch)
    y = None if n_classes is None else jnp.arange(batch) % n_classes
    return x, t, y


def _forward_flops(model, variables, x, t, y) -> float:
    """FLOPs of one compiled forward pass, from XLA's cost analysis (abstract inputs only)."""
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), variables)
    compiled = jax.jit(model.apply).lower(abstract, x, t, y).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", float("nan")))


def _rate(fn, args, batch: int, iters: int, min_seconds: float = 1.0) -> str:
    """Examples per second of fn(*args) after one warm-up (compile) call, as 'median (min-max)'
    over the calls: at least `iters` calls and at least `min_seconds`, so tiny models are not
    timed on dispatch noise alone. fn returns (args for the next call, output)."""
    args, out = fn(*args)
    jax.block_until_ready(out)
    rates, start = [], time.perf_counter()
    while len(rates) < iters or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        args, out = fn(*args)
        jax.block_until_ready(out)
        rates.append(batch / (time.perf_counter() - t0))
    return f"{np.median(rates):.1f} ({min(rates):.0f}-{max(rates):.0f})"


def bench(name: str, batch: int, iters: int, flops_only: bool, dtype) -> dict:
    """Parameters, GFLOPs/example and (unless flops_only) forward and train rates for a preset."""
    model = get_model(name, dtype=dtype)
    x, t, y = _inputs(name, batch)
    init = lambda: model.init(jax.random.PRNGKey(0), x, t, y)
    shapes = jax.eval_shape(init)
    row = {"name": name, "params_M": sum(int(np.prod(a.shape)) for a in jax.tree.leaves(shapes))}
    row["params_M"] /= 1e6
    row["gflops"] = _forward_flops(model, shapes, x, t, y) / batch / 1e9
    if flops_only:
        return row
    variables = jax.jit(init)()
    apply = jax.jit(model.apply)
    fwd = lambda *a: (a, apply(*a))
    loss = lambda v: jnp.mean(model.apply(v, x, t, y) ** 2)
    tx = optax.adam(1e-4)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def train(v, opt_state):  # a full step: forward, backward and the Adam update
        value, grads = jax.value_and_grad(loss)(v)
        updates, opt_state = tx.update(grads, opt_state, v)
        return (optax.apply_updates(v, updates), opt_state), value

    row["fwd_ex_s"] = _rate(fwd, (variables, x, t, y), batch, iters)
    row["fwdbwd_ex_s"] = _rate(train, (variables, tx.init(variables)), batch, iters)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default=None, help="comma-separated names, or 'all'")
    parser.add_argument("--batch", type=int, default=None, help="default 32 on CPU, 64 on GPU")
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--flops-only", action="store_true", help="skip timing")
    args = parser.parse_args()
    on_cpu = jax.default_backend() == "cpu"
    if args.presets in (None, ""):
        names = list(CPU_DEFAULT) if on_cpu else list(SHAPES)
    elif args.presets == "all":
        names = list(SHAPES)
    else:
        names = args.presets.split(",")
    unknown = [n for n in names if n not in SHAPES or n not in MODELS]
    if unknown:
        raise SystemExit(f"unknown presets {unknown}; choose from {sorted(SHAPES)}")
    batch = args.batch or (32 if on_cpu else 64)
    print(
        f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), batch {batch}, "
        f"compute {args.dtype}, params float32; one device (the data-parallel launcher step "
        "against PyTorch: benchmarks/vs_diffusers.py --sections=train); ex/s median (min-max)"
    )
    print(f"{'preset':<20}{'params (M)':>12}{'GFLOPs/ex':>12}{'fwd ex/s':>26}{'train ex/s':>26}")
    for name in names:
        r = bench(name, batch, args.iters, args.flops_only, jnp.dtype(args.dtype))
        fwd, train = r.get("fwd_ex_s", "-"), r.get("fwdbwd_ex_s", "-")
        print(
            f"{name:<20}{r['params_M']:>12.2f}{r['gflops']:>12.4g}{fwd:>26}{train:>26}",
            flush=True,
        )


if __name__ == "__main__":
    main()
