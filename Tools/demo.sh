#!/usr/bin/env bash
# The main job end to end on a fresh machine: set-up, release build, then
#  1. the transformer-block example: random weights, compile (IR dumps and C kept), run, bench;
#  2. FLUX + ArcFlow: the committed small FLUX checkpoint (bf16) and its K=16 ArcFlow adapter (f16)
#     compiled into a 2-step sampler, latents generated from the committed prompt embeddings;
#  3. prompt → PNG: the committed tiny random FluxPipeline (CLIP, T5, transformer, VAE, tokenizers)
#     compiled into a pipeline folder, then PNGs from a prompt and from a prompt file. Its weights
#     are random, so the pictures are noise: it shows the path a real FLUX.1 folder takes.
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

echo "== prompt → PNG (tiny random FluxPipeline: teacher, 4 Euler steps, dynamic shifting)"
pipe=Tests/ArcFlowGraphsTests/Fixtures/pipeline
$arcflow compile --pipeline "$pipe" --height 48 --width 80 --text-tokens 32 --steps 4 -o "$out/pipeline"
$arcflow tokenize --model "$out/pipeline" --prompt "a photo of a cat"
$arcflow generate --model "$out/pipeline" --prompt "a photo of a cat" --seed 42 -o "$out/cat.png"
printf 'a photo of a cat\na red fox jumping over the lazy dog\n' > "$out/prompts.txt"
$arcflow generate --model "$out/pipeline" --prompts "$out/prompts.txt" --seed 7 -o "$out/images"
if [ -f models/shapes/model.json ]; then
  echo "== the embedded default model (models/shapes): prompt → PNG, and a grid of prompts × {teacher 28, ArcFlow 2, linear 2}"
  echo "   (first use compiles each model, minutes; later runs load the cached libraries)"
  $arcflow generate --prompt "a small red circle at the top left" --seed 1 -o "$out/red-circle.png"
  cat > "$out/shapes-prompts.txt" <<'PROMPTS'
a red circle
a large yellow triangle on the right
a small blue square at the top left
a green circle to the left of a white square
a purple triangle above a cyan circle
a green triangle
a orange square at the bottom
PROMPTS
  $arcflow generate --prompts "$out/shapes-prompts.txt" --seed 0 -o "$out/shapes"
  $arcflow generate --grid "$out/shapes-prompts.txt" --seed 0 -o "$out/shapes-grid.png"
  echo "outputs in $out (IR dumps: $out/block-ir, $out/flux-ir; generated C: $out/block/c; PNGs: $out/cat.png, $out/images/, $out/red-circle.png, $out/shapes/, $out/shapes-grid.png)"
else
  echo "(no models/shapes: the embedded default model is not here yet; Tools/train-default.sh produces it)"
  echo "outputs in $out (IR dumps: $out/block-ir, $out/flux-ir; generated C: $out/block/c; PNGs: $out/cat.png, $out/images/)"
fi
