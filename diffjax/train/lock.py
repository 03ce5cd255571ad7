"""A lock file that keeps a second training process out of a workdir that is in use.

`<workdir>/train.lock` holds {"pid", "host", "token", "heartbeat"}; the holder refreshes the
heartbeat on a background thread. A second run fails at start with an error naming the holder.
A lock left by a dead process does not block forever: on the same host a pid that no longer
runs frees it at once; from another host (where the pid cannot be checked) a heartbeat older
than `stale_after` seconds does. Only the primary process of a multi-host run takes the lock.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid

import numpy as np
from absl import logging

from diffjax.train import paths

LOCK_FILE = "train.lock"


class WorkdirLockedError(RuntimeError):
    """Another live training process holds the workdir."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class WorkdirLock:
    """`with WorkdirLock(workdir): ...` or `acquire()` / `release()`.

    Args:
      workdir: the run's workdir (any filesystem of `diffjax.train.paths`).
      stale_after: seconds without a heartbeat after which another host's lock is stale.
      heartbeat: seconds between refreshes of this holder's heartbeat.
    """

    def __init__(self, workdir, *, stale_after: float = 600.0, heartbeat: float = 30.0):
        self.path = paths.workdir_path(workdir) / LOCK_FILE
        self.stale_after = stale_after
        self.heartbeat = heartbeat
        self.token = uuid.uuid4().hex
        self.host = socket.gethostname()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.held = False

    def _record(self) -> str:
        return json.dumps(
            {"pid": os.getpid(), "host": self.host, "token": self.token, "heartbeat": time.time()}
        )

    def _read(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except ValueError:  # half-written by a process killed while creating it
            return {}

    def _stale(self, holder: dict) -> str | None:
        """Why `holder`'s lock no longer counts, or None if it is live."""
        if not holder:
            return "unreadable lock file"
        if holder.get("host") == self.host:
            pid = int(holder.get("pid", -1))
            return None if _pid_alive(pid) else f"process {pid} on this host is not running"
        age = time.time() - float(holder.get("heartbeat", 0.0))
        if age > self.stale_after:
            return f"its heartbeat is {age:.0f} s old (> {self.stale_after:.0f} s)"
        return None

    def acquire(self) -> WorkdirLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):  # a stale lock is removed, then the exclusive create is retried
            if paths.create_exclusive(self.path, self._record()):
                self.held = True
                self._start_heartbeat()
                return self
            holder = self._read()
            if holder is None:
                continue  # released between the two calls
            why = self._stale(holder)
            if why is None:
                raise WorkdirLockedError(
                    f"workdir {os.fspath(self.path.parent)!r} is in use by training process "
                    f"{holder.get('pid')} on host {holder.get('host')!r} (lock file "
                    f"{os.fspath(self.path)}). Wait for it to finish or stop it; if no such "
                    "process is running, delete the lock file"
                )
            logging.warning("taking over the stale lock %s: %s", self.path, why)
            self.path.unlink(missing_ok=True)
        raise WorkdirLockedError(f"could not take the lock {os.fspath(self.path)}: contended")

    def _start_heartbeat(self) -> None:
        def beat():
            while not self._stop.wait(self.heartbeat):
                try:
                    if (self._read() or {}).get("token") == self.token:
                        self.path.write_text(self._record())
                except OSError as err:  # a transient filesystem error: try again next time
                    logging.warning("lock heartbeat failed: %s", err)

        self._thread = threading.Thread(target=beat, name="diffjax-lock", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stop the heartbeat and delete the lock file if it is still this holder's."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        if self.held and (self._read() or {}).get("token") == self.token:
            self.path.unlink(missing_ok=True)
        self.held = False

    def __enter__(self) -> WorkdirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


@contextlib.contextmanager
def lock_workdir(workdir, **options):
    """Hold `WorkdirLock(workdir)` for the block; in a multi-host run the primary process takes
    it and every process raises if it could not (so none waits on the others forever)."""
    from diffjax import parallel

    lock, error = None, None
    if parallel.is_primary():
        try:
            lock = WorkdirLock(workdir, **options).acquire()
        except WorkdirLockedError as err:
            error = err
    ok = parallel.broadcast_from_primary(np.int32(error is None))
    if error is not None:
        raise error
    if not int(ok):
        raise WorkdirLockedError(f"workdir {os.fspath(workdir)!r} is in use (see process 0)")
    try:
        yield lock
    finally:
        if lock is not None:
            lock.release()
