#!/usr/bin/env bash
# Trains every shipped weights file, the four runs in parallel on one GPU (or the CPU, slowly).
# Usage: scripts/train_shipped_weights.sh DATA_DIR OUT_DIR [BUDGET_SECONDS] [DEVICE]
#   DATA_DIR holds brats.npz, ivif.npz, med.npz from `python -m napari_fusion.training.pack --out DATA_DIR`.
# The exact command each model was trained with is recorded in its file's metadata and in
# src/napari_fusion/weights/README.md.
set -euo pipefail
DATA=${1:?data dir}; OUT=${2:?out dir}; BUDGET=${3:-420}; DEV=${4:-auto}
MODELS=${MODELS:-"tdfusion_brats tdfusion_ivif gifnet multitaskvif_brats"}
# cuDNN's deterministic kernels make the meta step's double backward ~20x slower (12 s vs 0.56 s per
# step, measured on an H200): GPU runs are seeded but not bitwise reproducible; CPU runs are.
DET=""; [ "$DEV" = "cpu" ] || DET="--no-deterministic"
export PYTHONPATH="$(cd "$(dirname "$0")/.." && pwd)/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$OUT"
[ -f "$DATA/gifnet.npz" ] || python -m napari_fusion.training.pack --combine --out "$DATA"
run() { local name=$1; shift; case " $MODELS " in *" $name "*) ;; *) return 0;; esac
  echo "+ $*" >"$OUT/$name.cmd"; "$@" >"$OUT/$name.log" 2>&1 & }
run tdfusion_brats python -m napari_fusion.training.tdfusion --task brats --data "$DATA/brats.npz" \
  --out "$OUT/tdfusion_brats.safetensors" --device "$DEV" --time-budget "$BUDGET" --steps 20000 --seed 0 \
  --meta-every 2 --meta-start 200 --loss-config dim=8,joint_blocks=2,centred=1 $DET
run tdfusion_ivif python -m napari_fusion.training.tdfusion --task ivif --data "$DATA/ivif.npz" \
  --out "$OUT/tdfusion_ivif.safetensors" --device "$DEV" --time-budget "$BUDGET" --steps 20000 --seed 0 \
  --meta-start 150 --loss-config dim=8,joint_blocks=2,centred=1 --max-weight 2.0 $DET
run gifnet python -m napari_fusion.training.gifnet --data "$DATA/gifnet.npz" \
  --out "$OUT/gifnet.safetensors" --device "$DEV" --time-budget "$BUDGET" --steps 20000 --seed 0
run multitaskvif_brats python -m napari_fusion.training.multitask --data "$DATA/brats.npz" \
  --out "$OUT/multitaskvif_brats.safetensors" --device "$DEV" --time-budget "$BUDGET" --steps 20000 --seed 0
fail=0; for j in $(jobs -p); do wait "$j" || fail=1; done
tail -n 3 "$OUT"/*.log
exit $fail
