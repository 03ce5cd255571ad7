#!/usr/bin/env bash
# One command for a GPU: the DDPM CIFAR-10 U-Net (35.7M parameters, Ho et al. 2020) side by
# side with diffusers' UNet2DModel on the same device, in one process per section:
#   - training at batch 128 (bf16 compute, f32 master weights on both sides): diffjax's launcher
#     step vs torch eager and torch.compile, examples/s and MFU from XLA's cost analysis
#     (PEAK_TFLOPS: the device's dense bf16 peak, default 989 = H100 SXM);
#   - DDIM / DDPM sampling of 256 images over 1000 steps.
#
#   pip install -e '.[bench]' && PEAK_TFLOPS=989 bash benchmarks/gpu.sh
#
# Needs a CUDA jaxlib and a CUDA torch build (the bench extra pins the CPU wheel used on the
# CPU machines; on a GPU machine install the matching CUDA torch==2.13.0 instead).
# Not run yet: no GPU was lent to the session that wrote it (see README, benchmarks).
set -euo pipefail
cd "$(dirname "$0")/.."
PEAK_TFLOPS="${PEAK_TFLOPS:-989}"
REPEATS="${REPEATS:-5}"
python -c "import jax; assert jax.default_backend() == 'gpu', jax.devices(); print(jax.devices())"
python benchmarks/vs_diffusers.py --sections=train --train-models=35.7M --train-batch=35.7M=128 \
    --train-steps=10 --repeats="$REPEATS" --threads=1 --torch-device=cuda --bf16 --compile \
    --peak-tflops="$PEAK_TFLOPS"
python benchmarks/vs_diffusers.py --sections=unet --unet-model=35.7M --unet-batch=256 \
    --unet-steps=1000 --repeats=3 --threads=1 --torch-device=cuda --bf16
