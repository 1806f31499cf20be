/* gemm_int8.h: GEMM over int8 weight panels (the weights quantize-weights marked).
 *
 * C[M, N] = act(A[M, K] . B + bias[N]) where B = q . s is stored symmetric int8: for output
 * column n and group b of g consecutive k (g = K: one scale per output channel; g = 32: blocks
 * of 32 along K), s[b][n] = max |B[k][n]| / 127 over the group and q[k][n] = round(B[k][n] / s)
 * (Swift: quantizeInt8Group, packWeightPanels).  Panel p holds columns p*32 .. p*32+31:
 *     scales  nb = ceil(K / g) rows of 32 floats (row b: the scales of group b),
 *     q       K rows of 32 int8, zero past N, padded to a multiple of 64 bytes;
 * panels follow each other, af_i8_panel_bytes(K, g) apart.  A quarter of f32's bytes (plus
 * 1/8 for g = 32).
 *
 * The arithmetic is gemm.h's f32 GEMM on the values q * s (exactly what the interpreter
 * computes), with its blocking, threads and fused store: each thread expands the K block of a
 * panel it is about to use into f32 strips (af__i8_unpack: kc x 32 floats, 32 KB, or 64 KB at AVX2's kc; in L1/L2) and every row tile of
 * its row block reads them (on AVX2 one row block holds all of M, so each weight is expanded once
 * per GEMM: gemm.h's AF_GEMM_WOUTER).  Measured on the width-768 FLUX model, a kernel of its own that
 * converted weights in registers for every 12-row tile ran the NFE at 0.77x f32's speed: the
 * conversions competed with the FMAs for the same ports.
 */
#ifndef ARCFLOW_GEMM_INT8_H
#define ARCFLOW_GEMM_INT8_H

#define AF_I8_NR 32

/* Bytes of one panel: the scales, then K rows of int8 padded to 64 bytes. */
AF__INLINE long af_i8_panel_bytes(long K, long g) {
    const long groups = (K + g - 1) / g;
    return groups * AF_I8_NR * (long)sizeof(float) + (K * AF_I8_NR + 63) / 64 * 64;
}

/* Rows k0 .. k0+kc-1 of int8 panel p as f32 q * s, in the kernels' strips (an af__gemm_panel_fn).
 * Group by group, so the scales' row is found without an integer division per row (g is a
 * run-time value); same values, no speed difference measured (`DT=4 ab.sh`: 0.99-1.03). */
static void af__i8_unpack(const void *restrict b, long p, long K, long g, long k0, long kc, float *restrict out) {
    const char *panel = (const char *)b + p * af_i8_panel_bytes(K, g);
    const float *s = (const float *)(const void *)panel;
    const int8_t *q = (const int8_t *)(panel + (K + g - 1) / g * AF_I8_NR * (long)sizeof(float));
    for (long k = k0, grp = k0 / g; k < k0 + kc; grp++) {
        const long ke = (grp + 1) * g < k0 + kc ? (grp + 1) * g : k0 + kc;
        const float *sk = s + grp * AF_I8_NR;
        for (; k < ke; k++) {
            const int8_t *qk = q + k * AF_I8_NR;
            for (int s0 = 0; s0 < AF_I8_NR; s0 += AF_GEMM_STRIP) {
                float *o = out + af__strip_at(s0, k - k0, kc);
#pragma omp simd
                for (int j = 0; j < AF_GEMM_STRIP; j++) o[j] = (float)qk[s0 + j] * sk[s0 + j];
            }
        }
    }
}

/* C[M, N] (row stride ldc) = act(A[M, K] (row stride lda) . B + bias), B int8 panels with
 * groups of g along K (g = K: per output channel) as described above; bias nullable; act an
 * AF_GEMM_ACT_*.  Opens its own parallel region above ~1 MFLOP.  One row: af__gemv_i8. */
AF__API void af_gemm_packed_int8(const float *restrict a, long lda, const void *restrict b, long g,
                                 const float *restrict bias, int act, float *restrict c, long ldc,
                                 long M, long N, long K) {
    if (M == 1 && N > 0 && K > 0) af__gemv_i8(a, b, af_i8_panel_bytes(K, g), g, bias, act, c, N, K); /* gemm.h */
    else af__gemm_packed_blocks(a, lda, b, 0, bias, act, c, ldc, M, N, K, g, af__i8_unpack);
}

#endif /* ARCFLOW_GEMM_INT8_H */
