"""Real multi-process training: 2 JAX processes on localhost (gloo CPU collectives) against one.

Three worker processes run at once: a 2-process run ('multi', one CPU device per process) and a
1-process run ('single', two CPU devices), so both split the global batch of 8 into the same two
shards and the all-reduce adds the same two partial sums (a + b == b + a exactly): the runs must
agree bit for bit. Workdirs: a = trained to step 4 by the 2-process run, then continued to 6 by
the 1-process run; b = the reverse; c = one uninterrupted 1-process run to step 6.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKER = textwrap.dedent(
    """
    import importlib.util, os, sys, time
    import jax, numpy as np
    role, pid, nproc, port, root = sys.argv[1], *map(int, sys.argv[2:5]), sys.argv[5]
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser("~/.cache/diffjax-jax"))
    from diffjax import parallel
    if nproc > 1:
        parallel.initialize_distributed(f"localhost:{port}", nproc, pid)
    from diffjax.train.loop import train_and_evaluate
    path = os.path.join(REPO, "experiments/toy2d.py")
    spec = importlib.util.spec_from_file_location("toy2d", path)
    toy2d = importlib.util.module_from_spec(spec); spec.loader.exec_module(toy2d)

    def train(name, steps, save_as, sample=0):
        c = toy2d.get_config("quicktest")
        c.train.num_steps, c.train.checkpoint_every, c.train.keep_checkpoints = steps, 2, 5
        c.sample.num = sample  # a scatter plot of `sample` points drawn on all processes
        state = train_and_evaluate(c, os.path.join(root, name))
        leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(state))[0]
        if parallel.is_primary():
            arrays = {jax.tree_util.keystr(p): np.asarray(x) for p, x in leaves}
            np.savez(os.path.join(root, save_as + ".npz"), **arrays)

    def mark(name):
        if parallel.is_primary():
            open(os.path.join(root, name + ".done"), "w").close()

    def wait(name):
        t = time.time()
        while not os.path.exists(os.path.join(root, name + ".done")):
            assert time.time() - t < 240, f"timed out waiting for {name}"
            time.sleep(0.1)

    if role == "quad":
        train("q" if nproc > 1 else "r", 4, "q4" if nproc > 1 else "r4", sample=8)
    elif role == "multi":
        train("a", 4, "a4"); mark("a")
        wait("b"); train("b", 6, "b6")
    else:
        train("b", 4, "b4"); mark("b")
        train("c", 6, "c6")
        wait("a"); train("a", 6, "a6")
    print("WORKER DONE", role, pid, flush=True)
    """
).replace("REPO", repr(REPO))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def run_workers(root, jobs, timeout: float = 280.0) -> list[str]:
    """Start `jobs` [(role, pid, nproc, devices)] at once; return their outputs. Each is killed
    if still running after `timeout` seconds or when anything fails."""
    port, procs, outputs = free_port(), [], []
    try:
        for role, pid, nproc, devices in jobs:
            env = dict(
                os.environ,
                JAX_PLATFORMS="cpu",
                XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
                PYTHONPATH=REPO,
            )
            args = [sys.executable, "-c", WORKER, role, str(pid), str(nproc), str(port), root]
            procs.append(
                subprocess.Popen(
                    args, env=env, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
                )
            )
        deadline = time.time() + timeout
        for p in procs:
            out, _ = p.communicate(timeout=max(1.0, deadline - time.time()))
            outputs.append(out.decode(errors="replace"))
        for p, out in zip(procs, outputs, strict=True):
            assert p.returncode == 0, out[-4000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return outputs


def load(root, name) -> dict:
    with np.load(os.path.join(root, name + ".npz")) as f:
        return dict(f)


def assert_bit_identical(x: dict, y: dict) -> None:
    assert sorted(x) == sorted(y)
    for k in x:
        assert x[k].dtype == y[k].dtype and x[k].shape == y[k].shape, k
        assert x[k].tobytes() == y[k].tobytes(), f"{k} differs: max {np.max(np.abs(x[k] - y[k]))}"


def metric_steps(root, name) -> list[int]:
    with open(os.path.join(root, name, "metrics.jsonl")) as f:
        return [json.loads(line)["step"] for line in f if line.strip()]


def test_two_processes_match_one_and_checkpoints_cross_topologies(tmp_path):
    root = str(tmp_path)
    jobs = [("multi", 0, 2, 1), ("multi", 1, 2, 1), ("single", 0, 1, 2)]
    outputs = run_workers(root, jobs)
    assert all("WORKER DONE" in out for out in outputs)
    # step 4 after the same global batches on 2 processes and on 1: bit-identical params, EMA
    # params, optimiser state and step
    a4, b4 = load(root, "a4"), load(root, "b4")
    assert any("ema_params" in k for k in a4) and any("opt_state" in k for k in a4)
    assert_bit_identical(a4, b4)
    # 2-process checkpoint continued by 1 process (a), 1-process checkpoint continued by 2
    # processes (b), and the uninterrupted run (c) reach the same state at step 6
    c6 = load(root, "c6")
    assert_bit_identical(load(root, "a6"), c6)
    assert_bit_identical(load(root, "b6"), c6)
    assert not np.array_equal(c6["['params']" if "['params']" in c6 else sorted(c6)[0]], 0)
    # one writer per run: each logged step once (2 writers would give 8 rows for 4 steps)
    for name in ("a", "b", "c"):
        assert metric_steps(root, name) == [1, 2, 3, 4, 5, 6]
        assert not os.path.exists(os.path.join(root, name, "train.lock"))  # released
    assert sorted(os.listdir(os.path.join(root, "a", "checkpoints"))) == ["2", "4", "6"]


def test_hand_started_cluster_arguments_are_checked():
    from diffjax import parallel

    with pytest.raises(ValueError, match=r"missing \['num_processes', 'process_id'\]"):
        parallel.initialize_distributed("localhost:1234")
    with pytest.raises(ValueError, match=r"process_id must lie in \[0, num_processes=2\); got 2"):
        parallel.initialize_distributed("localhost:1234", 2, 2)
    with pytest.raises(ValueError, match="'host:port'; got 'localhost'"):
        parallel.initialize_distributed("localhost", 2, 0)


@pytest.mark.slow
def test_four_processes_with_sampling(tmp_path):
    """4 processes x 1 device against 1 process x 4 devices, with a sample plot at the end: the
    all-reduce adds 4 partial sums, whose order gloo and XLA may choose differently, so the
    states agree to float32 rounding (not necessarily bitwise)."""
    root = str(tmp_path)
    jobs = [("quad", p, 4, 1) for p in range(4)] + [("quad", 0, 1, 4)]
    run_workers(root, jobs, timeout=500)
    q4, r4 = load(root, "q4"), load(root, "r4")
    assert sorted(q4) == sorted(r4)
    for k in q4:
        np.testing.assert_allclose(q4[k], r4[k], rtol=1e-5, atol=1e-6, err_msg=k)
    assert metric_steps(root, "q")[:4] == [1, 2, 3, 4] and len(metric_steps(root, "q")) == 4
    plots = [n for n in os.listdir(os.path.join(root, "q")) if n.startswith("samples_")]
    assert plots == ["samples_0000004.png"]
