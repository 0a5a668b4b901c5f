#!/usr/bin/env bash
# The device check: what a machine with an NVIDIA GPU runs, in one call of at most 8 minutes.
#
#   experiments/device_check.sh            # on the GPU host, from the repository root
#   experiments/device_check.sh --dry_run  # anywhere: the same steps at tiny sizes on the CPU
#
# 1. Installs jax's CUDA plugin (pip install -e ".[cuda]") unless JAX already sees a GPU.
# 2. Runs experiments/device_check.py: the benchmark at 1024 px (StyleGAN v1 and StyleGAN2,
#    random FFHQ-layout weights) with 1, 64, 4 and 16 samples per call at precision
#    "highest" and "default" (within a time budget; what is left out is listed), and the
#    parity of the faster precision against "highest" on the same chip.
# 3. Writes docs/benchmark_gpu.md and docs/benchmark_gpu.json (the dry run: a temporary folder,
#    or --out_dir).
set -euo pipefail
cd "$(dirname "$0")/.."
dry_run=0
out_dir=docs
python=${PYTHON:-python3}
while [ $# -gt 0 ]; do
  case "$1" in
    --dry_run) dry_run=1 ;;
    --out_dir) out_dir="$2"; shift ;;
    *) echo "error: unknown argument $1 (use --dry_run, --out_dir DIR)" >&2; exit 2 ;;
  esac
  shift
done
start=$(date +%s)
if [ "$dry_run" = 1 ]; then
  export JAX_PLATFORMS=cpu
  args=(--dry_run --generators stylegan8,stylegan2_8 --samples 1 --steps 1 --repeats 1
        --parity_steps 2 --budget_s 600)
  [ "$out_dir" = docs ] && out_dir=$(mktemp -d)
else
  if ! "$python" -c "import jax, sys; sys.exit(jax.devices()[0].platform != 'gpu')" 2>/dev/null; then
    echo "installing jax's CUDA plugin (.[cuda])" >&2
    "$python" -m pip install --quiet --disable-pip-version-check -e ".[cuda]"
  fi
  "$python" -c "import jax; print('device:', jax.devices()[0].device_kind)"
  args=(--budget_s $(( 420 - ($(date +%s) - start) )))
fi
PYTHONPATH="$PWD:$PWD/experiments${PYTHONPATH:+:$PYTHONPATH}" \
  "$python" experiments/device_check.py "${args[@]}" --out_dir "$out_dir"
echo "device check: $(( $(date +%s) - start )) s, wrote $out_dir/benchmark_gpu.md and .json" >&2
