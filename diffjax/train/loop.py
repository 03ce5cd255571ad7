"""The training loop: resume, step, log, checkpoint, draw samples; and `train_and_evaluate`."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from typing import Any

import jax
import numpy as np
from absl import logging
from tqdm import tqdm

from diffjax import parallel
from diffjax.train import checkpoint, paths
from diffjax.train.components import Components, make_loss_fn
from diffjax.train.lock import lock_workdir
from diffjax.train.optim import make_optimizer
from diffjax.train.sampling import make_sampler, write_samples
from diffjax.train.spec import TrainSpec, check_grad_accum, spec_from_config
from diffjax.train.state import (
    TrainState,
    abstract_train_state,
    create_train_state,
    jit_once,
    param_count,
)
from diffjax.train.step import make_train_step
from diffjax.train.workdir import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    write_run_info,
    write_workdir_json,
)
from diffjax.train.writers import MetricWriter, read_metrics, save_loss_curve


def checkpoint_dir(workdir) -> str:
    """`<workdir>/checkpoints` through the path layer (a 'gs://...' string stays one)."""
    return os.fspath(paths.workdir_path(workdir) / CHECKPOINT_DIR)


def run_keys(seed: int) -> dict[str, jax.Array]:
    """The named keys of a run; step n uses fold_in(keys['step'], n) (no key is stored)."""
    init_key, step_key, sample_key = jax.random.split(jax.random.PRNGKey(seed), 3)
    return {"init": init_key, "step": step_key, "sample": sample_key}


def init_or_restore(
    spec: TrainSpec,
    c: Components,
    workdir: str,
    mesh,
    tx,
    *,
    allow_fresh_start: bool = False,
    on_fresh_start=None,
):
    """(state replicated over mesh, checkpoint manager): the latest good checkpoint or step 0
    (when every checkpoint is unreadable: an error, or step 0 if `allow_fresh_start`).
    `on_fresh_start(abstract_state)` is called before a fresh state is initialised (the loop
    starts compiling the train step there, beside the init)."""
    manager = checkpoint.make_manager(checkpoint_dir(workdir), spec.loop.keep_checkpoints)
    key = run_keys(spec.seed)["init"]
    abstract = abstract_train_state(key, c.init_params, tx)
    state, step = checkpoint.restore_latest(
        manager, abstract, parallel.replicated(mesh), allow_fresh_start=allow_fresh_start
    )
    if state is None:
        if on_fresh_start is not None:
            on_fresh_start(abstract)
        # jitted: an eager Flax init runs op by op and takes many seconds for a U-Net on CPU
        t0 = time.time()
        init = jit_once(  # compiled at the lowest optimisation level: it runs once
            create_train_state, static_argnums=(1, 2), out_shardings=parallel.replicated(mesh)
        )
        state = jax.block_until_ready(init(key, c.init_params, tx))
        logging.info("start-up: train state initialised (one jitted init) in %.1f s",
                     time.time() - t0)  # fmt: skip
        if c.start_params is not None:  # config.teacher.init_student: fresh runs only
            state = _start_at(c.start_params, tx, parallel.replicated(mesh))
            logging.info("starting params and EMA at the teacher's EMA params")
        logging.info("no checkpoint in %s: starting from step 0", manager.directory)
    else:
        logging.info("resuming from step %d", step)
    return state, manager


def _start_at(params, tx, sharding) -> TrainState:
    """A step-0 state with params = EMA = `params` (copies) and their fresh optimiser state."""

    def fresh(p):
        return create_train_state(None, lambda _: p, tx)

    return jax.jit(fresh, out_shardings=sharding)(params)


def _mean_metrics(history: list[dict]) -> dict[str, float]:
    history = jax.device_get(history)
    return {k: float(np.mean([h[k] for h in history])) for k in history[0]}


class _Stacked(dict):
    """The metrics of several steps of one jitted call: each value stacked, [k] per name."""


def _per_step(history: list[dict]) -> list[dict]:
    """`history` on the host with one dict of scalars per step (`_Stacked` entries split)."""
    out = []
    for entry in jax.device_get(history):
        if isinstance(entry, _Stacked):
            n = len(next(iter(entry.values())))
            out.extend({k: v[i] for k, v in entry.items()} for i in range(n))
        else:
            out.append(entry)
    return out


def _log_values(history: list[dict]) -> dict[str, float]:
    """The means of the per-step metrics; with 'skipped' (config.train.nonfinite = 'skip'):
    'skipped' is the count of skipped steps and the others are means over the steps taken."""
    if not any("skipped" in h for h in history):
        return _mean_metrics(history)
    taken = [
        {k: v for k, v in h.items() if k != "skipped"} for h in history if not h.get("skipped", 0)
    ]
    values = _mean_metrics(taken) if taken else {}
    values["skipped"] = float(sum(float(h["skipped"]) for h in history))
    return values


@dataclasses.dataclass
class _Run:
    """What the periodic actions of one run share (not part of the train state)."""

    spec: TrainSpec
    c: Components
    workdir: str
    manager: Any
    writer: MetricWriter
    sampler: Any
    keys: dict
    config_json: dict
    history: list = dataclasses.field(default_factory=list)
    t_log: float = 0.0
    skip_run: int = 0  # consecutive skipped steps up to the last step checked
    checked: int = 0  # entries of `history` already counted into skip_run

    def check_finite(self, state: TrainState, done: int) -> None:
        """`checkpoint.require_finite` on the steps since the last log (read to the host); with
        config.train.nonfinite = 'skip', a skipped step's non-finite loss is no error (its
        update was not applied), but more than `max_skipped` consecutive skipped steps are."""
        self.history = _per_step(self.history)
        loop = self.spec.loop
        if loop.nonfinite == "skip":
            for h in self.history[self.checked :]:
                self.skip_run = self.skip_run + 1 if h.get("skipped", 0) else 0
                if self.skip_run > loop.max_skipped:
                    raise checkpoint.NonFiniteError(
                        f"{self.skip_run} consecutive steps had a NaN/inf loss or gradient and "
                        f"were skipped (config.train.max_skipped = {loop.max_skipped}), the "
                        f"last up to step {done}: training stopped before writing a checkpoint "
                        "(the checkpoints already written are finite and kept). Lower "
                        "optim.learning_rate, set optim.grad_clip, or check the data for NaN"
                    )
            self.checked = len(self.history)
            taken = [h for h in self.history if not h.get("skipped", 0)]
            checkpoint.require_finite(state, taken, done)
        else:
            checkpoint.require_finite(state, self.history, done)

    def log(self, done: int) -> None:
        self.history = _per_step(self.history)
        values = _log_values(self.history)
        values["steps_per_sec"] = len(self.history) / max(time.time() - self.t_log, 1e-9)
        self.writer.write(done, values)
        self.history, self.t_log, self.checked = [], time.time(), 0

    def grid(self, state: TrainState, done: int) -> None:
        """Sample from the EMA params with key fold_in(sample_key, step) and write the grid;
        a class-conditional grid has one column per class."""
        key = jax.random.fold_in(self.keys["sample"], done)
        samples = np.asarray(self.sampler(state.ema_params, key))  # every host takes part
        cond = self.spec.cond
        path = paths.workdir_path(self.workdir) / f"samples_{done:07d}.png"
        if parallel.is_primary():
            cols = cond.num_classes if cond.class_conditional else None
            write_samples(path, samples, self.c, cols)
            logging.info("wrote samples to %s", path)

    def after_step(self, state: TrainState, done: int) -> None:
        loop = self.spec.loop
        log_due = done % loop.log_every == 0 or done == loop.num_steps
        save_due = loop.saves_at(done)
        if log_due or save_due:  # a NaN/inf loss or parameter stops the run before any save
            try:
                self.check_finite(state, done)
            except checkpoint.NonFiniteError:
                self.manager.wait_until_finished()  # seals the last good checkpoint
                raise
        if log_due:
            self.log(done)
        if save_due:
            checkpoint.save(self.manager, done, state, self.config_json)
        if self.sampler and loop.sample_every and done % loop.sample_every == 0:
            if done < loop.num_steps:  # the final grid is drawn by finish()
                self.grid(state, done)

    def finish(self, state: TrainState) -> None:
        """Wait for checkpoints; draw the final grid and the loss-curve plot."""
        self.manager.wait_until_finished()
        self.manager.close()
        self.writer.close()
        if self.sampler is not None:
            self.grid(state, int(jax.device_get(state.step)))
        curve = paths.workdir_path(self.workdir) / "loss.png"
        if parallel.is_primary() and save_loss_curve(curve, read_metrics(self.writer.path)):
            logging.info("wrote loss curve to %s", curve)


def run_training(
    spec: TrainSpec,
    c: Components,
    workdir: str,
    config_json: dict | None = None,
    mesh=None,
    *,
    allow_fresh_start: bool = False,
    lock: bool = True,
    preemption: parallel.PreemptionWatch | None = None,
) -> TrainState:
    """`_run_training` (below) holding the workdir's lock (`lock`; train_and_evaluate holds it
    already), and closing on every exit path (return, exception, KeyboardInterrupt, SIGTERM)
    what the run opened: the data prefetch thread, the metric and TensorBoard writers, orbax's
    manager (waiting for its asynchronous writes), the SIGTERM handler, the lock.

    The SIGTERM handler (`preemption`, entered by the caller, e.g. train_and_evaluate before
    it builds the data; else one entered here first) covers the start-up too: a notice that
    arrives during the restore or before the first step stops the run at the step restored.

    Raises:
      parallel.Preempted: a SIGTERM (pre-emption notice) arrived; the step reached was saved
        (or, when no step ran, is the restored checkpoint's step, or 0 with none).
      lock.WorkdirLockedError: another live training process uses `workdir`.
    """
    with contextlib.ExitStack() as stack:
        if preemption is None:
            preemption = stack.enter_context(parallel.PreemptionWatch())
        if lock:
            stack.enter_context(lock_workdir(workdir))
        return _run_training(
            spec,
            c,
            workdir,
            config_json,
            mesh,
            allow_fresh_start=allow_fresh_start,
            stack=stack,
            preemption=preemption,
        )


def _save_preempted(run: _Run, state: TrainState, done: int) -> None:
    """On a pre-emption notice: save step `done` unless `after_step` just did, wait for the
    write to finish, and stop with `parallel.Preempted`."""
    loop = run.spec.loop
    if not loop.saves_at(done):
        run.check_finite(state, done)
        checkpoint.save(run.manager, done, state, run.config_json)
    run.manager.wait_until_finished()
    logging.warning("pre-emption notice (SIGTERM): saved step %d and stopping", done)
    raise parallel.Preempted(done)


def _stop_at_start(step: int) -> None:
    """On a pre-emption notice before any step ran: stop at `step` (the restored checkpoint's
    step, or 0), which needs no new checkpoint."""
    logging.warning("pre-emption notice (SIGTERM) during start-up: stopping at step %d", step)
    raise parallel.Preempted(step)


def next_event(loop, done: int) -> int:
    """The first step after `done` at which the loop logs, saves or draws a grid (or ends)."""
    periods = [loop.log_every, loop.checkpoint_every] + [loop.sample_every] * (
        loop.sample_every > 0
    )
    return min([loop.num_steps] + [(done // p + 1) * p for p in periods])


class _FirstAgain:
    """An iterator of batches that yields `first` before the rest (the batch the step was
    compiled ahead for is the run's first batch); `close` closes the underlying one."""

    def __init__(self, first, rest):
        self._first, self._rest = [first], rest

    def __iter__(self):
        return self

    def __next__(self):
        return self._first.pop() if self._first else next(self._rest)

    def close(self):
        getattr(self._rest, "close", lambda: None)()


class _CompileAhead:
    """A fresh run's train step compiled on a thread while the train state is initialised:
    the two compiles overlap, so the init's seconds no longer add to the time to the first
    step. The program is the one the jitted step would compile (the same function, shardings
    and first batch); if compiling ahead fails, the jitted step compiles at the first step."""

    def __init__(self, step_fn, c: Components, mesh, step_key, stack: contextlib.ExitStack):
        self.step_fn, self.c, self.mesh, self.key, self.stack = step_fn, c, mesh, step_key, stack
        self.started = False

    def start(self, abstract_state) -> None:
        import concurrent.futures

        repl = parallel.replicated(self.mesh)
        target = jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=repl, weak_type=a.weak_type),
            abstract_state,
        )
        self.batches = self.c.batches(0)
        self.stack.callback(getattr(self.batches, "close", lambda: None))
        self.first = next(self.batches)
        batch = parallel.shard_batch(self.first, self.mesh)
        self.t0 = time.time()
        pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="diffjax-compile")
        self.future = pool.submit(self.step_fn.precompile, target, batch, self.key)
        pool.shutdown(wait=False)
        self.started = True

    def result(self):
        """(batches from the first, the step function to call)."""
        batches = _FirstAgain(self.first, self.batches)
        try:
            compiled = self.future.result()
        except Exception as err:  # noqa: BLE001 - the jitted step then reports a real error
            logging.warning("compiling the train step ahead failed (%s); compiling it now", err)
            return batches, self.step_fn
        logging.info("start-up: train step compiled beside the init, %.1f s after it started",
                     time.time() - self.t0)  # fmt: skip
        return batches, _Fallback(compiled, self.step_fn)


class _Fallback:
    """The ahead-compiled step; if its first call refuses the arguments (types or shardings
    other than those compiled for), the jitted step from then on."""

    def __init__(self, compiled, step_fn):
        self.fn, self.step_fn, self.checked = compiled, step_fn, False

    def __call__(self, state, batch, key):
        if self.checked:
            return self.fn(state, batch, key)
        self.checked = True
        try:
            return self.fn(state, batch, key)
        except (TypeError, ValueError) as err:
            logging.warning("the ahead-compiled step refused the first batch (%s)", err)
            self.fn = self.step_fn
            return self.fn(state, batch, key)


def _run_training(
    spec: TrainSpec,
    c: Components,
    workdir: str,
    config_json: dict | None = None,
    mesh=None,
    *,
    allow_fresh_start: bool = False,
    stack: contextlib.ExitStack,
    preemption: parallel.PreemptionWatch,
) -> TrainState:
    """Train to `spec.loop.num_steps`, resuming from the latest checkpoint in `workdir`
    (`allow_fresh_start`: from step 0 when every checkpoint there is unreadable).

    `c.batches` is a callable start_step -> iterator of global numpy batches, so that a resumed
    run sees the batches an uninterrupted run would have seen at the same steps. With
    config.train.steps_per_call = k, k steps run in one jitted call whenever no log, save or
    grid falls inside them; the steps before such an event are taken one call each.
    """
    loop = spec.loop
    mesh = parallel.make_mesh() if mesh is None else mesh
    parallel.check_batch_divisible(spec.batch_size, mesh.size)
    check_grad_accum(spec.batch_size, loop.grad_accum, mesh.size)
    if parallel.is_primary():
        paths.workdir_path(workdir).mkdir(parents=True, exist_ok=True)
    tx = make_optimizer(spec.optim)
    step_options = dict(grad_accum=loop.grad_accum, nonfinite=loop.nonfinite)
    loss_fn = make_loss_fn(c, spec.cond)
    step_fn = make_train_step(loss_fn, tx, spec.ema, mesh, c.frozen, **step_options)
    keys = run_keys(spec.seed)
    ahead = _CompileAhead(step_fn, c, mesh, keys["step"], stack)
    state, manager = init_or_restore(
        spec, c, workdir, mesh, tx, allow_fresh_start=allow_fresh_start,
        on_fresh_start=ahead.start if loop.steps_per_call == 1 else None,
    )  # fmt: skip
    stack.callback(manager.close)  # waits for unfinished asynchronous writes
    start = int(jax.device_get(state.step))
    if preemption.reached(start):  # a notice during data build, init or restore
        _stop_at_start(start)
    logging.info("model parameters: %d; devices: %d", param_count(state.params), mesh.size)
    k = loop.steps_per_call
    multi_fn = None
    if k > 1:
        multi_fn = make_train_step(
            loss_fn, tx, spec.ema, mesh, c.frozen, steps_per_call=k, **step_options
        )
    sampler = None
    if spec.sample.num > 0:
        factory = c.make_sampler or make_sampler  # a latent run's sampler decodes
        sampler = factory(c, spec.sample, spec.cond, spec.prediction, spec.sample.num)
    run = _Run(
        spec,
        c,
        workdir,
        manager,
        stack.enter_context(MetricWriter(workdir, resume_step=start)),  # drops rows > start
        sampler,
        keys,
        config_json or {},
    )
    t0 = time.time()
    batches, step_call = ahead.result() if ahead.started else (c.batches(start), step_fn)
    stack.callback(getattr(batches, "close", lambda: None))  # stops a prefetch thread
    bar = tqdm(
        initial=start,
        total=loop.num_steps,
        unit="step",
        disable=not loop.progress_bar,
        mininterval=2.0,
    )
    stack.callback(bar.close)
    done = start
    while done < loop.num_steps:
        if multi_fn is not None and next_event(loop, done) - done >= k:
            chunk = tuple(parallel.shard_batch(next(batches), mesh) for _ in range(k))
            state, metrics = multi_fn(state, chunk, run.keys["step"])
            run.history.append(_Stacked(metrics))
            n = k
        else:
            batch = parallel.shard_batch(next(batches), mesh)
            state, metrics = step_call(state, batch, run.keys["step"])
            run.history.append(metrics)
            n = 1
        if done == start:
            jax.block_until_ready(state.step)
            logging.info("start-up: first step (compile included) took %.1f s", time.time() - t0)
            run.t_log = time.time()
        done += n
        bar.update(n)
        run.after_step(state, done)
        if preemption.reached(done):
            _save_preempted(run, state, done)
    run.finish(state)
    return state


def config_to_json(config: Any) -> dict:
    """The ConfigDict as a JSON-able dict (stored with every checkpoint and in config.json)."""
    return json.loads(config.to_json_best_effort(sort_keys=True))


def train_and_evaluate(
    config: Any,
    workdir: str,
    *,
    wrap_spec=None,
    allow_config_change: tuple[str, ...] = (),
    allow_fresh_start: bool = False,
) -> TrainState:
    """Build everything from the experiment `config` (a ConfigDict) and train in `workdir`.

    A resumed run's config must equal the one stored with its checkpoints outside
    `checkpoint.RESUMABLE_FIELDS` (num_steps, logging, sampling, data_dir) and the dotted
    fields `allow_config_change` (e.g. ('optim.learning_rate',)): else ConfigMismatchError,
    raised before data loading or compilation, with the workdir unchanged. config.json is
    written only after that check and the build. `allow_fresh_start`: see `run_training`.

    The one library entry point of launch/train.py: the ConfigDict ends here; below this line
    only the typed `TrainSpec` and the built `Components` are seen. `wrap_spec` (spec -> spec)
    may replace the built spec (a hook for experiments; config.model.consistency already
    wraps a consistency model's backbone).

    The SIGTERM handler is installed first: a pre-emption notice during the data build, the
    init, the restore or the compile stops the run cleanly with `parallel.Preempted` (at the
    restored step, or 0: no step ran, so no checkpoint is written or changed).
    """
    from diffjax.train.spec import TASKS

    task = str(config.get("task", "diffusion"))
    if task not in TASKS:
        raise ValueError(f"config.task = {task!r}: expected one of {TASKS}")
    if task != "diffusion":
        return _train_other_task(
            task,
            config,
            workdir,
            allow_config_change=allow_config_change,
            allow_fresh_start=allow_fresh_start,
        )
    with parallel.PreemptionWatch() as preemption:
        return _train_diffusion(
            config,
            workdir,
            wrap_spec=wrap_spec,
            allow_config_change=allow_config_change,
            allow_fresh_start=allow_fresh_start,
            preemption=preemption,
        )


def _train_diffusion(
    config: Any,
    workdir: str,
    *,
    wrap_spec,
    allow_config_change: tuple[str, ...],
    allow_fresh_start: bool,
    preemption: parallel.PreemptionWatch,
) -> TrainState:
    """train_and_evaluate of a diffusion run, under the caller's SIGTERM handler."""
    from diffjax.train.builders import build_components

    paths.check_filesystem(workdir)  # a missing gs:// client: one clear error, before work
    spec = spec_from_config(config)
    if spec.latent is not None:  # the frozen autoencoder's checkpoint, fixed for the run
        from diffjax.train.latent import pin_autoencoder_step

        spec = pin_autoencoder_step(spec, workdir)
    if wrap_spec is not None:
        spec = wrap_spec(spec)
    mesh = parallel.make_mesh()
    parallel.check_batch_divisible(spec.batch_size, mesh.size)
    check_grad_accum(spec.batch_size, spec.loop.grad_accum, mesh.size)
    config_json = config_to_json(config)
    checkpoint.check_resume_config(checkpoint_dir(workdir), config_json, allow_config_change)
    t0 = time.time()
    components = build_components(spec)
    logging.info("start-up: data and model built in %.1f s", time.time() - t0)
    if preemption.notice:  # one process: a SIGTERM during the build; nothing written yet
        _stop_at_start(checkpoint.stored_config(checkpoint_dir(workdir))[1] or 0)
    with lock_workdir(workdir):  # before the first write: a second run changes nothing
        write_workdir_json(workdir, CONFIG_FILE, config_json)  # primary process only
        write_run_info(workdir, components)
        if spec.latent is not None or spec.text is not None:  # autoencoder, scale, tokenizer
            from diffjax.train.latent import write_latent_info

            write_latent_info(workdir, spec)
        return run_training(
            spec,
            components,
            workdir,
            config_json,
            mesh,
            allow_fresh_start=allow_fresh_start,
            lock=False,
            preemption=preemption,
        )


def _train_other_task(
    task: str,
    config: Any,
    workdir: str,
    *,
    allow_config_change: tuple[str, ...] = (),
    allow_fresh_start: bool = False,
):
    """The entry points of the runs that train a model other runs use (see spec.TASKS), given
    train_and_evaluate's `allow_config_change` and `allow_fresh_start`."""
    flags = dict(allow_config_change=allow_config_change, allow_fresh_start=allow_fresh_start)
    if task == "classifier":  # a noisy classifier for guidance (Dhariwal & Nichol 2021)
        from diffjax.train.noisy_classifier import train_noisy_classifier

        return train_noisy_classifier(config, workdir, **flags)
    if task == "autoencoder":  # the first stage of latent diffusion (Rombach et al. 2022)
        from diffjax.train.autoencoder import train_autoencoder

        return train_autoencoder(config, workdir, **flags)
    raise NotImplementedError(f"config.task = {task!r} is not implemented yet")
