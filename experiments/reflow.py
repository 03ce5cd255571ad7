"""Rectified flow, reflow and k-step distillation (Liu et al. 2022, "Flow Straight and Fast").

Stages (`--config=experiments/reflow.py:data=digits,stage=...`):
  flow     the 1-rectified flow: conditional flow matching on `rectified_flow`, velocity.
  reflow   the 2-rectified flow: the `reflow` loss on (noise, sample) pairs of the 1-rectified
           flow (`--config.data.data_dir=PAIRS`, made by launch/reflow_pairs.py).
  distill  k-step `flow_distillation` on the pairs (`k=1` by default, `:stage=distill,k=2`).
Arguments: `data=toy|digits` (toy: the 2-D ring mixture with an MLP; digits: the built-in 8x8
digits with the Quickstart's U-Net, unconditional), `stage=flow|reflow|distill`, `k=K`,
`quicktest`.

Launch (digits; toy alike with data=toy):
  python launch/train.py --config=experiments/reflow.py:data=digits,stage=flow \
      --workdir=workdirs/reflow_flow
  python launch/reflow_pairs.py --workdir=workdirs/reflow_flow --out=workdirs/reflow_pairs \
      --num=4096 --solver=euler --steps=100 --chunk_size=1024
  python launch/train.py --config=experiments/reflow.py:data=digits,stage=reflow \
      --config.data.data_dir=workdirs/reflow_pairs --workdir=workdirs/reflow_2rf
  python launch/train.py --config=experiments/reflow.py:data=digits,stage=distill \
      --config.data.data_dir=workdirs/reflow_pairs --workdir=workdirs/reflow_distill
  python launch/evaluate.py --workdir=workdirs/reflow_2rf --solvers=euler:1,euler:2,euler:4 \
      --num=1000 --inception=false --reference_data=digits --straightness_num=500

Published anchor (the paper's number, not reproduced here): Liu et al. 2022 (CIFAR-10): the
distilled 2-rectified flow reaches a 1-step FID of 4.85 (their Table 1 as quoted; not
confirmed against the paper here: only a third-party summary giving 4.85 was found).

Measured on 2026-12-02 on the shared 2-core CPU (other helpers training at the same time, so
wall-clock is pessimistic; 2 XLA host devices), with exactly the commands above:
  1-rectified flow, 2000 steps (0.18M parameters): 5m05s wall (first step with compile 57 s,
    then 8-15 steps/s); cfm loss 0.46 at the end.
  pairs: 4096, Euler 100 steps, 4 chunks of 1024: 152 s wall.
  2-rectified flow (reflow, from scratch, 2000 steps): 8m32s wall (two trainings at once);
    reflow loss 0.10 at step 200, 0.012 at step 2000.
  1-step distillation (flow_distillation k=1 on the 1-rectified flow's pairs, from scratch,
    2000 steps, run beside the 2-RF): 8m36s wall; loss (x0 MSE per dim) 0.0042 at the end.
  Evaluation (`--num=1000 --noinception`, `--reference_data=digits` for the pair-trained runs):
  classifier Fréchet distance (fd_classifier) and pixel sliced Wasserstein (sw_pixels) of 1000
  samples against 1000 digits; straightness S and transport cost E||z - x0||^2 (64 dims) of
  500 noise draws, Euler 100, mean +- standard error:

    model                    Euler steps   fd_classifier   sw_pixels
    1-rectified flow              1            355.6         0.475
    1-rectified flow              2             59.8         0.208
    1-rectified flow              4             13.0         0.105
    1-rectified flow            100              2.42        0.0431
    2-rectified flow              1              3.93        0.0503
    2-rectified flow              2              3.57        0.0481
    2-rectified flow              4              2.92        0.0447
    1-step distilled (1-RF)       1              4.05        0.0488
    1-step distilled (1-RF)       2             18.8         0.155
    1-step distilled (1-RF)       4             23.6         0.185

    straightness S:  1-RF 9.13 +- 0.07;  2-RF 0.288 +- 0.007 (same 500 noise draws)
    transport cost:  1-RF 71.9 +- 0.5;   2-RF 71.1 +- 0.5 (does not rise, Liu et al. Thm 3.5)
  The 2-rectified flow's 1-step samples are about as good as the teacher's 100-step ones
  (its samples are measured against the real digits, while it learned the teacher's
  samples, so the teacher's 2.42 is the floor it can approach); the distilled model is a
  1-step map (its 2- and 4-step samples are worse by design).

Toy 2-D run (data=toy: the ring of 8 Gaussians, the residual MLP, 3000 steps per stage; the
2-rectified flow from scratch), measured on 2026-12-02 on the shared 2-core CPU (load average
1 -> 25 during the run: up to 8 other helpers' jobs; 2 XLA host devices), with the commands:
  python launch/train.py --config=experiments/reflow.py:data=toy,stage=flow \
      --workdir=workdirs/reflow_toy_flow --config.train.progress_bar=false
  python launch/reflow_pairs.py --workdir=workdirs/reflow_toy_flow \
      --out=workdirs/reflow_toy_pairs --num=20000 --solver=euler --steps=100 --chunk_size=5000
  python launch/train.py --config=experiments/reflow.py:data=toy,stage=reflow \
      --config.data.data_dir=workdirs/reflow_toy_pairs --workdir=workdirs/reflow_toy_2rf \
      --config.train.progress_bar=false
  python launch/evaluate.py --workdir=workdirs/reflow_toy_flow \
      --solvers=euler:1,euler:2,euler:100 --num=5000 --straightness_num=2000 --noinception
  python launch/evaluate.py --workdir=workdirs/reflow_toy_2rf --reference_data=toy_ring \
      --solvers=euler:1,euler:2,euler:100 --num=5000 --straightness_num=2000 --noinception
Wall-clock: 1-RF training 59 s, pairs 38 s, 2-RF training 129 s (3m46s for the three at load
1-9); the two evaluations then took 16 and 21 minutes at load 17-25 (the budget of ~8 minutes
was exceeded by the load, not the work: their CPU time was a few minutes). Final losses: cfm
2.02, reflow 4.4e-4. Sliced Wasserstein (`sliced_wasserstein`) of 5000 Euler samples against
5000 ring points; its sample-size floor, two independent 5000-point draws of the ring against
each other with the same metric, is 0.034, 0.081, 0.046 (three seeds). Straightness S and
transport cost E||z - x0||^2 over 2000 noise draws (the same draws for both flows), Euler 100,
mean +- standard error:

                       Euler steps:      1        2       100
  sliced W.  1-rectified flow          1.358    0.423    0.0522
             2-rectified flow          0.0437   0.0448   0.0524
  straightness S:   1-RF 1.320 +- 0.002;    2-RF 3.22e-4 +- 0.09e-4 (4100x smaller)
  transport cost:   1-RF 0.766 +- 0.012;    2-RF 0.763 +- 0.012 (does not rise)
One reflow makes the flow nearly straight: the 2-rectified flow's 1-step samples are at the
sample-size floor (0.044 within 0.034-0.081), as its 100-step ones and the 1-RF's 100-step
ones are, while the 1-rectified flow needs far more than 2 steps (1.36 at 1 step).

Start the 2-rectified flow (or the distilled model) at the 1-rectified flow's weights, as Liu
et al. do, with `--config.teacher.workdir=workdirs/reflow_flow --config.teacher.init_student=
True` (the runs recorded here trained from scratch).
"""

from diffjax.train.config import apply_quicktest, check_arg_names, default_config, parse_arg

STAGES = ("flow", "reflow", "distill")
DATA = ("toy", "digits")


def _data_and_model(c, data: str) -> None:
    if data == "toy":
        c.data.name = "toy_ring"  # diffjax.toy's ring of Gaussians
        c.data.batch_size = 256
        c.data.prefetch = 0
        c.model.name = "mlp"  # residual MLP, hidden 128, 3 blocks
        c.optim.learning_rate = 1e-3
        c.ema.decay = 0.99
        c.train.num_steps = 3000
        c.train.log_every = 250
        c.train.checkpoint_every = 1000
        c.sample.num = 2000
    else:
        c.data.name = "digits"  # sklearn's 8x8 digits in [-1, 1]
        c.data.batch_size = 64
        c.model.name = "unet_tiny"  # the Quickstart's U-Net: 8x8 and 4x4, attention at 4x4
        c.model.kwargs.update(ch=16, ch_mult=(1, 2), attn_resolutions=(4,), num_groups=8)
        c.optim.learning_rate = 2e-3
        c.optim.grad_clip = 1.0
        c.ema.decay = 0.995
        c.train.num_steps = 2000
        c.train.log_every = 100
        c.train.checkpoint_every = 500
        c.sample.num = 100
        c.cond.class_conditional = False  # the flow maps noise to digits of every class


def get_config(arg=None):
    args = parse_arg(arg)
    check_arg_names(args, ("quicktest", "data", "stage", "k"), "experiments/reflow.py")
    data, stage = args.get("data", "toy"), args.get("stage", "flow")
    if data not in DATA or stage not in STAGES:
        raise ValueError(
            f"experiments/reflow.py: data={data!r}, stage={stage!r}; expected data in {DATA} "
            f"and stage in {STAGES}"
        )
    c = default_config()
    _data_and_model(c, data)
    c.process.name = "rectified_flow"  # alpha = 1 - t, sigma = t
    c.process.kwargs = {}
    c.prediction = "velocity"  # every stage trains a velocity field
    c.optim.warmup_steps = 100
    c.ema.warmup = True
    c.sample.solver = "euler"  # the flow's ODE, Euler
    c.sample.steps = 100 if stage == "flow" else 4  # reflowed / distilled models: few steps
    c.sample.kwargs = {}
    if stage == "flow":
        c.loss.name = "cfm"  # independent coupling: Lipman et al. 2023 / Liu et al. 2022 eq. 1
    else:
        c.data.name = "pairs"  # a pair set: --config.data.data_dir=PAIRS
        c.data.prefetch = 0
        c.loss.name = "reflow" if stage == "reflow" else "flow_distillation"
        if stage == "distill":
            c.loss.kwargs = {"k": int(args.get("k", 1))}
            c.sample.steps = int(args.get("k", 1))
    if "quicktest" in args:
        apply_quicktest(c)
        if data == "toy":
            c.model.kwargs.update(hidden=16, depth=1, time_dim=8)
        else:
            c.model.kwargs.update(ch=8, num_groups=4)
    return c
