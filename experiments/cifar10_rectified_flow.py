"""Rectified flow (1-RF) on CIFAR-10 (Liu et al. 2023, "Flow Straight and Fast").

Their setup (paper Sec. 5 and the configs of their release, built on the score_sde code):
DDPM++ backbone, Adam 2e-4, 5000 warm-up steps, clipping at 1, batch 128, random flips,
EMA 0.999999, 1.3M steps, straight-line interpolation with uniform t and the velocity MSE;
sampling with an adaptive RK45 ODE solver (tolerances 1e-5). Backbone difference: we use our
DDPM U-Net (35.7M), not DDPM++. Time direction: the paper's noise is at t = 0; diffjax has noise
at t = 1 (alpha = 1 - t, sigma = t), so the velocity changes sign (t -> 1 - t).

Launch:
  python launch/train.py --config=experiments/cifar10_rectified_flow.py \
      --workdir=workdirs/cifar10_rf --config.data.data_dir=~/tensorflow_datasets
Arguments: `quicktest`; `mini` (BASELINES.md's miniature on the local CIFAR-10 JPEG folder,
data.name='image_folder': diffjax.train.config.apply_mini's U-Net, batch 64, 6000 steps, about
an hour on 2 CPU cores; FID against that lossy copy is not comparable with published numbers).
Expected result (published, DDPM++): 1-rectified flow with RK45, about 127 NFE, FID 2.58
(Liu et al. 2023, Table 1).

Measured (BASELINES.md has the tables and the commands), `mini` on the JPEG copy in
../shared/data/cifar10-jpeg, 2026-12-03, 2 CPU cores, load average about 2:
  python launch/train.py --config=experiments/cifar10_rectified_flow.py:mini \
      --workdir=workdirs/mini_cifar10_rf --config.data.data_dir=/work/shared/data/cifar10-jpeg
  280,755 parameters, 6000 steps in 52.8 min wall (1.91-1.99 steps/s), velocity loss 0.194 at
  step 6000. FID at 200 samples against the first 200 training images (NFE 10 / 20 / 50 /
  100): Euler 174.1 / 169.1 / 164.5 / 167.3, Heun 172.4 / 163.1 / 167.4 / 163.9 (9 / 19 / 49 /
  99 NFE), RK4 294.8 / 221.3 / 182.6 / 169.2 (8 / 20 / 48 / 100), DPM-Solver++(2M) 175.2 /
  172.2 / 168.0 / 166.0; adaptive dopri5 (rtol = atol = 1e-5) 174.9 with 175 NFE. Data floor
  123-129. The DDPM miniature with the same U-Net and budget: 171.5 at best (ancestral, 100
  steps), 221-283 at 10 NFE with its ODE solvers. Straightness 146.4 +- 2.5 (summed over 3072
  dimensions). Test-split bits/dim by the probability-flow ODE: 3.340 +- 0.056 (64 images, 325
  evaluations per solve; DDPM's miniature: 3.342 +- 0.059 with 997). FID against the JPEG
  copy is not comparable with published numbers.
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
    check_arg_names(args, ("quicktest", "mini"), "experiments/cifar10_rectified_flow.py")
    c = default_config()
    c.data.name = "tfds:cifar10"  # 32x32x3
    c.data.batch_size = 128  # Liu et al.
    c.data.random_flip = True  # Liu et al.
    c.model.name = "unet_ddpm_cifar10"  # stand-in for DDPM++
    c.model.kwargs.dropout = 0.1  # score_sde DDPM++ setting
    c.process.name = "rectified_flow"  # alpha = 1 - t, sigma = t
    c.process.kwargs = {}  # no parameters
    c.loss.name = "cfm"  # velocity regression (flow matching with independent coupling)
    c.prediction = "velocity"  # the network outputs dx_t/dt
    c.optim.learning_rate = 2e-4  # Liu et al.
    c.optim.warmup_steps = 5000  # Liu et al.
    c.optim.grad_clip = 1.0  # Liu et al.
    c.ema.decay = 0.999999  # Liu et al.
    c.train.num_steps = 1_300_000  # Liu et al.
    c.train.log_every = 100  # metrics period
    c.train.checkpoint_every = 10_000  # checkpoint period
    c.train.sample_every = 50_000  # grid period
    c.sample.solver = "dopri5"  # adaptive RK45 (Dormand-Prince)
    c.sample.steps = 0  # adaptive: no fixed steps
    c.sample.kwargs = {"rtol": 1e-5, "atol": 1e-5}  # Liu et al.
    if "mini" in args:  # BASELINES.md's miniature: the local CIFAR-10 JPEG folder, 1 h on CPU
        c.data.name = "image_folder"  # data_dir/train/<class>/*.jpg (or its .tar.gz)
        apply_mini(c, attn_resolution=8, num_steps=6000)
    if "quicktest" in args:
        apply_quicktest(c)
        c.model.name = "unet_tiny"
        c.model.kwargs.update(ch=8, num_groups=4, attn_resolutions=(16,))
    return c
