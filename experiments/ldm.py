"""Latent diffusion with text (Rombach et al. 2022): a denoiser with cross-attention trained on
scale_factor * z, z ~ q(z | x), of a frozen KL autoencoder (experiments/autoencoder.py), on
two-digit MNIST compositions with captions that name both digits and their order
(diffjax.data.captions.PairCaptions; e.g. "a seven to the left of a two", "one then four").

Launch (first train the autoencoder, then name its workdir):
  python launch/train.py --config=experiments/autoencoder.py --workdir=workdirs/ae_mnist_f4 \
      --config.data.data_dir=/work/shared/data/mnist
  python launch/train.py --config=experiments/ldm.py:backbone=dit --workdir=workdirs/ldm_pairs \
      --config.data.data_dir=/work/shared/data/mnist \
      --config.autoencoder.workdir=workdirs/ae_mnist_f4
(backbone=dit for captions: the U-Net, which has no positional input, learnt which digits a
caption names but not their order; the records below measure both)
Arguments: dataset=mnist|fashion_mnist; backbone=unet|dit (DiT with cross-attention blocks and
the pooled embedding); notext (an unconditional latent model of single items, no captions);
preset=ldm256 (256x256 images through a kl-f8 autoencoder, 32x32x4 latents, a U-Net of Stable
Diffusion v1's widths: ch 320, ch_mult (1, 2, 4, 4), attention at 32/16/8, and its scaled-linear
schedule; unconditional, on an image folder: one argument away, for an accelerator; the caption
source here composes digits and garments only); quicktest.

ldm256's U-Net has 641,918,084 parameters (jax.eval_shape of its init). Stable Diffusion v1's
U-Net (859.52M, exactly 859,520,964) differs in three ways, each counted exactly in
tests/test_latent_eval.py: it cross-attends to 768-wide CLIP token states in its 16 transformer
blocks (ours with context_dim=768: 809,984,324), its feed-forward is GEGLU (c -> 8c -> gate ->
c: 4c^2 + 4c more per block of width c) and its q, k, v projections have no bias (6c fewer):
809,984,324 + sum(4c^2 - 2c) over the blocks = 859,520,964, SD's count to the parameter.

Sampling and evaluation (launch/sample.py, launch/evaluate.py) decode: latents are drawn and
decoded by the autoencoder checkpoint pinned in the run's latent_info.json, so grids, .npz
samples and FD / classifier FD / FID are of images; a caption run's statistics compare with
real compositions of its caption source, the samples drawn for their captions.

Tokenizer: word-level, built from every caption the templates can produce
(diffjax.data.text.WordTokenizer): words outside the vocabulary map to <unk>, a prompt longer
than the context length (the longest caption, with <bos>/<eos>) is a ValueError.
Captions are dropped to the empty caption with probability 0.1 (classifier-free guidance); the
grid is drawn with guidance scale 3 for the captions of diffjax.train.latent.grid_captions
(row r: digit r on the left; column j: digit j on the right).

Real run (2026-12-02, 2 CPU cores shared with other jobs; load average 15-21 during steps
0-250, then about 6), on the frozen step-500 autoencoder of experiments/autoencoder.py's run:
  python launch/train.py --config=experiments/ldm.py --workdir=workdirs/ldm_pairs_mnist \
      --config.data.data_dir=/work/shared/data/mnist \
      --config.autoencoder.workdir=workdirs/ae_mnist_f4 --config.train.num_steps=300 \
      --config.train.log_every=25 --config.train.checkpoint_every=50 \
      --config.data.batch_size=32 --config.model.kwargs.ch=32 \
      --config.model.kwargs.num_res_blocks=1 --config.model.kwargs.num_groups=8 \
      --config.sample.steps=25 --config.train.progress_bar=False
  778 s wall: start-up 157 s (146.8 s of it the jitted init under load), first step with
  compile 224 s, 0.54-2.1 steps/s; 355,204 trained parameters (U-Net + text encoder); 7x14x4
  latents of 28x56 canvases, scale factor 0.6378. eps-MSE loss 0.759 (step 50) -> 0.112 (step
  300). The decoded grid samples_0000300.png (32 captions, CFG scale 3, DDIM 25) shows digit-like
  strokes but no recognisable digits yet: 300 steps are far too few (no adherence is claimed).
  The same command with --config.train.num_steps=1000 resumed it (381.7 s wall, load about 6:
  start-up 2.2 s, first step with compile 14.6 s, 1.5-3.0 steps/s): loss 0.103 at step 500,
  0.079 at step 1000; samples_0001000.png shows isolated digit-like glyphs (some recognisable,
  e.g. 1s and 7s, many not) on mostly black canvases; prompt adherence was not measured here.
  Resumed again on an idle machine (load about 2; the Quickstart ran beside it for 3.5 min) with
  --config.train.num_steps=4000 --config.train.log_every=100 --config.train.checkpoint_every=500
  (the other flags as above): 711 s wall for steps 1000 -> 4000 (3.1-4.7 steps/s); loss 0.063
  at step 4000; samples_0004000.png shows digit pairs, some readable. Prompt adherence then
  (59.7 s wall, the classifier cached by diffjax/train/adherence.py's run):
    python launch/evaluate.py --workdir=workdirs/ldm_pairs_mnist --adherence_num=64 \
        --adherence_scales=1,3 --adherence_cache=workdirs/adherence_mnist --adherence_steps=20
  64 random captions per row, DDIM 20 steps (chance: both 0.010, one position 0.100):
    scale 1: both-in-order 0.062, left 0.297, right 0.203;  scale 3: 0.062, 0.234, 0.234;
    text encoder output zeroed, scale 3: 0.000, 0.094, 0.062.
  Negative prompt at scale 3, frequency of the named digit among 128 halves, null caption vs
  the negative prompt: "zero then zero" 0.047 -> 0.016, "one then one" 0.062 -> 0.008, "two
  then two" 0.141 -> 0.039. Above chance with text and at chance without, but far from the
  real-composition ceiling (0.978): the model needs much longer training.

Longer run (2026-12-02, 2 CPU cores, load about 2-3 while tests ran beside it, then idle), on
the step-3000 autoencoder of experiments/autoencoder.py's third record (30.20 dB held-out, scale
factor 0.6457), from scratch:
  python launch/train.py --config=experiments/autoencoder.py --workdir=workdirs/ae_mnist_f4 \
      --config.data.data_dir=/work/shared/data/mnist --config.train.num_steps=3000 \
      --config.train.log_every=100 --config.train.checkpoint_every=500 \
      --config.model.kwargs.ch=16 --config.model.kwargs.num_groups=8 --config.data.batch_size=32
  timeout -s TERM 3420 python launch/train.py --config=experiments/ldm.py \
      --workdir=workdirs/ldm_pairs_mnist --config.data.data_dir=/work/shared/data/mnist \
      --config.autoencoder.workdir=workdirs/ae_mnist_f4 --config.train.num_steps=16000 \
      --config.train.log_every=250 --config.train.checkpoint_every=1000 \
      --config.data.batch_size=32 --config.model.kwargs.ch=32 \
      --config.model.kwargs.num_res_blocks=1 --config.model.kwargs.num_groups=8 \
      --config.sample.steps=25 --config.train.progress_bar=False
  3424 s wall; the timeout's SIGTERM saved step 15,392 (2.3-6.6 steps/s, 6.5 idle); loss 0.077
  (step 2000), 0.066 (step 7500), 0.061-0.063 (steps 14,000-14,500). Adherence (990 s wall, 15
  min of it training the adherence classifier, whose steps run inside one lax.scan; issue 15):
    python launch/evaluate.py --workdir=workdirs/ldm_pairs_mnist --adherence_num=128 \
        --adherence_scales=1,3,5 --adherence_cache=workdirs/adherence_mnist --adherence_steps=20
  classifier: 0.9898 held-out on the 10,000 test items, 0.976 both-in-order on real pairs.
  128 random captions per row (chance: both 0.010, one position 0.100, order 0.5):
    scale 1: both-in-order 0.102, left 0.289, right 0.297, order 0.611, swapped 0.055, FD 179.6
    scale 3: both-in-order 0.234, left 0.445, right 0.492, order 0.425, swapped 0.180, FD 210.5
    scale 5: both-in-order 0.195, left 0.492, right 0.453, order 0.394, swapped 0.156, FD 269.6
    text encoder output zeroed, scale 5: 0.008, 0.055, 0.102 (chance)
  Negative prompt at scale 5 (frequency of the named digit over both halves, null caption ->
  with the negative prompt): zero 0.109 -> 0.000, one 0.055 -> 0.000, two 0.121 -> 0.004.
  So the text path matters (0.234 against 0.008 zeroed) and the model draws the named digits,
  but NOT yet their order: among samples showing the captioned pair, the captioned order is
  0.43 at scale 3 (chance 0.5), both-in-order being about as frequent as swapped. "four then
  nine" (16 samples, scale 3) gave 4 | 4 in most samples. A likely cause (tested below): the
  U-Net has no positional input, so its queries at the left and right halves of the 7x14
  latent differ only by padding effects; DiT (backbone=dit, positional embeddings) or
  coordinate channels would give cross-attention the position it must bind words to.
  Editing a real test composition 7 | 2 with launch/sample.py (16 samples each, DDIM 25,
  scale 3, read by the same classifier):
    --strength=0 (SDEdit): the input back, read 7 | 2 in 16/16;
    --strength=0.5 --prompt="seven then four": left 7 kept in 14/16, right 2 -> 4 in 6/16;
    --strength=0.8: left 7 in 6/16, right 4 in 4/16 (more of the image regenerated);
    --mask (left half kept) --prompt="a seven to the left of a four": left 7 in 16/16, right
      4 in 5/16, right 2 in 0/16;
    --invert --guidance_scale=1 --steps=50: reconstruction rmse 0.044 in latents, 0.087 in
      pixels against the input.

DiT backbone, the same autoencoder, data and batch (2026-12-02, 2 CPU cores; the first 27 min
beside the test suite, then idle):
  timeout -s TERM 2400 python launch/train.py --config=experiments/ldm.py:backbone=dit \
      --workdir=workdirs/ldm_pairs_mnist_dit --config.data.data_dir=/work/shared/data/mnist \
      --config.autoencoder.workdir=workdirs/ae_mnist_f4 --config.train.num_steps=16000 \
      --config.train.log_every=250 --config.train.checkpoint_every=1000 \
      --config.data.batch_size=32 --config.optim.learning_rate=5e-4 \
      --config.optim.warmup_steps=500 --config.sample.steps=25 --config.train.progress_bar=False
  2403 s wall; SIGTERM saved step 4785 (1.3 steps/s beside the tests, 3.1-3.2 idle); 1,581,316
  trained parameters (DiT hidden 128, depth 4, patch 1 on the 7x14 latents, with cross-attention
  and the pooled embedding, + the text encoder); loss 0.157 (step 500), 0.110 (2250), 0.084
  (4785). Adherence (273 s wall, the classifier cached by the U-Net run's report):
    python launch/evaluate.py --workdir=workdirs/ldm_pairs_mnist_dit --adherence_num=128 \
        --adherence_scales=1,3 --adherence_cache=workdirs/adherence_mnist --adherence_steps=20
  128 random captions per row (chance: both 0.010, one position 0.100, order 0.5; real pairs
  read by the classifier: 0.976):
    scale 1: both-in-order 0.352, left 0.625, right 0.602, order 1.000, swapped 0.000, FD 207.1
    scale 3: both-in-order 0.945, left 0.969, right 0.977, order 1.000, swapped 0.000, FD 139.1
    text encoder output zeroed, scale 3: both 0.031, left 0.156, right 0.070, order 0.8 of only
      5 samples showing the pair (not distinguishable from 0.5), FD 822.9
  Negative prompt at scale 3 (named digit over both halves, null caption -> negative prompt):
  zero 0.074 -> 0.000, one 0.051 -> 0.000, two 0.129 -> 0.000.
  The positional embeddings were what the U-Net lacked: with them the captioned order is
  followed (0.945 both-in-order at a third of the U-Net run's steps), so backbone=dit is the
  one to use for caption runs. Editing the same real 7 | 2 (16 samples each, DDIM 25, scale 3):
    --prompt="a seven to the left of a two": 15/16 in order; --prompt="four then nine": 13/16;
    --prompt="seven then two" --negative_prompt="seven then seven": left 7 in 8/16 (the right
      2 in 15/16);
    --strength=0: the input back (16/16); --strength=0.5 or 0.8 --prompt="seven then four":
      left 7 kept in 16/16, right 2 -> 4 in 15/16;
    --mask (left half kept) --prompt="a seven to the left of a four": 7 | 4 in 16/16;
    --invert --guidance_scale=1 --steps=50: reconstruction rmse 0.036 in latents, 0.083 in
      pixels against the input.
"""

import ml_collections

from diffjax.train.config import apply_quicktest, check_arg_names, default_config, parse_arg

DATASETS = {"mnist": "mnist_idx", "fashion_mnist": "fashion_mnist_idx"}
BACKBONES = ("unet", "dit")
# Set --config.autoencoder.workdir to a trained task='autoencoder' run; this placeholder is
# not a directory, so forgetting it is a clear error at the config boundary.
AUTOENCODER_REQUIRED = "<set --config.autoencoder.workdir>"


def get_config(arg=None):
    args = parse_arg(arg)
    known = ("quicktest", "dataset", "backbone", "notext", "preset")
    check_arg_names(args, known, "experiments/ldm.py")
    dataset, backbone = args.get("dataset", "mnist"), args.get("backbone", "unet")
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset={dataset!r}; expected one of {list(DATASETS)}")
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone={backbone!r}; expected one of {BACKBONES}")
    if args.get("preset", "small") not in ("small", "ldm256"):
        raise ValueError(f"unknown preset={args['preset']!r}; expected 'small' or 'ldm256'")
    c = default_config()
    c.data.name = DATASETS[dataset]  # IDX files in data_dir; items 28x28x1
    c.data.batch_size = 64
    c.autoencoder.workdir = AUTOENCODER_REQUIRED  # the frozen first stage
    c.text.captions = None if "notext" in args else "pairs"  # 28x56 two-item canvases
    c.text.width = 64  # text encoder width = the U-Net's context_dim
    c.text.caption_dropout = 0.1  # null caption for classifier-free guidance
    c.process.kwargs.update(schedule="linear", T=1000)  # DDPM chain
    c.loss.name = "simple"  # eps MSE
    c.optim.learning_rate = 1e-3
    c.optim.warmup_steps = 100
    c.ema.decay = 0.999
    c.ema.warmup = True
    c.train.num_steps = 1000
    c.train.log_every = 50
    c.train.checkpoint_every = 500
    c.sample.solver = "ddim"
    c.sample.steps = 50
    c.sample.num = 32
    c.sample.guidance_scale = 1.0 if "notext" in args else 3.0  # CFG for the caption grid
    if backbone == "unet":
        # 7x14 latents (f = 4): one level (7 is odd), transformer blocks with cross-attention
        # to the token states at every block, and the pooled text embedding
        c.model.name = "unet"
        c.model.kwargs.update(ch=64, ch_mult=(1,), num_res_blocks=2, attn_resolutions=(7,),
                              num_heads=4, num_groups=16, dropout=0.0)  # fmt: skip
    else:
        c.model.name = "dit"  # patch 1 on 7x14 latents: 98 tokens
        c.model.kwargs.update(patch_size=1, hidden=128, depth=4, num_heads=4,
                              learn_sigma=False, num_classes=None)  # fmt: skip
    if "notext" not in args:
        c.model.kwargs.pooled_embedding = True
    if args.get("preset") == "ldm256":
        c.data.name = "image_folder"  # the user's 256x256 images (data.image_size = 256)
        c.data.image_size = 256
        c.text.captions = None
        c.sample.guidance_scale = 1.0
        c.model.name = "unet"
        c.model.kwargs = ml_collections.ConfigDict()
        c.model.kwargs.update(ch=320, ch_mult=(1, 2, 4, 4), num_res_blocks=2,
                              attn_resolutions=(32, 16, 8), num_heads=8, num_groups=32)  # fmt: skip
        c.process.kwargs.update(schedule="scaled_linear", start=0.00085, end=0.012)
    if "quicktest" in args:
        apply_quicktest(c)
        c.text.update(width=16, depth=1, num_heads=2)
        if backbone == "unet":
            c.model.kwargs.update(ch=16, num_res_blocks=1, num_heads=2, num_groups=4)
        else:
            c.model.kwargs.update(hidden=16, depth=1, num_heads=2)
    return c
