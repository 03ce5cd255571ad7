"""MNIST or Fashion-MNIST (IDX files from a local folder) with a small U-Net at 28x28,
DDPM-style.

Launch:
  python launch/train.py --config=experiments/mnist.py --workdir=workdirs/mnist \
      --config.data.data_dir=/path/to/mnist   # holding train-images-idx3-ubyte[.gz], ...
  python launch/train.py --config=experiments/mnist.py:dataset=fashion_mnist \
      --workdir=workdirs/fashion --config.data.data_dir=/path/to/fashion-mnist
Arguments: `dataset=mnist|fashion_mnist` (default mnist; the same recipe on other files);
`quicktest`; `conditional` (class labels, 10% null-label dropout, CFG grids); `mini` (the
miniature DDPM baseline of BASELINES.md: diffjax.train.config.apply_mini's 280k-parameter U-Net,
batch 64, 8000 steps, sized for about an hour on 2 CPU cores).
Expected result: about 60 examples/s on 2 CPU cores, so hours on CPU; on one GPU, 20k steps
give clean digits (loss about 0.03), and recognisable garments for Fashion-MNIST.

Measured, `mini` (2026-12-02, 2 shared CPU cores, load about 2; BASELINES.md has the tables):
  python launch/train.py --config=experiments/mnist.py:mini --workdir=workdirs/mini_mnist_ddpm \
      --config.data.data_dir=/work/shared/data/mnist
  8000 steps in 59 min wall (2.7 steps/s, 173 examples/s; first step 24 s after the start),
  loss 0.026 at the end. EMA weights, 500 samples against 500 training images, the project's
  MNIST classifier's Fréchet distance (data floor at 500: 19.5 test vs train, 18.0 two training
  halves): DDPM 82.0 / 77.7 / 34.6 / 28.0 / 21.2 at 10 / 20 / 50 / 100 / 1000 steps; DDIM
  71.3 / 39.1 / 33.9 / 35.6 at 10 / 20 / 50 / 100; DPM-Solver++(2M) 29.7 / 34.3 / 36.3 / 32.3;
  DPM-Solver-3 41.6 / 29.1 / 31.2 / 33.6 at 10 / 19 / 49 / 100 evaluations. FID (standard
  Inception weights) at 200 samples: DDIM 20 steps 87.8, DPM-Solver++ 20 steps 75.8, the data
  floor 32.4-35.0.
"""

from diffjax.train.config import (
    apply_mini,
    apply_quicktest,
    check_arg_names,
    default_config,
    parse_arg,
)

# dataset argument -> diffjax.data source
DATASETS = {"mnist": "mnist_idx", "fashion_mnist": "fashion_mnist_idx"}


def get_config(arg=None):
    args = parse_arg(arg)
    known = ("quicktest", "conditional", "dataset", "mini")
    check_arg_names(args, known, "experiments/mnist.py")
    dataset = args.get("dataset", "mnist")
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset={dataset!r} for mnist; expected one of {list(DATASETS)}")
    c = default_config()
    c.data.name = DATASETS[dataset]  # IDX loader; images 28x28x1 scaled to [-1, 1]
    # c.data.data_dir is REQUIRED: the folder with the IDX files (or its parent)
    c.data.batch_size = 128  # global batch
    c.model.name = "unet_small"  # ch 32, ch_mult (1, 2, 2)
    c.model.kwargs.update(ch_mult=(1, 2), attn_resolutions=(14,), dropout=0.1)  # 28 -> 14
    c.process.kwargs.update(schedule="linear", T=1000)  # DDPM chain
    c.loss.name = "simple"  # eps MSE
    c.optim.learning_rate = 2e-4  # Ho et al.'s rate
    c.optim.warmup_steps = 1000  # linear warm-up
    c.ema.decay = 0.999  # EMA
    c.ema.warmup = True  # early EMA warm-up
    c.train.num_steps = 20000  # total steps
    c.train.log_every = 100  # metrics period
    c.train.checkpoint_every = 2000  # checkpoint period
    c.train.sample_every = 5000  # grid period
    c.sample.solver = "ddim"  # deterministic sampler
    c.sample.steps = 100  # DDIM intervals
    if "mini" in args:  # the miniature DDPM baseline of BASELINES.md (about an hour here)
        apply_mini(c, attn_resolution=7, num_steps=8000)
    if "conditional" in args:
        c.cond.update(class_conditional=True, num_classes=10, label_dropout=0.1)
        c.sample.guidance_scale = 2.0  # CFG scale
    if "quicktest" in args:
        apply_quicktest(c)
        c.model.kwargs.update(ch=8, num_groups=4, attn_resolutions=(14,))
    return c
