"""DDPM on CIFAR-10 (Ho et al. 2020): the 35.7M-parameter U-Net, T = 1000 linear betas,
L_simple, Adam 2e-4 with 5000 warm-up steps, clipping at 1, EMA 0.9999, dropout 0.1, random
flips, batch 128, 800k steps (Ho et al. 2020, Sec. 4 and App. B).

Needs CIFAR-10 prepared for TFDS as ArrayRecord in `data.data_dir` (never downloaded here).
Launch:
  python launch/train.py --config=experiments/cifar10_ddpm.py --workdir=workdirs/cifar10_ddpm \
      --config.data.data_dir=~/tensorflow_datasets
Arguments: `quicktest` (tiny U-Net, one step); `mini` (BASELINES.md's miniature on the local
CIFAR-10 JPEG folder, data.name='image_folder': diffjax.train.config.apply_mini's U-Net, batch
64, 6000 steps, about an hour on 2 CPU cores; FID against that lossy copy is not comparable with
published numbers).
Expected result (published): FID 3.17, IS 9.46 on 50k samples with the 1000-step ancestral
sampler; NLL <= 3.75 bits/dim (Ho et al. 2020, Table 1). DDIM with 100 steps: FID about 4.2
(Song et al. 2021a, Table 1). About 10.6 h per 100k steps on a TPU v3-8 in the paper.

Measured (BASELINES.md has the tables and the commands), `mini` on the JPEG copy in
../shared/data/cifar10-jpeg, 2026-12-03, 2 CPU cores, load average about 2:
  python launch/train.py --config=experiments/cifar10_ddpm.py:mini \
      --workdir=workdirs/mini_cifar10_ddpm --config.data.data_dir=/work/shared/data/cifar10-jpeg
  280,755 parameters, 6000 steps in 52 min wall (1.93 steps/s), loss 0.0343 at step 6000.
  Test-split bits/dim: exact discrete bound 3.772 +- 0.033 (200 images), probability-flow ODE
  3.342 +- 0.059 (64 images). These are on the JPEG copy, not comparable with Ho et al.'s 3.75.
  This run sampled without the x0 clip and its samples ran out to +-8: FID 288-377 at 200
  samples for every solver and NFE, against a data floor of 123-129. The config now clips x0
  to [-1, 1], as Ho et al.'s sampler does. Clipped, with the same weights (200 samples, FID
  at NFE 10 / 20 / 50 / 100): DDPM 200.8 / 181.1 / 176.0 / 171.5 (171.6 at 1000),
  DDIM 226.3 / 214.6 / 209.6 / 208.6, DPM-Solver++(2M) 221.1 / 201.8 / 203.7 / 202.5; the
  other ODE solvers (DPM-Solver-2/3, Heun, PLMS) reach 199-212 by 50-100 NFE. Spread of one
  draw: 1-2 (3 draws). All deterministic solvers converge to one value, about 200-210, and the
  ancestral sampler beats it at every budget (182.0 +- 1.0 against 202.9 +- 1.8 at 20 steps):
  the papers' DDIM-over-DDPM shape does not hold for this under-trained model. DDIM with
  eta = 1 reproduces the ancestral samples exactly. FID against the JPEG copy is not
  comparable with published numbers.
"""

from diffjax.train.config import (
    apply_mini,
    apply_quicktest,
    check_arg_names,
    default_config,
    parse_arg,
)


def get_config(arg=None):
    args = parse_arg(arg)
    check_arg_names(args, ("quicktest", "mini"), "experiments/cifar10_ddpm.py")
    c = default_config()
    c.data.name = "tfds:cifar10"  # 50k 32x32x3 training images
    c.data.batch_size = 128  # Ho et al.
    c.data.random_flip = True  # Ho et al.: random horizontal flips
    c.model.name = "unet_ddpm_cifar10"  # ch 128, mult (1,2,2,2), 2 blocks, attn 16, 35.7M
    c.model.kwargs.dropout = 0.1  # Ho et al. CIFAR-10
    c.process.name = "discrete"  # the T-step chain
    c.process.kwargs.update(schedule="linear", T=1000)  # betas 1e-4 .. 0.02
    c.loss.name = "simple"  # eps MSE (L_simple, eq. 14)
    c.optim.name = "adam"  # Adam
    c.optim.learning_rate = 2e-4  # Ho et al.
    c.optim.warmup_steps = 5000  # Ho et al.
    c.optim.grad_clip = 1.0  # Ho et al.
    c.ema.decay = 0.9999  # Ho et al.
    c.train.num_steps = 800_000  # Ho et al.
    c.train.log_every = 100  # metrics period
    c.train.checkpoint_every = 10_000  # checkpoint period
    c.train.keep_checkpoints = 3  # recent checkpoints kept
    c.train.sample_every = 50_000  # grid period
    c.sample.solver = "ddim"  # grids with DDIM (evaluate.py runs the full 1000-step DDPM)
    c.sample.steps = 100  # DDIM intervals
    c.sample.kwargs.clip_x0 = (-1.0, 1.0)  # Ho et al.'s sampler clips x0_hat to the data range
    if "mini" in args:  # BASELINES.md's miniature: the local CIFAR-10 JPEG folder, 1 h on CPU
        c.data.name = "image_folder"  # data_dir/train/<class>/*.jpg (or its .tar.gz)
        apply_mini(c, attn_resolution=8, num_steps=6000)
    if "quicktest" in args:
        apply_quicktest(c)
        c.model.name = "unet_tiny"
        c.model.kwargs.update(ch=8, num_groups=4, dropout=0.1, attn_resolutions=(16,))
    return c
