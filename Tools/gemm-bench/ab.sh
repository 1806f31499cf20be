#!/bin/sh
# gemm-ab: two builds of the packed f32 GEMM (or, KERNEL=attention, the fused attention) in one
# process, alternated (ab.c says why).
#   Tools/gemm-bench/ab.sh [THREADS [REPS [NC [M N K | S H D]...]]]
# A is the prelude (Sources/Codegen/Prelude) at git revision ${BASE:-HEAD}, B the working tree's;
# FLAGS_A / FLAGS_B add compiler flags to one side (e.g. FLAGS_B=-DAF_GEMM_TPT=2 with no edit: a
# blocking constant).  Defaults: 2 threads, 60 repetitions, 16 weight copies (panels streamed from
# memory, as in a model), the width-768 model shapes: 64 text rows and 256 / 1024 image rows
# (attention: S = 320 and 1088, 12 heads of 64).  DT=3: bf16 compute; DT=4: int8 panels (groups of 32).  TOL=1e-6: B may round
# differently from A by that relative L2.  CLOCK=cpu: time by process CPU time (THREADS=1 on a
# machine shared with other work: the time this process ran).
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
P="$ROOT/Sources/Codegen/Prelude"
B=$(mktemp -d "${TMPDIR:-/tmp}/gemm-ab.XXXXXX")
trap 'rm -rf "$B"' EXIT
THREADS=${1:-2}; REPS=${2:-60}; NC=${3:-16}
[ $# -ge 3 ] && shift 3 || set --
if [ $# -eq 0 ]; then
    if [ "${KERNEL:-gemm}" = attention ]; then set -- 320 12 64 1088 12 64
    else set -- 64 768 768 64 3072 768 64 768 3072 256 768 768 256 3072 768 256 768 3072 1024 768 768 1024 3072 768; fi
fi
FAMILIES="common.h elementwise.h conversions.h norms.h gemm.h gemm_int8.h attention.h"
mkdir -p "$B/a"
for f in $FAMILIES; do git -C "$ROOT" show "${BASE:-HEAD}:Sources/Codegen/Prelude/$f" > "$B/a/$f"; done
# Each side defines both entry points (gemm_ab_X, attn_ab_X); ab.c calls the pair KERNEL names.
WRAP='void gemm_ab_SIDE(const float *a, long lda, const void *b, int dt, float *c, long ldc, long M, long N, long K) {
    if (dt == 4) af_gemm_packed_int8(a, lda, b, 32, NULL, AF_GEMM_ACT_NONE, c, ldc, M, N, K);
    else af_gemm_packed(a, lda, b, dt, NULL, AF_GEMM_ACT_NONE, c, ldc, M, N, K);
}
/* the columns per strip of the packed panels this side reads (whole rows of 32 before strips) */
#ifdef AF_GEMM_STRIP
int strip_ab_SIDE(void) { return AF_GEMM_STRIP; }
#else
int strip_ab_SIDE(void) { return 32; }
#endif
void attn_ab_SIDE(const float *q, const float *k, const float *v, float *out, long B, long Sq, long Sk, long H, long D, float scale) { af_attention(q, k, v, out, B, Sq, Sk, H, D, scale); }'
for side in a b; do
    D=$P; [ $side = a ] && D=$B/a
    { for f in $FAMILIES; do cat "$D/$f"; done; echo "$WRAP" | sed "s/SIDE/$side/g"; } > "$B/v$side.c"
done
CF="-std=c11 -O3 -march=${MARCH:-native} -fopenmp -fno-math-errno -Wno-unused-function"
gcc $CF ${FLAGS_A:-} -c "$B/va.c" -o "$B/va.o"
gcc $CF ${FLAGS_B:-} -c "$B/vb.c" -o "$B/vb.o"
gcc $CF $([ "${CLOCK:-wall}" = cpu ] && echo -DAB_CPU_CLOCK) -o "$B/gemm-ab" "$HERE/ab.c" "$B/va.o" "$B/vb.o" -lm
"$B/gemm-ab" "$THREADS" "$REPS" "$NC" "$@"
