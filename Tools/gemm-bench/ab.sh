#!/bin/sh
# gemm-ab: two builds of the packed f32 GEMM in one process, alternated (ab.c says why).
#   Tools/gemm-bench/ab.sh [THREADS [REPS [NC [M N K]...]]]
# A is Prelude/gemm.h at git revision ${BASE:-HEAD}, B the working tree's; FLAGS_A / FLAGS_B add
# compiler flags to one side (e.g. FLAGS_B=-DAF_GEMM_TPT=2 with no edit: a blocking constant).
# Defaults: 2 threads, 60 repetitions, 16 weight copies (panels streamed from memory, as in a
# model), the width-768 model shapes: 64 text rows and 256 / 1024 image rows. DT=3: bf16 compute.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
P="$ROOT/Sources/Codegen/Prelude"
B=$(mktemp -d "${TMPDIR:-/tmp}/gemm-ab.XXXXXX")
trap 'rm -rf "$B"' EXIT
THREADS=${1:-2}; REPS=${2:-60}; NC=${3:-16}
[ $# -ge 3 ] && shift 3 || set --
[ $# -gt 0 ] || set -- 64 768 768 64 3072 768 64 768 3072 256 768 768 256 3072 768 256 768 3072 1024 768 768 1024 3072 768
git -C "$ROOT" show "${BASE:-HEAD}:Sources/Codegen/Prelude/gemm.h" > "$B/gemm_a.h"
WRAP='void VNAME(const float *a, long lda, const void *b, int dt, float *c, long ldc, long M, long N, long K) { af_gemm_packed(a, lda, b, dt, NULL, AF_GEMM_ACT_NONE, c, ldc, M, N, K); }'
for side in a b; do
    G=$P/gemm.h; [ $side = a ] && G=$B/gemm_a.h
    { cat "$P/common.h" "$P/elementwise.h" "$P/conversions.h" "$P/norms.h" "$G"; echo "$WRAP"; } > "$B/v$side.c"
done
CF="-std=c11 -O3 -march=${MARCH:-native} -fopenmp -fno-math-errno -Wno-unused-function"
gcc $CF ${FLAGS_A:-} -DVNAME=gemm_ab_a -c "$B/va.c" -o "$B/va.o"
gcc $CF ${FLAGS_B:-} -DVNAME=gemm_ab_b -c "$B/vb.c" -o "$B/vb.o"
gcc $CF -o "$B/gemm-ab" "$HERE/ab.c" "$B/va.o" "$B/vb.o" -lm
"$B/gemm-ab" "$THREADS" "$REPS" "$NC" "$@"
