"""Improved DDPM (Nichol & Dhariwal 2021): cosine schedule, learned variances and the hybrid
loss L_simple + lambda L_vlb (lambda = 0.001), sampled by ancestral DDPM with the learned
variance at few steps.

Launch:
  python launch/train.py --config=experiments/improved_ddpm.py --workdir=workdirs/iddpm
  python launch/sample.py --workdir=workdirs/iddpm --solver=ddpm --steps=50   # learned
  python launch/sample.py --workdir=workdirs/iddpm --solver=ddpm --steps=50 --variance=small
  python launch/evaluate.py --workdir=workdirs/iddpm --solvers=ddpm:50 --variance_bpd_num=256
Arguments (`--config=experiments/improved_ddpm.py:ARG`): `dataset=digits|mnist|fashion_mnist`
(default digits, the built-in 8x8 digits; mnist reads IDX files from config.data.data_dir),
`quicktest`.

The model is a U-Net with `learn_sigma=True` (output [eps | v]); the sampler's variance is
exp(frac log beta_t + (1 - frac) log beta-tilde_t), frac = (v + 1) / 2 clipped to [0, 1]
(eq. 15), on any respaced grid. The paper's claims checked here: with learned variances 50-step
ancestral sampling keeps its quality where fixed variances degrade (their section on sampling
speed), and learned variances give a better exact bound than fixed ones (their sec. 3.1).

Real run (2026-12-02, digits, 2 CPU cores; idle for the first ~4000 steps at 14-16 steps/s,
then shared with three other jobs, load average 5-8, at 2.7-4 steps/s):
  python launch/train.py --config=experiments/improved_ddpm.py --workdir=workdirs/iddpm \
      --config.train.num_steps=8000 --config.train.checkpoint_every=1000 \
      --config.train.progress_bar=False
  23m43s wall (cold compilation cache: jitted init 18.2 s, first step with compile 32.3 s);
  176,994 parameters; hybrid loss 0.91 (step 100), 0.169 (1000), 0.147 (4000), 0.141 (8000).
  python launch/evaluate.py --workdir=workdirs/iddpm --solvers=ddim:50 --num=1797 \
      --variance_steps=50 --variance_bpd_num=256 --inception=False --seed=0
  21m38s wall at load 5-8 (seeds 1-3 of the variance rows: the same library calls,
  learned_variance's rows for 'learned' and 'small', keys from --seed=1, 2, 3).
Exact discrete bound (all T = 1000 terms, discretized decoder; 256 training digits; mean +-
standard error over examples; the paired differences use the same examples and noise):
  learned 4.710 +- 0.034   small (beta-tilde) 5.038 +- 0.038   large (beta) 4.902 +- 0.033
  learned - small = -0.327 +- 0.006     learned - large = -0.191 +- 0.002   bits/dim
so the learned variance gives the lowest bound, beyond 50 standard errors of either paired
difference. (The digits take 17 values, not the 8-bit grid the discretized decoder bins, so the
absolute bits/dim are not comparable with published 8-bit numbers.)
50-step ddpm (x0 clipped, as configured) from the same model and noise, 1797 samples against
all 1797 digits; classifier-FD (the project's small classifier) and pixel sliced Wasserstein:
  seed                      0        1        2        3
  classifier-FD learned   1.269    1.259    1.080    0.861
  classifier-FD small     1.421    1.319    1.126    0.927
  sliced W learned        0.0322   0.0338   0.0291   0.0298
  sliced W small          0.0344   0.0351   0.0301   0.0313
  (seed 0, large variance: classifier-FD 1.227, sliced W 0.0312)
Paired over the 4 seeds, learned - small: classifier-FD -0.081 +- 0.024 (s.e.; 4 of 4 lower),
sliced W -0.0015 +- 0.0003: the learned variance's 50-step samples are closer to the data than
the fixed small variance's, Nichol & Dhariwal's claim at this size (they are within noise of
the large variance's, which their paper also finds close to learned at 50+ steps). The seed-to-
seed spread of one FD (0.86-1.27) is larger than the difference, so only paired comparisons on
the same noise show it; a 1172-step run of this config (an earlier session) could not.
The same evaluate.py's ddim:50 row came out as garbage (classifier-FD 2.9e8) because another
solver was given none of the run's sampling options, so x0 went unclipped where the cosine
chain's alpha_t ~ 1e-4; the model options (clip_x0, learned_variance, t range) now carry over to
any solver (diffjax.samplers.api.carried_options).
"""

from diffjax.train.config import apply_quicktest, check_arg_names, default_config, parse_arg

DATASETS = {"digits": "digits", "mnist": "mnist_idx", "fashion_mnist": "fashion_mnist_idx"}


def get_config(arg=None):
    args = parse_arg(arg)
    check_arg_names(args, ("quicktest", "dataset"), "experiments/improved_ddpm.py")
    dataset = args.get("dataset", "digits")
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset={dataset!r}; expected one of {list(DATASETS)}")
    c = default_config()
    c.data.name = DATASETS[dataset]
    c.process.name = "discrete"
    c.process.kwargs.update(schedule="cosine", T=1000)  # Nichol & Dhariwal's cosine alpha-bar
    c.loss.name = "hybrid"  # L_simple + lam L_vlb, the bound trains only the variance
    c.loss.kwargs.update(lam=0.001)
    c.prediction = "eps"
    c.optim.learning_rate = 2e-3 if dataset == "digits" else 2e-4
    c.optim.warmup_steps = 100
    c.optim.grad_clip = 1.0
    c.ema.decay = 0.995 if dataset == "digits" else 0.999
    c.ema.warmup = True
    c.sample.solver = "ddpm"  # ancestral sampling with the learned variance
    c.sample.steps = 50  # few steps: where learned variances matter
    # x0 clipped to the data range, as improved DDPM's sampler does (clip_denoised): near t = 1
    # the cosine chain's alpha_t is tiny and an unclipped x0 = (x - sigma eps) / alpha explodes
    c.sample.kwargs = {"variance": "learned", "clip_x0": (-1.0, 1.0)}
    c.train.log_every = 100
    if dataset == "digits":
        c.data.batch_size = 64
        c.model.name = "unet_tiny"
        c.model.kwargs.update(
            ch=16, ch_mult=(1, 2), attn_resolutions=(4,), num_groups=8, learn_sigma=True
        )
        c.train.num_steps = 3000
        c.train.checkpoint_every = 1000
        c.sample.num = 100
    else:  # 28x28 IDX files; c.data.data_dir is required
        c.data.batch_size = 128
        c.model.name = "unet_small"
        c.model.kwargs.update(ch_mult=(1, 2), attn_resolutions=(14,), learn_sigma=True)
        c.train.num_steps = 20000
        c.train.checkpoint_every = 2000
    if "quicktest" in args:
        apply_quicktest(c)
        c.model.kwargs.update(ch=8, num_groups=4)
    return c
