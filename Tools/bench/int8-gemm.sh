#!/bin/sh
# int8-gemm: GFLOP/s of the int8 GEMM (scales per block of 32 and per output channel) against
# the packed f32 and bf16 GEMM, same run, interleaved; builds Tools/bench/int8_gemm.c with the
# prelude prepended and the generator's flags.  Usage: Tools/bench/int8-gemm.sh [RUNS [M N K]...]
# (OMP_NUM_THREADS sets the threads, default 1).  Read the ratios: the machine may be loaded.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
P="$HERE/../../Sources/Codegen/Prelude"
OB_INC=/usr/include/x86_64-linux-gnu/openblas-pthread
OB_LIB=/usr/lib/x86_64-linux-gnu/openblas-openmp
B=$(mktemp -d "${TMPDIR:-/tmp}/int8-gemm.XXXXXX")
trap 'rm -rf "$B"' EXIT
cat "$P/common.h" "$P/elementwise.h" "$P/conversions.h" "$P/norms.h" "$P/gemm.h" "$P/gemm_int8.h" "$HERE/int8_gemm.c" > "$B/bench.c"
gcc -std=c11 -O3 -march=${MARCH:-native} -fopenmp -fno-math-errno -Wno-unused-function -I$OB_INC \
    -o "$B/int8-gemm" "$B/bench.c" $OB_LIB/libopenblas.so.0 -Wl,-rpath,$OB_LIB -lm
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} "$B/int8-gemm" "$@"
