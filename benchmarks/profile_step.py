"""Where one U-Net train step's time goes, op by op, from a `jax.profiler` trace.

    python benchmarks/profile_step.py                        # the 1.11M U-Net, batch 64
    python benchmarks/profile_step.py --model=4.4M --steps=3
    XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type= python benchmarks/profile_step.py

Runs the launcher's train step (`make_train_step`: forward, backward, Adam, EMA, data-parallel
over every device) of one of `vs_diffusers.py`'s U-Nets on random data, compiles it, then
traces `--steps` steps and prints two tables: the device time per step by kind of XLA op
(`convolution` the backward convolutions, `conv_general_dilated` the forward ones, `dot`,
each kind of fusion, ...), with its share and the number of ops, and the slowest single ops.
Times are summed over the XLA threads of every device, so on several devices the total is
their sum, not the wall-clock. The XLA_FLAGS of the run are printed with the tables: run it
once per setting to see what a flag changes.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

if __name__ == "__main__":
    from diffjax.parallel import set_cpu_device_count

    set_cpu_device_count()

import jax  # noqa: E402
import vs_diffusers as vd  # noqa: E402

# trace lines that are not XLA ops: the Python thread, the client's waits, the executor's wraps
HOST_LINES = ("python", "PjRtCpuClient", "pjrt")
WRAPPERS = ("ThunkExecutor", "Thunk::", "ExecuteHelper")


def kind(name: str) -> str:
    """'convolution.41' -> 'convolution', 'add_divide_fusion.4' -> 'add_divide_fusion'."""
    name = re.sub(r"\.\d+$", "", name)
    return re.sub(r"_fusion.*", "_fusion", name)


def op_times(trace_dir: str) -> tuple[collections.Counter, collections.Counter]:
    """(nanoseconds per op name, calls per op name) over every XLA thread of the trace."""
    files = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
    if not files:
        raise FileNotFoundError(f"no .xplane.pb trace under {trace_dir}")
    data = jax.profiler.ProfileData.from_file(files[0])
    ns, calls = collections.Counter(), collections.Counter()
    for plane in data.planes:
        for line in plane.lines:
            if any(h in line.name for h in HOST_LINES):
                continue
            for ev in line.events:
                if ev.name.startswith(WRAPPERS):
                    continue
                ns[ev.name] += ev.duration_ns
                calls[ev.name] += 1
    return ns, calls


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="1.11M", choices=sorted(vd.UNETS))
    p.add_argument("--batch", type=int, default=0, help="default: vs_diffusers.py's train batch")
    p.add_argument("--steps", type=int, default=2, help="train steps traced")
    p.add_argument("--top", type=int, default=15, help="slowest single ops listed")
    args = p.parse_args(argv)
    batch = args.batch or vd.TRAIN_BATCH[args.model]
    step, params, flops = vd.jax_train(args.model, batch, None)
    step()  # compile
    step()
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d):
            for _ in range(args.steps):
                step()
        ns, calls = op_times(d)
    per_kind, n_kind = collections.Counter(), collections.Counter()
    for name, v in ns.items():
        per_kind[kind(name)] += v
        n_kind[kind(name)] += calls[name]
    total = sum(per_kind.values())
    print(
        f"\n## {args.model} U-Net ({params} parameters) train step, batch {batch}, "
        f"{jax.device_count()} {jax.devices()[0].platform} devices, {vd.load()}, "
        f"XLA_FLAGS='{os.environ.get('XLA_FLAGS', '')}'"
    )
    print(f"op time summed over XLA threads: {total / 1e6 / args.steps:.1f} ms per step "
          f"({flops / 1e9:.1f} GFLOP per step from XLA's cost analysis)")  # fmt: skip
    print(f"{'kind of op':<34}{'ms/step':>10}{'share':>8}{'ops/step':>10}")
    for k, v in per_kind.most_common():
        if v < 0.002 * total:
            break
        print(f"{k:<34}{v / 1e6 / args.steps:>10.1f}{v / total:>8.1%}"
              f"{n_kind[k] // args.steps:>10d}")  # fmt: skip
    print(f"\nslowest {args.top} ops (ms per step)")
    for name, v in ns.most_common(args.top):
        print(f"  {v / 1e6 / args.steps:8.1f}  {name}")


if __name__ == "__main__":
    main()
