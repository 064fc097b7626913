#!/usr/bin/env bash
# Run grid specs on a GPU machine in one go (the `device` tool's H200): MPS on, N single-thread workers,
# the in-process executor (the machine has no papermill), the model and GLUE files carried in .gpu/.
# Usage: bash tools/gpu_grids.sh BUDGET_SECONDS spec.yaml [spec.yaml ...]; logs are tarred into $OUT.
set -u
budget=$1; shift
export HARNESS_BUNDLED_MODEL_DIR=$PWD/.gpu/model GLUE_DIR=$PWD/.gpu/glue PYTHONUNBUFFERED=1 TQDM_DISABLE=1 \
       HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
export HARNESS_GIT_COMMIT=$(cat .gpu/COMMIT 2>/dev/null) HARNESS_GIT_DIRTY=$(cat .gpu/DIRTY 2>/dev/null)
nvidia-cuda-mps-control -d && echo "MPS on"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
deadline=$((SECONDS + budget))
dirs=()
for spec in "$@"; do
  left=$((deadline - SECONDS)); [ "$left" -le 15 ] && { echo "no time left for $spec"; continue; }
  echo "=== $spec ($left s left) $(date +%T)"
  timeout -s INT -k 30 "$left" python3 -m harness grid "$spec" --device "${DEVICE:-cuda}" --workers "${WORKERS:-12}" \
      --executor process --threads 1 2>&1 | grep -v -E "^\s*$|it/s\]$" | tail -n "${TAIL:-8}"
  dirs+=("$(python3 -c "import sys; from harness.grid import load_spec, grid_out_dir; print(grid_out_dir(load_spec(sys.argv[1])).relative_to(__import__('os').getcwd()))" "$spec")")
done
for spec in "$@"; do python3 -m harness status "$spec" 2>&1 | tail -n 1; done
tar czf "$OUT/logs.tgz" "${dirs[@]}" 2>/dev/null
ls -la "$OUT"; [ "$(stat -c %s "$OUT/logs.tgz")" -gt 16000000 ] && (cd "$OUT" && split -b 15M logs.tgz logs.tgz. && rm logs.tgz)
ls "$OUT"
