#!/usr/bin/env bash
# Run grid specs on a GPU machine in one go (the `device` tool's H200): MPS on, single-thread workers,
# the in-process executor (the machine has no papermill), the model and GLUE files carried in .gpu/.
# Usage: bash tools/gpu_grids.sh BUDGET_SECONDS "a.yaml b.yaml" ["c.yaml" ...]
#   each quoted argument is a group of specs run one after the other (e.g. a sweep, then the grid that
#   reads its selection); groups run side by side, WORKERS (default 16) split between them.
# Every grid stops cleanly (SIGINT, resumable) at the deadline; the logs are tarred into $OUT.
set -u
budget=$1; shift
export HARNESS_BUNDLED_MODEL_DIR=$PWD/.gpu/model GLUE_DIR=$PWD/.gpu/glue PYTHONUNBUFFERED=1 TQDM_DISABLE=1 \
       HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
export HARNESS_GIT_COMMIT=$(cat .gpu/COMMIT 2>/dev/null) HARNESS_GIT_DIRTY=$(cat .gpu/DIRTY 2>/dev/null)
nvidia-cuda-mps-control -d && echo "MPS on"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
deadline=$((SECONDS + budget))
per_group=$(( ${WORKERS:-16} / $# )); [ "$per_group" -lt 1 ] && per_group=1
run_group() {
  for spec in $1; do
    left=$((deadline - SECONDS)); [ "$left" -le 15 ] && { echo "no time left for $spec"; continue; }
    echo "=== $spec ($left s left, $per_group workers) $(date +%T)"
    timeout -s INT -k 30 "$left" python3 -m harness grid "$spec" --device "${DEVICE:-cuda}" --workers "$per_group" \
        --executor process --threads 1 > "/tmp/grid-$(basename "$spec" .yaml).out" 2>&1
    grep -E "FAILED|error|Traceback" "/tmp/grid-$(basename "$spec" .yaml).out" | head -5
    tail -n 1 "/tmp/grid-$(basename "$spec" .yaml).out"
  done
}
for group in "$@"; do run_group "$group" & done
wait
dirs=()
for spec in $*; do
  python3 -m harness status "$spec" 2>&1 | tail -n 1 | sed "s#^#$spec: #"
  dirs+=("$(python3 -c "import os, sys; from harness.grid import load_spec, grid_out_dir; print(os.path.relpath(grid_out_dir(load_spec(sys.argv[1]))))" "$spec")")
done
tar czf "$OUT/logs.tgz" "${dirs[@]}" 2>/dev/null
[ "$(stat -c %s "$OUT/logs.tgz")" -gt 16000000 ] && (cd "$OUT" && split -b 15M logs.tgz logs.tgz. && rm logs.tgz)
ls -la "$OUT"
