#!/usr/bin/env bash
# Fuzzes arcflow's readers of other people's files (IR, safetensors, shards, configs, tokenizers,
# prompts, compiled model folders, the library cache).
#
#   Tools/fuzz.sh [TARGET|all] [--cases N] [--seconds S] [--seed K]
#
# Deterministic mutation fuzzing (arcflow-fuzz): seeds in Tests/Fuzz/corpus/TARGET, case i of seed
# K is always the same input; a crash, a hang (> 10 s), a multi-line or empty message or a non-
# ArcError error is saved under Tests/Fuzz/crashers/TARGET/ (replayed by FuzzTests as regressions).
# Prints, per target: cases run, accepted/rejected, findings, slowest case, child exit codes.
# `Tools/fuzz.sh libfuzzer [ir|safetensors] [-max_total_time=S]` runs the coverage-guided
# libFuzzer build instead (Tools/fuzz/libfuzzer/build.sh; needs a toolchain with -sanitize=fuzzer).
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:-all}
[ $# -gt 0 ] && shift
if [ "$target" = libfuzzer ]; then exec bash Tools/fuzz/libfuzzer/build.sh "$@"; fi
swift build -c release --product arcflow-fuzz >&2
bin=$(swift build -c release --show-bin-path)/arcflow-fuzz
if [ "$target" = all ]; then targets=$("$bin" list | awk '{print $1}'); else targets=$target; fi
status=0
for t in $targets; do
    "$bin" run "$t" "$@" || status=1
done
exit $status
