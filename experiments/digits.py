"""The Quickstart: a small U-Net DDPM on scikit-learn's bundled 8x8 digits (no download).

Launch:
  python launch/train.py --config=experiments/digits.py --workdir=workdirs/digits
Arguments (`--config=experiments/digits.py:ARG`): `quicktest` (one tiny step, for tests),
`unconditional` (no class labels; by default the model is class-conditional with 10% label
dropout and the grid uses classifier-free guidance, scale 2, one class per column).
Expected result: on 2 CPU cores about 3 minutes in all (measured 3m08s with a cold compilation
cache on a shared machine; 10-20 steps/s; 1m32s on an idle machine on 2026-12-01, 26-33
steps/s); the final grid `workdirs/digits/samples_0002000.png`
shows recognisable digits, one class 0-9 per column, and the loss (eps MSE) falls from about
0.5 at step 100 to about 0.08 at step 2000.
"""

from diffjax.train.config import apply_quicktest, check_arg_names, default_config, parse_arg


def get_config(arg=None):
    args = parse_arg(arg)
    check_arg_names(args, ("quicktest", "unconditional"), "experiments/digits.py")
    c = default_config()
    c.data.name = "digits"  # sklearn's 1,797 8x8 digits, scaled from 0..16 to [-1, 1]
    c.data.batch_size = 64  # small batches: more updates per second on CPU
    c.model.name = "unet_tiny"  # two levels (8x8, 4x4), attention at 4x4
    c.model.kwargs.update(ch=16, ch_mult=(1, 2), attn_resolutions=(4,), num_groups=8)  # 0.17M
    c.process.name = "discrete"  # Ho et al.'s T = 1000 chain, linear betas 1e-4 .. 0.02
    c.process.kwargs.update(schedule="linear", T=1000)
    c.loss.name = "simple"  # eps MSE, Ho et al. 2020 eq. 14
    c.optim.learning_rate = 2e-3  # a short run tolerates (and needs) a large rate
    c.optim.warmup_steps = 100  # linear warm-up
    c.optim.grad_clip = 1.0  # global-norm clipping
    c.ema.decay = 0.995  # averages over about the last 200 of the steps
    c.ema.warmup = True  # so the average forgets the random init quickly
    c.train.num_steps = 2000  # about 3 minutes of training on 2 cores
    c.train.log_every = 100  # metrics period
    c.train.checkpoint_every = 500  # checkpoint period
    c.train.sample_every = 0  # one grid, at the end
    c.sample.solver = "ddim"  # deterministic DDIM (eta = 0)
    c.sample.steps = 50  # DDIM intervals
    c.sample.num = 100  # a 10x10 grid
    c.sample.kwargs = {"clip_x0": (-1.0, 1.0)}  # clip the x0-prediction to the data range
    # Class-conditional with classifier-free guidance (Ho & Salimans 2021): at this tiny size
    # and run length, guidance turns blurry strokes into clearly readable digits, and the grid
    # shows one class per column. `unconditional` trains the plain model.
    c.cond.class_conditional = "unconditional" not in args  # labels to the model
    c.cond.num_classes = 10  # digits 0-9; label 10 is the null label
    c.cond.label_dropout = 0.1  # null label 10% of the time (CFG training)
    c.sample.guidance_scale = 2.0  # uncond + 2 (cond - uncond); 3 is crisper, less varied
    if "quicktest" in args:
        apply_quicktest(c)
        c.model.kwargs.update(ch=8, num_groups=4)
    return c
