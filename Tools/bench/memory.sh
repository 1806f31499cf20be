#!/usr/bin/env bash
# Memory benchmark (issue 8): checkpoint bytes, compiled weight bytes, compile and generate peak RSS
# (/usr/bin/time -v), each as a ratio to the checkpoint, and the projection to FLUX.1-dev (23.8 GB bf16).
#
#   bash Tools/bench/memory.sh CHECKPOINT_DIR EMBEDDINGS.safetensors [DTYPE ...]
#
# CHECKPOINT_DIR: a diffusers FLUX transformer folder (make one with Tools/fixtures/make_wide_flux.py);
# DTYPE: --weights-dtype values to measure (default: auto). Environment: ARCFLOW (the binary, default
# .build/release/arcflow), WORK (scratch for the compiled folders, default /tmp/arcflow-memory),
# SIZE (pixels, default 256), STEPS (sampler steps, default 1: memory does not depend on them),
# THREADS (default 2). Compiled folders are removed after each measurement.
set -euo pipefail
ckpt=${1:?usage: memory.sh CHECKPOINT_DIR EMBEDDINGS.safetensors [DTYPE ...]}
emb=${2:?usage: memory.sh CHECKPOINT_DIR EMBEDDINGS.safetensors [DTYPE ...]}
shift 2
dtypes=("${@:-auto}")
arcflow=${ARCFLOW:-.build/release/arcflow}
work=${WORK:-/tmp/arcflow-memory}
size=${SIZE:-256}
steps=${STEPS:-1}
threads=${THREADS:-2}
flux_dev_bytes=23800000000
mkdir -p "$work"

ckpt_bytes=$(find "$ckpt" -maxdepth 1 -name '*.safetensors' -printf '%s\n' | awk '{s += $1} END {print s}')
tokens=$(/usr/bin/env python3 -c "import json,struct,sys; f=open(sys.argv[1],'rb'); n=struct.unpack('<Q',f.read(8))[0]; print(json.loads(f.read(n))['prompt_embeds']['shape'][1])" "$emb")

# peak_rss_bytes LOG: the "Maximum resident set size" /usr/bin/time -v wrote, in bytes.
peak_rss_bytes() { awk -F': ' '/Maximum resident set size/ {print $2 * 1024}' "$1"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", a / b}'; }
gib() { awk -v a="$1" 'BEGIN {printf "%.2f GiB", a / 1073741824}'; }
project() { awk -v r="$1" -v f="$flux_dev_bytes" 'BEGIN {printf "%.1f GB", r * f / 1e9}'; }

echo "checkpoint: $ckpt ($(gib "$ckpt_bytes"), $ckpt_bytes bytes); ${size}x${size}, $tokens text tokens, $steps step(s), $threads threads"
printf '%-6s  %-26s  %-26s  %-26s  %s\n' dtype "compiled weights" "compile peak RSS" "generate peak RSS" "FLUX.1-dev projection (weights / compile / generate)"
for dtype in "${dtypes[@]}"; do
    out="$work/model-$dtype"
    rm -rf "$out"
    /usr/bin/time -v "$arcflow" compile --transformer "$ckpt" --sampler euler --steps "$steps" --height "$size" --width "$size" \
        --text-tokens "$tokens" --weights-dtype "$dtype" -o "$out" > "$work/compile-$dtype.out" 2> "$work/compile-$dtype.time" \
        || { cat "$work/compile-$dtype.out" "$work/compile-$dtype.time" >&2; exit 1; }
    weights=$(stat -c %s "$out/weights.safetensors")
    compile_rss=$(peak_rss_bytes "$work/compile-$dtype.time")
    /usr/bin/time -v "$arcflow" generate --model "$out" --embeddings "$emb" --seed 0 --threads "$threads" \
        --output-latents "$work/latents-$dtype.safetensors" > "$work/generate-$dtype.out" 2> "$work/generate-$dtype.time" \
        || { cat "$work/generate-$dtype.out" "$work/generate-$dtype.time" >&2; exit 1; }
    generate_rss=$(peak_rss_bytes "$work/generate-$dtype.time")
    rw=$(ratio "$weights" "$ckpt_bytes"); rc=$(ratio "$compile_rss" "$ckpt_bytes"); rg=$(ratio "$generate_rss" "$ckpt_bytes")
    printf '%-6s  %-26s  %-26s  %-26s  %s / %s / %s\n' "$dtype" "$(gib "$weights") (${rw}x)" "$(gib "$compile_rss") (${rc}x)" \
        "$(gib "$generate_rss") (${rg}x)" "$(project "$rw")" "$(project "$rc")" "$(project "$rg")"
    rm -rf "$out"
done
