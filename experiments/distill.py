"""Progressive distillation (Salimans & Ho 2022) of a v-prediction DDIM teacher on
scikit-learn's 8x8 digits (unconditional, cosine process), one training run per round.

Arguments (`--config=experiments/distill.py:ARG`):
  (none)            the teacher: the digits U-Net as a v-model on the cosine process (v-MSE).
  teacher_steps=N   one distillation round: the student learns in N/2 DDIM steps what the
                    teacher (`--config.teacher.workdir`) does in N (N even; an odd N is a
                    ValueError here, before anything is built). Loss `progressive` with the
                    truncated-SNR weighting max(SNR, 1), v-prediction; the grid samples N/2 steps.
  quicktest         one tiny step (for tests); combine with teacher_steps=N.
Every config samples DDIM on the uniform grid t_i = i / steps down to t = 0 (`t_min = 0`), the
grid the distillation target is built on.

The student starts from the teacher's EMA parameters (the paper's initialisation): each round
sets `config.teacher.init_student = True`, so a fresh student workdir starts with params = EMA
= the teacher's and a fresh optimiser (a resumed one continues from its own checkpoint).
Launch (from the repository root):

  python launch/train.py --config=experiments/distill.py --workdir=workdirs/pd_teacher
  python launch/train.py --config=experiments/distill.py:teacher_steps=8 \\
      --workdir=workdirs/pd_4 --config.teacher.workdir=workdirs/pd_teacher
  # round 2: :teacher_steps=4 with --config.teacher.workdir=workdirs/pd_4; and so on to 1.
  python launch/evaluate.py --workdir=workdirs/pd_4 --solvers=ddim:4 --num=1000 --noinception
(The runs below were started with `init_student()` at the end of this file, which writes the
same start as a step-0 checkpoint; it is kept for those commands.)

Measured on 2026-12-02, 2 CPU cores shared with 4-8 other jobs (so wall-clock times are
pessimistic; the first step's compilation alone took 81-120 s under that load). Evaluation:
`launch/evaluate.py --num=1000 --noinception` (seed 0), the classifier Fréchet distance
`fd_classifier` and the pixel sliced Wasserstein `sw_pixels`; every row uses the same small
classifier (the teacher workdir's `classifier/` and reference statistics, copied into each
student workdir before evaluating, so the FDs share one feature space). DDIM, clip_x0, t_i = i/N.

  teacher (2000 steps, v-MSE, 3m16s wall):       N=1    N=2    N=4    N=8    N=64
    fd_classifier                               389.1   58.9  12.87   7.48  3.024
    sw_pixels                                   0.470  0.213  0.109 0.0746 0.0456
  round 8 -> 4 (1500 steps, --config.train.num_steps=1500, 9m21s wall; loss 1.2e-3 at step
    100 -> 4.0e-4 at 1500): the 4-step student fd 6.245, sw 0.0712, against the teacher's
    8 steps (7.48, 0.0746) and the undistilled teacher at 4 steps (12.87, 0.109).
  round 4 -> 2 (1000 steps, 5m48s wall; loss 2.7e-3 -> 9.3e-4): the 2-step student fd 7.059,
    sw 0.0748, against its teacher (round 8 -> 4) at 4 steps (6.245, 0.0712) and the
    undistilled teacher at 2 steps (58.9, 0.213).
  round 2 -> 1 (1000 steps, 3m41s wall; loss 1.9e-2 -> 4.4e-3): the 1-step student fd 8.072,
    sw 0.0802, against its teacher at 2 steps (7.059, 0.0748) and the undistilled teacher at
    1 step (389.1, 0.470).
So the 1-step student (3 rounds, 3500 steps in all) is within 10% of the teacher's 8-step fd.

Published anchor (the paper's number, not reproduced here): Salimans & Ho 2022 report FID 3.0
on CIFAR-10 in 4 steps (their abstract; checked with the search tool, 2026-12-02).
"""

from diffjax.losses.distill import check_teacher_steps
from diffjax.train.config import apply_quicktest, check_arg_names, default_config, parse_arg

ARGS = ("quicktest", "teacher_steps")


def teacher_config(c):
    """The unconditional digits U-Net (0.17M parameters) as a v-model on the cosine process."""
    c.data.name = "digits"  # sklearn's 1,797 8x8 digits in [-1, 1]
    c.data.batch_size = 64
    c.model.name = "unet_tiny"
    c.model.kwargs.update(ch=16, ch_mult=(1, 2), attn_resolutions=(4,), num_groups=8)
    c.prediction = "v"  # Salimans & Ho's parameterisation (stable at few steps)
    c.process.name = "cosine"  # Nichol & Dhariwal's schedule in continuous time
    c.process.kwargs = {}
    c.loss.name = "weighted"  # v-MSE: 'uniform' in v space is (SNR + 1) x0-MSE
    c.loss.kwargs = {"weighting": "uniform"}
    c.optim.learning_rate = 2e-3
    c.optim.warmup_steps = 100
    c.optim.grad_clip = 1.0
    c.ema.decay = 0.995
    c.ema.warmup = True
    c.train.num_steps = 2000  # about 1.5 minutes on 2 cores
    c.train.log_every = 100
    c.train.checkpoint_every = 500
    c.sample.solver = "ddim"  # deterministic DDIM (eta = 0), the sampler being distilled
    c.sample.steps = 64
    c.sample.num = 100
    c.sample.kwargs = {"clip_x0": (-1.0, 1.0), "t_min": 0.0}  # t_i = i / steps
    return c


def round_config(c, teacher_steps: int):
    """One round: the student (started at the teacher's EMA) learns N/2 steps from N."""
    c.loss.name = "progressive"
    c.loss.kwargs = {"teacher_steps": teacher_steps, "weighting": "truncated_snr"}
    c.teacher.init_student = True  # params and EMA start at the teacher's EMA params
    c.optim.learning_rate = 5e-4  # fine-tuning from the teacher's weights
    c.optim.warmup_steps = 0
    c.ema.decay = 0.995  # the EMA starts at the teacher's weights too
    c.ema.warmup = False
    c.train.num_steps = 1000  # a short round (the first recorded round ran 1500)
    c.sample.steps = teacher_steps // 2
    return c


def get_config(arg=None):
    args = parse_arg(arg)
    check_arg_names(args, ARGS, "experiments/distill.py")
    c = teacher_config(default_config())
    if "teacher_steps" in args:
        text = args["teacher_steps"]
        try:
            value = int(text)
        except ValueError:
            raise ValueError(
                f"teacher_steps must be an even integer >= 2; got teacher_steps={text!r}"
            ) from None
        round_config(c, check_teacher_steps(value))  # odd N: a ValueError now
    if "quicktest" in args:
        apply_quicktest(c)
        c.model.kwargs.update(ch=8, num_groups=4)
    return c


def init_student(teacher_workdir: str, workdir: str, arg: str = "teacher_steps=2") -> None:
    """Write the teacher's EMA parameters as the step-0 checkpoint of `workdir` (params and
    EMA both; a fresh optimiser state for the student config `arg`), so that launch/train.py
    with that config starts the student from the teacher. Refuses a workdir that already
    has checkpoints."""
    import os

    import jax

    from diffjax.train import checkpoint
    from diffjax.train.loop import config_to_json
    from diffjax.train.optim import make_optimizer
    from diffjax.train.spec import spec_from_config
    from diffjax.train.state import TrainState
    from diffjax.train.workdir import CHECKPOINT_DIR, load_trained

    directory = os.path.join(workdir, CHECKPOINT_DIR)
    if os.path.isdir(directory) and os.listdir(directory):
        raise ValueError(f"{directory} already holds checkpoints; use a fresh workdir")
    t_spec, _, trained = load_trained(teacher_workdir)
    config = get_config(arg)
    config.teacher.workdir = teacher_workdir
    spec = spec_from_config(config, t_spec.example)
    if spec.model != t_spec.model:
        raise ValueError(f"student model {spec.model} differs from the teacher's {t_spec.model}")
    params = trained.ema_params
    state = TrainState(
        params=params,
        ema_params=jax.tree.map(lambda a: a.copy(), params),
        opt_state=make_optimizer(spec.optim).init(params),
        step=jax.numpy.zeros((), jax.numpy.int32),
    )
    manager = checkpoint.make_manager(directory, spec.loop.keep_checkpoints)
    checkpoint.save(manager, 0, state, config_to_json(config))
    manager.wait_until_finished()
    manager.close()
