#!/usr/bin/env bash
# Ray Train + Ray Data against the torchrun launcher on one GPU: the same EuroSAT pretraining (packed shards, same
# model, batch, crops and epochs), in one call on a bare GPU machine (issue 14). It brings Ray with it:
#   carried: $RAY_BUNDLE  (python cluster/gpu/bring_ray.py pack --python 3.12 --out .gpu/ray-py312.tar.xz)
#            $PACKED      (prepare --pack of shared/data/eurosat-rgb-subset/labels.csv: metadata.* and pack/)
# Usage: OUT=... bash benchmarks/gpu_ray_session.sh
#   EPOCHS (default 6), BATCH (256), ARGS (more pretrain flags), DEVICE_ARGS ("--use_gpu true"; a CPU smoke run
#   passes "--use_gpu false" with a tiny model in ARGS).
# Writes to $OUT: ray.txt (what Ray is), <launcher>.txt (the console), <launcher>-log.txt (per-epoch metrics),
# <launcher>-util.txt (nvidia-smi utilisation every 0.5 s), summary.md (the table).
set -u
export PYTHONUNBUFFERED=1 RAY_AUTH_MODE=disabled
OUT=${OUT:-/tmp/gpu-ray-session}
PACKED=${PACKED:-.gpu/eurosat}
RAY_BUNDLE=${RAY_BUNDLE:-.gpu/ray-py312.tar.xz}
RUNS=${RUNS:-/tmp/geodino-ray-vs-torchrun}
mkdir -p "$OUT"
rm -rf "$RUNS"
if ! python3 -c "import ray" 2>/dev/null; then
  python3 cluster/gpu/bring_ray.py unpack "$RAY_BUNDLE" --into /tmp/ray-site >/dev/null || exit 1
  export PYTHONPATH=/tmp/ray-site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD/platform:${PYTHONPATH:-}
python3 cluster/gpu/bring_ray.py check 2>/dev/null | tail -1 | tee "$OUT/ray.txt"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee -a "$OUT/ray.txt"

for launcher in torchrun ray; do
  monitor=""
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits -lms 500 > "$OUT/$launcher-util.txt" &
    monitor=$!
  fi
  timeout "${RUN_TIMEOUT:-240}" python3 experiments/pretrain.py --launcher "$launcher" ${DEVICE_ARGS:---use_gpu true} \
    --metadata_dir "$PACKED" --storage_path "$RUNS" --run_name "$launcher" \
    --arch vit_small --patch_size 8 --global_crops_size 64 --local_crops_size 32 --local_crops_number 6 \
    --out_dim 8192 --batch_size_per_gpu "${BATCH:-256}" --epochs "${EPOCHS:-6}" --warmup_epochs 1 \
    --saveckp_freq 0 --knn_every 0 --progress_every_s 0 ${ARGS:-} > "$OUT/$launcher.txt" 2>&1
  echo "$launcher: exit $?" | tee -a "$OUT/ray.txt"
  [ -n "$monitor" ] && kill "$monitor"
  cp "$RUNS/$launcher/log.txt" "$OUT/$launcher-log.txt" 2>/dev/null
done

python3 - "$OUT" <<'PY' | tee "$OUT/summary.md"
import json, os, statistics, sys
out = sys.argv[1]
print("| launcher | epochs timed | images/s | vs torchrun | data wait | GPU util | MFU |")
print("| --- | --- | --- | --- | --- | --- | --- |")
rates = {}
for launcher in ("torchrun", "ray"):
    path = os.path.join(out, f"{launcher}-log.txt")
    if not os.path.exists(path):
        print(f"| {launcher} | no log.txt: see {launcher}.txt | | | | | |")
        continue
    epochs = [json.loads(line) for line in open(path)][1:]  # the first epoch holds start-up and compiling
    rates[launcher] = statistics.mean(m["images_per_s"] for m in epochs)
    wait = statistics.mean(m["data_wait_fraction"] for m in epochs)
    mfu = [m["mfu"] for m in epochs if "mfu" in m]
    util_path = os.path.join(out, f"{launcher}-util.txt")
    util = [float(v) for v in open(util_path).read().split()] if os.path.exists(util_path) else []
    print(f"| {launcher} | {len(epochs)} | {rates[launcher]:.0f} | "
          f"{rates[launcher] / rates['torchrun']:.2f}x | {wait:.1%} | "
          f"{f'{statistics.mean(util):.0f} %' if util else 'n/a'} | {f'{statistics.mean(mfu):.1%}' if mfu else 'n/a'} |")
PY
# The loss over DINO's 65,536-wide head alone, pairwise vs one term per student crop (seconds on a GPU).
python3 benchmarks/dino_loss.py --batch 64 2>&1 | tee "$OUT/loss.md"
