#!/usr/bin/env bash
# The main job end to end on a fresh machine: set-up, release build, then
#  1. the transformer-block example: random weights, compile (IR dumps and C kept), run, bench;
#  2. FLUX + ArcFlow: the committed small FLUX checkpoint (bf16) and its K=16 ArcFlow adapter (f16)
#     compiled into a 2-step sampler, latents generated from the committed prompt embeddings.
# Everything lands in ${ARCFLOW_DEMO_DIR:-out/demo}.
set -euo pipefail
cd "$(dirname "$0")/.."
bash Tools/setup.sh
swift build -c release
arcflow=.build/release/arcflow
out=${ARCFLOW_DEMO_DIR:-out/demo}
mkdir -p "$out"

echo "== transformer block (1024 tokens, width 768)"
$arcflow random-weights examples/transformer_block.ir -o "$out/block-weights.safetensors"
$arcflow random-inputs examples/transformer_block.ir -o "$out/block-inputs.safetensors"
$arcflow compile examples/transformer_block.ir --weights "$out/block-weights.safetensors" -o "$out/block" \
  --dump-ir "$out/block-ir" --dump-c
$arcflow run --model "$out/block" --inputs "$out/block-inputs.safetensors" -o "$out/block-outputs.safetensors"
$arcflow bench --model "$out/block" --runs 5

echo "== FLUX + ArcFlow 2-step sampler (small committed checkpoint)"
fx=Tests/ArcFlowGraphsTests/Fixtures/cfg-a
$arcflow compile --transformer "$fx/transformer" --adapter "$fx/adapter-k16" --sampler arc --steps 2 \
  --height 48 --width 80 --text-tokens 7 --dump-ir "$out/flux-ir" -o "$out/flux-arc2"
$arcflow generate --model "$out/flux-arc2" --embeddings "$fx/case.safetensors" --seed 0 \
  --output-latents "$out/flux-latents.safetensors"
$arcflow bench --model "$out/flux-arc2" --runs 5
echo "outputs in $out (IR dumps: $out/block-ir, $out/flux-ir; generated C: $out/block/c)"
