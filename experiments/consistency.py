"""Consistency models (Song et al. 2023) on scikit-learn's 8x8 digits: consistency distillation
(CD) from a trained diffusion teacher, or consistency training (CT) from data.

Arguments (`--config=experiments/consistency.py:ARG`):
  (none)          a teacher for CD: the digits U-Net as an eps-model on the cosine process
                  (`simple`); experiments/distill.py's v-model (the default there) serves too.
  training        CT: loss `consistency_training` (no teacher) with the paper's N(k) / mu(k)
                  schedule (Song et al. 2023, App. C, their CIFAR-10 CT values s0 = 2, s1 =
                  150, mu0 = 0.9; K = train.num_steps): N(k) = ceil(sqrt(k / K ((s1 + 1)^2 -
                  s0^2) + s0^2) - 1) + 1 Karras levels at step k (2 -> 151) and the target EMA
                  decay mu(k) = exp(s0 log mu0 / N(k)) (0.9 -> 0.9986) in place of ema.decay,
                  inside one compiled train step (`diffjax.consistency.CTSchedule`).
                  num_scales=N: a fixed grid of N levels and ema.decay instead.
  distill         CD: loss `consistency_distillation` from `--config.teacher.workdir` (any
                  trained digits run, e.g. experiments/distill.py's v-prediction teacher on the
                  cosine process); one Heun (or Euler) teacher step between adjacent levels.
  solver=heun|euler, num_scales=N (CD; default 18, the paper's CIFAR-10 CD value), quicktest.
The student is the digits U-Net as an x0-model on the cosine process (the teacher's), wrapped
by `diffjax.consistency.ConsistencyModule` (c_skip/c_out in EDM's sigma space, so f(x,
sigma_min) = x exactly); the target network is the run's EMA (`ema.decay` = mu = 0.95, no
warm-up; CT with the schedule: mu(k)). Sampling: `solver='consistency'`, 1 step from t_max =
t(sigma_max) (the largest trained level; t = 1 on the cosine process is sigma = 2.2e4) with
`sigma_min` = 0.002. No CT run with the schedule has been made (the run below is CD).

The wrapper is `config.model.consistency` (sigma_min, sigma_max, sigma_data), which the
training layer builds around the backbone, so the launch programs train, sample and evaluate
these runs directly:

  python launch/train.py --config=experiments/consistency.py:distill --workdir=workdirs/cd \
      --config.teacher.workdir=workdirs/pd_teacher
  python launch/sample.py --workdir=workdirs/cd --solver=consistency --steps=1 --num=64
  python launch/evaluate.py --workdir=workdirs/cd --solvers=consistency:1,consistency:2 \
      --num=1000 --noinception

(The run below was made with this file's earlier `train()` / `evaluate()` helpers, which
wrapped the backbone by hand with the same sigma_min and sigma_data; workdirs written that way
carry sigma_min in config.loss.kwargs and no config.model.consistency, and load with the same
wrapper: `diffjax.train.workdir.with_consistency_section`.)

Measured on 2026-12-02, 2 CPU cores shared with 4-8 other jobs (wall-clock pessimistic):
CD (`distill`, Heun, N = 18, mu = 0.95) from experiments/distill.py's v-prediction teacher
`workdirs/pd_teacher` (2000 steps), 1500 steps (`train.num_steps=1500`), 11m46s wall
(1.9-3.8 steps/s); loss 6.4e-3 at step 100 -> 1.8e-3 at 1500. `evaluate(..., num=1000)` (seed
0), classifier FD on the teacher workdir's classifier (copied into workdirs/cd):

                            steps   fd_classifier   sw_pixels
  CD student (consistency)    1         6.632        0.0632
                              2         6.503        0.0717
                              4         9.585        0.0660
  teacher, DDIM (t_i = i/N)   1       389.1          0.470
                              2        58.9          0.213
                              64        3.024        0.0456

One CD step is about as good as 8 teacher DDIM steps (fd 7.48) and far better than 1-2; a
second step improves fd slightly (6.50) but not sw; four steps (uniform grid in t) are worse.

Published anchor (the paper's number, not reproduced here): Song et al. 2023 report one-step
FID 3.55 on CIFAR-10 (their abstract; checked with the search tool, 2026-12-02), from
consistency distillation with LPIPS (the table row not confirmed against the paper here).
"""

from diffjax.train.config import apply_quicktest, check_arg_names, default_config, parse_arg

ARGS = ("quicktest", "distill", "training", "solver", "num_scales")
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0  # Song et al. 2023 (EDM's range)
CT_SCHEDULE = {"schedule": True, "s0": 2, "s1": 150, "mu0": 0.9}  # Song et al. 2023, App. C


def get_config(arg=None):
    args = parse_arg(arg)
    check_arg_names(args, ARGS, "experiments/consistency.py")
    solver = args.get("solver", "heun")
    if solver not in ("heun", "euler"):
        raise ValueError(f"solver must be 'heun' or 'euler'; got solver={solver!r}")
    try:
        num_scales = int(args.get("num_scales", "18"))
    except ValueError:
        raise ValueError(
            f"num_scales must be an integer >= 2; got {args['num_scales']!r}"
        ) from None
    if num_scales < 2:
        raise ValueError(f"num_scales must be an integer >= 2; got num_scales={num_scales}")
    c = default_config()
    c.data.name = "digits"
    c.data.batch_size = 64
    c.model.name = "unet_tiny"
    c.model.kwargs.update(ch=16, ch_mult=(1, 2), attn_resolutions=(4,), num_groups=8)
    c.prediction = "x0"  # the consistency function is read as the ODE path's x0 end
    c.process.name = "cosine"  # the teacher's process (sigma_max = 80 is at t = 0.992)
    c.process.kwargs = {}
    grid = {"num_scales": num_scales}  # sigma_min, sigma_max: from config.model.consistency
    if "distill" in args and "training" in args:
        raise ValueError("choose one of 'distill' (CD) and 'training' (CT); got both")
    # the backbone F as f = c_skip x + c_out F in EDM's sigma space (Song et al. 2023)
    c.model.consistency = {"sigma_min": SIGMA_MIN, "sigma_max": SIGMA_MAX, "sigma_data": 0.5}
    if "distill" in args:
        c.loss.name = "consistency_distillation"
        c.loss.kwargs = {**grid, "solver": solver}
    elif "training" in args:
        c.loss.name = "consistency_training"
        # the paper's schedule (CIFAR-10 CT values); total_steps K = train.num_steps, below
        c.loss.kwargs = grid if "num_scales" in args else dict(CT_SCHEDULE)
    c.optim.learning_rate = 5e-4
    c.optim.warmup_steps = 100
    c.optim.grad_clip = 1.0
    c.ema.decay = 0.95  # the target network's mu (Song et al. use 0.95 for CD on CIFAR-10)
    c.ema.warmup = False
    c.train.num_steps = 2000
    c.train.log_every = 100
    c.train.checkpoint_every = 500
    c.sample.solver = "consistency"
    c.sample.steps = 1
    c.sample.num = 100
    # sigma_min and t_max = t(sigma_max) (the largest trained level; t = 1 on the cosine
    # process is sigma = 2.2e4) are filled in from config.model.consistency
    c.sample.kwargs = {"t_min": 0.0}
    if "distill" not in args and "training" not in args:
        teacher_config(c)
    if "quicktest" in args:
        apply_quicktest(c)
        c.sample.steps = 1 if c.sample.solver == "consistency" else 2
        c.model.kwargs.update(ch=8, num_groups=4)
    if c.loss.kwargs.get("schedule"):  # K of N(k): the run's length (after quicktest)
        c.loss.kwargs.total_steps = int(c.train.num_steps)
    return c


def teacher_config(c):
    """The default: an eps-prediction diffusion teacher on the cosine process (DDIM grid)."""
    c.prediction = "eps"
    c.loss.name = "simple"
    c.loss.kwargs = {}
    c.optim.learning_rate = 2e-3
    c.ema.decay = 0.995
    c.ema.warmup = True
    c.sample.solver = "ddim"
    c.sample.steps = 64
    c.sample.kwargs = {"clip_x0": (-1.0, 1.0), "t_min": 0.0}
    c.model.consistency = {}  # the bare backbone
    return c
