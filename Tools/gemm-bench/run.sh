#!/bin/sh
# gemm-bench: GFLOP/s of our packed GEMM (f32 and bf16 panels) against OpenBLAS sgemm and the
# measured FMA peak, one thread, same run.  Builds main.c with the prelude prepended and the
# generator's flags, runs it.  Usage: Tools/gemm-bench/run.sh [RUNS] (best of RUNS, default 5).
# Benchmarks are wall-clock: run on an otherwise idle machine, or read only the ratios.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
P="$HERE/../../Sources/Codegen/Prelude"
OB_INC=/usr/include/x86_64-linux-gnu/openblas-pthread
OB_LIB=/usr/lib/x86_64-linux-gnu/openblas-openmp
B=$(mktemp -d "${TMPDIR:-/tmp}/gemm-bench.XXXXXX")
trap 'rm -rf "$B"' EXIT
cat "$P/common.h" "$P/elementwise.h" "$P/conversions.h" "$P/norms.h" "$P/gemm.h" "$HERE/main.c" > "$B/bench.c"
gcc -std=c11 -O3 -march=${MARCH:-native} -fopenmp -fno-math-errno -Wno-unused-function -I$OB_INC \
    -o "$B/gemm-bench" "$B/bench.c" $OB_LIB/libopenblas.so.0 -Wl,-rpath,$OB_LIB -lm
OMP_NUM_THREADS=1 "$B/gemm-bench" "$@"
