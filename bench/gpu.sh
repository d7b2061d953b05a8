#!/usr/bin/env bash
# The speed figures on a GPU in one short run (issue 16, item 6): the loop against a bare loop, the
# EWC Fisher against a loop of single-sample passes, language-model throughput with distillation, and
# `finetune` of SmolLM2 in bf16 against a plain Trainer, every bench on the same device. Logs go to
# ${OUT:-bench-gpu}/, with the device named in device.txt. About 8 minutes on one H200.
#
#   bash bench/gpu.sh                        # a CUDA device, lifelong importable (PYTHONPATH=src will do)
#   DEVICE=cpu QUICK=1 bash bench/gpu.sh     # a dry run of the script itself on a CPU (a few minutes)
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-bench-gpu}" device="${DEVICE:-cuda}" model="${MODEL:-smollm2-135m}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
if [ "$device" = cuda ]; then
    python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device here')" || exit 2
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >"$out/device.txt"
else
    grep -m1 "model name" /proc/cpuinfo >"$out/device.txt"
fi
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" >>"$out/device.txt"
if [ -n "${QUICK:-}" ]; then
    pairs=1 rounds=1 steps=15 small=(--examples 4 --eval-examples 1 --watch none)
else
    pairs=11 rounds=5 steps=39 small=()
fi

bench() {  # NAME SECONDS SCRIPT ARGS...: one bench, its log kept even when it fails or runs out of time
    local name=$1 limit=$2
    shift 2
    echo "== $name" | tee "$out/$name.log"
    timeout "$limit" python3 "$@" 2>&1 | tee -a "$out/$name.log"
    echo "== $name: exit ${PIPESTATUS[0]}" | tee -a "$out/$name.log"
}
bench overhead 120 bench/overhead.py --device "$device" --repeats "$pairs" --strategies naive,replay,lwf
bench fisher 120 bench/fisher.py --device "$device" --repeats "$rounds"
bench llm_throughput 120 bench/llm_throughput.py --device "$device" --rounds "$rounds" --steps "$steps" \
    --baseline continual --kinds distill,distill-topk --skip-kl
bench finetune 150 bench/finetune_throughput.py --device "$device" --precision bf16 --rounds "$((rounds > 2 ? 2 : rounds))" \
    --model "$model" ${small[@]+"${small[@]}"}
