#!/usr/bin/env bash
# One lent-GPU session (device tool): CPFP lite training with its no-prior ablation, the DCN kernel
# check, and the GPU benchmarks. Run from the repo root with the PyAV wheel carried in .whl/ (the GPU
# image has torch, triton and scikit-image but no PyAV). At most three files land in $OUT (the device
# tool returns 8 at most): the two trained weight files and logs.tar, refreshed after every phase so
# a run cut short still returns what it finished.
set -u
export PYTHONUNBUFFERED=1 OUT=${OUT:-/tmp/gpu_out}
W=/tmp/gpuwork; mkdir -p "$OUT" "$W"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site:$PWD
pack() { (cd "$W" && tar cf "$OUT/logs.tar" *.log *.txt */log.jsonl 2>/dev/null); }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$W/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" >> "$W/gpu.txt" 2>&1
cat "$W/gpu.txt"
T_TRAIN=${T_TRAIN:-220}

# 1. Training: priors model and ablation side by side, same recipe (steps bounded by the time budget;
#    the logs record the steps each reached).
python3 -m cpgd_core.train make-val --out "$W/val.pt" --seed 0 --count 8 --crop 128 --frames 7 > "$W/val.log" 2>&1
common="--config lite --steps ${STEPS:-3000} --batch 8 --crop 128 --frames 7 --crops-per-clip 4 --workers ${WORKERS:-7} --amp --lr 5e-4 --warmup 100 --val $W/val.pt --val-every 500 --ckpt-every 500 --log-every 50 --time-limit $T_TRAIN"
timeout $((T_TRAIN + 90)) python3 -m cpgd_core.train cpfp $common --out "$W/lite" > "$W/train_lite.log" 2>&1 &
timeout $((T_TRAIN + 90)) python3 -m cpgd_core.train cpfp $common --no-priors --out "$W/noprior" > "$W/train_noprior.log" 2>&1 &
wait
cp "$W/lite/cpfp_final.safetensors" "$OUT/cpfp_lite.safetensors"
cp "$W/noprior/cpfp_final.safetensors" "$OUT/cpfp_lite_noprior.safetensors"
tail -n 2 "$W/train_lite.log" "$W/train_noprior.log"; pack

# 2. DCN kernel correctness + speed vs torchvision.
timeout 150 python3 bench/gpu_dcn_check.py > "$W/dcn.log" 2>&1; tail -n 1 "$W/dcn.log"; pack
# 3. Stage-two cost at 512^2, bf16.
timeout 120 python3 bench/gpu_cpc_bench.py > "$W/cpc.log" 2>&1; tail -n 1 "$W/cpc.log"; pack
# 4. Stage-one throughput.
timeout 45 python3 bench/cpfp.py --frames 8 --device cuda > "$W/cpfp_bench.log" 2>&1; tail -n 3 "$W/cpfp_bench.log"; pack
ls -la "$OUT"
