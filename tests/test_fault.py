"""Crash and pre-emption safety of the training loop.

SIGTERM (a pre-emption notice) saves the current step and stops cleanly; the resumed run ends
bit-identical to an uninterrupted one. The slow fuzz test kills `launch/train.py` with SIGKILL
at random moments (some while a checkpoint is being written) and restarts it each time: the
final parameters, EMA parameters and optimiser state equal an uninterrupted run's bit for bit,
every complete checkpoint survives and metrics.jsonl holds each step once.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

from diffjax import parallel
from diffjax.train.loop import train_and_evaluate
from diffjax.train.writers import read_metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def toy_config(num_steps: int, checkpoint_every: int):
    spec = importlib.util.spec_from_file_location(
        "toy2d", os.path.join(REPO, "experiments/toy2d.py")
    )
    toy2d = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(toy2d)
    c = toy2d.get_config("quicktest")
    c.train.num_steps, c.train.checkpoint_every, c.train.keep_checkpoints = (
        num_steps, checkpoint_every, 1000,
    )  # fmt: skip
    return c


def leaves(state) -> dict[str, np.ndarray]:
    flat = jax.tree_util.tree_flatten_with_path(jax.device_get(state))[0]
    return {jax.tree_util.keystr(p): np.asarray(x) for p, x in flat}


def assert_bit_identical(x: dict, y: dict) -> None:
    assert sorted(x) == sorted(y)
    assert any("opt_state" in k for k in x) and any("ema_params" in k for k in x)
    for k in x:
        assert x[k].dtype == y[k].dtype and x[k].tobytes() == y[k].tobytes(), k


def metric_steps(workdir) -> list[int]:
    return [r["step"] for r in read_metrics(os.path.join(workdir, "metrics.jsonl"))]


def _our_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("diffjax-")]


def test_sigterm_saves_the_current_step_and_the_resumed_run_is_exact(tmp_path):
    workdir = str(tmp_path / "run")
    rows = os.path.join(workdir, "metrics.jsonl")

    def notice():  # a pre-emption notice once a few steps are logged
        t0 = time.time()
        while time.time() - t0 < 120:
            if os.path.exists(rows) and sum(1 for _ in open(rows)) >= 3:
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.01)

    previous = signal.getsignal(signal.SIGTERM)
    killer = threading.Thread(target=notice, daemon=True)
    killer.start()
    with pytest.raises(parallel.Preempted) as stopped:
        train_and_evaluate(toy_config(100_000, 10_000), workdir)
    killer.join()
    k = stopped.value.step
    assert k >= 3
    # saved exactly the step reached (no periodic checkpoint was due), logged each step once
    assert os.listdir(os.path.join(workdir, "checkpoints")) == [str(k)]
    assert metric_steps(workdir) == list(range(1, k + 1))
    # closed on the way out: lock file, lock heartbeat and data threads, SIGTERM handler
    assert not os.path.exists(os.path.join(workdir, "train.lock"))
    assert _our_threads() == []
    assert signal.getsignal(signal.SIGTERM) is previous
    # the resumed run ends where an uninterrupted run ends, bit for bit
    resumed = train_and_evaluate(toy_config(k + 3, 10_000), workdir)
    whole = train_and_evaluate(toy_config(k + 3, 10_000), str(tmp_path / "whole"))
    assert_bit_identical(leaves(resumed), leaves(whole))
    assert metric_steps(workdir) == list(range(1, k + 4))


def _complete_steps(directory: str) -> set[int]:
    """Steps orbax finished (metadata file written, not a temporary directory)."""
    if not os.path.isdir(directory):
        return set()
    return {
        int(name)
        for name in os.listdir(directory)
        if name.isdigit() and os.path.exists(os.path.join(directory, name, "_CHECKPOINT_METADATA"))
    }


def _start_training(workdir: str, num_steps: int, every: int) -> subprocess.Popen:
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        XLA_FLAGS="--xla_force_host_platform_device_count=1",  # as the in-process reference
        PYTHONPATH=REPO,
    )
    args = [
        sys.executable, os.path.join(REPO, "launch/train.py"),
        "--config", os.path.join(REPO, "experiments/toy2d.py:quicktest"),
        f"--workdir={workdir}", f"--config.train.num_steps={num_steps}",
        f"--config.train.checkpoint_every={every}", "--config.train.keep_checkpoints=1000",
    ]  # fmt: skip
    return subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_nothing(tmp_path):
    num_steps, every, kills = 300, 5, 12
    workdir = str(tmp_path / "run")
    ckpt = os.path.join(workdir, "checkpoints")
    rng, seen, killed_during_write, killed = random.Random(0), set(), 0, 0
    for i in range(kills):
        proc = _start_training(workdir, num_steps, every)
        try:
            writing = i % 2 == 0  # every other kill lands while a checkpoint is being written
            t0, deadline = time.time(), time.time() + 300
            delay = rng.uniform(0.0, 1.0)
            while proc.poll() is None and time.time() < deadline:
                tmp = os.path.isdir(ckpt) and any("tmp" in n for n in os.listdir(ckpt))
                started = os.path.exists(os.path.join(workdir, "metrics.jsonl"))
                if (writing and tmp) or (not writing and started and time.time() - t0 > delay):
                    killed_during_write += tmp
                    killed += 1
                    proc.send_signal(signal.SIGKILL)
                    break
                time.sleep(0.002)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        now = _complete_steps(ckpt)
        assert seen <= now, f"complete checkpoints lost after kill {i}: {sorted(seen - now)}"
        seen = now
        if num_steps in now:
            break
    assert killed >= 10 and killed_during_write >= 3, (killed, killed_during_write)
    proc = _start_training(workdir, num_steps, every)  # the last restart runs to the end
    try:
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err.decode()[-3000:]
    assert seen <= _complete_steps(ckpt)
    assert not any(n.endswith(".corrupt") for n in os.listdir(ckpt))
    assert metric_steps(workdir) == list(range(1, num_steps + 1))
    reference = train_and_evaluate(toy_config(num_steps, every), str(tmp_path / "whole"))
    from diffjax.train.builders import build_model_components
    from diffjax.train.checkpoint import make_manager, restore_latest
    from diffjax.train.loop import run_keys
    from diffjax.train.optim import make_optimizer
    from diffjax.train.spec import spec_from_config
    from diffjax.train.state import abstract_train_state

    spec = spec_from_config(toy_config(num_steps, every))
    c = build_model_components(spec)
    tx = make_optimizer(spec.optim)
    abstract = abstract_train_state(run_keys(spec.seed)["init"], c.init_params, tx)
    manager = make_manager(ckpt, 1000)
    try:
        state, step = restore_latest(manager, abstract)
    finally:
        manager.close()
    assert step == num_steps
    assert_bit_identical(leaves(state), leaves(reference))
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["train"]["num_steps"] == num_steps
