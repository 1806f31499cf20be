/* gemm_int8.h: GEMM over int8 weight panels (the weights quantize-weights marked).
 *
 * C[M, N] = act(A[M, K] . B + bias[N]) where B = q . s is stored symmetric int8: for output
 * column n and group b of g consecutive k (g = K: one scale per output channel; g = 32: blocks
 * of 32 along K), s[b][n] = max |B[k][n]| / 127 over the group and q[k][n] = round(B[k][n] / s)
 * (Swift: quantizeInt8Group, packWeightPanels).  Panel p holds columns p*32 .. p*32+31:
 *     scales  nb = ceil(K / g) rows of 32 floats (row b: the scales of group b),
 *     q       K rows of 32 int8, zero past N, padded to a multiple of 64 bytes;
 * panels follow each other, af_i8_panel_bytes(K, g) apart.  A quarter of f32's bytes (plus
 * 1/8 for g = 32), dequantized in registers: each panel row is sign-extended, converted and
 * multiplied by its group's scale once, then used by every row of the register tile, so the
 * arithmetic is the f32 GEMM on the values q * s (exactly what the interpreter computes) with
 * f32 accumulation.
 *
 * Register tile: AF__QMR rows x AF__QW columns in AF__QMR * 2 vector accumulators over a K
 * block of AF_I8_KC (a multiple of 32, so blocks of 32 never straddle it).  AVX-512: 12 x 32
 * (24 zmm accumulators + 2 weight + 2 scale vectors + 1 broadcast); AVX2: 4 x 16 (8 ymm + 2 +
 * 2 + 1); portable: scalars, 4 x 8.  Threads take (AF_I8_MB-row block, AF_I8_NG-panel group)
 * tiles; each C element is summed by one thread in one order: results do not depend on the
 * thread count.  Self-contained (its own blocking and store) so gemm.h can change freely.
 */
#ifndef ARCFLOW_GEMM_INT8_H
#define ARCFLOW_GEMM_INT8_H

#define AF_I8_NR 32
#define AF_I8_KC 256L
#define AF_I8_MB 96L
#define AF_I8_NG 4L

#ifndef AF_GEMM_ACT_NONE
#define AF_GEMM_ACT_NONE 0
#define AF_GEMM_ACT_GELU_TANH 1
#define AF_GEMM_ACT_SILU 2
#endif

#if defined(__AVX512F__)
typedef __m512 af__qv;
#define AF__QVW 16
#define AF__QMR 12
#define af__qzero() _mm512_setzero_ps()
#define af__qld(p) _mm512_loadu_ps(p)
#define af__qst(p, v) _mm512_storeu_ps((p), (v))
#define af__qmul(a, b) _mm512_mul_ps((a), (b))
#define af__qfma(a, b, c) _mm512_fmadd_ps((a), (b), (c))
#define af__qset1(x) _mm512_set1_ps(x)
#define af__qld_i8(p) _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(const void *)(p))))
#elif defined(__AVX2__) && defined(__FMA__)
typedef __m256 af__qv;
#define AF__QVW 8
#define AF__QMR 4
#define af__qzero() _mm256_setzero_ps()
#define af__qld(p) _mm256_loadu_ps(p)
#define af__qst(p, v) _mm256_storeu_ps((p), (v))
#define af__qmul(a, b) _mm256_mul_ps((a), (b))
#define af__qfma(a, b, c) _mm256_fmadd_ps((a), (b), (c))
#define af__qset1(x) _mm256_set1_ps(x)
#define af__qld_i8(p) _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)(p))))
#else
typedef float af__qv;
#define AF__QVW 1
#define AF__QMR 4
#define af__qzero() 0.0f
#define af__qld(p) (*(p))
#define af__qst(p, v) (*(p) = (v))
#define af__qmul(a, b) ((a) * (b))
#define af__qfma(a, b, c) AF__FMA((a), (b), (c))
#define af__qset1(x) (x)
#define af__qld_i8(p) ((float)*(p))
#endif

#if AF__QVW == 1
#define AF__QNV 8
#else
#define AF__QNV 2
#endif
#define AF__QW (AF__QNV * AF__QVW) /* columns of one register tile; divides AF_I8_NR */

/* Bytes of one panel: the scales, then K rows of int8 padded to 64 bytes. */
AF__INLINE long af_i8_panel_bytes(long K, long g) {
    const long groups = (K + g - 1) / g;
    return groups * AF_I8_NR * (long)sizeof(float) + (K * AF_I8_NR + 63) / 64 * 64;
}

/* Store of one tile (mr rows of AF__QW floats in t) into c: written at the first K block,
 * accumulated after; with the last, bias (nullable) and activation while the rows are in L1. */
static void af__i8_store(const float *restrict t, int mr, float *restrict c, long ldc, long ncols, int first,
                         int last, const float *restrict bias, int act) {
    for (int r = 0; r < mr; r++) {
        const float *tr = t + r * AF__QW;
        float *cr = c + r * ldc;
        for (long j = 0; j < ncols; j++) {
            float x = first ? tr[j] : cr[j] + tr[j];
            if (last) {
                if (bias) x += bias[j];
                if (act == AF_GEMM_ACT_GELU_TANH) x = af_gelu_tanh(x);
                else if (act == AF_GEMM_ACT_SILU) x = af_silu(x);
            }
            cr[j] = x;
        }
    }
}

/* One register tile over k in [k0, k0 + kc): a points at row 0 of A (k absolute), q at the
 * panel's int8 rows and s at its scales, both offset to this tile's first column. */
AF__INLINE void af__i8_tile(const int mr, long k0, long kc, long g, const float *restrict a, long lda,
                            const int8_t *restrict q, const float *restrict s, float *restrict c, long ldc,
                            long ncols, int first, int last, const float *restrict bias, int act) {
    af__qv acc[AF__QMR][AF__QNV];
#pragma GCC unroll 16
    for (int r = 0; r < mr; r++)
#pragma GCC unroll 8
        for (int v = 0; v < AF__QNV; v++) acc[r][v] = af__qzero();
    for (long k = k0; k < k0 + kc;) {
        const long group = k / g, end = (group + 1) * g < k0 + kc ? (group + 1) * g : k0 + kc;
        af__qv sv[AF__QNV];
#pragma GCC unroll 8
        for (int v = 0; v < AF__QNV; v++) sv[v] = af__qld(s + group * AF_I8_NR + v * AF__QVW);
        for (; k < end; k++) {
            af__qv bv[AF__QNV];
#pragma GCC unroll 8
            for (int v = 0; v < AF__QNV; v++) bv[v] = af__qmul(af__qld_i8(q + k * AF_I8_NR + v * AF__QVW), sv[v]);
#pragma GCC unroll 16
            for (int r = 0; r < mr; r++) {
                const af__qv av = af__qset1(a[r * lda + k]);
#pragma GCC unroll 8
                for (int v = 0; v < AF__QNV; v++) acc[r][v] = af__qfma(av, bv[v], acc[r][v]);
            }
        }
    }
    float t[AF__QMR * AF__QW];
#pragma GCC unroll 16
    for (int r = 0; r < mr; r++)
#pragma GCC unroll 8
        for (int v = 0; v < AF__QNV; v++) af__qst(t + r * AF__QW + v * AF__QVW, acc[r][v]);
    af__i8_store(t, mr, c, ldc, ncols, first, last, bias, act);
}

/* af__i8_tile with mr a constant at each call: the row and vector loops unroll. */
#define AF__I8_CASE(MR) case MR: af__i8_tile(MR, k0, kc, g, a, lda, q, s, c, ldc, ncols, first, last, bias, act); break;
static void af__i8_rows(int mr, long k0, long kc, long g, const float *restrict a, long lda, const int8_t *restrict q,
                        const float *restrict s, float *restrict c, long ldc, long ncols, int first, int last,
                        const float *restrict bias, int act) {
    switch (mr) {
    AF__I8_CASE(1) AF__I8_CASE(2) AF__I8_CASE(3) AF__I8_CASE(4)
#if AF__QMR == 12
    AF__I8_CASE(5) AF__I8_CASE(6) AF__I8_CASE(7) AF__I8_CASE(8) AF__I8_CASE(9) AF__I8_CASE(10) AF__I8_CASE(11)
    AF__I8_CASE(12)
#endif
    default: break;
    }
}
#undef AF__I8_CASE

/* C[M, N] (row stride ldc) = act(A[M, K] (row stride lda) . B + bias), B int8 panels with
 * groups of g along K (g = K: per output channel) as described above; bias nullable; act an
 * AF_GEMM_ACT_*.  Opens its own parallel region above ~1 MFLOP. */
static AF__UNUSED void af_gemm_packed_int8(const float *restrict a, long lda, const void *restrict b, long g,
                                           const float *restrict bias, int act, float *restrict c, long ldc,
                                           long M, long N, long K) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) { af_gemm_empty_k(bias, act, c, ldc, M, N); return; }
    const long panels = (N + AF_I8_NR - 1) / AF_I8_NR, stride = af_i8_panel_bytes(K, g);
    const long scales = (K + g - 1) / g * AF_I8_NR * (long)sizeof(float);
    const long mblocks = (M + AF_I8_MB - 1) / AF_I8_MB, groups = (panels + AF_I8_NG - 1) / AF_I8_NG;
    const int par = (double)M * (double)N * (double)K >= 1e6 && mblocks * groups > 1;
#pragma omp parallel for collapse(2) schedule(dynamic, 1) if (par)
    for (long mb = 0; mb < mblocks; mb++)
        for (long pg = 0; pg < groups; pg++) {
            const long i0 = mb * AF_I8_MB, i1 = M < i0 + AF_I8_MB ? M : i0 + AF_I8_MB;
            const long p0 = pg * AF_I8_NG, p1 = panels < p0 + AF_I8_NG ? panels : p0 + AF_I8_NG;
            for (long k0 = 0; k0 < K; k0 += AF_I8_KC) {
                const long kc = K - k0 < AF_I8_KC ? K - k0 : AF_I8_KC;
                for (long p = p0; p < p1; p++) {
                    const char *panel = (const char *)b + p * stride;
                    for (long j0 = p * AF_I8_NR; j0 < N && j0 < (p + 1) * AF_I8_NR; j0 += AF__QW) {
                        const long col = j0 - p * AF_I8_NR, ncols = N - j0 < AF__QW ? N - j0 : AF__QW;
                        const float *s = (const float *)(const void *)panel + col;
                        const int8_t *q = (const int8_t *)(panel + scales) + col;
                        for (long i = i0; i < i1; i += AF__QMR) {
                            const int mr = i1 - i < AF__QMR ? (int)(i1 - i) : AF__QMR;
                            af__i8_rows(mr, k0, kc, g, a + i * lda, lda, q, s, c + i * ldc + j0, ldc, ncols, k0 == 0,
                                        k0 + kc == K, bias ? bias + j0 : NULL, act);
                        }
                    }
                }
            }
        }
}

#endif /* ARCFLOW_GEMM_INT8_H */
