"""The training loop: resume, step, log, checkpoint, draw samples; and `train_and_evaluate`."""

from __future__ import annotations

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
from diffjax.train import checkpoint
from diffjax.train.components import Components, make_loss_fn
from diffjax.train.optim import make_optimizer
from diffjax.train.sampling import make_sampler, write_samples
from diffjax.train.spec import TrainSpec, spec_from_config
from diffjax.train.state import TrainState, abstract_train_state, create_train_state, param_count
from diffjax.train.step import make_train_step
from diffjax.train.workdir import CHECKPOINT_DIR, CONFIG_FILE, write_run_info
from diffjax.train.writers import MetricWriter, read_metrics, save_loss_curve


def run_keys(seed: int) -> dict[str, jax.Array]:
    """The named keys of a run; step n uses fold_in(keys['step'], n) (no key is stored)."""
    init_key, step_key, sample_key = jax.random.split(jax.random.PRNGKey(seed), 3)
    return {"init": init_key, "step": step_key, "sample": sample_key}


def init_or_restore(spec: TrainSpec, c: Components, workdir: str, mesh, tx):
    """(state replicated over mesh, checkpoint manager): the latest good checkpoint or step 0."""
    manager = checkpoint.make_manager(
        os.path.join(workdir, CHECKPOINT_DIR), spec.loop.keep_checkpoints
    )
    key = run_keys(spec.seed)["init"]
    abstract = abstract_train_state(key, c.init_params, tx)
    state, step = checkpoint.restore_latest(manager, abstract, parallel.replicated(mesh))
    if state is None:
        # jitted: an eager Flax init runs op by op and takes many seconds for a U-Net on CPU
        init = jax.jit(
            create_train_state, static_argnums=(1, 2), out_shardings=parallel.replicated(mesh)
        )
        state = init(key, c.init_params, tx)
        logging.info("no checkpoint in %s: starting from step 0", manager.directory)
    else:
        logging.info("resuming from step %d", step)
    return state, manager


def _mean_metrics(history: list[dict]) -> dict[str, float]:
    history = jax.device_get(history)
    return {k: float(np.mean([h[k] for h in history])) for k in history[0]}


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

    def log(self, done: int) -> None:
        values = _mean_metrics(self.history)
        values["steps_per_sec"] = len(self.history) / max(time.time() - self.t_log, 1e-9)
        self.writer.write(done, values)
        self.history, self.t_log = [], time.time()

    def grid(self, state: TrainState, done: int) -> None:
        """Sample from the EMA params with key fold_in(sample_key, step) and write the grid;
        a class-conditional grid has one column per class."""
        key = jax.random.fold_in(self.keys["sample"], done)
        samples = np.asarray(self.sampler(state.ema_params, key))
        cond = self.spec.cond
        path = os.path.join(self.workdir, f"samples_{done:07d}.png")
        write_samples(path, samples, self.c, cond.num_classes if cond.class_conditional else None)
        logging.info("wrote samples to %s", path)

    def after_step(self, state: TrainState, done: int) -> None:
        loop = self.spec.loop
        if done % loop.log_every == 0 or done == loop.num_steps:
            self.log(done)
        if done % loop.checkpoint_every == 0 or done == loop.num_steps:
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
        curve = os.path.join(self.workdir, "loss.png")
        if save_loss_curve(curve, read_metrics(self.writer.path)):
            logging.info("wrote loss curve to %s", curve)


def run_training(
    spec: TrainSpec, c: Components, workdir: str, config_json: dict | None = None, mesh=None
) -> TrainState:
    """Train to `spec.loop.num_steps`, resuming from the latest checkpoint in `workdir`.

    `c.batches` is a callable start_step -> iterator of global numpy batches, so that a resumed
    run sees the batches an uninterrupted run would have seen at the same steps.
    """
    mesh = parallel.make_mesh() if mesh is None else mesh
    parallel.check_batch_divisible(spec.batch_size, mesh.size)
    os.makedirs(workdir, exist_ok=True)
    tx = make_optimizer(spec.optim)
    state, manager = init_or_restore(spec, c, workdir, mesh, tx)
    start = int(jax.device_get(state.step))
    logging.info("model parameters: %d; devices: %d", param_count(state.params), mesh.size)
    step_fn = make_train_step(make_loss_fn(c, spec.cond), tx, spec.ema, mesh, c.frozen)
    sampler = None
    if spec.sample.num > 0:
        sampler = make_sampler(c, spec.sample, spec.cond, spec.prediction, spec.sample.num)
    run = _Run(
        spec,
        c,
        workdir,
        manager,
        MetricWriter(workdir),
        sampler,
        run_keys(spec.seed),
        config_json or {},
    )
    batches, t0 = c.batches(start), time.time()
    steps = range(start, spec.loop.num_steps)
    bar = tqdm(
        steps,
        initial=start,
        total=spec.loop.num_steps,
        unit="step",
        disable=not spec.loop.progress_bar,
        mininterval=2.0,
    )
    for step in bar:
        state, metrics = step_fn(state, parallel.shard_batch(next(batches), mesh), run.keys["step"])
        run.history.append(metrics)
        if step == start:
            jax.block_until_ready(state.step)
            logging.info("first step (compile included) took %.1f s", time.time() - t0)
            run.t_log = time.time()
        run.after_step(state, step + 1)
    if hasattr(batches, "close"):
        batches.close()  # stops a prefetch thread
    run.finish(state)
    return state


def config_to_json(config: Any) -> dict:
    """The ConfigDict as a JSON-able dict (stored with every checkpoint and in config.json)."""
    return json.loads(config.to_json_best_effort(sort_keys=True))


def train_and_evaluate(config: Any, workdir: str, *, wrap_spec=None) -> TrainState:
    """Build everything from the experiment `config` (a ConfigDict) and train in `workdir`.

    The one library entry point of launch/train.py: the ConfigDict ends here; below this line
    only the typed `TrainSpec` and the built `Components` are seen. `wrap_spec` (spec -> spec)
    may replace the built model, e.g. experiments/consistency.py's consistency wrapper.
    """
    from diffjax.train.builders import build_components
    from diffjax.train.workdir import CONSISTENCY_LOSSES

    if str(config.loss.name) in CONSISTENCY_LOSSES and wrap_spec is None:
        # the loss needs the consistency function f = c_skip x + c_out F, which only
        # experiments/consistency.py's train() wraps around the backbone so far
        raise ValueError(
            f"loss {config.loss.name!r} trains a consistency model: run it with "
            "experiments/consistency.py's train(), not launch/train.py"
        )
    spec = spec_from_config(config)
    if wrap_spec is not None:
        spec = wrap_spec(spec)
    mesh = parallel.make_mesh()
    parallel.check_batch_divisible(spec.batch_size, mesh.size)
    os.makedirs(workdir, exist_ok=True)
    config_json = config_to_json(config)
    with open(os.path.join(workdir, CONFIG_FILE), "w") as f:
        json.dump(config_json, f, indent=2)
    components = build_components(spec)
    write_run_info(workdir, components)
    return run_training(spec, components, workdir, config_json, mesh)
