#!/usr/bin/env bash
# Can this GPU node be trusted with a polytune job? Run on one GPU, in the GPU worker image, in
# under 15 minutes:
#   docker run --rm --gpus 1 --entrypoint bash IMAGE scripts/gpu-check.sh
#   kubectl run gpu-check --rm -it --image IMAGE --overrides '{"spec":{...nvidia.com/gpu: 1...}}' --command -- bash scripts/gpu-check.sh
# 1. the tensorflow backend comes up on the GPU; the first start's seconds include compiling the
#    kernels from PTX where TF 2.9 has none for the GPU (sm_90, H100; kept in CUDA_CACHE_PATH);
# 2. golden parity with TF32 off: logits, loss and gradients within 1e-4 of the PyTorch reference;
# 3. a training step of a 4-layer LLaMA-7B- and 13B-shaped model (1 x 1024 tokens, checkpointing):
#    the tape's bytes per layer and the step's seconds, scaled to 32 and 40 layers, against the
#    memory plan (common/memory-plan.ts), and the GPU's peak memory (nvidia-smi) against the plan.
# Exit 0 when all pass. Set POLYTUNE_HOME if the image keeps the app elsewhere than /app.
set -euo pipefail
cd "${POLYTUNE_HOME:-/app}"
export NVIDIA_TF32_OVERRIDE=0 TF_FORCE_GPU_ALLOW_GROWTH=true TF_CPP_MIN_LOG_LEVEL=2
export CUDA_CACHE_PATH="${CUDA_CACHE_PATH:-/tmp/cuda-cache}" CUDA_CACHE_MAXSIZE="${CUDA_CACHE_MAXSIZE:-4294967296}"
fail=0

echo "== GPU"
# compute_cap needs a 510+ driver; older ones get the list without it.
nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv,noheader 2>/dev/null \
  || nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

echo "== 1-2. backend start and golden parity (TF32 off)"
if ! node dist/bench/golden-check.js --backend tensorflow --golden test/golden; then
  echo "FAIL: golden parity (or the backend did not start on the GPU)"; fail=1
fi

peak_mib() { # the GPU's highest memory.used (MiB) while "$@" runs
  local log; log=$(mktemp)
  (while :; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 >>"$log"; sleep 1; done) &
  local sampler=$!
  "$@"; local rc=$?
  kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null || true
  echo "gpuPeakMiB $(sort -n "$log" | tail -1)"; rm -f "$log"
  return $rc
}

for model in MetaMath-7B-V1.0 MetaMath-13B-V1.0; do
  echo "== 3. one step of $model's shapes cut to 4 layers, scaled to its depth"
  out=$(mktemp)
  if ! peak_mib node dist/bench/memory.js --backend tensorflow --config "configs/models/$model/config.json" \
      --batch 1 --seq 1024 --checkpointing >"$out"; then
    echo "FAIL: the step did not run"; fail=1; continue
  fi
  cat "$out"
  # The tape within 15% of the plan (per layer and the 4-layer step); the GPU's peak (nvidia-smi, which
  # includes what TensorFlow's allocator reserved) not over the plan by 15% or more.
  node -e '
    const lines = require("fs").readFileSync(process.argv[1], "utf8");
    const r = JSON.parse(lines.slice(0, lines.lastIndexOf("}") + 1));
    const peak = Number(/gpuPeakMiB (\d+)/.exec(lines)[1]) * 1048576;
    const tape = { perLayerPeak: r.perLayerPeak.ratio, stepPeak: r.stepPeak.ratio };
    const gpuPeak = peak / r.gpuPlanned4Layers;
    console.log(JSON.stringify({ tape, gpuPeak, stepSecondsScaled: r.stepSecondsScaled, layers: r.layers }));
    process.exit(Object.values(tape).every((x) => x > 0.85 && x < 1.15) && gpuPeak < 1.15 ? 0 : 1);
  ' "$out" || { echo "FAIL: $model off the plan by 15% or more"; fail=1; }
  rm -f "$out"
done

[ "$fail" -eq 0 ] && echo "PASS: this node can run polytune" || echo "FAIL: see above"
exit "$fail"
