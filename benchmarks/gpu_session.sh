#!/usr/bin/env bash
# Everything this project measures on a lent GPU machine, in one call (torch + timm there; no Ray, no rasterio):
#   1. benchmarks/gpu_step.py: the DINO training step, ViT-S/16, per variant (issue 6)
#   2. DINO pretraining of vit_tiny on the packed real EuroSAT subset with the torchrun launcher (issue 4)
# Usage: PACKED=.gpu/eurosat bash benchmarks/gpu_session.sh   (PACKED holds metadata.parquet/.json and pack/)
# Results go to $OUT (the device tool brings it back): gpu_step.txt, pretrain.txt, log.txt, the teacher backbone
# split in two files under 16 MB (join them with benchmarks/join_state.py).
set -u
export PYTHONPATH=platform PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu-session}
PACKED=${PACKED:-.gpu/eurosat}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__)" | tee -a "$OUT/gpu.txt"

timeout "${STEP_TIMEOUT:-200}" python3 benchmarks/gpu_step.py ${STEP_ARGS:-} 2>&1 | tee "$OUT/gpu_step.txt"

RUN=/tmp/geodino-runs
timeout "${PRETRAIN_TIMEOUT:-220}" python3 experiments/pretrain.py --launcher torchrun --use_gpu \
  --metadata_dir "$PACKED/metadata.parquet" --data_dir "$PACKED/pack" --storage_path $RUN --run_name eurosat_gpu \
  --arch vit_tiny --patch_size 8 --global_crops_size 64 --local_crops_size 32 --local_crops_number 6 \
  --out_dim 8192 --batch_size_per_gpu 256 --epochs ${EPOCHS:-200} --warmup_epochs 10 --saveckp_freq 25 \
  --drop_path_rate 0.1 ${PRETRAIN_ARGS:-} 2>&1 | grep -v Warning | tee "$OUT/pretrain.txt"
cp $RUN/eurosat_gpu/log.txt "$OUT/log.txt" 2>/dev/null
python3 - "$RUN/eurosat_gpu" "$OUT" <<'PY'
import os, sys, torch
run, out = sys.argv[1:]
folders = sorted(f for f in os.listdir(run) if f.startswith("checkpoint_epoch_") and not f.endswith(".partial"))
if not folders:
    sys.exit("no checkpoint was written")
state = torch.load(os.path.join(run, folders[-1], "teacher_backbone.pth"), weights_only=True)
keys = sorted(state)
half = len(keys) // 2
for part, chunk in (("a", keys[:half]), ("b", keys[half:])):
    torch.save({k: state[k].cpu() for k in chunk}, os.path.join(out, f"teacher_backbone_{folders[-1][-6:]}.{part}.pth"))
print("saved the teacher backbone of", folders[-1])
PY
