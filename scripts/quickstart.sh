#!/usr/bin/env bash
# npm run quickstart: set-up, a tiny LLaMA with a real 32000-token LLaMA-family tokenizer, templated
# word problems in ten languages, and a SLAM job on an embedded local cluster of 2 workers.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh

RUN=runs/quickstart
if [ ! -f "$RUN/model/model.safetensors" ]; then
  node dist/worker/cli.js init-model --preset tiny --out "$RUN/model"
fi
if [ ! -f "$RUN/encoder/model.safetensors" ]; then
  # LinguaLIFT's encoder for configs/lingualift-tiny.yaml (a tiny random mT5-style one).
  node dist/worker/cli.js init-encoder --preset tiny --out "$RUN/encoder"
fi
node dist/scripts/quickstart-data.js --out "$RUN/data/word-problems.jsonl" --per-language 32 \
  --parallel-dir "$RUN/data/parallel"
rm -rf "$RUN/output"

node dist/coordinator/cli.js submit configs/quickstart.yaml --local-workers 2 --watch

cat <<'EOF'

This model is random and its loss moves only a little: the quickstart proves the plumbing. To see
SLAM do something a person can check, run the miniature reproduction of its claim (a small LLaMA
pretrained from scratch on English arithmetic, then six tuning arms, each evaluated per language):

  npm run experiment:mini-slam        # 37 minutes measured on 2 busy shared cores; -- --trial: ~4 minutes

Results and plots: docs/experiments/mini-slam.md.
EOF
