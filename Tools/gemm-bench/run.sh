#!/bin/sh
# gemm-bench: GFLOP/s of our packed GEMM (f32 and bf16 panels) against OpenBLAS sgemm and the
# measured FMA peak, same run.  Builds main.c with the prelude prepended and the generator's
# flags, runs it.  Usage: Tools/gemm-bench/run.sh [RUNS [THREADS [M N K]...]] (best of RUNS,
# default 5; THREADS default 1; default shapes: big squares and the width-768 model GEMMs).
# CFLAGS_EXTRA adds compiler flags (e.g. -DAF_GEMM_KC=192 to try a blocking).
# Benchmarks are wall-clock: run on an otherwise idle machine, or read only the ratios.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
P="$HERE/../../Sources/Codegen/Prelude"
OB_INC=/usr/include/x86_64-linux-gnu/openblas-pthread
OB_LIB=/usr/lib/x86_64-linux-gnu/openblas-openmp
B=$(mktemp -d "${TMPDIR:-/tmp}/gemm-bench.XXXXXX")
trap 'rm -rf "$B"' EXIT
# CLOCK=cpu: time by process CPU time (on one thread, the time this process ran: the ratios
# survive a machine shared with other work; with threads, idle spinning counts too).
if [ "${CLOCK:-wall}" = cpu ]; then
    printf '#define _POSIX_C_SOURCE 199309L\n#include <time.h>\nstatic double af_bench_cpu_seconds(void) { struct timespec ts; clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts); return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec; }\n' > "$B/clock.h"
    CFLAGS_EXTRA="${CFLAGS_EXTRA:-} -DAF_PEAK_CLOCK=af_bench_cpu_seconds"
else
    : > "$B/clock.h"
fi
cat "$B/clock.h" "$P/common.h" "$P/elementwise.h" "$P/conversions.h" "$P/norms.h" "$P/gemm.h" "$HERE/main.c" > "$B/bench.c"
gcc -std=c11 -O3 -march=${MARCH:-native} -fopenmp -fno-math-errno -Wno-unused-function ${CFLAGS_EXTRA:-} -I$OB_INC \
    -o "$B/gemm-bench" "$B/bench.c" $OB_LIB/libopenblas.so.0 -Wl,-rpath,$OB_LIB -lm
"$B/gemm-bench" "$@"
