"""A two-stage cascade (Ho et al. 2021, "Cascaded Diffusion Models"; as in Imagen): a base
model at low resolution, and a super-resolution (SR) stage conditioned on the upsampled
low-resolution image with noise-conditioning augmentation (`diffjax.cascade`).

Arguments (`--config=experiments/cascade.py:ARG`): `stage=base|sr` (default base);
`data=mnist|fashion_mnist|cifar10` (default mnist); `quicktest`.
  - mnist, fashion_mnist: 14x14 -> 28x28 (IDX files in data.data_dir).
  - cifar10: 16x16 -> 32x32 (an image folder `train/<class>/*.jpg`, or its .tar.gz, in
    data.data_dir; random flips).
The base stage is a plain DDPM U-Net on the data resized to the low resolution
(`data.image_size`, antialiased bilinear); the SR stage trains on the full-resolution data and
builds its condition per batch: x_lr = down(x0) with the same filter, z_s = alpha(s) x_lr +
sigma(s) eps with s ~ U[0, 0.5] per example, up(z_s) concatenated to x_t, and s embedded as a
second time (config.cascade).

Launch:
  python launch/train.py --config=experiments/cascade.py:stage=base --workdir=workdirs/cas_base \
      --config.data.data_dir=/path/to/mnist
  python launch/train.py --config=experiments/cascade.py:stage=sr --workdir=workdirs/cas_sr \
      --config.data.data_dir=/path/to/mnist
  python launch/sample.py --workdir=workdirs/cas_base --sr_workdir=workdirs/cas_sr \
      --num=16 --aug_level=0.1    # base grid + SR grid + .npz of both stages

Results (real MNIST, 2026-12-02; 2 CPU cores shared with about eight other helpers' jobs, load
average 17-23 throughout, so wall-clock is several times an idle machine's; the SR and base
runs below used the overrides shown: ch 16, batch 32, fewer steps than the defaults):
  SR stage, x0-prediction (this file's default loss), 14 -> 28, 300 steps, 10m20s wall
  (first step with compile 149 s; final loss 0.101):
    python launch/train.py --config=experiments/cascade.py:stage=sr \
        --workdir=workdirs/cascade_sr_mnist_x0 --config.data.data_dir=/work/shared/data/mnist \
        --config.data.batch_size=32 --config.model.kwargs.ch=16 \
        --config.model.kwargs.num_groups=8 --config.train.num_steps=300 \
        --config.train.checkpoint_every=100 --config.train.log_every=25 \
        --config.prediction=x0 --config.loss.name=weighted --config.loss.kwargs.weighting=uniform
  Per-pixel error against the first 128 real MNIST test images at 28x28 ([0, 1] scale, mean
  over images +- standard error; one SR sample per image, DDIM 25 steps, clip_x0, aug level 0,
  conditioned on x_lr = antialiased-bilinear down(x_hr)), 1m42s wall:
    python experiments/cascade.py workdirs/cascade_sr_mnist_x0 /work/shared/data/mnist 128 25 0
      SR samples       MSE 0.01304 +- 0.00042   PSNR 18.85 dB
      bicubic up(x_lr) MSE 0.01512 +- 0.00033   PSNR 18.20 dB
      bilinear         MSE 0.01958 +- 0.00041   PSNR 17.08 dB
  So the SR stage beats bicubic upsampling of the same inputs after 300 steps. The same run
  with the eps loss ('simple', workdirs/cascade_sr_mnist_ch16, 300 steps, 18m15s wall at load
  ~20, final loss 0.038) did NOT: its 25-step DDIM samples had MSE 0.16701 +- 0.01139 (PSNR
  7.77 dB), noisy grey backgrounds (direct DDIM 0.167, 25-step DDPM 0.091 on 16 images): the
  eps model was still poor at small t (eps MSE 0.081 at t = 0.1, 0.012 at t = 0.5). Hence the
  x0 default here.
  Base stage, 14x14, 800 steps, 16m30s wall (first step with compile 221 s; final loss 0.048):
    python launch/train.py --config=experiments/cascade.py:stage=base \
        --workdir=workdirs/cascade_base_mnist_ch16 --config.data.data_dir=/work/shared/data/mnist \
        --config.data.batch_size=32 --config.model.kwargs.ch=16 \
        --config.model.kwargs.num_groups=8 --config.train.num_steps=800 \
        --config.train.checkpoint_every=200 --config.train.log_every=50 --config.sample.num=64
    its grid workdirs/cascade_base_mnist_ch16/samples_0000800.png shows stroke-like, partly
    digit-shaped 14x14 samples (not yet clean digits).
  Full cascade (base 25 DDIM steps -> SR 25 DDIM steps at aug level 0.1, 16 samples):
    python launch/sample.py --workdir=workdirs/cascade_base_mnist_ch16 \
        --sr_workdir=workdirs/cascade_sr_mnist_x0 --num=16 --steps=25 --sr_steps=25 \
        --aug_level=0.1 --out=workdirs/cascade_sample_x0
    1m31s wall at load ~17-19; wrote cascade_ddim_25_base.png, cascade_ddim_25_sr.png and
    cascade_ddim_25.npz. The SR grid shows clean, sharp 28x28 strokes following the shapes of
    the speckled base samples (so only partly digit-like, as the base is).
No FD was measured; the comparison above is per-pixel error only.
"""

import sys

from diffjax.train.config import apply_quicktest, check_arg_names, default_config, parse_arg

# data argument -> (diffjax.data source, low resolution, high resolution, random flips)
DATASETS = {
    "mnist": ("mnist_idx", 14, 28, False),
    "fashion_mnist": ("fashion_mnist_idx", 14, 28, False),
    "cifar10": ("image_folder", 16, 32, True),
}
STAGES = ("base", "sr")


def _common(c, source: str, flip: bool) -> None:
    c.data.name = source  # c.data.data_dir is REQUIRED (the IDX files or the image folder)
    c.data.random_flip = flip
    c.data.batch_size = 64
    c.process.kwargs.update(schedule="linear", T=1000)  # DDPM chain
    c.loss.name = "simple"  # eps MSE
    c.optim.learning_rate = 1e-3  # a short CPU run tolerates a large rate
    c.optim.warmup_steps = 100  # linear warm-up
    c.optim.grad_clip = 1.0
    c.ema.decay = 0.995
    c.ema.warmup = True
    c.train.log_every = 50
    c.sample.solver = "ddim"
    c.sample.steps = 50
    c.sample.kwargs = {"clip_x0": (-1.0, 1.0)}


def _base(c, low: int) -> None:
    c.data.image_size = low  # the data resized to the low resolution (antialiased bilinear)
    c.model.name = "unet_small"  # ch 32
    c.model.kwargs.update(ch_mult=(1, 2), attn_resolutions=(low // 2,), dropout=0.0)
    c.train.num_steps = 2000
    c.train.checkpoint_every = 500
    c.sample.num = 64


def _sr(c, low: int) -> None:
    c.cascade.low_res = low  # an SR stage: condition on up(z_s), s as a second time
    c.cascade.aug_min, c.cascade.aug_max = 0.0, 0.5  # s ~ U[0, 0.5] per example
    c.cascade.downsample = "bilinear"  # the base stage's data filter (data.image_size)
    c.cascade.upsample = "bilinear"
    # x0-prediction (uniform weighting): the condition already holds most of x0, and a short
    # run's x0 errors stay small down to t = 0, where a short eps run's samples came out noisy
    # (see Results)
    c.prediction = "x0"
    c.loss.name = "weighted"
    c.loss.kwargs = {"weighting": "uniform"}
    c.model.name = "unet_small"  # ch 32; attention only in the middle block
    c.model.kwargs.update(ch_mult=(1, 2), attn_resolutions=(), dropout=0.0)
    c.train.num_steps = 500
    c.train.checkpoint_every = 250
    c.sample.num = 0  # an SR stage's samples need low-res inputs: launch/sample.py --sr_workdir


def get_config(arg=None):
    args = parse_arg(arg)
    check_arg_names(args, ("quicktest", "stage", "data"), "experiments/cascade.py")
    stage, data = args.get("stage", "base"), args.get("data", "mnist")
    if stage not in STAGES:
        raise ValueError(f"unknown stage={stage!r} for cascade; expected one of {STAGES}")
    if data not in DATASETS:
        raise ValueError(f"unknown data={data!r} for cascade; expected one of {list(DATASETS)}")
    source, low, _, flip = DATASETS[data]
    c = default_config()
    _common(c, source, flip)
    (_base if stage == "base" else _sr)(c, low)
    if "quicktest" in args:
        apply_quicktest(c)
        c.model.kwargs.update(ch=8, num_groups=4)
    return c


def _psnr(mse: float) -> float:
    """PSNR in dB on the [0, 1] pixel scale: 10 log10(1 / MSE)."""
    import math

    return 10.0 * math.log10(1.0 / mse)


def compare_with_upsampling(
    sr_workdir: str, data_dir: str, *, num: int = 256, steps: int = 50, level: float = 0.0,
    seed: int = 0, split: str = "test", batch: int = 128,
) -> dict:  # fmt: skip
    """Per-pixel error against the real high-resolution images of `split`: the SR stage's
    samples (one per image, conditioned on x_lr = down(x_hr) with the training filter, at
    augmentation `level`) versus bicubic and bilinear upsampling of the same x_lr.

    Errors are on the [0, 1] pixel scale after clipping to the data range; returns
    {name: (MSE, its standard error over images, PSNR of the mean MSE)}.
    """
    import jax
    import numpy as np

    from diffjax import cascade
    from diffjax.data import DataConfig, load_arrays, scale_to_unit
    from diffjax.models import bind
    from diffjax.train.workdir import load_trained

    spec, c, state = load_trained(sr_workdir)
    sr, size = spec.cascade, spec.example.shape[0]
    if sr is None:
        raise ValueError(f"{sr_workdir!r} is not an SR stage (config.cascade.low_res is None)")
    source = spec.data.name
    images, _, max_value = load_arrays(DataConfig(name=source, data_dir=data_dir, split=split))
    x_hr = scale_to_unit(images[:num], max_value)  # [N, H, H, C] in [-1, 1]
    model = bind(spec.model, {"params": state.ema_params})
    outs = {"sr": [], "bicubic": [], "bilinear": []}
    for i in range(0, len(x_hr), batch):
        x_lr = cascade.downsample(x_hr[i : i + batch], sr.low_res, sr.downsample)
        key = jax.random.fold_in(jax.random.PRNGKey(seed), i)
        outs["sr"].append(cascade.super_resolve(
            key, model, c.process, x_lr, sr=sr, size=size, level=level,
            solver=spec.sample.solver, steps=steps, prediction=spec.prediction,
            **dict(spec.sample.kwargs),
        ))  # fmt: skip
        outs["bicubic"].append(cascade.upsample(x_lr, size, "bicubic"))
        outs["bilinear"].append(cascade.upsample(x_lr, size, "bilinear"))
    result = {}
    for name, parts in outs.items():
        x = np.clip(np.concatenate([np.asarray(p) for p in parts]), -1.0, 1.0)
        per_image = np.mean(((x - x_hr) / 2.0) ** 2, axis=(1, 2, 3))  # [N] on [0, 1] scale
        mse = float(per_image.mean())
        result[name] = (mse, float(per_image.std(ddof=1) / np.sqrt(len(per_image))), _psnr(mse))
    return result


if __name__ == "__main__":
    # python experiments/cascade.py SR_WORKDIR DATA_DIR [NUM] [STEPS] [LEVEL]
    sr_dir, data, *rest = sys.argv[1:]
    fields = (("num", int), ("steps", int), ("level", float))[: len(rest)]
    options = {name: kind(v) for (name, kind), v in zip(fields, rest, strict=True)}
    for name, (mse, se, psnr) in compare_with_upsampling(sr_dir, data, **options).items():
        print(f"{name:10s} MSE {mse:.5f} +- {se:.5f}  PSNR {psnr:.2f} dB")
