#!/usr/bin/env bash
# The GPU checks, as one script (a few minutes on one H100/H200-class GPU):
#   bash benchmarks/gpu_check.sh OUTDIR
# 1. the CUDA tests of the tensor environments and a short CUDA training;
# 2. end-to-end PPO steps/s at 4,096 and 65,536 environments, with torch.compile and bf16 autocast;
# 3. time to solve CartPole-v1 on the GPU; 4. the same steps/s on this host's CPU for comparison.
set -uo pipefail
out=${1:-/tmp/gpu_check}
mkdir -p "$out"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'threads', torch.get_num_threads())" | tee -a "$out/gpu.txt"
timeout 120 python3 -m pytest -q -x -p no:cacheprovider tests/test_tensor_envs.py 2>&1 | tail -3 | tee "$out/tests.txt"
B=benchmarks/throughput.py
timeout 150 python3 $B --device cuda --envs 4096 65536 --updates 10 --no-gym --no-sb3 --seeds 0 1 2 2>&1 | tee "$out/cuda.txt"
timeout 60 python3 $B --device cuda --envs 65536 --updates 10 --no-gym --no-sb3 --no-solve --set train.amp=true 2>&1 | tail -2 | tee "$out/cuda_amp.txt"
timeout 90 python3 $B --device cuda --envs 65536 --updates 10 --no-gym --no-sb3 --no-solve --set train.compile=true 2>&1 | tail -2 | tee "$out/cuda_compile.txt"
timeout 90 python3 $B --device cpu --envs 4096 --updates 3 --no-gym --no-sb3 --no-solve 2>&1 | tail -3 | tee "$out/cpu.txt"
cp benchmarks/results.jsonl "$out/" 2>/dev/null
true
