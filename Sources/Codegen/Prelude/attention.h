/* arcflow prelude, fused attention (needs common.h, elementwise.h). */
#ifndef ARCFLOW_ATTENTION_H
#define ARCFLOW_ATTENTION_H

/* ======================================================================================
 * Attention (flash-attention style, streaming softmax)
 *
 * Work unit: one (b, h, query tile of AF__QB = 64 queries).  Everything is computed
 * transposed, "vector over queries":
 *   QT[d][i] = q[i, d]                            packed once per query tile (D x 64)
 *   ST[j][i] = sum_d K[j][d] * QT[d][i]           micro-kernel 1 (K read in place)
 *   online softmax per query lane i               (no horizontal reductions at all)
 *   OT[d][i] = alpha[i]*OT[d][i] + sum_j V[j][d] * PT[j][i]   micro-kernel 2 (V in place)
 *   out[i, d] = OT[d][i] / l[i]                   transposed back once per query tile
 * Both GEMMs have the same shape: broadcast one element of a row-major K/V row and FMA it
 * into 64-query vectors, so K and V are used directly from the [B,S,H,D] layout (no
 * packing, no transposes, any D works: D is only a loop length) and the 16-wide FMAs
 * always run full.  Register tile: AF__RK (6) rows x 64 queries = 24 zmm accumulators on
 * AVX-512 (+4 query vectors +1 broadcast = 29 of 32 registers), 6 x 16 = 12 ymm on AVX2.
 * Measured alternatives (see Tools/kernel-bench): per-tile cblas_sgemm reaches ~0.8x
 * sgemm speed, these micro-kernels ~1.4-1.6x (OpenBLAS runs AVX2 kernels on this CPU).
 * Key tile AF__KT = 256: ST is 256 x 64 floats = 64 KB (L2), the online-softmax rescale
 * happens once per 256 keys; 128 and 512 measured the same within noise.  Within a key
 * tile, exp and the PV product run per chunk of AF__PVC = 64 keys so the chunk of P is
 * still in L1, and each chunk's PV sum starts from zero in registers (better accuracy,
 * see af__mk_pv).  Per-thread memory: (2*D + KT + 8 + PVC/2) * 64 floats, independent of Sq/Sk.
 *
 * bf16 compute (af_attention_bf16, `--compute bf16`): both products take bf16 pairs and sum in
 * f32 with vdpbf16ps, two terms per instruction.  K and V are converted once per call: K as
 * pairs along d ([B, Sk, H, ceil(D/2)] words), V as pairs of consecutive keys ([B, ceil(Sk/2),
 * H, D]); the query tile as pairs along d, each chunk of P as pairs of consecutive keys.  So the
 * micro-kernels are the f32 ones with a 32-bit pair broadcast where a float was, and every
 * index stays in 4-byte units.  Scores, the softmax, its sums and the output stay f32.
 * ==================================================================================== */

#define AF__QB 64
#define AF__KT 256
#define AF__RK 6
#define AF__PVC 64

#if defined(__AVX512F__)
typedef __m512 af__vec;
#define AF__VW 16
#define af__vld(p) _mm512_loadu_ps(p)
#define af__vst(p, a) _mm512_storeu_ps((p), (a))
#define af__vset1(x) _mm512_set1_ps(x)
#define af__vfma(a, b, c) _mm512_fmadd_ps((a), (b), (c))
#define af__vmul(a, b) _mm512_mul_ps((a), (b))
#define af__vadd(a, b) _mm512_add_ps((a), (b))
#define af__vmax(a, b) _mm512_max_ps((a), (b))
#define af__vzero() _mm512_setzero_ps()
#elif defined(__AVX2__) && defined(__FMA__)
typedef __m256 af__vec;
#define AF__VW 8
#define af__vld(p) _mm256_loadu_ps(p)
#define af__vst(p, a) _mm256_storeu_ps((p), (a))
#define af__vset1(x) _mm256_set1_ps(x)
#define af__vfma(a, b, c) _mm256_fmadd_ps((a), (b), (c))
#define af__vmul(a, b) _mm256_mul_ps((a), (b))
#define af__vadd(a, b) _mm256_add_ps((a), (b))
#define af__vmax(a, b) _mm256_max_ps((a), (b))
#define af__vzero() _mm256_setzero_ps()
#elif defined(__GNUC__) || defined(__clang__)
/* portable fallback: GNU vector extension, 4 floats (SSE2 on x86-64, NEON on aarch64) */
typedef float af__vec __attribute__((vector_size(16)));
#define AF__VW 4
AF__INLINE af__vec af__vld_(const float *p) { af__vec v; memcpy(&v, p, sizeof v); return v; }
AF__INLINE af__vec af__vmax_(af__vec a, af__vec b) {
    for (int i = 0; i < 4; i++) a[i] = a[i] > b[i] ? a[i] : b[i];
    return a;
}
#define af__vld(p) af__vld_(p)
#define af__vst(p, a) do { af__vec t_ = (a); memcpy((p), &t_, sizeof t_); } while (0)
#define af__vset1(x) (af__vec){(x), (x), (x), (x)}
#define af__vfma(a, b, c) ((a) * (b) + (c))
#define af__vmul(a, b) ((a) * (b))
#define af__vadd(a, b) ((a) + (b))
#define af__vmax(a, b) af__vmax_((a), (b))
#define af__vzero() (af__vec){0.0f, 0.0f, 0.0f, 0.0f}
#else
typedef float af__vec; /* other compilers: "vectors" of one float */
#define AF__VW 1
#define af__vld(p) (*(p))
#define af__vst(p, a) (*(p) = (a))
#define af__vset1(x) (x)
#define af__vfma(a, b, c) ((a) * (b) + (c))
#define af__vmul(a, b) ((a) * (b))
#define af__vadd(a, b) ((a) + (b))
#define af__vmax(a, b) ((a) > (b) ? (a) : (b))
#define af__vzero() 0.0f
#endif

/* query vectors per register tile: 4x16 on AVX-512 (32 zmm registers), 2x8 on AVX2 and
 * 2x4 with vector extensions (16 registers: 12 accumulators + 2 loads + 1 broadcast),
 * 8 scalars otherwise */
#if AF__VW == 16
#define AF__NV 4
#elif AF__VW == 8 || AF__VW == 4
#define AF__NV 2
#else
#define AF__NV 8
#endif
#define AF__CB (AF__NV * AF__VW) /* query columns per register tile; divides AF__QB */

#if defined(__AVX512BF16__) && AF__VW == 16
#define AF__ATTN_DP 1 /* bf16 pair products available (af_attention_bf16) */
#else
#define AF__ATTN_DP 0
#endif

/* Micro-kernel 1: st[r][c] = sum_d a[r*lda + d] * b[d*AF__QB + c] for r < R (R <= AF__RK,
 * a compile-time constant after inlining), c < AF__CB; mx[c] = max(mx[c], st[r][c]).
 * dp: a and b hold bf16 pairs, d runs over pairs (see the header). */
AF__INLINE void af__mk_qk(const float *restrict a, long lda, const float *restrict b, long D,
                          float *restrict st, float *restrict mx, const int R, const int dp) {
    af__vec c[AF__RK][AF__NV];
    for (int r = 0; r < R; r++)
        for (int v = 0; v < AF__NV; v++) c[r][v] = af__vzero();
#if AF__ATTN_DP
    if (dp)
        for (long d = 0; d < D; d++) {
            __m512bh bv[AF__NV];
            for (int v = 0; v < AF__NV; v++) bv[v] = (__m512bh)_mm512_loadu_si512((const void *)(b + d * AF__QB + v * AF__VW));
            for (int r = 0; r < R; r++) {
                const __m512bh av = (__m512bh)_mm512_set1_epi32((int)((const uint32_t *)(const void *)a)[r * lda + d]);
                for (int v = 0; v < AF__NV; v++) c[r][v] = _mm512_dpbf16_ps(c[r][v], av, bv[v]);
            }
        }
    else
#else
    (void)dp;
#endif
    for (long d = 0; d < D; d++) {
        af__vec bv[AF__NV];
        for (int v = 0; v < AF__NV; v++) bv[v] = af__vld(b + d * AF__QB + v * AF__VW);
        for (int r = 0; r < R; r++) {
            af__vec av = af__vset1(a[r * lda + d]);
            for (int v = 0; v < AF__NV; v++) c[r][v] = af__vfma(av, bv[v], c[r][v]);
        }
    }
    for (int v = 0; v < AF__NV; v++) {
        af__vec m = af__vld(mx + v * AF__VW);
        for (int r = 0; r < R; r++) {
            af__vst(st + r * AF__QB + v * AF__VW, c[r][v]);
            m = af__vmax(m, c[r][v]);
        }
        af__vst(mx + v * AF__VW, m);
    }
}

/* Micro-kernel 2: ot[r][c] = (al ? al[c]*ot[r][c] : ot[r][c]) + sum_{j<kt} a[j*lda + r] * p[j*AF__QB + c]
 * for r < R, c < AF__CB.  The sum over the kt (<= AF__PVC) keys of one chunk starts from
 * zero in registers and is added to ot once: the running output is then a sum of chunk
 * sums, whose rounding error grows with sqrt(chunk) + sqrt(Sk/chunk) instead of sqrt(Sk).
 * dp: a and p hold bf16 pairs of consecutive keys, j runs over pairs. */
AF__INLINE void af__mk_pv(const float *restrict a, long lda, const float *restrict p, long kt,
                          float *restrict ot, const float *restrict al, const int R, const int dp) {
    af__vec c[AF__RK][AF__NV];
    for (int r = 0; r < R; r++)
        for (int v = 0; v < AF__NV; v++) c[r][v] = af__vzero();
#if AF__ATTN_DP
    if (dp)
        for (long j = 0; j < kt; j++) {
            __m512bh pv[AF__NV];
            for (int v = 0; v < AF__NV; v++) pv[v] = (__m512bh)_mm512_loadu_si512((const void *)(p + j * AF__QB + v * AF__VW));
            for (int r = 0; r < R; r++) {
                const __m512bh av = (__m512bh)_mm512_set1_epi32((int)((const uint32_t *)(const void *)a)[j * lda + r]);
                for (int v = 0; v < AF__NV; v++) c[r][v] = _mm512_dpbf16_ps(c[r][v], av, pv[v]);
            }
        }
    else
#else
    (void)dp;
#endif
    for (long j = 0; j < kt; j++) {
        af__vec pv[AF__NV];
        for (int v = 0; v < AF__NV; v++) pv[v] = af__vld(p + j * AF__QB + v * AF__VW);
        for (int r = 0; r < R; r++) {
            af__vec av = af__vset1(a[j * lda + r]);
            for (int v = 0; v < AF__NV; v++) c[r][v] = af__vfma(av, pv[v], c[r][v]);
        }
    }
    if (al) {
        for (int v = 0; v < AF__NV; v++) {
            af__vec sc = af__vld(al + v * AF__VW);
            for (int r = 0; r < R; r++)
                af__vst(ot + r * AF__QB + v * AF__VW,
                        af__vfma(sc, af__vld(ot + r * AF__QB + v * AF__VW), c[r][v]));
        }
    } else {
        for (int r = 0; r < R; r++)
            for (int v = 0; v < AF__NV; v++)
                af__vst(ot + r * AF__QB + v * AF__VW,
                        af__vadd(af__vld(ot + r * AF__QB + v * AF__VW), c[r][v]));
    }
}

/* Instantiate the micro-kernels for every row count 1..AF__RK (remainders of kt and D). */
static void af__qk_rows(const float *restrict a, long lda, const float *restrict b, long D,
                        float *restrict st, float *restrict mx, long rows, int dp) {
    long r = 0;
    for (; r + AF__RK <= rows; r += AF__RK)
        af__mk_qk(a + r * lda, lda, b, D, st + r * AF__QB, mx, AF__RK, dp);
    switch (rows - r) {
    case 5: af__mk_qk(a + r * lda, lda, b, D, st + r * AF__QB, mx, 5, dp); break;
    case 4: af__mk_qk(a + r * lda, lda, b, D, st + r * AF__QB, mx, 4, dp); break;
    case 3: af__mk_qk(a + r * lda, lda, b, D, st + r * AF__QB, mx, 3, dp); break;
    case 2: af__mk_qk(a + r * lda, lda, b, D, st + r * AF__QB, mx, 2, dp); break;
    case 1: af__mk_qk(a + r * lda, lda, b, D, st + r * AF__QB, mx, 1, dp); break;
    default: break;
    }
}

static void af__pv_rows(const float *restrict a, long lda, const float *restrict p, long kt,
                        float *restrict ot, const float *restrict al, long D, int dp) {
    long r = 0;
    for (; r + AF__RK <= D; r += AF__RK)
        af__mk_pv(a + r, lda, p, kt, ot + r * AF__QB, al, AF__RK, dp);
    switch (D - r) {
    case 5: af__mk_pv(a + r, lda, p, kt, ot + r * AF__QB, al, 5, dp); break;
    case 4: af__mk_pv(a + r, lda, p, kt, ot + r * AF__QB, al, 4, dp); break;
    case 3: af__mk_pv(a + r, lda, p, kt, ot + r * AF__QB, al, 3, dp); break;
    case 2: af__mk_pv(a + r, lda, p, kt, ot + r * AF__QB, al, 2, dp); break;
    case 1: af__mk_pv(a + r, lda, p, kt, ot + r * AF__QB, al, 1, dp); break;
    default: break;
    }
}

/* floats of scratch one thread needs for one query tile */
AF__INLINE long af__attn_scratch(long D) { return (2 * D + AF__KT + 8 + AF__PVC / 2) * AF__QB; }

/* Additive bias and causal mask on one key tile of scores st[j][i] (keys j0 + j, j < kt;
 * query lanes i, rq of them valid).  The scores become logits sc*s (+ b, in one rounding),
 * so the caller then applies scale 1 (and a masked -inf never meets a zero scale); causal (qpos = index of the tile's first
 * query, else -1) sets the logit of key j0 + j to -inf for lanes i < j0 + j - qpos.  Padding
 * lanes read no bias (their zero scores stay 0).  mt is recomputed: the tile's max per lane.
 * st is transposed against the bias: reading bias rows in order and writing st down its
 * columns measured 1.3x faster than the opposite order with gathers (S = 1024, D = 64). */
static void af__attn_adjust(float *restrict st, float *restrict mt, const float *restrict bias,
                            long ldb, long j0, long kt, long rq, float sc, long qpos) {
    for (long i = 0; i < AF__QB; i++) mt[i] = -INFINITY;
    if (bias) /* bias rows read sequentially, written down the columns of the tile (in L2) */
        for (long i = 0; i < rq; i++) {
            const float *bi = bias + i * ldb + j0;
            for (long j = 0; j < kt; j++) st[j * AF__QB + i] = AF__FMA(sc, st[j * AF__QB + i], bi[j]);
        }
    for (long j = 0; j < kt; j++) {
        float *sr = st + j * AF__QB;
        if (!bias) {
#pragma omp simd
            for (long i = 0; i < rq; i++) sr[i] *= sc;
        }
        if (qpos >= 0) {
            long hidden = j0 + j - qpos; /* lanes that come before key j0 + j */
            hidden = hidden < AF__QB ? hidden : AF__QB;
            for (long i = 0; i < hidden; i++) sr[i] = -INFINITY;
        }
#pragma omp simd
        for (long i = 0; i < AF__QB; i++) mt[i] = sr[i] > mt[i] ? sr[i] : mt[i];
    }
}

/* One query tile: q, out point at query row 0 of the tile (head offset applied), k, v at
 * key row 0 of the head; rows are ld = H*D floats apart.  rq <= AF__QB valid queries; the
 * padding lanes compute on zero queries and are never stored.  The softmax denominator is a
 * sum of Sk positive terms; summed sequentially in float its error would grow like sqrt(Sk)
 * (1.5e-6 at Sk = 4608), so it is summed in float per key chunk (AF__PVC terms) and the
 * chunk sums are accumulated in double.  bias (or NULL) points at the tile's first query row
 * of this head's [Sq, Sk] bias; qpos >= 0 (the first query's index) asks for a causal mask,
 * and key tiles after the tile's last query are then skipped. */
static void af__attn_tile(const float *restrict q, const float *restrict k,
                          const float *restrict v, float *restrict out, long ld, long D, long rq,
                          long Sk, float scale, const float *restrict bias, long qpos,
                          float *restrict buf, int dp) {
    float *qt = buf;                   /* D x QB  transposed queries (sign of scale applied) */
    float *ot = qt + D * AF__QB;       /* D x QB  unnormalized output, transposed */
    float *st = ot + D * AF__QB;       /* KT x QB scores, then probabilities */
    float *m = st + AF__KT * AF__QB;   /* running max of the scaled scores */
    float *al = m + AF__QB;            /* rescale factor of the old state */
    float *mt = al + AF__QB;           /* max of the current key tile (unscaled) */
    double *l = (double *)(void *)(mt + 2 * AF__QB);   /* running sum (double) */
    double *ls = l + AF__QB;                            /* sum of the current tile */
    float *pt = (float *)(void *)(ls + AF__QB);         /* dp: PVC/2 x QB bf16 pairs of P */
    const long Dq = dp ? (D + 1) / 2 : D;               /* rows of qt: d, or pairs of d */
    const long kld = dp ? ld / D * Dq : ld;             /* K row stride (dp: in the pair copy) */
    /* The scale is not applied to q (that would round every q element): scores stay
     * unscaled, the max is tracked on them and the exp argument is one fused
     * sc*s - sc*max.  The rounding of sc*max is a common shift of the whole row (it cancels
     * in the normalization), so the argument carries a single rounding.  A negative scale
     * is moved into q (exact) so that the max of the unscaled scores is the right one.
     * The transpose runs in row order: q rows (ld apart, likely not cached) are read
     * sequentially, the scattered stores go to the L1-resident tile buffer. */
    const float sgn = scale < 0.0f ? -1.0f : 1.0f, sc = scale < 0.0f ? -scale : scale;
    for (long i = 0; i < rq; i++) {
        const float *qr = q + i * ld;
        if (dp)
            for (long d = 0; d < Dq; d++) {
                const uint32_t hi = 2 * d + 1 < D ? af_f32_to_bf16(qr[2 * d + 1] * sgn) : 0u;
                ((uint32_t *)(void *)qt)[d * AF__QB + i] = (uint32_t)af_f32_to_bf16(qr[2 * d] * sgn) | hi << 16;
            }
        else
            for (long d = 0; d < D; d++) qt[d * AF__QB + i] = qr[d] * sgn;
    }
    for (long d = 0; d < Dq; d++)
        for (long i = rq; i < AF__QB; i++) qt[d * AF__QB + i] = 0.0f;
    memset(ot, 0, sizeof(float) * (size_t)(D * AF__QB));
    for (long i = 0; i < AF__QB; i++) { m[i] = -INFINITY; l[i] = 0.0; }
    const long Sv = qpos >= 0 && qpos + rq < Sk ? qpos + rq : Sk; /* keys any query sees */

    for (long j0 = 0; j0 < Sv; j0 += AF__KT) {
        long kt = Sv - j0 < AF__KT ? Sv - j0 : AF__KT;
        for (long i = 0; i < AF__QB; i++) { mt[i] = -INFINITY; ls[i] = 0.0; }
        for (long c0 = 0; c0 < AF__QB; c0 += AF__CB)
            af__qk_rows(k + j0 * kld, kld, qt + c0, Dq, st + c0, mt + c0, kt, dp);
        /* es: the scale still to apply to st (1 once adjusted into logits); only tiles with
         * a bias or on the causal diagonal are adjusted, the plain path is unchanged */
        float es = sc;
        if (bias || (qpos >= 0 && j0 + kt - 1 > qpos)) {
            af__attn_adjust(st, mt, bias, Sk, j0, kt, rq, sc, qpos);
            es = 1.0f;
        }
        /* online softmax: new max, and the rescale factor for the old state.  A lane whose
         * logits so far are all -inf (a mask in the bias) keeps a finite reference max of 0
         * so that exp never sees -inf - -inf. */
#pragma omp simd
        for (long i = 0; i < AF__QB; i++) {
            float ms = es * mt[i];
            float mn = ms > m[i] ? ms : m[i];
            mn = mn == -INFINITY ? 0.0f : mn;
            al[i] = af_exp(m[i] - mn);
            m[i] = mn;
        }
        /* per key chunk: p = exp(s - max) in place (chunk sum in float, added to the tile
         * sum in double), then ot = al * ot + V^T P while the chunk of P is still in L1 */
        for (long jc = 0; jc < kt; jc += AF__PVC) {
            long nc = kt - jc < AF__PVC ? kt - jc : AF__PVC;
            float cs[AF__QB];
#if AF__VW == 16
            for (long i = 0; i < AF__QB; i += AF__VW) { /* the same, with the 16-lane exp */
                const __m512 mi = _mm512_loadu_ps(m + i), esv = _mm512_set1_ps(es);
                __m512 csv = _mm512_setzero_ps();
                for (long j = jc; j < jc + nc; j++) {
                    const __m512 p = af__exp16(_mm512_fmsub_ps(esv, _mm512_loadu_ps(st + j * AF__QB + i), mi));
                    _mm512_storeu_ps(st + j * AF__QB + i, p);
                    csv = _mm512_add_ps(csv, p);
                }
                _mm512_storeu_ps(cs + i, csv);
            }
#else
            for (long i = 0; i < AF__QB; i++) cs[i] = 0.0f;
            for (long j = jc; j < jc + nc; j++) {
                float *sr = st + j * AF__QB;
#pragma omp simd
                for (long i = 0; i < AF__QB; i++) {
                    float p = af_exp(AF__FMA(es, sr[i], -m[i]));
                    sr[i] = p;
                    cs[i] += p;
                }
            }
#endif
#pragma omp simd
            for (long i = 0; i < AF__QB; i++) ls[i] += (double)cs[i];
            if (dp) /* keys jc + 2q and jc + 2q + 1 of the chunk as pair row q (j0 + jc is even) */
                for (long q2 = 0; 2 * q2 < nc; q2++)
                    af_f32_to_bf16_zip(st + (jc + 2 * q2) * AF__QB, 2 * q2 + 1 < nc ? st + (jc + 2 * q2 + 1) * AF__QB : NULL,
                                       AF__QB, (uint32_t *)(void *)(pt + q2 * AF__QB));
            for (long c0 = 0; c0 < AF__QB; c0 += AF__CB)
                if (dp)
                    af__pv_rows(v + (j0 + jc) / 2 * ld, ld, pt + c0, (nc + 1) / 2, ot + c0, jc == 0 ? al + c0 : NULL, D, 1);
                else
                    af__pv_rows(v + (j0 + jc) * ld, ld, st + jc * AF__QB + c0, nc, ot + c0, jc == 0 ? al + c0 : NULL, D, 0);
        }
#pragma omp simd
        for (long i = 0; i < AF__QB; i++) l[i] = l[i] * (double)al[i] + ls[i];
    }
    for (long i = 0; i < rq; i++) { /* row order again: sequential stores to out */
        float inv = (float)(1.0 / l[i]);
        float *orow = out + i * ld;
        for (long d = 0; d < D; d++) orow[d] = ot[d * AF__QB + i] * inv;
    }
}

/* Fallback when scratch memory cannot be allocated: per query, a max pass and then an
 * accumulate pass straight into the output row.  O(1) extra memory, ~1.5x the work. */
static void af__attn_noscratch(const float *restrict q, const float *restrict k,
                               const float *restrict v, const float *restrict bias,
                               float *restrict out, long B, long Sq, long Sk, long H, long D,
                               float scale, int causal) {
    long ld = H * D;
    for (long b = 0; b < B; b++)
        for (long h = 0; h < H; h++)
            for (long i = 0; i < Sq; i++) {
                const float *qr = q + (b * Sq + i) * ld + h * D;
                const float *br = bias ? bias + (h * Sq + i) * Sk : NULL;
                const long nk = causal && i + 1 < Sk ? i + 1 : Sk;
                float *o = out + (b * Sq + i) * ld + h * D;
                float mx = -INFINITY;
                for (long j = 0; j < nk; j++) {
                    const float *kr = k + (b * Sk + j) * ld + h * D;
                    float s = 0.0f;
                    for (long d = 0; d < D; d++) s = AF__FMA(qr[d], kr[d], s);
                    s = br ? AF__FMA(s, scale, br[j]) : s * scale;
                    mx = s > mx ? s : mx;
                }
                for (long d = 0; d < D; d++) o[d] = 0.0f;
                float sum = 0.0f;
                for (long j = 0; j < nk; j++) {
                    const float *kr = k + (b * Sk + j) * ld + h * D;
                    const float *vr = v + (b * Sk + j) * ld + h * D;
                    float s = 0.0f;
                    for (long d = 0; d < D; d++) s = AF__FMA(qr[d], kr[d], s);
                    float p = af_exp((br ? AF__FMA(s, scale, br[j]) : s * scale) - mx);
                    sum += p;
                    for (long d = 0; d < D; d++) o[d] = AF__FMA(p, vr[d], o[d]);
                }
                for (long d = 0; d < D; d++) o[d] /= sum;
            }
}

/* One work unit of af__attention: query tile t of ntask in (b, h, tile) order.  kb, vb: the
 * bf16 pair copies of K and V for dp (see the header), else NULL. */
AF__INLINE void af__attn_task(const float *restrict q, const float *restrict k,
                              const float *restrict v, const float *restrict bias,
                              float *restrict out, long t, long nqt, long Sq, long Sk, long H,
                              long D, float scale, int causal, float *restrict tb,
                              const uint32_t *restrict kb, const uint32_t *restrict vb) {
    const long ld = H * D, bh = t / nqt, i0 = (t % nqt) * AF__QB;
    const long b = bh / H, h = bh % H;
    const long rq = Sq - i0 < AF__QB ? Sq - i0 : AF__QB;
    const int dp = kb != NULL;
    const float *kh = dp ? (const float *)(const void *)(kb + (b * Sk * H + h) * ((D + 1) / 2)) : k + b * Sk * ld + h * D;
    const float *vh = dp ? (const float *)(const void *)(vb + b * ((Sk + 1) / 2) * ld + h * D) : v + b * Sk * ld + h * D;
    af__attn_tile(q + (b * Sq + i0) * ld + h * D, kh, vh, out + (b * Sq + i0) * ld + h * D, ld, D, rq, Sk, scale,
                  bias ? bias + (h * Sq + i0) * Sk : NULL, causal ? i0 : -1, tb, dp);
}

/* out[b,i,h,:] = sum_j softmax_j(scale * <q[b,i,h,:], k[b,j,h,:]> + bias[h,i,j]) v[b,j,h,:]
 * q, out: [B, Sq, H, D]; k, v: [B, Sk, H, D]; bias [H, Sq, Sk] or NULL (shared by the
 * batch); causal: key j only for queries i >= j (then Sq = Sk).  Parallel over (b, h, query
 * tile) with a static schedule in (b, h)-major order, so each thread works through whole
 * heads and that head's K/V stay in its L2; causal tiles differ in cost (tile i sees i + 1
 * key tiles), so they are dealt out dynamically, costliest first.  dp: bf16 products (see
 * the header; only where AF__ATTN_DP, and f32 if the pair copies cannot be allocated).  Uses
 * omp_get_max_threads() threads. */
static void af__attention(const float *restrict q, const float *restrict k, const float *restrict v,
                          const float *restrict bias, float *restrict out, long B, long Sq, long Sk,
                          long H, long D, float scale, int causal, int dp) {
    if (B <= 0 || Sq <= 0 || Sk <= 0 || H <= 0 || D <= 0) return;
    long nqt = (Sq + AF__QB - 1) / AF__QB;
    long ntask = B * H * nqt;
    long per = af__attn_scratch(D);
    int nth = omp_get_max_threads();
    if ((long)nth > ntask) nth = (int)ntask;
    if (nth < 1) nth = 1;
    double flops = 4.0 * (double)B * (double)H * (double)Sq * (double)Sk * (double)D;
    if (flops < 2.0e6) nth = 1;
    float *buf = (float *)aligned_alloc(64, sizeof(float) * (size_t)per * (size_t)nth);
    if (!buf) {
        af__attn_noscratch(q, k, v, bias, out, B, Sq, Sk, H, D, scale, causal);
        return;
    }
    const long Dq = (D + 1) / 2, Sp = (Sk + 1) / 2;
    uint32_t *kb = dp ? (uint32_t *)malloc(sizeof(uint32_t) * (size_t)(B * Sk * H * Dq)) : NULL;
    uint32_t *vb = kb ? (uint32_t *)malloc(sizeof(uint32_t) * (size_t)(B * Sp * H * D)) : NULL;
    if (!vb) { free(kb); kb = NULL; }
#pragma omp parallel num_threads(nth) if (nth > 1)
    {
        float *tb = buf + (size_t)omp_get_thread_num() * (size_t)per;
        if (vb) {
#pragma omp for schedule(static)
            for (long row = 0; row < B * Sp; row++) { /* keys 2jp and 2jp + 1 of batch b */
                const long b = row / Sp, jp = row % Sp, j = 2 * jp, ld = H * D;
                const float *k0 = k + (b * Sk + j) * ld, *v0 = v + (b * Sk + j) * ld;
                for (long u = 0; u < 2 && j + u < Sk; u++)
                    for (long h = 0; h < H; h++)
                        af_f32_to_bf16_pairs(k0 + u * ld + h * D, D, kb + ((b * Sk + j + u) * H + h) * Dq);
                af_f32_to_bf16_zip(v0, j + 1 < Sk ? v0 + ld : NULL, ld, vb + row * ld);
            }
        }
        if (causal) {
#pragma omp for schedule(dynamic, 1)
            for (long u = 0; u < ntask; u++) { /* last query tile of every head first */
                const long t = (u % (ntask / nqt)) * nqt + (nqt - 1 - u / (ntask / nqt));
                af__attn_task(q, k, v, bias, out, t, nqt, Sq, Sk, H, D, scale, causal, tb, vb ? kb : NULL, vb);
            }
        } else {
#pragma omp for schedule(static)
            for (long t = 0; t < ntask; t++)
                af__attn_task(q, k, v, bias, out, t, nqt, Sq, Sk, H, D, scale, causal, tb, vb ? kb : NULL, vb);
        }
    }
    free(kb);
    free(vb);
    free(buf);
}

AF__API void af_attention_ex(const float *restrict q, const float *restrict k,
                             const float *restrict v, const float *restrict bias,
                             float *restrict out, long B, long Sq, long Sk, long H,
                             long D, float scale, int causal) {
    af__attention(q, k, v, bias, out, B, Sq, Sk, H, D, scale, causal, 0);
}

/* ======================================================================================
 * bf16 attention on Intel AMX (`--compute bf16` where the GEMMs run on the tile unit, gemm.h).
 * The same products as the vdpbf16ps path: q and k rounded to bf16 for the scores, P and v for
 * the output, sums in f32; the softmax, its sums (in double across key blocks) and the output
 * stay f32.  Both products take their B operand as 16 x 16 tiles of bf16 pairs, made once per
 * call: kt[b, h] = K^T in pairs along d (word (q, j) = (k[j][2q], k[j][2q+1]), Kp keys per row),
 * vp[b, h] = V in pairs of consecutive keys (word (t, d) = (v[2t][d], v[2t+1][d]), Dp per row);
 * d is padded with zeros to Dp (a multiple of 32) and keys to Kp (a multiple of AF__AK), whose
 * scores are masked to -inf.  Work unit: (b, h, 16 queries); per block of 64 keys the scores
 * are four 16 x 16 tiles (tmm0-3 from the query tile tmm4 and K^T tiles tmm5), then the online
 * softmax in f32 on them, then O (f32, 16 x Dp in memory) = al * O + P . V, P . V in chunks of 64
 * columns (tmm0-3, P tmm4, V tmm5) added to O in vector registers.
 * ==================================================================================== */
#if AF__GEMM_AMX
#ifndef AF__AK
#define AF__AK 64L /* keys per block: a multiple of 64 (128 measured slower) */
#endif

/* Scores of keys j0 .. j0 + AF__AK - 1 into s (16 x AF__AK, unscaled), 64 at a time. */
AF__INLINE void af__attn_amx_scores(const uint16_t *restrict qb, const uint32_t *restrict kt, long Dp, long Kp, long j0,
                                    float *restrict s) {
    for (long h = 0; h < AF__AK; h += 64) {
        _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
        for (long d = 0; d < Dp; d += 32) {
            _tile_loadd(4, qb + d, Dp * 2);
            const uint32_t *kq = kt + d / 2 * Kp + j0 + h; /* pair rows d/2 .. d/2 + 15 */
            _tile_loadd(5, kq, Kp * 4); _tile_dpbf16ps(0, 4, 5);
            _tile_loadd(5, kq + 16, Kp * 4); _tile_dpbf16ps(1, 4, 5);
            _tile_loadd(5, kq + 32, Kp * 4); _tile_dpbf16ps(2, 4, 5);
            _tile_loadd(5, kq + 48, Kp * 4); _tile_dpbf16ps(3, 4, 5);
        }
        _tile_stored(0, s + h, AF__AK * 4); _tile_stored(1, s + h + 16, AF__AK * 4);
        _tile_stored(2, s + h + 32, AF__AK * 4); _tile_stored(3, s + h + 48, AF__AK * 4);
    }
}

/* One work unit: 16 queries (rq valid) of one head against all its keys.  The scores of the
 * next key block are computed between a block's softmax and its P . V, so that the tile loads of
 * P do not wait for the vector stores that wrote it (store forwarding into a tile load had cost
 * a fifth of the kernel's time).  s: two score buffers, then a 16 x 64 scratch. */
static void af__attn_amx_task(const float *restrict q, float *restrict out, const uint32_t *restrict kt,
                              const uint32_t *restrict vp, long ld, long D, long Dp, long Sk, long Kp, long rq,
                              float scale, uint16_t *restrict qb, float *restrict s, uint16_t *restrict pb,
                              float *restrict o) {
    float m[16] __attribute__((aligned(64))), mb[16] __attribute__((aligned(64))), al[16] __attribute__((aligned(64)));
    double l[16];
    float *tmp = s + 2 * 16 * AF__AK;
    for (long i = 0; i < 16; i++) { /* the query tile: rows of bf16 along d, zero past D and rq */
        memset(qb + i * Dp, 0, sizeof(uint16_t) * (size_t)Dp);
        if (i < rq) af_f32_to_bf16_pairs(q + i * ld, D, (uint32_t *)(void *)(qb + i * Dp));
        m[i] = -INFINITY;
        l[i] = 0.0;
    }
    memset(o, 0, sizeof(float) * (size_t)(16 * Dp));
    af__attn_amx_scores(qb, kt, Dp, Kp, 0, s);
    const __m512 sc = _mm512_set1_ps(scale);
    for (long j0 = 0; j0 < Kp; j0 += AF__AK) {
        float *sj = s + (j0 / AF__AK % 2) * 16 * AF__AK;
        /* online softmax per query row: logits scale*s (keys past Sk: -inf), the new maxima
         * and the rescale of the old state for all 16 rows at once */
        const long valid = Sk - j0 < AF__AK ? Sk - j0 : AF__AK;
        for (long i = 0; i < 16; i++) {
            float *si = sj + i * AF__AK;
            __m512 mx = _mm512_set1_ps(-INFINITY);
            for (long c = 0; c < AF__AK; c += 16) {
                const __mmask16 live = valid - c >= 16 ? (__mmask16)0xFFFF : valid > c ? (__mmask16)((1u << (valid - c)) - 1u) : 0;
                const __m512 x = _mm512_mask_mul_ps(_mm512_set1_ps(-INFINITY), live, sc, _mm512_loadu_ps(si + c));
                _mm512_storeu_ps(si + c, x);
                mx = _mm512_max_ps(mx, x);
            }
            mb[i] = _mm512_reduce_max_ps(mx);
        }
        const __m512 mo = _mm512_load_ps(m), mn0 = _mm512_max_ps(_mm512_load_ps(mb), mo);
        /* no finite logit yet: a reference of 0 keeps exp's argument finite */
        const __m512 mn = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(mn0, _mm512_set1_ps(-INFINITY), _CMP_EQ_OQ), mn0, _mm512_setzero_ps());
        _mm512_store_ps(al, af__exp16(_mm512_sub_ps(mo, mn)));
        _mm512_store_ps(m, mn);
        for (long i = 0; i < 16; i++) {
            float *si = sj + i * AF__AK;
            const __m512 mi = _mm512_set1_ps(m[i]);
            __m512 sum = _mm512_setzero_ps();
            for (long c = 0; c < AF__AK; c += 32) {
                const __m512 p0 = af__exp16(_mm512_sub_ps(_mm512_loadu_ps(si + c), mi));
                const __m512 p1 = af__exp16(_mm512_sub_ps(_mm512_loadu_ps(si + c + 16), mi));
                sum = _mm512_add_ps(sum, _mm512_add_ps(p0, p1));
                _mm512_storeu_si512((void *)(pb + i * AF__AK + c), (__m512i)_mm512_cvtne2ps_pbh(p1, p0));
            }
            l[i] = l[i] * (double)al[i] + (double)_mm512_reduce_add_ps(sum);
        }
        if (j0 + AF__AK < Kp) af__attn_amx_scores(qb, kt, Dp, Kp, j0 + AF__AK, s + ((j0 / AF__AK + 1) % 2) * 16 * AF__AK);
        /* O = al * O + P . V, 64 columns of d at a time: the block's product in fresh tiles,
         * added to O in vector registers */
        for (long d0 = 0; d0 < Dp; d0 += 64) {
            const long nt = Dp - d0 < 64 ? 2 : 4; /* Dp is a multiple of 32 */
            _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
            for (long c = 0; c < AF__AK; c += 32) {
                _tile_loadd(4, pb + c, AF__AK * 2);
                const uint32_t *vq = vp + (j0 + c) / 2 * Dp + d0; /* key pairs (j0 + c)/2 .. + 15 */
                _tile_loadd(5, vq, Dp * 4); _tile_dpbf16ps(0, 4, 5);
                _tile_loadd(5, vq + 16, Dp * 4); _tile_dpbf16ps(1, 4, 5);
                if (nt > 2) {
                    _tile_loadd(5, vq + 32, Dp * 4); _tile_dpbf16ps(2, 4, 5);
                    _tile_loadd(5, vq + 48, Dp * 4); _tile_dpbf16ps(3, 4, 5);
                }
            }
            _tile_stored(0, tmp, 64 * 4); _tile_stored(1, tmp + 16, 64 * 4);
            if (nt > 2) { _tile_stored(2, tmp + 32, 64 * 4); _tile_stored(3, tmp + 48, 64 * 4); }
            for (long i = 0; i < 16; i++) {
                const __m512 a = _mm512_set1_ps(al[i]);
                for (long d = 0; d < 16 * nt; d += 16)
                    _mm512_storeu_ps(o + i * Dp + d0 + d, _mm512_fmadd_ps(a, _mm512_loadu_ps(o + i * Dp + d0 + d), _mm512_loadu_ps(tmp + i * 64 + d)));
            }
        }
    }
    for (long i = 0; i < rq; i++) {
        const float inv = (float)(1.0 / l[i]);
        for (long d = 0; d < D; d++) out[i * ld + d] = o[i * Dp + d] * inv;
    }
}

/* af_attention_bf16 on the tile unit (see above); 0 (nothing written) where its buffers cannot be
 * allocated: the caller then runs the f32 kernel. */
static int af__attention_amx(const float *restrict q, const float *restrict k, const float *restrict v,
                             float *restrict out, long B, long Sq, long Sk, long H, long D, float scale) {
    const long Dp = (D + 31) & ~31L, Kp = (Sk + AF__AK - 1) / AF__AK * AF__AK, ld = H * D;
    const size_t per = (size_t)(B * H) * (size_t)(Dp * Kp / 2); /* words of kt (and of vp) per call */
    uint32_t *kt = (uint32_t *)aligned_alloc(64, sizeof(uint32_t) * per), *vp = (uint32_t *)aligned_alloc(64, sizeof(uint32_t) * per);
    const long nqt = (Sq + 15) / 16, ntask = B * H * nqt;
    const int par = 4.0 * (double)B * (double)H * (double)Sq * (double)Sk * (double)D >= 2.0e6 && omp_get_max_threads() > 1;
    const int team = par ? omp_get_max_threads() : 1;
    /* per thread: the query tile (16 x Dp bf16), P (16 x AF__AK bf16), two score blocks and a
     * 16 x 64 scratch (f32), O (16 x Dp f32); in 4-byte units, each a multiple of 16 (64 bytes) */
    const size_t wq = (size_t)(8 * Dp), wp = (size_t)(8 * AF__AK), ws = (size_t)(2 * 16 * AF__AK + 16 * 64), wo = (size_t)(16 * Dp);
    const size_t wt = wq + wp + ws + wo;
    float *scratch = (float *)aligned_alloc(64, sizeof(float) * wt * (size_t)team);
    if (!kt || !vp || !scratch) { free(kt); free(vp); free(scratch); return 0; }
#pragma omp parallel num_threads(team) if (par)
    {
        uint32_t row[512]; /* one key's d pairs (D <= 1024) */
        float *mine = scratch + (size_t)omp_get_thread_num() * wt;
        uint16_t *qb = (uint16_t *)(void *)mine, *pb = (uint16_t *)(void *)(mine + wq);
        float *s = mine + wq + wp, *o = mine + wq + wp + ws;
#pragma omp for schedule(static)
        for (long r = 0; r < B * H * Kp; r++) { /* key j of (b, h): its column of kt, and (even j) its pair row of vp */
            const long bh = r / Kp, j = r % Kp, b = bh / H, h = bh % H;
            uint32_t *kc = kt + (size_t)bh * (size_t)(Dp / 2 * Kp) + j;
            if (j < Sk) af_f32_to_bf16_pairs(k + (b * Sk + j) * ld + h * D, D, row);
            for (long w = 0; w < Dp / 2; w++) kc[w * Kp] = j < Sk && 2 * w < D ? row[w] : 0u;
            if (j % 2) continue;
            uint32_t *vr = vp + (size_t)bh * (size_t)(Kp / 2 * Dp) + j / 2 * Dp;
            const float *v0 = v + (b * Sk + j) * ld + h * D;
            if (j < Sk) af_f32_to_bf16_zip(v0, j + 1 < Sk ? v0 + ld : NULL, D, vr);
            for (long d = j < Sk ? D : 0; d < Dp; d++) vr[d] = 0u;
        }
        af__amx_configure();
#pragma omp for schedule(static)
        for (long t = 0; t < ntask; t++) {
            const long bh = t / nqt, i0 = (t % nqt) * 16, b = bh / H, h = bh % H;
            const long rq = Sq - i0 < 16 ? Sq - i0 : 16;
            af__attn_amx_task(q + (b * Sq + i0) * ld + h * D, out + (b * Sq + i0) * ld + h * D,
                              kt + (size_t)bh * (size_t)(Dp / 2 * Kp), vp + (size_t)bh * (size_t)(Kp / 2 * Dp),
                              ld, D, Dp, Sk, Kp, rq, scale, qb, s, pb, o);
        }
        _tile_release();
    }
    free(kt);
    free(vp);
    free(scratch);
    return 1;
}
#endif

/* Plain attention with bf16 products (`--compute bf16`; f32 where the CPU has no AVX-512 BF16).
 * On the tile unit where the GEMMs run on AMX (gemm.h): those Intel Xeons execute vdpbf16ps at
 * half the f32 FMA rate (session 26, FLUX's 1088 tokens x 12 heads of 64 on 2 threads: AMX 580
 * GFLOP/s, f32 310, vdpbf16ps about 120 in the NFE). */
AF__API void af_attention_bf16(const float *restrict q, const float *restrict k,
                               const float *restrict v, float *restrict out, long B, long Sq,
                               long Sk, long H, long D, float scale) {
#if AF__GEMM_AMX
    if (af__amx_ready()) {
        /* heads of a multiple of 32 (the k of a tile; 64 and 128 in the models here) on the tile
         * unit, others (padding would multiply the work) in f32 */
        if (D % 32 != 0 || D > 1024 || B <= 0 || Sq <= 0 || Sk <= 0 || H <= 0 ||
            !af__attention_amx(q, k, v, out, B, Sq, Sk, H, D, scale))
            af__attention(q, k, v, NULL, out, B, Sq, Sk, H, D, scale, 0, 0);
        return;
    }
#endif
    af__attention(q, k, v, NULL, out, B, Sq, Sk, H, D, scale, 0, AF__ATTN_DP);
}

/* Plain attention: no bias, no mask. */
AF__API void af_attention(const float *restrict q, const float *restrict k,
                          const float *restrict v, float *restrict out, long B, long Sq,
                          long Sk, long H, long D, float scale) {
    af_attention_ex(q, k, v, NULL, out, B, Sq, Sk, H, D, scale, 0);
}

#endif /* ARCFLOW_ATTENTION_H */
