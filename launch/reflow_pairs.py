"""Generate reflow (noise, sample) pairs from a trained rectified flow's EMA model.

  python launch/reflow_pairs.py --workdir=workdirs/flow --out=workdirs/flow_pairs \
      --num=8192 --solver=euler --steps=100 --chunk_size=1024

Integrates the flow's ODE from N(0, I) noise to t = 0 (sharded over the local devices) and
writes `<out>/pairs_<c>.npz` chunks ('z', 'x') and `<out>/pairs_info.json`; train the next
flow on them with `--config=experiments/reflow.py:stage=reflow --config.data.data_dir=<out>`.
Read-only on --workdir.
"""

from diffjax.parallel import set_cpu_device_count

set_cpu_device_count()

import json  # noqa: E402

from absl import app, flags  # noqa: E402

from diffjax.train.checkpoint import quiet_orbax_logging  # noqa: E402
from diffjax.train.pairs import generate_pairs  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "the teacher flow's training workdir")
_OUT = flags.DEFINE_string("out", None, "folder for the pair chunks")
_NUM = flags.DEFINE_integer("num", 8192, "number of pairs")
_SOLVER = flags.DEFINE_string("solver", "euler", "ODE solver (a diffjax.samplers name)")
_STEPS = flags.DEFINE_integer("steps", 100, "solver intervals")
_CHUNK = flags.DEFINE_integer("chunk_size", 1024, "pairs per chunk file")
_SEED = flags.DEFINE_integer("seed", 0, "noise seed")
flags.mark_flags_as_required(["workdir", "out"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    quiet_orbax_logging()
    info = generate_pairs(
        _WORKDIR.value, _OUT.value, _NUM.value, solver=_SOLVER.value, steps=_STEPS.value,
        chunk_size=_CHUNK.value, seed=_SEED.value,
    )  # fmt: skip
    print(json.dumps(info))


if __name__ == "__main__":
    app.run(main)
