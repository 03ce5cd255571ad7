"""A time-conditional classifier p(y | x_t, t) of noisy images for classifier guidance
(Dhariwal & Nichol 2021, sec. 4): the U-Net's encoder half with an attention-pooled head,
trained by cross-entropy on x_t ~ q(x_t | x0) at the process's training times.

Launch (train the classifier for the process of the diffusion run it will guide, then sample):
  python launch/train.py --config=experiments/noisy_classifier.py --workdir=workdirs/digits_clf
  python launch/sample.py --workdir=workdirs/digits_uncond \
      --classifier_workdir=workdirs/digits_clf --classifier_scale=2 --class_label=3
Arguments (`--config=experiments/noisy_classifier.py:ARG`): `dataset=digits|mnist|
fashion_mnist` (default digits, the built-in 8x8 digits; mnist reads IDX files from
config.data.data_dir), `quicktest` (one tiny step, for tests), `pool=attention|mean`.
The process is the one of experiments/digits.py and experiments/mnist.py (Ho et al.'s T = 1000
linear chain), so the classifier fits their diffusion models; a classifier trained for another
process or number of classes is refused by launch/sample.py.

Real runs (2026-12-02, 2 CPU cores shared with ~8 other jobs: load average 18-21 throughout,
so every wall-clock below is about 10x an idle machine's; each run was capped at 12 minutes by
`timeout`, and the pre-emption handler saved the step reached):
  python launch/train.py --config=experiments/digits.py:unconditional \
      --workdir=workdirs/d2_digits_uncond        # 740 s, stopped at step 1358, eps-MSE 0.087
  python launch/train.py --config=experiments/noisy_classifier.py \
      --workdir=workdirs/d2_digits_clf --config.train.num_steps=2000
      # 748 s, stopped at step 798 (batch 128); training-batch accuracy 0.43 over all t
  # then a 40-line driver (workdirs/d2_logs/guidance_eval*.py: nc.accuracy_by_time, then
  # nc.guided_sampler per scale, i.e. what `launch/sample.py --classifier_workdir=... \
  # --classifier_scale=S --class_label=3 --solver=ddim --steps=25 --num=100` draws): 263 s and
  # 121 s wall, 25-60 s per scale
Noisy-classifier accuracy on x_t of all 1,797 digits (the data set has no held-out split, so
these are training images; binomial standard errors <= 0.011):
  t        0      0.1    0.3    0.5    0.7    0.9    1.0
  acc    0.998  0.989  0.682  0.285  0.140  0.110  0.091   (chance 0.1)
Classifier guidance of the unconditional digits DDPM towards class 3 (DDIM, 25 steps, x0 clipped,
100 samples per scale, the same noise), the class read by the project's clean classifier
(diffjax.train.classifier, 0.999 accuracy on the digits):
  scale s        0      0.5    1      2      4      8
  freq of '3'  0.09   0.59   0.81   0.94   1.00   1.00
  stderr       0.029  0.049  0.039  0.024  0      0
monotone in s; at s = 0 the classes are near uniform (chance 0.1).
"""

from diffjax.train.config import apply_quicktest, check_arg_names, default_config, parse_arg

DATASETS = {"digits": "digits", "mnist": "mnist_idx", "fashion_mnist": "fashion_mnist_idx"}


def get_config(arg=None):
    args = parse_arg(arg)
    check_arg_names(args, ("quicktest", "dataset", "pool"), "experiments/noisy_classifier.py")
    dataset = args.get("dataset", "digits")
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset={dataset!r}; expected one of {list(DATASETS)}")
    c = default_config()
    c.task = "classifier"  # launch/train.py dispatches to diffjax.train.noisy_classifier
    c.data.name = DATASETS[dataset]
    c.model.name = "noisy_classifier"  # diffjax.models.classifier.NoisyClassifier
    c.model.kwargs.update(pool=args.get("pool", "attention"))
    c.loss.name = "cross_entropy"  # -log p(y | x_t, t)
    c.process.name = "discrete"  # the chain of experiments/digits.py and mnist.py
    c.process.kwargs.update(schedule="linear", T=1000)
    c.cond.num_classes = 10  # digits 0-9
    c.optim.name = "adamw"
    c.optim.weight_decay = 1e-4
    c.optim.warmup_steps = 100
    c.optim.grad_clip = 1.0
    c.ema.decay = 0.995
    c.ema.warmup = True
    c.train.log_every = 100
    c.sample.num = 0  # nothing to sample
    if dataset == "digits":
        c.data.batch_size = 128
        c.model.kwargs.update(ch=32, ch_mult=(1, 2), num_groups=8)  # 8x8 -> 4x4, ~0.2M params
        c.optim.learning_rate = 2e-3
        c.train.num_steps = 3000
        c.train.checkpoint_every = 1000
    else:  # 28x28 MNIST-like IDX files; c.data.data_dir is required
        c.data.batch_size = 128
        c.model.kwargs.update(ch=32, ch_mult=(1, 2, 2), num_groups=8)  # 28 -> 14 -> 7
        c.optim.learning_rate = 1e-3
        c.train.num_steps = 2000
        c.train.checkpoint_every = 500
    if "quicktest" in args:
        apply_quicktest(c)
        c.model.kwargs.update(ch=8, num_groups=4)
    return c
