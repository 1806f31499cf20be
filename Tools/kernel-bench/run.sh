#!/bin/sh
# kernel-bench: accuracy checks and benchmarks for the arcflow kernel prelude
# (Sources/Codegen/Prelude/*.h, one file per kernel family).
#
#   Tools/kernel-bench/run.sh [--quick] [--acc-only] [--bench-only] [--only=math,conv,rows,attn]
#
# Steps
#   1. kernels.c / kernels2.c get the prelude text prepended (as the code generator does) and
#      are built into one .so with the generator's exact command (two TUs: the prelude must
#      link twice into one library without clashes).
#   2. warning checks: the same TU with -Wall -Wextra -Werror for gcc and, if available,
#      clang, each for -march=native, x86-64-v3 (AVX2 path) and x86-64 (portable path).
#   3. main.c (the driver) is built and run: it dlopens the library, prints accuracy tables
#      (PASS/FAIL) and the benchmarks.
#   4. unless --bench-only: the accuracy suite again (quick) against libraries built for
#      x86-64-v3 and x86-64, to cover the AVX2 and portable code paths.
# Exit status is non-zero if a warning check or an accuracy check fails.
#
# Environment: OMP_NUM_THREADS (threads for kernels and benchmarks), BUILD_DIR (default: a
# temporary directory, removed afterwards), CLANG (default /opt/swift/usr/bin/clang),
# CLANG_OMP_INC (default /usr/lib/llvm-14/lib/clang/14.0.6/include).
# Benchmarks are best-of-N wall-clock times; run on an otherwise idle machine.
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
P="$ROOT/Sources/Codegen/Prelude"
# The families in the generator's order (CCodegen.preludeFamilies).
PRELUDE="$P/common.h $P/elementwise.h $P/conversions.h $P/norms.h $P/gemm.h $P/attention.h $P/autodiff.h"
OB_INC=/usr/include/x86_64-linux-gnu/openblas-pthread
OB_LIB=/usr/lib/x86_64-linux-gnu/openblas-openmp
CLANG=${CLANG:-/opt/swift/usr/bin/clang}
CLANG_OMP_INC=${CLANG_OMP_INC:-/usr/lib/llvm-14/lib/clang/14.0.6/include}

if [ -n "${BUILD_DIR:-}" ]; then
    B=$BUILD_DIR
    mkdir -p "$B"
else
    B=$(mktemp -d "${TMPDIR:-/tmp}/kernel-bench.XXXXXX")
    trap 'rm -rf "$B"' EXIT
fi

ACC=1
for a in "$@"; do [ "$a" = "--bench-only" ] && ACC=0; done

cat $PRELUDE "$HERE/kernels.c" > "$B/a.c"
cat $PRELUDE "$HERE/kernels2.c" > "$B/b.c"

# 1. the generator's build command (kernel library)
build_lib() { # $1 = output, $2 = -march value
    gcc -std=c11 -O3 -march="$2" -fopenmp -fno-math-errno -fPIC -shared -I$OB_INC \
        -o "$1" "$B/a.c" "$B/b.c" $OB_LIB/libopenblas.so.0 -Wl,-rpath,$OB_LIB -lm
}
echo "== build: gcc -std=c11 -O3 -march=native -fopenmp -fno-math-errno -fPIC -shared ..."
build_lib "$B/lib.so" native

# 2. warnings
status=0
echo "== warning checks (-Wall -Wextra -Werror)"
for arch in native x86-64-v3 x86-64; do
    if gcc -std=c11 -O3 -march=$arch -fopenmp -fno-math-errno -fPIC -Wall -Wextra -Werror \
        -I$OB_INC -c "$B/a.c" -o "$B/w.o"; then
        echo "  gcc   -march=$arch: clean"
    else
        echo "  gcc   -march=$arch: FAIL"; status=1
    fi
    if [ -x "$CLANG" ]; then
        if "$CLANG" -std=c11 -O3 -march=$arch -fopenmp -fno-math-errno -fPIC -Wall -Wextra \
            -Werror -I"$CLANG_OMP_INC" -I$OB_INC -c "$B/a.c" -o "$B/w.o"; then
            echo "  clang -march=$arch: clean"
        else
            echo "  clang -march=$arch: FAIL"; status=1
        fi
    fi
done

# 3. driver
gcc -std=c11 -O2 -march=native -fopenmp -Wall -Wextra -o "$B/kbench" "$HERE/main.c" -ldl -lm
"$B/kbench" "$B/lib.so" "$@" || status=1

# 4. the AVX2 and portable paths
if [ $ACC = 1 ]; then
    for arch in x86-64-v3 x86-64; do
        echo
        echo "== accuracy with the kernel library built for -march=$arch"
        build_lib "$B/lib_$arch.so" $arch
        if "$B/kbench" "$B/lib_$arch.so" --acc-only --quick > "$B/acc_$arch.txt"; then
            tail -n 1 "$B/acc_$arch.txt"
        else
            grep -E "FAIL" "$B/acc_$arch.txt" || true
            status=1
        fi
    done
fi

echo
[ $status = 0 ] && echo "kernel-bench: ALL CHECKS PASSED" || echo "kernel-bench: SOME CHECKS FAILED"
exit $status
