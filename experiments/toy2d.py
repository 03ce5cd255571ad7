"""2-D Gaussian-mixture toy problems with a small MLP: seconds on a CPU, exact scores in
`diffjax.toy` for checking samplers.

Launch:
  python launch/train.py --config=experiments/toy2d.py --workdir=workdirs/toy2d
  python launch/train.py --config=experiments/toy2d.py:process=rectified_flow --workdir=...
Arguments: `quicktest`; `data=ring|random` (toy preset); `process=vp|ve|subvp|cosine|
rectified_flow` (vp/ve/subvp/cosine train eps with L_simple-style MSE; rectified_flow trains
the velocity with conditional flow matching).
Expected result: in about 30 s on 2 cores the loss settles (eps MSE about 0.3-0.5 on the ring)
and `samples_*.png` shows the samples on the mixture's components; the sliced Wasserstein
distance to the data is within a few times that between two data samples (tests/
test_train_learning.py checks this).
"""

from diffjax.train.config import apply_quicktest, check_arg_names, default_config, parse_arg

# process name -> (process kwargs, loss name, loss kwargs, prediction, solver, solver steps)
PROCESSES = {
    # eps models sample with ancestral DDPM: the deterministic solvers divide the early eps
    # errors by alpha(1) (~1/150 for VP) and throw a few points far out after short runs.
    "vp": ({}, "simple", {}, "eps", "ddpm", 200),
    "subvp": ({}, "simple", {}, "eps", "ddpm", 200),
    "cosine": ({}, "simple", {}, "eps", "ddpm", 200),
    "ve": ({"sigma_min": 0.01, "sigma_max": 10.0}, "dsm", {}, "score", "euler", 200),
    "rectified_flow": ({}, "cfm", {}, "velocity", "euler", 100),
}


def get_config(arg=None):
    args = parse_arg(arg)
    check_arg_names(args, ("quicktest", "data", "process"), "experiments/toy2d.py")
    process = args.get("process", "vp")
    if process not in PROCESSES:
        raise ValueError(
            f"unknown process={process!r} for toy2d; expected one of {list(PROCESSES)}"
        )
    p_kwargs, loss, loss_kwargs, prediction, solver, steps = PROCESSES[process]
    c = default_config()
    c.data.name = "toy_" + args.get("data", "ring")  # a diffjax.toy preset, fresh draws per step
    c.data.batch_size = 256  # points per step
    c.data.prefetch = 0  # draws are cheap
    c.model.name = "mlp"  # residual MLP, hidden 128, 3 blocks
    c.process.name = process  # the forward process
    c.process.kwargs = p_kwargs  # its parameters
    c.loss.name = loss  # objective matching the prediction kind
    c.loss.kwargs = loss_kwargs  # its options
    c.prediction = prediction  # what the MLP outputs
    c.optim.learning_rate = 1e-3  # Adam rate
    c.optim.warmup_steps = 100  # linear warm-up
    c.ema.decay = 0.99  # short runs: short average
    c.ema.warmup = True  # (1 + n) / (10 + n) cap early on
    c.train.num_steps = 3000  # about 30 s on 2 cores
    c.train.log_every = 250  # metrics period
    c.train.checkpoint_every = 1000  # checkpoint period
    c.sample.solver = solver  # sampler for the scatter plot
    c.sample.steps = steps  # its intervals
    c.sample.num = 2000  # points in the plot
    if "quicktest" in args:
        apply_quicktest(c)
        c.model.kwargs.update(hidden=16, depth=1, time_dim=8)
    return c
