"""Training the KL autoencoder of latent diffusion (`config.task='autoencoder'`).

The objective is `diffjax.train.autoencoder_losses`: reconstruction (L1 and/or L2, summed over
pixels) + kl_weight KL(q(z|x) || N(0, I)) + an optional PatchGAN hinge term with Esser et al.'s
adaptive weight, switched on at step `disc_start` (Rombach et al. 2022, sec. 3.1 and app. G;
Esser et al. 2021, eq. 7). A perceptual (LPIPS) term needs pretrained feature weights, which
cannot be downloaded here, so it is off (see `AutoencoderLoss.perceptual` to supply one).

The run uses the launcher, orbax checkpoints (`diffjax.train.checkpoint`, resume and
corrupt-step recovery included), metrics and workdir files of the diffusion runs, and their
safety rules (`diffjax.train.loop`): the workdir lock, the resume-config check, SIGTERM saving
the step reached, no save of a NaN/inf state, only process 0 writing files. At the end it
writes a reconstruction grid (`reconstructions.png`: rows alternate originals and their
reconstructions) and the latent scale factor 1 / std(z), z ~ q(z | x) over `scale_samples`
training images (Rombach et al. 2022, app. G), to `latent_scale.json` next to run_info.json;
`config.autoencoder.scale_factor` fixes it instead.

Config (the fields of `config.autoencoder` for this task; experiments/autoencoder.py):
  reconstruction ('l1' | 'l2' | 'l1+l2'), kl_weight, discriminator (bool), disc_weight,
  disc_factor, disc_start, disc_ndf, disc_layers, scale_factor (None: computed),
  scale_samples, grid_num; plus seed, data, model (an 'autoencoder*' preset), optim, ema, train.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from diffjax import parallel
from diffjax.losses.autoencoder import psnr
from diffjax.train import checkpoint, paths
from diffjax.train.autoencoder_losses import (
    AutoencoderLoss,
    discriminator_objective,
    generator_objective,
)
from diffjax.train.loop import checkpoint_dir
from diffjax.train.optim import ema_decay, ema_update, make_optimizer
from diffjax.train.spec import (
    CondSpec,
    EmaSpec,
    ExampleSpec,
    LoopSpec,
    OptimSpec,
    _check,
    _check_loop,
    _check_optim,
    _section,
    check_default_step_options,
    data_config,
    probe_example,
)
from diffjax.train.state import TrainState, jit_once, param_count

SCALE_FILE = "latent_scale.json"  # next to run_info.json
GRID_FILE = "reconstructions.png"
# Fields of config.autoencoder that name a trained autoencoder for a diffusion run.
LDM_FIELDS = ("workdir", "cache", "step")


@dataclasses.dataclass(frozen=True)
class AutoencoderOptions:
    """config.autoencoder for task='autoencoder' (see the module docstring)."""

    reconstruction: str = "l1"
    kl_weight: float = 1e-6  # the latent-diffusion kl-f* configs
    discriminator: bool = False
    disc_weight: float = 0.5
    disc_factor: float = 1.0
    disc_start: int = 50001  # the kl-f8 config's start step
    disc_ndf: int = 64
    disc_layers: int = 3
    scale_factor: float | None = None  # None: 1 / std of encoded training latents
    scale_samples: int = 1024  # training images encoded for the scale factor
    grid_num: int = 16  # images in the reconstruction grid (0: none)


@dataclasses.dataclass(frozen=True)
class AutoencoderTrainSpec:
    """Everything an autoencoder run needs, built and validated."""

    seed: int
    batch_size: int
    data: Any  # diffjax.data.DataConfig
    example: ExampleSpec  # (H, W, C) images
    model: Any  # the AutoencoderKL
    loss: AutoencoderLoss
    discriminator: Any  # a PatchDiscriminator, or None
    optim: OptimSpec
    ema: EmaSpec
    loop: LoopSpec
    options: AutoencoderOptions


def _options(config) -> AutoencoderOptions:
    section = dict(config.get("autoencoder", {}) or {})
    section = section.to_dict() if hasattr(section, "to_dict") else section
    for name in LDM_FIELDS:
        value = section.pop(name, None)
        if value not in (None, False):
            raise ValueError(
                f"config.autoencoder.{name} = {value!r} names a trained autoencoder for a "
                "diffusion run; a task='autoencoder' run trains one: unset it"
            )
    opts = _section(AutoencoderOptions, section, "autoencoder")
    _check(opts.kl_weight >= 0, "autoencoder.kl_weight", opts.kl_weight, "a weight >= 0")
    _check(opts.disc_start >= 0, "autoencoder.disc_start", opts.disc_start, "a step >= 0")
    _check(opts.scale_samples >= 2, "autoencoder.scale_samples", opts.scale_samples, ">= 2")
    _check(opts.grid_num >= 0, "autoencoder.grid_num", opts.grid_num, ">= 0 (0: no grid)")
    if opts.scale_factor is not None:
        ok = np.isfinite(opts.scale_factor) and opts.scale_factor > 0
        _check(ok, "autoencoder.scale_factor", opts.scale_factor, "a finite factor > 0 or None")
    return opts


def _build_model(config, example: ExampleSpec):
    from diffjax.models import AutoencoderKL, get_model

    name = str(config.model.name)
    if not name.startswith("autoencoder"):
        raise ValueError(
            f"config.model.name = {name!r}: a task='autoencoder' run trains an 'autoencoder*' "
            "model (e.g. 'autoencoder_kl_f4_28', 'autoencoder_kl_f8')"
        )
    options = dict(config.model.get("kwargs", {}) or {})
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
    if len(example.shape) != 3:
        raise ValueError(f"an autoencoder needs images [H, W, C]; the data give {example.shape}")
    options.setdefault("in_channels", example.shape[-1])
    model = get_model(name, **options)
    assert isinstance(model, AutoencoderKL)
    h, w, c = example.shape
    if c != model.in_channels or h % model.factor or w % model.factor:
        raise ValueError(
            f"model {name!r} (in_channels={model.in_channels}, f={model.factor}) does not fit "
            f"the data's images {example.shape}: need {model.in_channels} channels and sides "
            f"divisible by {model.factor}"
        )
    return model


def autoencoder_spec_from_config(config, example: ExampleSpec | None = None):
    """Validate a task='autoencoder' config and build its spec (before data or compile;
    `example` None opens the data source once for the image shape)."""
    from diffjax.models import PatchDiscriminator

    opts = _options(config)
    optim, ema = _section(OptimSpec, config.optim, "optim"), _section(EmaSpec, config.ema, "ema")
    _check_optim(optim, ema, CondSpec())
    loop = _section(LoopSpec, config.train, "train")
    _check_loop(loop)
    check_default_step_options(loop, "autoencoder")  # the diffusion step's options
    loss = AutoencoderLoss(
        reconstruction=opts.reconstruction,
        kl_weight=opts.kl_weight,
        disc_weight=opts.disc_weight,
        disc_factor=opts.disc_factor,
        disc_start=opts.disc_start,
    )
    seed, batch_size = int(config.seed), int(config.data.batch_size)
    data = data_config(config.data, batch_size, seed)
    example = probe_example(data) if example is None else example
    disc = None
    if opts.discriminator:
        groups = min(32, opts.disc_ndf)
        disc = PatchDiscriminator(ndf=opts.disc_ndf, n_layers=opts.disc_layers, num_groups=groups)
    return AutoencoderTrainSpec(
        seed, batch_size, data, example, _build_model(config, example), loss, disc, optim, ema,
        loop, opts,
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------
# State and step.


def _init_fn(spec: AutoencoderTrainSpec):
    def init_params(key):
        ae_key, disc_key = jax.random.split(key)
        x = jnp.zeros((1, *spec.example.shape), jnp.float32)
        params = {"autoencoder": spec.model.init(ae_key, x)["params"]}
        if spec.discriminator is not None:
            params["discriminator"] = spec.discriminator.init(disc_key, x)["params"]
        return params

    return init_params


def make_tx(spec: AutoencoderTrainSpec) -> optax.GradientTransformation:
    """One optimiser per network (the autoencoder's and the discriminator's clipping and Adam
    moments are separate, as with taming's two optimisers), same hyper-parameters."""
    names = ("autoencoder",) + (("discriminator",) if spec.discriminator is not None else ())

    def labels(params):
        return {name: jax.tree.map(lambda _, n=name: n, tree) for name, tree in params.items()}

    return optax.multi_transform({k: make_optimizer(spec.optim) for k in names}, labels)


def create_state(key, spec: AutoencoderTrainSpec, tx) -> TrainState:
    """Params {"autoencoder", ["discriminator"]}; EMA of the autoencoder's params only."""
    params = _init_fn(spec)(key)
    return TrainState(
        params=params,
        ema_params=jax.tree.map(jnp.copy, params["autoencoder"]),
        opt_state=tx.init(params),
        step=jnp.zeros((), jnp.int32),
    )


def train_step(state: TrainState, batch: dict, base_key, *, spec, tx):
    """One step of both networks with key fold_in(base_key, step): L_G for the autoencoder and
    the (delayed) hinge loss for the discriminator on stopped reconstructions."""
    key = jax.random.fold_in(base_key, state.step)
    x, params = batch["image"], state.params
    disc, disc_params = spec.discriminator, params.get("discriminator")

    def gen(ae_params):
        return generator_objective(
            spec.loss, spec.model, disc, ae_params, disc_params, x, key, state.step
        )

    (loss, aux), g_ae = jax.value_and_grad(gen, has_aux=True)(params["autoencoder"])
    grads, metrics = {"autoencoder": g_ae}, {}
    if disc is not None:
        d_obj = lambda dp: discriminator_objective(spec.loss, disc, dp, x, aux["x_rec"], state.step)
        d_loss, grads["discriminator"] = jax.value_and_grad(d_obj)(disc_params)
        metrics.update(disc_loss=d_loss, adaptive_weight=aux["adaptive_weight"])
    updates, opt_state = tx.update(grads, state.opt_state, params)
    params = optax.apply_updates(params, updates)
    ema = ema_update(state.ema_params, params["autoencoder"], ema_decay(spec.ema, state.step))
    metrics.update(
        loss=loss, rec=aux["rec"], kl=aux["kl"], gan=aux["gan"],
        psnr=jnp.mean(psnr(x, aux["x_rec"])), grad_norm=optax.tree.norm(g_ae),
    )  # fmt: skip
    new = state.replace(params=params, ema_params=ema, opt_state=opt_state, step=state.step + 1)
    return new, metrics


def make_step(spec, tx, mesh):
    repl, data = parallel.replicated(mesh), parallel.data_sharding(mesh)
    fn = lambda state, batch, key: train_step(state, batch, key, spec=spec, tx=tx)
    return jax.jit(
        fn, in_shardings=(repl, data, repl), out_shardings=(repl, repl), donate_argnums=(0,)
    )


# ----------------------------------------------------------------------------------------------
# Encoding, the scale factor and the grid.


def make_encode(module, *, sample: bool):
    """A jitted (params, key, images) -> latents z (posterior samples, or the mode)."""

    def encode(params, key, x):
        posterior = module.apply({"params": params}, x, method="encode")
        return posterior.sample(key) if sample else posterior.mode()

    return jax.jit(encode)


def make_decode(module):
    return jax.jit(lambda params, z: module.apply({"params": params}, z, method="decode"))


def compute_scale(spec, ema_params, key) -> dict:
    """1 / std of z ~ q(z | x) over the first `scale_samples` training images (in the order of
    the step-0 batches), and how it was measured."""
    images = _first_images(spec, spec.options.scale_samples)
    encode = make_encode(spec.model, sample=True)
    batch = spec.batch_size
    keys = jax.random.split(key, -(-len(images) // batch))
    zs = [
        np.asarray(encode(ema_params, k, images[i * batch : (i + 1) * batch]))
        for i, k in enumerate(keys)
    ]
    z = np.concatenate(zs).astype(np.float64)
    return {
        "std": float(z.std()),
        "mean": float(z.mean()),
        "num_examples": len(images),
        "computed_scale_factor": float(1.0 / z.std()),
    }


def _first_images(spec, num: int) -> np.ndarray:
    from diffjax.data import make_iterator

    # the first images of the 1-process stream, on every host alike
    config = dataclasses.replace(spec.data, prefetch=0)
    batches = make_iterator(config, process_index=0, process_count=1)
    out, step = [], 0
    while sum(len(b) for b in out) < num:
        out.append(np.asarray(batches.batch_at(step)["image"]))
        step += 1
    return np.concatenate(out)[:num]


def write_scale(workdir: str, spec, facts: dict, step: int) -> dict:
    """latent_scale.json: the factor the latent runs use (the fixed one, if configured)."""
    fixed = spec.options.scale_factor
    h, w, c = spec.example.shape
    f = spec.model.factor
    info = {
        "scale_factor": float(fixed) if fixed is not None else facts["computed_scale_factor"],
        "source": "config.autoencoder.scale_factor" if fixed is not None else "1/std(z)",
        "image_shape": [h, w, c],
        "latent_shape": [h // f, w // f, spec.model.z_channels],
        "step": int(step),
        **facts,
    }
    if parallel.is_primary():
        paths.write_json(paths.workdir_path(workdir) / SCALE_FILE, info)  # atomic
    return info


def write_grid(workdir: str, spec, ema_params) -> str | None:
    """reconstructions.png: rows of originals alternating with their (mode) reconstructions."""
    from diffjax.train.writers import save_image_grid

    num = spec.options.grid_num
    if num <= 0 or not parallel.is_primary():
        return None
    x = _first_images(spec, num)
    z = make_encode(spec.model, sample=False)(ema_params, None, x)
    rec = np.asarray(make_decode(spec.model)(ema_params, z))
    cols = min(8, num)
    rows = [a for i in range(0, num, cols) for a in (x[i : i + cols], rec[i : i + cols])]
    path = paths.workdir_path(workdir) / GRID_FILE
    return save_image_grid(path, np.concatenate(rows), (-1.0, 1.0), cols)


# ----------------------------------------------------------------------------------------------
# The run.


def _restore(spec, workdir, mesh, tx, *, allow_fresh_start: bool = False):
    """(state replicated over mesh, checkpoint manager): the latest good checkpoint or step 0
    (`checkpoint.restore_latest`'s rules, `allow_fresh_start` included)."""
    from diffjax.train.loop import run_keys

    manager = checkpoint.make_manager(checkpoint_dir(workdir), spec.loop.keep_checkpoints)
    key = run_keys(spec.seed)["init"]
    abstract = jax.eval_shape(lambda k: create_state(k, spec, tx), key)
    state, step = checkpoint.restore_latest(
        manager, abstract, parallel.replicated(mesh), allow_fresh_start=allow_fresh_start
    )
    if state is None:
        sharding = parallel.replicated(mesh)
        init = jit_once(lambda k: create_state(k, spec, tx), out_shardings=sharding)
        state = init(key)
        logging.info("no checkpoint in %s: starting from step 0", manager.directory)
    else:
        logging.info("resuming from step %d", step)
    return state, manager


def _write_run_files(workdir: str, spec, config_json: dict) -> None:
    """config.json and run_info.json (primary process only, atomically)."""
    from diffjax.train.workdir import CONFIG_FILE, RUN_INFO_FILE, write_workdir_json

    info = {
        "example_shape": list(spec.example.shape),
        "data_key": "image",
        "value_range": [-1.0, 1.0],
        "task": "autoencoder",
    }
    write_workdir_json(workdir, CONFIG_FILE, config_json)
    write_workdir_json(workdir, RUN_INFO_FILE, info)


def train_autoencoder(
    config,
    workdir: str,
    *,
    allow_config_change: tuple[str, ...] = (),
    allow_fresh_start: bool = False,
    mesh=None,
) -> TrainState:
    """Train the autoencoder of `config` in `workdir` (resuming from its latest checkpoint);
    at the end write the reconstruction grid and latent_scale.json. Returns the final state.

    The rules of `loop.train_and_evaluate`: the config must equal the one stored with the
    checkpoints outside `checkpoint.RESUMABLE_FIELDS` and `allow_config_change` (else
    ConfigMismatchError before any write); the workdir lock is held from the first write on;
    `allow_fresh_start` trains from step 0 when every checkpoint is unreadable.

    Raises:
      parallel.Preempted: a SIGTERM arrived; the step reached was saved (a notice during the
        start-up stops at the restored step, or 0, writing no checkpoint).
      checkpoint.NonFiniteError: a NaN/inf loss or parameter (nothing bad was saved).
      lock.WorkdirLockedError: another live training process uses `workdir`.
    """
    from diffjax.train.loop import _stop_at_start

    with parallel.PreemptionWatch() as preemption:  # covers the start-up too
        state = _train(config, workdir, allow_config_change, allow_fresh_start, mesh, preemption)
        if state is None:  # a notice before any step ran: no checkpoint written or changed
            _stop_at_start(checkpoint.stored_config(checkpoint_dir(workdir))[1] or 0)
        return state


def _train(config, workdir, allow_config_change, allow_fresh_start, mesh, preemption):
    """`train_autoencoder` under the caller's SIGTERM handler; None if a notice arrived before
    the workdir was touched."""
    from diffjax.train.builders import build_batches
    from diffjax.train.lock import lock_workdir
    from diffjax.train.loop import _Run, _save_preempted, _stop_at_start, config_to_json, run_keys
    from diffjax.train.writers import MetricWriter

    paths.check_filesystem(workdir)  # a missing gs:// client: one clear error, before work
    spec = autoencoder_spec_from_config(config)
    mesh = parallel.make_mesh() if mesh is None else mesh
    parallel.check_batch_divisible(spec.batch_size, mesh.size)
    config_json = config_to_json(config)
    checkpoint.check_resume_config(checkpoint_dir(workdir), config_json, allow_config_change)
    if preemption.notice:  # one process: a SIGTERM during the build; nothing written yet
        return None
    with contextlib.ExitStack() as stack:
        stack.enter_context(lock_workdir(workdir))  # before the first write
        _write_run_files(workdir, spec, config_json)
        tx = make_tx(spec)
        state, manager = _restore(spec, workdir, mesh, tx, allow_fresh_start=allow_fresh_start)
        stack.callback(manager.close)  # waits for unfinished asynchronous writes
        start = int(jax.device_get(state.step))
        if preemption.reached(start):  # a notice during the init or the restore
            _stop_at_start(start)
        logging.info("autoencoder parameters: %d", param_count(state.params["autoencoder"]))
        writer = stack.enter_context(MetricWriter(workdir, resume_step=start))
        run = _Run(spec, None, workdir, manager, writer, None, run_keys(spec.seed), config_json)
        step_fn, run.t_log = make_step(spec, tx, mesh), time.time()
        batches = build_batches(spec, start)
        stack.callback(getattr(batches, "close", lambda: None))  # stops a prefetch thread
        for step in range(start, spec.loop.num_steps):
            batch = {"image": next(batches)["image"]}
            state, metrics = step_fn(state, parallel.shard_batch(batch, mesh), run.keys["step"])
            run.history.append(metrics)
            run.after_step(state, step + 1)  # log; require_finite, then save when due
            if preemption.reached(step + 1):
                _save_preempted(run, state, step + 1)
        run.finish(state)  # checkpoints written, writers closed, loss.png (primary)
        if parallel.is_primary():  # files only: process 0 alone computes them (lock held)
            done = int(jax.device_get(state.step))
            finish(workdir, spec, state.ema_params, done, run.keys["sample"])
    return state


def finish(workdir: str, spec, ema_params, step: int, key) -> dict:
    """Write the reconstruction grid and latent_scale.json of the EMA autoencoder (files on
    the primary process only; every process returns the info)."""
    ema_params = jax.device_get(ema_params)
    path = write_grid(workdir, spec, ema_params)
    if path:
        logging.info("wrote reconstructions to %s", path)
    info = write_scale(workdir, spec, compute_scale(spec, ema_params, key), step)
    logging.info("latent scale factor %.6g (%s)", info["scale_factor"], info["source"])
    return info


# ----------------------------------------------------------------------------------------------
# Reading a trained autoencoder back (read-only).


def read_scale(workdir: str) -> dict | None:
    """latent_scale.json of an autoencoder workdir, or None if it has none."""
    path = paths.workdir_path(workdir) / SCALE_FILE
    return paths.read_json(path) if path.is_file() else None


def autoencoder_run(workdir: str):
    """(spec, latent_scale.json or None) of an autoencoder workdir, reading no checkpoint.

    Raises:
      FileNotFoundError: `workdir` holds no config.json / run_info.json.
      ValueError: `workdir` is not a task='autoencoder' run.
    """
    from diffjax.train.workdir import RUN_INFO_FILE, _read_json, load_config

    info = _read_json(workdir, RUN_INFO_FILE)
    config = load_config(workdir)
    if str(config.get("task", "diffusion")) != "autoencoder":
        raise ValueError(
            f"{workdir!r} is a task={config.get('task', 'diffusion')!r} run, not an autoencoder "
            "(train one with experiments/autoencoder.py)"
        )
    spec = autoencoder_spec_from_config(config, ExampleSpec(tuple(info["example_shape"])))
    return spec, read_scale(workdir)


def load_autoencoder(workdir: str, mesh=None, step: int | None = None):
    """(spec, EMA autoencoder params, step) of the newest checkpoint in `workdir` (or of
    checkpoint `step`), read-only."""
    spec, _ = autoencoder_run(workdir)
    mesh = parallel.make_mesh() if mesh is None else mesh
    abstract = jax.eval_shape(lambda k: _init_fn(spec)(k)["autoencoder"], jax.random.PRNGKey(0))
    params, step = checkpoint.restore_ema(
        checkpoint_dir(workdir), abstract, parallel.replicated(mesh), step
    )
    return spec, params, step


def reconstruction_psnr(workdir: str, images: np.ndarray, batch: int = 250) -> np.ndarray:
    """Per-image PSNR (dB, range 2 for [-1, 1] images) of decode(mode of q(z | x)) of the EMA
    autoencoder in `workdir` on `images` [N, H, W, C] in [-1, 1] (e.g. held-out test images)."""
    spec, params, _ = load_autoencoder(workdir)
    encode, decode = make_encode(spec.model, sample=False), make_decode(spec.model)
    out = []
    for i in range(0, len(images), batch):
        x = jnp.asarray(images[i : i + batch], jnp.float32)
        out.append(np.asarray(psnr(x, decode(params, encode(params, None, x)))))
    return np.concatenate(out)
