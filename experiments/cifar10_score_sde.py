"""Score SDEs on CIFAR-10 (Song et al. 2021, "Score-Based Generative Modeling through
Stochastic Differential Equations"), continuous-time training, VE, VP or sub-VP by argument.

Their hyper-parameters (paper App. D and the configs of their release): Adam 2e-4, 5000
warm-up steps, gradient clipping at 1, batch 128, dropout 0.1, random flips, 1.3M steps; EMA
0.999 for VE and 0.9999 for VP / sub-VP; VE sigma in [0.01, 50], VP/sub-VP beta in [0.1, 20];
DSM loss with lambda(t) = sigma(t)^2; samples with the predictor-corrector sampler, N = 1000
(VE: reverse diffusion + Langevin, snr 0.16; VP: Euler-Maruyama, no corrector).
Backbone difference: the paper uses NCSN++ (VE) and DDPM++ (VP); we use our DDPM U-Net
(35.7M) with the same data and objective, so expect somewhat worse numbers.
Data scaling: the paper feeds VE models data in [0, 1]; we use [-1, 1] everywhere.
Parameterisation: Song et al.'s networks output sigma(t) times the score, not the score: their
release reads a VP / sub-VP model's output F as s = -F / sigma(t), and NCSN++ (VE) divides its
output by sigma (their `scale_by_sigma`; Song & Ermon 2020's s(x, sigma) = F(x) / sigma). The
DSM loss with lambda = sigma^2 is then sigma^2 ||s + eps / sigma||^2 = ||F - eps||^2 (with the
sign of F flipped for VE): the eps MSE. So the config trains an eps network
(prediction='eps', loss 'simple' on the continuous process, t ~ U(0, 1)), and every sampler
reads its score as -eps_hat / sigma (`diffjax.targets.convert`); a network asked to output the
raw score (prediction='score', loss 'dsm') has to span 1/sigma from 0.02 to 100 (VE) by itself.

Launch:
  python launch/train.py --config=experiments/cifar10_score_sde.py:process=vp \
      --workdir=workdirs/cifar10_vp --config.data.data_dir=~/tensorflow_datasets
Arguments: `process=ve|vp|subvp` (default vp); `quicktest`; `mini` (BASELINES.md's miniature on
the local CIFAR-10 JPEG folder, data.name='image_folder': diffjax.train.config.apply_mini's
U-Net, batch 64, 6000 steps, about an hour on 2 CPU cores; FID against that lossy copy is not
comparable with published numbers).
Expected result (published, with NCSN++ / DDPM++, PC sampler): FID 2.38 (NCSN++ cont., VE),
2.55 (DDPM++ cont., VP), 2.61 (DDPM++ cont., sub-VP) (Song et al. 2021, Table 3).

Measured (BASELINES.md has the tables and the commands), `process=vp,mini` on the JPEG copy in
../shared/data/cifar10-jpeg, 2026-12-04, 2 CPU cores, load average about 2:
  python launch/train.py --config=experiments/cifar10_score_sde.py:process=vp,mini \
      --workdir=workdirs/mini_cifar10_vp --config.data.data_dir=/work/shared/data/cifar10-jpeg
  280,755 parameters, 6000 steps in 66.1 min wall (1.58 steps/s median), eps loss 0.0351 at
  step 6000. FID at 200 samples against the first 200 training images (NFE 10 / 20 / 50 /
  100), unclipped (the samples run out of range, as the unclipped DDPM miniature's do): pc
  (Euler-Maruyama) 390.2 / 352.2 / 327.8 / 306.9, Euler 308.0 / 312.1 / 316.7 / 321.7, Heun
  333.1 / 327.8 / 328.7 / 333.3, DPM-Solver++(2M) 318.0 / 322.9 / 321.6 / 326.9. With x0
  clipped to [-1, 1] (`evaluate.py --clip_x0`): pc 390.9 / 373.8 / 317.3 / 269.6,
  DPM-Solver++(2M) 214.7 / 216.0 / 222.2 / 216.8 (the clipped DDPM miniature: 221.1 / 201.8 /
  203.7 at 10 / 20 / 50). Data floor 123-129. Test-split bits/dim by the probability-flow ODE:
  3.338 +- 0.059 (64 images, 421 evaluations per solve).
  `process=ve,mini` (same day, --workdir=workdirs/mini_cifar10_ve): 6000 steps in 58.1 min of
  running (1.96 steps/s median), eps loss 0.120. FID at 200 samples, unclipped, NFE 10 / 20 /
  50 / 100: pc 535.4 / 534.2 / 527.2 / 406.0 (200: 247.9, 500: 191.4), Euler-Maruyama 536.2 /
  518.0 / 345.1 / 277.8, DPM-Solver++(2M) 277.0 / 288.3 / 295.8 / 282.3; bits/dim 3.087 +-
  0.062 (64 images, 415 evaluations).
  FID against the JPEG copy is not comparable with published numbers.
"""

from diffjax.train.config import (
    apply_mini,
    apply_quicktest,
    check_arg_names,
    default_config,
    parse_arg,
)

# process -> (process kwargs, EMA decay, sampler options)
FAMILIES = {
    "ve": (
        {"sigma_min": 0.01, "sigma_max": 50.0},
        0.999,
        {"predictor": "reverse_diffusion", "n_corrector": 1, "snr": 0.16},
    ),
    "vp": (
        {"beta_min": 0.1, "beta_max": 20.0},
        0.9999,
        {"predictor": "euler_maruyama", "n_corrector": 0},
    ),
    "subvp": (
        {"beta_min": 0.1, "beta_max": 20.0},
        0.9999,
        {"predictor": "euler_maruyama", "n_corrector": 0},
    ),
}


def get_config(arg=None):
    args = parse_arg(arg)
    check_arg_names(args, ("quicktest", "process", "mini"), "experiments/cifar10_score_sde.py")
    process = args.get("process", "vp")
    if process not in FAMILIES:
        raise ValueError(f"unknown process={process!r}; expected one of {list(FAMILIES)}")
    p_kwargs, ema, sampler = FAMILIES[process]
    c = default_config()
    c.data.name = "tfds:cifar10"  # 32x32x3
    c.data.batch_size = 128  # Song et al.
    c.data.random_flip = True  # Song et al.
    c.model.name = "unet_ddpm_cifar10"  # stand-in for NCSN++ / DDPM++ (see docstring)
    c.model.kwargs.dropout = 0.1  # Song et al.
    c.process.name = process  # continuous-time SDE
    c.process.kwargs = p_kwargs  # Song et al.
    # DSM with lambda = sigma^2 (eq. 7) for the score s = -F / sigma, as Song et al.'s networks
    # are parameterised (see the docstring): exactly the eps MSE of the network F
    c.loss.name = "simple"
    c.prediction = "eps"
    c.optim.learning_rate = 2e-4  # Song et al.
    c.optim.warmup_steps = 5000  # Song et al.
    c.optim.grad_clip = 1.0  # Song et al.
    c.ema.decay = ema  # Song et al.: 0.999 (VE) / 0.9999 (VP, sub-VP)
    c.train.num_steps = 1_300_000  # Song et al.
    c.train.log_every = 100  # metrics period
    c.train.checkpoint_every = 10_000  # checkpoint period
    c.train.sample_every = 50_000  # grid period
    c.sample.solver = "pc"  # predictor-corrector
    c.sample.steps = 1000  # N = 1000
    c.sample.kwargs = sampler  # corrector settings of the paper
    if "mini" in args:  # BASELINES.md's miniature: the local CIFAR-10 JPEG folder, 1 h on CPU
        c.data.name = "image_folder"  # data_dir/train/<class>/*.jpg (or its .tar.gz)
        apply_mini(c, attn_resolution=8, num_steps=6000)
    if "quicktest" in args:
        apply_quicktest(c)
        c.model.name = "unet_tiny"
        c.model.kwargs.update(ch=8, num_groups=4, attn_resolutions=(16,))
    return c
