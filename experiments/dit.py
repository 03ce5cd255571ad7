"""Class-conditional DiT (Peebles & Xie 2023) on pixels: digits at 8x8 by default (CPU
minutes), or CIFAR-10 at 32x32 with `data=cifar10` (DiT-S/2 backbone, patch 2).

DiT's own setup is latent (256x256 ImageNet through a VAE): AdamW 1e-4, no weight decay, no
warm-up, batch 256, EMA 0.9999, learned sigma, label dropout 0.1 for CFG, 400k-7M steps. On
pixels without a VAE we keep the optimiser, EMA and label dropout, train L_simple (no learned
sigma), and sample with DDIM.

Launch:
  python launch/train.py --config=experiments/dit.py --workdir=workdirs/dit_digits
  python launch/train.py --config=experiments/dit.py:data=cifar10 --workdir=workdirs/dit_c10 \
      --config.data.data_dir=~/tensorflow_datasets
Arguments: `data=digits|cifar10`; `quicktest`.
Expected result: digits: grids of recognisable, class-ordered digits after a few thousand
steps (slower to converge than the U-Net at this size). Published: DiT-XL/2 FID 2.27 on
ImageNet 256 with CFG 1.5 (Peebles & Xie 2023, Table 4); no pixel CIFAR-10 number published.
"""

from diffjax.train.config import apply_quicktest, check_arg_names, default_config, parse_arg


def get_config(arg=None):
    args = parse_arg(arg)
    check_arg_names(args, ("quicktest", "data"), "experiments/dit.py")
    data = args.get("data", "digits")
    if data not in ("digits", "cifar10"):
        raise ValueError(f"unknown data={data!r} for dit; expected 'digits' or 'cifar10'")
    c = default_config()
    c.data.name = "digits" if data == "digits" else "tfds:cifar10"  # dataset
    c.data.batch_size = 64 if data == "digits" else 128  # global batch
    c.data.random_flip = data == "cifar10"  # no flips for digits
    c.model.name = "dit_tiny" if data == "digits" else "dit_s2"  # DiT preset, patch 2
    c.model.kwargs.learn_sigma = False  # L_simple: eps only
    c.process.kwargs.update(schedule="linear", T=1000)  # DiT uses the DDPM linear chain
    c.loss.name = "simple"  # eps MSE
    c.optim.name = "adamw"  # Peebles & Xie
    c.optim.learning_rate = 1e-4 if data == "cifar10" else 1e-3  # 1e-4 in the paper
    c.optim.weight_decay = 0.0  # Peebles & Xie
    c.optim.grad_clip = 0.0  # Peebles & Xie clip nothing
    c.ema.decay = 0.9999 if data == "cifar10" else 0.995  # Peebles & Xie: 0.9999
    c.ema.warmup = data == "digits"  # short run
    c.cond.update(class_conditional=True, num_classes=10, label_dropout=0.1)  # CFG training
    c.train.num_steps = 3000 if data == "digits" else 400_000  # steps
    c.train.log_every = 100  # metrics period
    c.train.checkpoint_every = 1000 if data == "digits" else 10_000  # checkpoint period
    c.sample.solver = "ddim"  # deterministic sampler
    c.sample.steps = 50  # DDIM intervals
    c.sample.guidance_scale = 1.5  # CFG scale (Peebles & Xie's best FID setting)
    if "quicktest" in args:
        apply_quicktest(c)
        c.model.name = "dit_tiny"
        c.model.kwargs.update(hidden=16, depth=1, freq_dim=16)
    return c
