"""Prompts and sampling-time editing for trained runs (behind launch/sample.py's --prompt,
--negative_prompt, --init_image/--strength, --mask and --invert).

One code path for pixel-space runs (`workdir.load_trained`) and latent / caption runs
(`latent.load_latent_run`): images are encoded to the model's space (the identity in pixel
space), edited there with `diffjax.editing` / `diffjax.inpaint`, and decoded.

Conventions:
  - Images are PNG files of exactly the run's image size (H x W); grey or colour is converted
    to the run's channels; values 0..255 map to [-1, 1].
  - A mask PNG is white (>= 128) where the init image is KEPT and black where it is generated.
    For a latent run the mask is downsampled to the latent grid by a min over each f x f pixel
    block: a latent cell is kept only when its whole block is kept (so no pixel the user asked
    to regenerate is pinned), and inpainting runs on latents (Rombach et al. 2022, Sec. 4.5's
    latent inpainting); the decoded result is not pasted over with the original pixels.
  - --num is the number of samples per prompt; several prompts give one grid row each.
  - A negative prompt replaces the null caption as CFG's `uncond` (so it acts only when the
    guidance scale != 1).
  - --invert runs the guided model (the run's guidance scale unless --guidance_scale is given;
    scale 1, the plain conditional model, is the one whose ODE is exactly invertible) and
    reports the reconstruction's error in latents and in pixels (against the input and
    against the autoencoder's own round trip of it).
"""

from __future__ import annotations

import dataclasses
import io
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from diffjax import guidance, parallel
from diffjax.editing import check_strength, ddim_invert, ddim_reconstruct, sdedit
from diffjax.inpaint import inpaint
from diffjax.samplers import sample
from diffjax.train import paths
from diffjax.train.writers import save_image_grid


@dataclasses.dataclass(frozen=True)
class EditRequest:
    """What the command line asked for (None: the run's default / not asked)."""

    prompts: tuple[str, ...] = ()
    negative_prompt: str | None = None
    guidance_scale: float | None = None
    init_image: str | None = None
    strength: float | None = None
    mask: str | None = None
    invert: bool = False
    invert_fixed_point: int = 0
    num: int = 8
    solver: str | None = None
    steps: int | None = None
    class_label: int | None = None
    seed: int = 0
    out: str | None = None


def check_request(req: EditRequest) -> None:
    """Refuse inconsistent options before anything is loaded (ValueError naming the flag)."""
    if req.init_image is None:
        for flag, value in (("--strength", req.strength), ("--mask", req.mask)):
            if value not in (None, False):
                raise ValueError(f"{flag} edits an image: give it with --init_image=PNG")
        if req.invert:
            raise ValueError("--invert inverts an image: give it with --init_image=PNG")
    if req.strength is not None:
        check_strength(req.strength)
    modes = [name for name, on in (("--strength", req.strength is not None),
                                   ("--mask", req.mask is not None), ("--invert", req.invert))
             if on]  # fmt: skip
    if len(modes) > 1:
        raise ValueError(f"choose one of --strength (SDEdit), --mask, --invert; got {modes}")
    if req.invert and len(req.prompts) > 1:
        raise ValueError(f"--invert takes at most one --prompt; got {len(req.prompts)}")
    if req.num < 1:
        raise ValueError(f"--num must be >= 1; got {req.num}")
    if any(not p.strip() for p in req.prompts):
        raise ValueError(f"--prompt must not be empty; got {list(req.prompts)}")


# ------------------------------------------------------------------------------------ runs
class PixelRun:
    """A plain (pixel-space, label- or un-conditioned) run with `LatentRun`'s reading API."""

    def __init__(self, workdir: str):
        from diffjax.train.workdir import load_trained

        self.spec, self.components, trained = load_trained(workdir)
        self.step, self.ema_params = trained.step, trained.ema_params
        self.image_shape = self.latent_shape = tuple(self.components.example_shape)
        self.process, self.prediction = self.components.process, self.spec.prediction
        self.value_range = tuple(self.components.value_range)
        self.tokenizer = None

    def encode(self, images):
        return jnp.asarray(images, jnp.float32)

    def decode(self, latents):
        return jnp.asarray(latents, jnp.float32)

    def null_cond(self, n: int):
        if self.spec.cond.class_conditional:
            return jnp.full((n,), self.spec.cond.num_classes, jnp.int32)
        return None

    def model(self, params=None, *, context_scale: float = 1.0):
        from diffjax.train.sampling import _apply_eval

        del context_scale
        params = self.ema_params if params is None else params
        return jax.tree_util.Partial(_apply_eval, self.components.apply, params)


def load_run(workdir: str):
    """`latent.load_latent_run` for a latent or caption run (it has latent_info.json), else a
    `PixelRun`; both read-only."""
    from diffjax.train import latent

    if not (paths.workdir_path(workdir) / latent.LATENT_INFO_FILE).exists():
        return PixelRun(workdir)
    return latent.load_latent_run(workdir)


def _factor(run) -> int:
    """The autoencoder's downsampling factor f (1 in pixel space)."""
    return int(run.image_shape[0] // run.latent_shape[0])


# ------------------------------------------------------------------------------------ inputs
def read_png(path: str, shape: tuple[int, ...], flag: str) -> np.ndarray:
    """A PNG as uint8 [H, W, C] with the run's (H, W, C); ValueError naming the flag, the file's
    size and the expected size otherwise."""
    from PIL import Image

    file = paths.workdir_path(path)  # any filesystem of the path layer
    if not file.is_file():
        raise ValueError(f"{flag}={path}: no such file")
    try:
        img = Image.open(io.BytesIO(file.read_bytes()))
        img.load()
    except Exception as err:  # Pillow raises several types for bad files
        raise ValueError(f"{flag}={path}: cannot read the image ({err})") from err
    h, w, c = shape
    if (img.height, img.width) != (h, w):
        raise ValueError(
            f"{flag}={path} is {img.height}x{img.width} (HxW); this run's images are {h}x{w}"
        )
    arr = np.asarray(img.convert("L" if c == 1 else "RGB"), np.uint8)
    return arr[..., None] if c == 1 else arr


def to_model_range(pixels: np.ndarray, value_range) -> np.ndarray:
    lo, hi = value_range
    return (pixels.astype(np.float32) / 255.0) * (hi - lo) + lo


def latent_mask(mask_pixels: np.ndarray, factor: int) -> np.ndarray:
    """A pixel mask [H, W] in {0, 1} -> the latent grid's [H/f, W/f, 1] by the min over each
    f x f block (a cell is kept only when every pixel of its block is kept)."""
    h, w = mask_pixels.shape
    if h % factor or w % factor:
        raise ValueError(f"a {h}x{w} mask does not tile into {factor}x{factor} latent blocks")
    blocks = mask_pixels.reshape(h // factor, factor, w // factor, factor)
    return blocks.min(axis=(1, 3))[..., None].astype(np.float32)


# ------------------------------------------------------------------------------------ conditioning
def conditioning(run, req: EditRequest):
    """(cond [N], uncond [N] or None, row labels for the grid): prompt tokens for a caption run,
    class labels for a class-conditional one, None for an unconditional one. Raises ValueError
    for a prompt given to a run without text, or a prompt the tokenizer refuses."""
    text = run.tokenizer is not None
    if (req.prompts or req.negative_prompt is not None) and not text:
        raise ValueError(
            "--prompt / --negative_prompt need a run trained with text conditioning "
            "(config.text.captions); this run has none"
        )
    if req.class_label is not None and text:
        raise ValueError("--class_label is for class-conditional runs; this run takes --prompt")
    n = req.num
    if text:
        prompts = list(req.prompts) or [""]  # no prompt: the null caption (unconditional)
        try:
            tokens = run.tokenize([p for p in prompts for _ in range(n)])
            neg = None if req.negative_prompt is None else run.tokenize([req.negative_prompt])
        except ValueError as err:
            raise ValueError(f"prompt refused by the run's tokenizer: {err}") from err
        cond = jnp.asarray(tokens)
        uncond = run.null_cond(len(tokens)) if neg is None else jnp.tile(neg, (len(tokens), 1))
        return cond, jnp.asarray(uncond), prompts
    cond_spec = run.spec.cond
    if not cond_spec.class_conditional:
        if req.class_label is not None:
            raise ValueError("--class_label needs a class-conditional run; this one is not")
        return None, None, None
    if req.class_label is not None and not 0 <= req.class_label < cond_spec.num_classes:
        raise ValueError(
            f"--class_label={req.class_label} must lie in [0, {cond_spec.num_classes})"
        )
    labels = (jnp.full((n,), req.class_label, jnp.int32) if req.class_label is not None
              else jnp.arange(n, dtype=jnp.int32) % cond_spec.num_classes)  # fmt: skip
    return labels, run.null_cond(n), None


def _with_cond(model, cond, x_t, t):
    return model(x_t, t, cond)


def bound_model(run, cond, uncond, scale: float, context_scale: float = 1.0):
    """The model with its conditions bound: CFG uncond + scale (cond - uncond) for scale != 1
    (`uncond` the null condition or a negative prompt), the plain conditional model at 1."""
    model = run.model(context_scale=context_scale)
    if cond is None:
        return jax.tree_util.Partial(_with_cond, model, None)
    if scale == 1.0:
        return jax.tree_util.Partial(_with_cond, model, cond)
    return guidance.cfg(model, cond, uncond, scale)


# ------------------------------------------------------------------------------------ the program
def run_request(workdir: str, req: EditRequest, run=None) -> dict:
    """Sample / edit as `req` asks and write the outputs (to req.out, default the workdir);
    returns {'png', 'npz': paths, 'step', ...}. `run`: the workdir's `load_run`, if loaded."""
    check_request(req)
    if req.invert:  # one image to invert and reconstruct
        req = dataclasses.replace(req, num=1)
    run = load_run(workdir) if run is None else run
    cond, uncond, prompts = conditioning(run, req)
    n = req.num * (len(prompts) if prompts else 1)
    sample_spec = run.spec.sample
    scale = sample_spec.guidance_scale if req.guidance_scale is None else req.guidance_scale
    if req.negative_prompt is not None and scale == 1.0:
        logging.warning("--negative_prompt acts through CFG only: it has no effect at scale 1")
    solver = req.solver or sample_spec.solver
    steps = req.steps if req.steps is not None else sample_spec.steps
    options = dict(sample_spec.kwargs) if solver == sample_spec.solver else {}
    x_known = known_mask = None
    if req.init_image is not None:
        pixels = read_png(req.init_image, run.image_shape, "--init_image")
        image = to_model_range(pixels, run.value_range)[None]
        x_known = jnp.tile(run.encode(image), (n, 1, 1, 1))
    if req.mask is not None:
        m = read_png(req.mask, run.image_shape[:2] + (1,), "--mask")[..., 0] >= 128
        known_mask = latent_mask(m.astype(np.float32), _factor(run))
    model = bound_model(run, cond, uncond, scale)
    key = jax.random.PRNGKey(req.seed)
    shape = (n, *run.latent_shape)
    out = paths.workdir_path(req.out or workdir)  # written by the primary process only
    result: dict = {"step": int(run.step), "guidance_scale": float(scale)}
    kind = run.prediction
    if req.invert:
        return _invert(run, model, x_known[:1], image, solver, steps, req, out, result)
    if req.mask is not None:
        z = inpaint(key, model, run.process, x_known, jnp.asarray(known_mask)[None],
                    solver=solver, steps=steps, prediction=kind, **options)  # fmt: skip
        stem = "inpaint"
    elif req.strength is not None:
        z = sdedit(key, model, run.process, x_known, req.strength, solver=solver, steps=steps,
                   prediction=kind, **options)  # fmt: skip
        stem = f"sdedit_{req.strength:.2f}"
    else:
        z = sample(key, model, run.process, shape, solver=solver, steps=steps or None,
                   prediction=kind, **options)  # fmt: skip
        stem = "prompt" if prompts else "samples"
    images = np.asarray(run.decode(z))
    stem = os.fspath(out / f"{stem}_{solver}_{steps}")
    extra = {"prompts": np.array(prompts)} if prompts else {}
    if req.negative_prompt is not None:
        extra["negative_prompt"] = np.array(req.negative_prompt)
    if known_mask is not None:
        extra["latent_mask"] = known_mask
    if parallel.is_primary():
        save_image_grid(stem + ".png", images, run.value_range, cols=req.num)
        paths.write_npz(
            stem + ".npz", samples=images, latents=np.asarray(z), step=int(run.step), **extra
        )
    return {**result, "png": stem + ".png", "npz": stem + ".npz"}


def _invert(run, model, z0, image, solver, steps, req, out, result) -> dict:
    """DDIM-invert the (encoded) init image to its noise and reconstruct it on the same grid;
    writes the reconstruction and reports its error in the model's space and in pixels."""
    del solver  # inversion is DDIM by definition
    noise, info = ddim_invert(
        model, run.process, z0[:1], steps=steps or None, prediction=run.prediction,
        fixed_point=req.invert_fixed_point, return_info=True,
    )  # fmt: skip
    z_rec = ddim_reconstruct(jax.random.PRNGKey(req.seed), model, run.process, noise,
                             info["ts"], prediction=run.prediction)  # fmt: skip
    rec = np.asarray(run.decode(z_rec))
    ref = np.asarray(run.decode(z0[:1]))  # the round trip through the autoencoder alone
    lo, hi = run.value_range
    err = {
        "latent_max_abs": float(jnp.max(jnp.abs(z_rec - z0[:1]))),
        "latent_rmse": float(jnp.sqrt(jnp.mean((z_rec - z0[:1]) ** 2))),
        "pixel_rmse_vs_input": float(np.sqrt(np.mean((rec - np.asarray(image)) ** 2))),
        "pixel_rmse_vs_autoencoder": float(np.sqrt(np.mean((rec - ref) ** 2))),
        "value_range": [lo, hi],
        "nfe": int(info["nfe"]) * 2,
    }
    stem = os.fspath(out / f"invert_ddim_{len(info['ts']) - 1}")
    if parallel.is_primary():
        grid = np.concatenate([np.asarray(image), ref, rec])
        save_image_grid(stem + ".png", grid, run.value_range, cols=3)
        scalars = {k: v for k, v in err.items() if k != "value_range"}
        paths.write_npz(stem + ".npz", noise=np.asarray(noise), reconstruction=rec,
                        latents=np.asarray(z_rec), step=int(run.step), **scalars)  # fmt: skip
    return {**result, **err, "png": stem + ".png", "npz": stem + ".npz"}
