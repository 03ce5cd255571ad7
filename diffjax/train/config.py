"""The default experiment ConfigDict; every experiments/*.py starts from it and overrides.

Every field is read once, by `diffjax.train.spec.spec_from_config` (the typed boundary), which
builds the process, model, loss and data config from it. Fields that may be None are
`placeholder(type)`s, so `--config.data.data_dir=...` still type-checks.
"""

from __future__ import annotations

import ml_collections
from ml_collections.config_dict import placeholder


def default_config() -> ml_collections.ConfigDict:
    """A complete config with every field present, so `--config.x.y=v` overrides type-check."""
    c = ml_collections.ConfigDict()
    c.task = "diffusion"  # what the run trains: 'diffusion', 'autoencoder' or 'classifier'
    c.seed = 0  # one seed: init, per-step keys (fold_in(step_key, step)), sample grids
    c.prediction = "eps"  # what the model outputs: 'eps', 'x0', 'v', 'score' or 'velocity'

    c.data = ml_collections.ConfigDict()  # the fields of diffjax.data.DataConfig
    c.data.name = "digits"  # 'digits', 'mnist_idx', 'fashion_mnist_idx', 'image_folder',
    #                          'tfds:<name>', 'toy_ring', 'toy_random' (diffjax.data.SOURCES)
    c.data.batch_size = 128  # global batch, split over every device and host
    c.data.split = "train"  # dataset split
    c.data.data_dir = placeholder(str)  # folder of IDX files / image folders / TFDS data ('~' ok)
    c.data.tfds_name = placeholder(str)  # TFDS name for data.name = 'tfds'
    c.data.tfds_reader = "array_record"  # or 'tf_data' for TFRecord datasets (needs TensorFlow)
    c.data.image_size = placeholder(int)  # resize images to this side (None: native size)
    c.data.random_flip = False  # horizontal flips (Ho et al. 2020 use them on CIFAR-10)
    c.data.toy_kwargs = ml_collections.ConfigDict()  # toy preset options, e.g. k, radius
    c.data.prefetch = 2  # batches prepared ahead on a background thread

    c.model = ml_collections.ConfigDict()
    c.model.name = "unet"  # a key of diffjax.models.MODELS ('unet', 'dit', 'mlp', presets)
    c.model.kwargs = ml_collections.ConfigDict()  # constructor arguments of that model
    # Empty: the bare backbone. Set (sigma_min required, sigma_max, sigma_data): the backbone
    # wrapped as a consistency function f = c_skip x + c_out F (diffjax.consistency), x0-model.
    c.model.consistency = ml_collections.ConfigDict()
    c.model.remat = False  # rematerialise each U-Net / DiT block in the backward pass (memory)

    c.process = ml_collections.ConfigDict()
    c.process.name = "discrete"  # a name for diffjax.processes.get_process
    c.process.kwargs = ml_collections.ConfigDict({"schedule": "linear", "T": 1000})

    c.loss = ml_collections.ConfigDict()
    c.loss.name = "simple"  # a key of diffjax.losses.LOSSES
    c.loss.kwargs = ml_collections.ConfigDict()  # its keyword arguments (weighting, ...)

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "adam"  # 'adam' or 'adamw'
    c.optim.learning_rate = 2e-4  # peak learning rate
    c.optim.warmup_steps = 0  # linear warm-up steps
    c.optim.b1 = 0.9  # Adam beta1
    c.optim.b2 = 0.999  # Adam beta2
    c.optim.eps = 1e-8  # Adam epsilon
    c.optim.weight_decay = 0.0  # AdamW decoupled weight decay
    c.optim.grad_clip = 1.0  # clip gradients to this global norm (0: off)

    c.ema = ml_collections.ConfigDict()
    c.ema.decay = 0.9999  # EMA decay of the parameters
    c.ema.warmup = False  # decay_n = min(decay, (1 + n) / (10 + n)) when True

    # A trained run whose EMA model a distillation loss learns from (read-only; losses with a
    # `teacher` parameter only). None: no teacher.
    c.teacher = ml_collections.ConfigDict()
    c.teacher.workdir = placeholder(str)  # the teacher's training workdir ('~' ok)
    c.teacher.init_student = False  # start a fresh run's params and EMA at the teacher's EMA

    c.cond = ml_collections.ConfigDict()
    c.cond.class_conditional = False  # feed labels to the model
    c.cond.num_classes = 0  # number of classes; label num_classes is the null class
    c.cond.label_dropout = 0.0  # probability of the null label during training (CFG)

    c.train = ml_collections.ConfigDict()
    c.train.num_steps = 1000  # total optimiser steps
    c.train.log_every = 50  # metrics to stdout, metrics.jsonl and TensorBoard
    c.train.checkpoint_every = 500  # orbax checkpoint period
    c.train.keep_checkpoints = 3  # how many recent checkpoints to keep
    c.train.sample_every = 0  # sample grid period (0: only at the end)
    c.train.progress_bar = True  # tqdm bar with steps/s
    c.train.grad_accum = 1  # micro-batches per step (gradients averaged, one update)
    c.train.steps_per_call = 1  # optimiser steps per jitted call (lax.scan; small models)
    c.train.compute_dtype = "float32"  # or 'bfloat16' (float32 params, optimiser and loss)
    c.train.nonfinite = "stop"  # NaN/inf loss or grads: 'stop' the run, or 'skip' the update
    c.train.max_skipped = 10  # 'skip': stop after more than this many consecutive skips

    c.sample = ml_collections.ConfigDict()
    c.sample.solver = "ddim"  # a diffjax.samplers solver name
    c.sample.steps = 50  # solver intervals
    c.sample.num = 64  # samples per grid (0: no grids)
    c.sample.guidance_scale = 1.0  # CFG: uncond + s (cond - uncond); 1 = conditional only
    # Solver options (eta, t_min, clip_x0, ...: diffjax.samplers.SOLVERS[solver].options);
    # launch/train.py accepts new keys here, e.g. --config.sample.kwargs.eta=0.5.
    c.sample.kwargs = ml_collections.ConfigDict()

    # A cascade's super-resolution stage (diffjax.cascade.SRConfig; experiments/cascade.py):
    # with low_res set, the model is conditioned on up(z_s), the low-res image augmented at a
    # level s ~ U[aug_min, aug_max] per example, with s as a second time. None: a plain run.
    c.cascade = ml_collections.ConfigDict()
    c.cascade.low_res = placeholder(int)  # low-resolution side (None: not an SR stage)
    c.cascade.aug_min = 0.0  # training augmentation levels s ~ U[aug_min, aug_max]
    c.cascade.aug_max = 0.5
    c.cascade.downsample = "bilinear"  # x_lr = down(x0): 'bilinear' (antialiased) or 'area'
    c.cascade.upsample = "bilinear"  # up(z_s): 'bilinear', 'nearest' or 'bicubic'

    # Latent diffusion (diffjax.train.latent): train on scale_factor * z, z ~ q(z | x), of the
    # frozen autoencoder of a task='autoencoder' run (for that task itself, experiments/
    # autoencoder.py adds its training fields here; diffjax.train.autoencoder).
    c.autoencoder = ml_collections.ConfigDict()
    c.autoencoder.workdir = placeholder(str)  # the autoencoder run's workdir (None: pixels)
    c.autoencoder.scale_factor = placeholder(float)  # None: the one stored in that workdir
    # its checkpoint step (None: the newest when this run first starts; recorded in
    # latent_info.json and used on resume and by the samplers)
    c.autoencoder.step = placeholder(int)
    c.autoencoder.cache = False  # encode the training set once (posterior moments in memory)

    # Caption conditioning (diffjax.train.latent): captions=None trains without text; 'pairs'
    # composes two items of the data source with captions naming both in order, tokenised
    # word-level (unknown words -> <unk>), encoded by a TextEncoder trained with the denoiser.
    c.text = ml_collections.ConfigDict()
    c.text.captions = placeholder(str)  # None or 'pairs' (diffjax.data.captions.PairCaptions)
    c.text.layout = "wide"  # 'wide' (H x 2W canvas) or 'square' (both items in H x W)
    c.text.width = 64  # text encoder width (= the denoiser's context_dim)
    c.text.depth = 2  # transformer blocks
    c.text.num_heads = 4  # attention heads
    c.text.context_length = placeholder(int)  # token length L (None: the longest caption's)
    c.text.caption_dropout = 0.1  # probability of the null caption during training (CFG)
    return c


def parse_arg(arg: str | None) -> dict[str, str]:
    """'quicktest,process=ve' -> {'quicktest': 'True', 'process': 've'} (big_vision style)."""
    out: dict[str, str] = {}
    for item in (arg or "").split(","):
        item = item.strip()
        if not item:
            continue
        name, _, value = item.partition("=")
        out[name.strip()] = value.strip() if value else "True"
    return out


def check_arg_names(args: dict[str, str], known: tuple[str, ...], where: str) -> None:
    """ValueError naming any argument of `get_config` that the config file does not know."""
    unknown = sorted(set(args) - set(known))
    if unknown:
        raise ValueError(f"unknown argument(s) {unknown} for {where}; known: {list(known)}")


def apply_quicktest(c: ml_collections.ConfigDict) -> None:
    """Shrink a config to run one tiny training step in a test (keeps the family's choices)."""
    c.data.batch_size = 8
    c.train.num_steps = 1
    c.train.log_every = 1
    c.train.checkpoint_every = 1
    c.train.keep_checkpoints = 1
    c.train.progress_bar = False
    c.sample.num = 0
    c.sample.steps = 2


# The ':mini' U-Net: 280,177 parameters at 28x28x1 (tests/test_mini_configs.py counts it).
MINI_UNET = dict(ch=16, ch_mult=(1, 2, 2), num_res_blocks=1, num_groups=8, dropout=0.1)


def apply_mini(c: ml_collections.ConfigDict, attn_resolution: int, num_steps: int) -> None:
    """The ':mini' miniature of a paper configuration (issue 14, BASELINES.md), sized for about
    an hour on 2 CPU cores: the paper's process, loss, prediction and sampler are kept; the
    model is the DDPM U-Net's design at ch 16, ch_mult (1, 2, 2), one residual block per level,
    attention at the lowest resolution `attn_resolution`, dropout 0.1; batch 64; Adam 1e-3 with
    500 warm-up steps and clipping at 1 (the papers' 2e-4 over 5000 warm-up steps is sized for
    800k-1.3M steps); EMA 0.999 with warm-up (0.9999-0.999999 average over far more steps than
    a miniature takes); checkpoints every 1000 steps (the last 3 kept) and a grid at the end."""
    c.data.batch_size = 64
    c.model.name = "unet"
    c.model.kwargs = ml_collections.ConfigDict(dict(MINI_UNET, attn_resolutions=(attn_resolution,)))
    c.optim.learning_rate = 1e-3
    c.optim.warmup_steps = 500
    c.optim.grad_clip = 1.0
    c.ema.decay = 0.999
    c.ema.warmup = True
    c.train.num_steps = num_steps
    c.train.log_every = 100
    c.train.checkpoint_every = 1000
    c.train.keep_checkpoints = 3
    c.train.sample_every = 0  # the grid at the end
