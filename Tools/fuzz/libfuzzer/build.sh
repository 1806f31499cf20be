#!/usr/bin/env bash
# Coverage-guided fuzzing with libFuzzer (swiftc -sanitize=fuzzer): the IR parser + verifier and
# the safetensors header validation, compiled with the harness into one module named IR.
#
#   Tools/fuzz.sh libfuzzer [ir|safetensors] [libFuzzer flags, e.g. -runs=100000 -max_total_time=60]
#
# Corpus: Tests/Fuzz/corpus/TARGET (read-only seeds) + .build/libfuzzer/corpus-TARGET (what
# libFuzzer adds); crashes are written to Tests/Fuzz/crashers/TARGET/ (replayed by FuzzTests).
set -euo pipefail
cd "$(dirname "$0")/../../.."
target=${1:-ir}
[ $# -gt 0 ] && shift
out=.build/libfuzzer
mkdir -p "$out" "$out/corpus-$target" "Tests/Fuzz/crashers/$target"
bin=$out/arcflow-libfuzzer
srcs=(Sources/IR/*.swift Sources/Runtime/SafeTensors.swift Tools/fuzz/libfuzzer/harness.swift)
if [ ! -x "$bin" ] || [ -n "$(find "${srcs[@]}" -newer "$bin" 2>/dev/null)" ]; then
    echo "building $bin (swiftc -sanitize=fuzzer)…" >&2
    if ! swiftc -sanitize=fuzzer -parse-as-library -O -module-name IR "${srcs[@]}" -o "$bin" 2> "$out/build.log"; then
        echo "this toolchain cannot build with -sanitize=fuzzer (see $out/build.log); use Tools/fuzz.sh $target instead" >&2
        exit 3
    fi
fi
seeds=Tests/Fuzz/corpus/$target
[ "$target" = safetensors ] || [ "$target" = ir ] || { echo "libFuzzer targets: ir, safetensors" >&2; exit 2; }
# Crash inputs are named like the mutation runner's crashers so FuzzTests replays them.
member=$(cd "$seeds" && ls | head -1)
# The Swift runtime's backtracer would catch the trap first and libFuzzer would save no input.
SWIFT_BACKTRACE=enable=no ARCFLOW_LIBFUZZER_TARGET=$target "$bin" -timeout=10 -rss_limit_mb=4096 \
    -artifact_prefix="Tests/Fuzz/crashers/$target/${member//\//__}." "$@" "$out/corpus-$target" "$seeds"
