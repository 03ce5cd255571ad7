"""Consistency models (Song et al. 2023) on scikit-learn's 8x8 digits: consistency distillation
(CD) from a trained diffusion teacher, or consistency training (CT) from data.

Arguments (`--config=experiments/consistency.py:ARG`):
  (none)          a teacher for CD: the digits U-Net as an eps-model on the cosine process
                  (`simple`); experiments/distill.py's v-model (the default there) serves too.
  training        CT: loss `consistency_training` (no teacher), N = num_scales Karras levels.
  distill         CD: loss `consistency_distillation` from `--config.teacher.workdir` (any
                  trained digits run, e.g. experiments/distill.py's v-prediction teacher on the
                  cosine process); one Heun (or Euler) teacher step between adjacent levels.
  solver=heun|euler, num_scales=N (default 18, the paper's CIFAR-10 CD value), quicktest.
The student is the digits U-Net as an x0-model on the cosine process (the teacher's), wrapped
by `diffjax.consistency.ConsistencyModule` (c_skip/c_out in EDM's sigma space, so f(x,
sigma_min) = x exactly); the target network is the run's EMA (`ema.decay` = mu = 0.95, no
warm-up). Sampling: `solver='consistency'`, 1 step from t_max = t(sigma_max) (the largest
trained level; t = 1 on the cosine process is sigma = 2.2e4) with `sigma_min` = 0.002.

The wrapper is not yet reachable from a config name (the training layer builds the backbone
only; see /work/notes/distill_requests.md), so `train` and `evaluate` below are
launch/train.py and launch/evaluate.py with the spec's model wrapped. Launch:

  python -c "from experiments.consistency import train; train('distill', \\
      'workdirs/cd', teacher='workdirs/pd_teacher')"
  python -c "from experiments.consistency import evaluate; \\
      evaluate('workdirs/cd', 'consistency:1,consistency:2')"

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
"""

from diffjax.train.config import apply_quicktest, check_arg_names, default_config, parse_arg

ARGS = ("quicktest", "distill", "training", "solver", "num_scales")
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0  # Song et al. 2023 (EDM's range)


def get_config(arg=None):
    from diffjax import consistency as cm
    from diffjax.processes import cosine

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
    grid = {"num_scales": num_scales, "sigma_min": SIGMA_MIN, "sigma_max": SIGMA_MAX}
    if "distill" in args and "training" in args:
        raise ValueError("choose one of 'distill' (CD) and 'training' (CT); got both")
    if "distill" in args:
        c.loss.name = "consistency_distillation"
        c.loss.kwargs = {**grid, "solver": solver}
    elif "training" in args:
        c.loss.name = "consistency_training"
        c.loss.kwargs = grid
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
    t_max = float(cm.t_of_sigma(cosine(), SIGMA_MAX))
    c.sample.kwargs = {"sigma_min": SIGMA_MIN, "t_max": t_max, "t_min": 0.0}
    if "distill" not in args and "training" not in args:
        teacher_config(c)
    if "quicktest" in args:
        apply_quicktest(c)
        c.sample.steps = 1 if c.sample.solver == "consistency" else 2
        c.model.kwargs.update(ch=8, num_groups=4)
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
    return c


def wrap_spec(spec):
    """The spec with its backbone wrapped as a `ConsistencyModule` (sigma_min, sigma_data from
    the loss options; a missing sigma_min is a ValueError)."""
    import dataclasses

    from diffjax.consistency import ConsistencyModule

    options = getattr(spec.loss, "keywords", {})
    if not spec.loss.func.__name__.startswith("consistency_"):
        raise ValueError(f"wrap_spec is for the consistency losses; this run trains {spec.loss}")
    sigma_min = options.get("sigma_min", SIGMA_MIN)
    module = ConsistencyModule(spec.model, spec.process, sigma_min)
    return dataclasses.replace(spec, model=module)


def train(arg, workdir: str, teacher: str | None = None, **overrides):
    """launch/train.py for `get_config(arg)` with the model wrapped (`wrap_spec`); `teacher`
    sets config.teacher.workdir; `overrides` set dotted config fields ('train.num_steps')."""
    from diffjax.train.loop import train_and_evaluate

    config = get_config(arg)
    if teacher is not None:
        config.teacher.workdir = teacher
    for name, value in overrides.items():
        section, _, field = name.rpartition(".")
        setattr(config.get(section) if section else config, field, value)
    return train_and_evaluate(config, workdir, wrap_spec=wrap_spec)


def evaluate(
    workdir: str, solvers: str = "consistency:1,consistency:2", num: int = 1000, fd: bool = True
):
    """launch/evaluate.py (no Inception) on a consistency workdir with the model wrapped;
    returns the rows and writes `<workdir>/eval_<step>.json`. `fd=False` skips the classifier
    Fréchet distance (which trains and caches the small classifier once)."""
    import json
    import os

    import jax

    from diffjax.train import evaluate as ev
    from diffjax.train.builders import build_model_components
    from diffjax.train.workdir import load_trained

    spec, c0, trained = load_trained(workdir, consistency=True)
    spec = wrap_spec(spec)
    c = build_model_components(spec)
    c.value_range = c0.value_range
    rows = ev.evaluate_solvers(
        jax.random.PRNGKey(0),
        spec,
        c,
        trained,
        ev.parse_solvers(solvers),
        num,
        False,
        workdir if fd else None,
    )
    print(ev.format_table(rows))
    with open(os.path.join(workdir, f"eval_{trained.step:07d}.json"), "w") as f:
        json.dump({"step": int(trained.step), "rows": rows}, f, indent=2)
    return rows
