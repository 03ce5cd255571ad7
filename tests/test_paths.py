"""Workdirs through one path layer (diffjax.train.paths, etils.epath).

No diffjax or launch code touches a workdir with os.path / os.* / open directly: a guard records
every such call on the workdir whose nearest caller among diffjax, launch and the path
libraries (etils, orbax, tensorstore, tensorboardX) is diffjax or launch code outside the path
layer. A remote scheme without its client fails at once with the package to install, and no
local folder named after the URL appears.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

from diffjax.train import paths
from tests.helpers import install_path_guard

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def toy_config(num_steps: int):
    path = os.path.join(REPO, "experiments/toy2d.py")
    spec = importlib.util.spec_from_file_location("toy2d", path)
    toy2d = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(toy2d)
    c = toy2d.get_config("quicktest")
    c.train.num_steps, c.train.checkpoint_every, c.train.keep_checkpoints = num_steps, 1, 3
    c.sample.num, c.sample.steps = 16, 2  # a scatter plot in the workdir at the end
    return c


@pytest.fixture
def guard(monkeypatch, tmp_path):
    """(workdir, violations): calls of open/os.*/os.path.* on the workdir made by our code."""
    workdir = str(tmp_path / "run")
    return workdir, install_path_guard(monkeypatch, [workdir])


def test_training_resuming_and_loading_use_only_the_path_layer(guard):
    from diffjax.train.loop import train_and_evaluate
    from diffjax.train.workdir import load_trained

    workdir, violations = guard
    train_and_evaluate(toy_config(2), workdir)
    train_and_evaluate(toy_config(3), workdir)  # resume: truncates metrics, restores
    _, _, trained = load_trained(workdir)
    assert trained.step == 3
    assert violations == []  # (test_guard_reports_direct_calls_from_our_code: it does see)


def test_guard_reports_direct_calls_from_our_code(guard):
    workdir, violations = guard
    code = compile("import os\nos.path.exists(W)", "<diffjax-probe>", "exec")
    exec(code, {"__name__": "diffjax.probe", "W": workdir})  # noqa: S102
    assert violations == [f"os.path.exists({workdir!r}) from diffjax.probe:2"]


def test_scheme_checks():
    assert paths.scheme("gs://bucket/run") == "gs" and paths.scheme("/tmp/x") is None
    assert paths.scheme("runs/a:b") is None
    with pytest.raises(ValueError, match=r"unsupported filesystem scheme 'ftp'://"):
        paths.check_filesystem("ftp://host/run")
    paths.check_filesystem("/tmp/anything")  # local: always fine


@pytest.mark.skipif(
    any(importlib.util.find_spec(m) for m in ("gcsfs", "tensorflow")),
    reason="a gs:// client is installed here",
)
def test_gs_workdir_without_client_is_one_clear_error_and_no_local_folder(tmp_path, monkeypatch):
    from diffjax.train.loop import train_and_evaluate

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ImportError, match="pip install gcsfs"):
        train_and_evaluate(toy_config(1), "gs://diffjax-test-bucket/run")
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    out = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "launch/train.py"),
            f"--config={os.path.join(REPO, 'experiments/toy2d.py')}:quicktest",
            "--workdir=gs://diffjax-test-bucket/run",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert out.returncode == 1
    assert "pip install gcsfs" in out.stderr and "Traceback" not in out.stderr
    assert os.listdir(tmp_path) == []  # never a local folder called gs:


def test_second_process_on_a_workdir_in_use_is_a_clear_error(tmp_path):
    from diffjax.train.lock import LOCK_FILE, WorkdirLock, WorkdirLockedError

    first = WorkdirLock(tmp_path).acquire()
    try:
        with pytest.raises(WorkdirLockedError, match=rf"in use by training process {os.getpid()}"):
            WorkdirLock(tmp_path).acquire()
    finally:
        first.release()
    assert not (tmp_path / LOCK_FILE).exists()
    with WorkdirLock(tmp_path):  # free again
        assert (tmp_path / LOCK_FILE).exists()


def test_a_dead_process_lock_does_not_block(tmp_path):
    import json
    import socket
    import time

    from diffjax.train.lock import LOCK_FILE, WorkdirLock, WorkdirLockedError

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs
    lock_file = tmp_path / LOCK_FILE
    here = socket.gethostname()
    lock_file.write_text(json.dumps({"pid": dead.pid, "host": here, "heartbeat": time.time()}))
    with WorkdirLock(tmp_path) as lock:
        assert json.loads(lock_file.read_text())["token"] == lock.token
    # another host's lock: live while its heartbeat is fresh, stale after `stale_after` seconds
    lock_file.write_text(json.dumps({"pid": 1, "host": "elsewhere", "heartbeat": time.time()}))
    with pytest.raises(WorkdirLockedError, match="on host 'elsewhere'"):
        WorkdirLock(tmp_path, stale_after=60).acquire()
    old = time.time() - 120
    lock_file.write_text(json.dumps({"pid": 1, "host": "elsewhere", "heartbeat": old}))
    with WorkdirLock(tmp_path, stale_after=60):
        pass
    assert not lock_file.exists()


def test_resumed_metrics_drop_rows_after_the_checkpoint_and_only_primary_writes(tmp_path):
    from diffjax.train.writers import METRICS_FILE, MetricWriter, read_metrics

    rows = "".join(f'{{"step": {s}, "loss": {s / 10}}}\n' for s in range(1, 11)) + '{"step": 1'
    (tmp_path / METRICS_FILE).write_text(rows)  # a killed run: 10 rows and half of one
    with MetricWriter(tmp_path, tensorboard=False, resume_step=6) as writer:
        writer.write(7, {"loss": 0.5})
    assert [r["step"] for r in read_metrics(tmp_path / METRICS_FILE)] == list(range(1, 8))
    other = tmp_path / "other"
    with MetricWriter(other, resume_step=0, primary=False) as writer:  # process 1 of a cluster
        writer.write(1, {"loss": 1.0})
    assert not other.exists()


@pytest.mark.slow  # two 1-step trainings with their compiles (~40 s on 2 loaded cores)
def test_autoencoder_run_uses_only_the_path_layer(guard, tmp_path):
    from diffjax.train.autoencoder import (
        SCALE_FILE,
        load_autoencoder,
        read_scale,
        train_autoencoder,
    )
    from tests.test_autoencoder_train import synthetic_idx
    from tests.test_reliability_tasks import tiny_config

    workdir, violations = guard
    c = tiny_config("autoencoder", synthetic_idx(str(tmp_path / "idx"), n=16), num_steps=1)
    c.autoencoder.grid_num = 2  # the grid, latent_scale.json, metrics, loss.png, checkpoints
    train_autoencoder(c, workdir)
    c.train.num_steps = 2
    train_autoencoder(c, workdir)  # resume: truncates metrics, restores
    assert load_autoencoder(workdir)[2] == 2 and read_scale(workdir)["step"] == 2
    assert os.path.isfile(os.path.join(workdir, SCALE_FILE))
    assert violations == []


@pytest.mark.slow  # two 1-step trainings with their compiles (~30 s on 2 loaded cores)
def test_noisy_classifier_run_uses_only_the_path_layer(guard):
    from diffjax.train.noisy_classifier import load_noisy_classifier, train_noisy_classifier
    from tests.test_reliability_tasks import tiny_config

    workdir, violations = guard
    c = tiny_config("classifier", "", num_steps=1)
    train_noisy_classifier(c, workdir)
    c.train.num_steps = 2
    train_noisy_classifier(c, workdir)  # resume
    assert load_noisy_classifier(workdir).step == 2
    assert violations == []
