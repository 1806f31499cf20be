/* arcflow prelude, matrix products: GEMM over packed weight panels, convolution as im2col GEMMs,
 * the machine's FMA ceiling (needs common.h, elementwise.h, conversions.h). */
#ifndef ARCFLOW_GEMM_H
#define ARCFLOW_GEMM_H

/* ======================================================================================
 * Convolution (2-D cross-correlation, NCHW activations, OIHW weights, zero padding)
 *
 * out[n] (O x P, P = Ho*Wo) = W (O x K) . col (K x P), K = C*KH*KW, where col is the im2col
 * matrix: col[(c*KH + dy)*KW + dx][y*Wo + x] = x[n, c, y*sh - ph + dy, x*sw - pw + dx].
 * A 1x1 stride-1 unpadded convolution is that GEMM on x itself.  Otherwise col is never
 * built whole (a VAE 3x3 conv at 512x512 with 512 channels would need 4.8 GB): the P columns
 * are cut into tiles of at most AF__CONV_TILE_BYTES of col each; each thread fills a tile
 * (a memcpy per output row for stride 1) and runs a single-threaded cblas_sgemm on it,
 * writing its columns of out directly (ldc = P).  Filling costs one store per col element
 * against 2*O flops of GEMM on it, and the tile is still in cache when the GEMM packs it.
 * With fewer tiles than threads the tiles run in turn with OpenBLAS threaded instead.
 * ==================================================================================== */

#define AF__CONV_TILE_BYTES (1L << 21)

/* Rows 0..K-1 of col for the np output pixels p0..p0+np-1 of one image (row length np); taps
 * dh, dw apart (dilation: the weight gradient of a strided convolution is a dilated one). */
static void af__im2col(const float *restrict x, float *restrict col, long C, long H, long W,
                       long KH, long KW, long sh, long sw, long ph, long pw, long dh, long dw,
                       long Wo, long p0, long np) {
    for (long c = 0; c < C; c++)
        for (long dy = 0; dy < KH; dy++)
            for (long dx = 0; dx < KW; dx++) {
                float *row = col + ((c * KH + dy) * KW + dx) * np;
                const float *xc = x + c * H * W;
                for (long p = 0; p < np;) {
                    const long oy = (p0 + p) / Wo, ox = (p0 + p) % Wo;
                    const long run = Wo - ox < np - p ? Wo - ox : np - p; /* rest of this output row */
                    const long iy = oy * sh - ph + dy * dh, ix0 = ox * sw - pw + dx * dw;
                    float *dst = row + p;
                    p += run;
                    if (iy < 0 || iy >= H) { memset(dst, 0, sizeof(float) * (size_t)run); continue; }
                    const float *src = xc + iy * W;
                    if (sw == 1) { /* valid t: 0 <= ix0 + t < W */
                        long lo = ix0 < 0 ? -ix0 : 0, hi = W - ix0;
                        lo = lo < run ? lo : run;
                        hi = hi < run ? hi : run;
                        hi = hi > lo ? hi : lo;
                        memset(dst, 0, sizeof(float) * (size_t)lo);
                        if (hi > lo) memcpy(dst + lo, src + ix0 + lo, sizeof(float) * (size_t)(hi - lo));
                        memset(dst + hi, 0, sizeof(float) * (size_t)(run - hi));
                    } else {
                        for (long t = 0; t < run; t++) {
                            const long ix = ix0 + t * sw;
                            dst[t] = ix >= 0 && ix < W ? src[ix] : 0.0f;
                        }
                    }
                }
            }
}

/* Fallback when the tile buffers cannot be allocated: direct loops, O(1) memory. */
static void af__conv2d_direct(const float *restrict x, const float *restrict w,
                              float *restrict out, long N, long C, long H, long W, long O,
                              long KH, long KW, long sh, long sw, long ph, long pw, long dh,
                              long dw, long Ho, long Wo) {
    for (long n = 0; n < N; n++)
        for (long o = 0; o < O; o++)
            for (long oy = 0; oy < Ho; oy++)
                for (long ox = 0; ox < Wo; ox++) {
                    float acc = 0.0f;
                    for (long c = 0; c < C; c++)
                        for (long dy = 0; dy < KH; dy++) {
                            const long iy = oy * sh - ph + dy * dh;
                            if (iy < 0 || iy >= H) continue;
                            for (long dx = 0; dx < KW; dx++) {
                                const long ix = ox * sw - pw + dx * dw;
                                if (ix >= 0 && ix < W)
                                    acc = AF__FMA(x[((n * C + c) * H + iy) * W + ix],
                                                  w[((o * C + c) * KH + dy) * KW + dx], acc);
                            }
                        }
                    out[((n * O + o) * Ho + oy) * Wo + ox] = acc;
                }
}

/* out [N, O, Ho, Wo] = conv(x [N, C, H, W], w [O, C, KH, KW]), strides sh, sw, padding ph, pw,
 * dilation dh, dw. */
AF__API void af_conv2d(const float *restrict x, const float *restrict w,
                       float *restrict out, long N, long C, long H, long W, long O,
                       long KH, long KW, long sh, long sw, long ph, long pw, long dh,
                       long dw) {
    const long Ho = (H + 2 * ph - (KH - 1) * dh - 1) / sh + 1, Wo = (W + 2 * pw - (KW - 1) * dw - 1) / sw + 1;
    const long P = Ho * Wo, K = C * KH * KW;
    if (N <= 0 || O <= 0 || P <= 0) return;
    if (K == 0) { memset(out, 0, sizeof(float) * (size_t)(N * O * P)); return; }
    if (KH == 1 && KW == 1 && sh == 1 && sw == 1 && ph == 0 && pw == 0) {
        for (long n = 0; n < N; n++)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)O, (int)P, (int)C, 1.0f, w,
                        (int)C, x + n * C * P, (int)P, 0.0f, out + n * O * P, (int)P);
        return;
    }
    /* Tiles per image: as few as the tile size allows, then more until every thread gets the
     * same number (at most doubling the count). */
    const int maxth = omp_get_max_threads();
    long cap = AF__CONV_TILE_BYTES / (long)sizeof(float) / K;
    cap = cap < 16 ? 16 : cap;
    const long tiles0 = (P + cap - 1) / cap;
    long tiles = tiles0;
    while (tiles < P && tiles < 2 * tiles0 + maxth && (N * tiles) % maxth != 0) tiles++;
    if ((N * tiles) % maxth != 0) tiles = tiles0;
    const long np = (P + tiles - 1) / tiles, ntask = N * tiles;
    const int nth = ntask >= maxth ? maxth : 1;
    const size_t per = ((size_t)(K * np) + 15) & ~(size_t)15; /* floats, 64-byte multiples */
    float *buf = (float *)aligned_alloc(64, sizeof(float) * per * (size_t)nth);
    if (!buf) {
        af__conv2d_direct(x, w, out, N, C, H, W, O, KH, KW, sh, sw, ph, pw, dh, dw, Ho, Wo);
        return;
    }
#pragma omp parallel num_threads(nth) if (nth > 1)
    {
        float *col = buf + (size_t)omp_get_thread_num() * per;
#pragma omp for schedule(static)
        for (long t = 0; t < ntask; t++) {
            const long n = t / tiles, p0 = (t % tiles) * np;
            const long cnt = P - p0 < np ? P - p0 : np;
            if (cnt <= 0) continue;
            af__im2col(x + n * C * H * W, col, C, H, W, KH, KW, sh, sw, ph, pw, dh, dw, Wo, p0, cnt);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)O, (int)cnt, (int)K, 1.0f,
                        w, (int)K, col, (int)cnt, 0.0f, out + n * O * P + p0, (int)P);
        }
    }
    free(buf);
}

/* ======================================================================================
 * GEMM over packed weight panels
 *
 * C[M, N] = A[M, K] . B[K, N] (+ bias[N]) where B is a weight, packed once at compile time
 * (Swift: packWeightPanels) into ceil(N / AF_GEMM_NR) panels.  Panel p holds columns
 * p*NR .. p*NR + NR-1 of B for every k, zero past N, in strips of AF_GEMM_STRIP columns (one
 * register tile's width: 32 with AVX-512, so a strip is the whole panel, 16 with AVX2), each
 * strip's K rows contiguous: element (k, j) at panel + af__strip_at(j, k, K); the panels follow
 * each other (panel p starts at p*K*NR).  Stored as f32, bf16 or f16 (dt 0, 1,
 * 2): a 16-bit panel is widened to f32 in registers as it is loaded, so memory traffic halves
 * and the arithmetic stays f32 (products and sums are exactly those of the f32 GEMM on the
 * rounded weights).  dt 3 (bf16 compute) stores bf16 panels in pairs of k: element (k, j) at
 * panel + (k/2)*2*NR + 2*j + k%2, K padded with zeros to AF__GPAIRK(K) rows (a multiple of 32,
 * the k of one AMX tile), so panel p starts at p*AF__GPAIRK(K)*NR: both bf16 kernels (vdpbf16ps,
 * AMX) multiply such pairs as they are stored.
 *
 * Register tile: AF__GMR rows x AF__GW columns of C held in AF__GMR * AF__GNV vector
 * accumulators over a K block.  Per k: AF__GNV loads of B (the strip's row, contiguous), then
 * per row one broadcast of A and AF__GNV FMAs.  AVX-512: 14 x 32 (28 zmm accumulators + 2
 * for B + 1 broadcast); AVX2: 6 x 16 (12 ymm + 2 + 1), two tiles per panel.
 *
 * Blocking (BLIS-style; the weight panels already are B's micro-panels, so only A is packed):
 *  - K in blocks of kc (AF_GEMM_KC f32, AF_GEMM_KC16 for 16-bit panels, AF_GEMM_KCDP for bf16
 *    compute): the slice of one strip a register tile reads (kc x AF_GEMM_STRIP elements,
 *    16-32 KB) is contiguous in the precomputed panel and stays in L1 while the tile walks down
 *    a row block (AVX2's f32 slice, 32 KB at its kc of 512, shares L1 with A: see AF_GEMM_KC).
 *  - Rows in blocks of AF_GEMM_MB: each thread copies its MB x kc block of A into micro-panels
 *    of AF__GMR rows (element (k, r) at k*AF__GMR + r), so the kernel reads A contiguously
 *    from L2 (MB x kc floats = 344 KB) instead of AF__GMR rows lda apart: with lda a multiple
 *    of 1024 floats those rows alias in the same L1 sets, which had capped the unpacked kernel
 *    at a third of the FMA peak on the big square GEMMs.
 *  - Panels in groups: one packed A block serves every panel of the group (at most
 *    AF_GEMM_NGMAX panels, so the group's C block stays in L2), which amortizes the packing.
 * Threads take (row block, panel group) tiles, about one per thread where M allows (AF_GEMM_TPT:
 * every panel group of a row block packs its A block again), except that a GEMM of one row block
 * packs its A once for all tasks and splits finer (AF_GEMM_TPT_SHARED).  Each C element is summed
 * by one thread in one order (k ascending, K blocks in turn), so results do not depend on the
 * thread count.
 * C is written at the first K block and accumulated after; the bias and activation are applied
 * with the last block, in the store.
 * ==================================================================================== */

#define AF_GEMM_NR 32
#define AF__GPAIRK(K) (((K) + 31L) & ~31L) /* rows of k in a dt-3 (pair) panel */

#if defined(__AVX512F__)
typedef __m512 af__gv;
#define AF__GVW 16
#define AF__GMR 14
#define af__gzero() _mm512_setzero_ps()
#define af__gld(p) _mm512_loadu_ps(p)
#define af__gst(p, v) _mm512_storeu_ps((p), (v))
#define af__gadd(a, b) _mm512_add_ps((a), (b))
#define af__gfma(a, b, c) _mm512_fmadd_ps((a), (b), (c))
#define af__gset1(x) _mm512_set1_ps(x)
#define af__gld_bf16(p) _mm512_castsi512_ps(_mm512_slli_epi32( \
    _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(const void *)(p))), 16))
#define af__gld_f16(p) _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)(p)))
#define af__gmul(a, b) _mm512_mul_ps((a), (b))
#define af__gld_i8(p) _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(const void *)(p))))
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
typedef __m256 af__gv;
#define AF__GVW 8
#define AF__GMR 6
#define af__gzero() _mm256_setzero_ps()
#define af__gld(p) _mm256_loadu_ps(p)
#define af__gst(p, v) _mm256_storeu_ps((p), (v))
#define af__gadd(a, b) _mm256_add_ps((a), (b))
#define af__gfma(a, b, c) _mm256_fmadd_ps((a), (b), (c))
#define af__gset1(x) _mm256_set1_ps(x)
#define af__gld_bf16(p) _mm256_castsi256_ps(_mm256_slli_epi32( \
    _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(const void *)(p))), 16))
#define af__gld_f16(p) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(p)))
#define af__gmul(a, b) _mm256_mul_ps((a), (b))
#define af__gld_i8(p) _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)(p))))
#else
/* portable: scalars, 4 rows x 8 columns (compilers vectorize the column loop where they can) */
typedef float af__gv;
#define AF__GVW 1
#define AF__GMR 4
#define af__gzero() 0.0f
#define af__gld(p) (*(p))
#define af__gst(p, v) (*(p) = (v))
#define af__gadd(a, b) ((a) + (b))
#define af__gfma(a, b, c) AF__FMA((a), (b), (c))
#define af__gset1(x) (x)
#define af__gld_bf16(p) af_bf16_to_f32(*(p))
#define af__gld_f16(p) af_f16_to_f32(*(p))
#define af__gmul(a, b) ((a) * (b))
#define af__gld_i8(p) ((float)*(const int8_t *)(const void *)(p))
#endif

#if AF__GVW == 1
#define AF__GNV 8
#else
#define AF__GNV 2
#endif
#define AF__GW (AF__GNV * AF__GVW) /* columns of one register tile; divides AF_GEMM_NR */
/* A panel is stored as strips of one register tile's columns, each contiguous along K (see the
 * layout above): AVX-512's tile is the whole panel, AVX2's half of it.  With AVX2's panels in
 * whole rows of 32 (until session 42), a tile read 64 bytes of every 128 and the two tiles of a
 * panel each walked the same K rows: Tools/gemm-bench/ab.sh on a Zen 3 (2 threads, 16 weight
 * copies, 30 alternations; an A/A run read 0.98-1.01) had strips at 1.04-1.15x the rows at
 * M = 320 and 1088 with N, K in {768, 3072}, and 1.03-1.10x at 1 thread (CPU time); the
 * width-768 FLUX NFE 1.05x at 1 thread (Tools/bench/alternate.py). */
#define AF_GEMM_STRIP AF__GW
/* Where element (k, j) of a panel of `rows` rows of k lies, in elements from the panel's start. */
#define af__strip_at(j, k, rows) (((j) / AF_GEMM_STRIP) * (rows) * AF_GEMM_STRIP + (k) * AF_GEMM_STRIP + (j) % AF_GEMM_STRIP)

/* Block sizes (overridable with -D for tuning: Tools/gemm-bench's CFLAGS_EXTRA).  kc = 256 for
 * both storage types: a 32-column slice is 32 KB in f32, 16 KB in 16 bits (measured on Zen 4,
 * 32 KB L1: 128 and 384 were no better for f32).  AVX2's f32 kc is 512: its 6 x 16 register tile
 * does 12 FMAs per k against AVX-512's 28, so the C tile's round trip at each K block costs it
 * over twice as much per FMA, and longer blocks pay it less often (a tile's strip slice, 32 KB, and
 * its A micro-panel, 12 KB, share L1; 108 rows of packed A, 221 KB, stay in L2).  Measured on a
 * quiet Zen 3 (512 KB L2; session 39, before strips,
 * Tools/gemm-bench/run.sh 5 1 and 5 2): at 1 thread 2048^3 and 2397 x 1563 x 2418 read 82 / 80% of
 * the FMA peak at 256, 80 / 80% at 192, 86 / 83% at 384, 88 / 86% at 512, 90 / 86% at 768 and
 * 89 / 90% at 1024 (OpenBLAS 91%); at 2 threads on those two, 1024^3 and 2290 x 1553 x 2288,
 * 85-88% at 256, 86-89% at 512, 87-90% at 768.  512 takes most of the gain and keeps slice and A
 * block within a 512 KB L2 with room (768 would fill 428 KB of it).  With strips (session 42), 256
 * still read 0.98x 512 at M = 1088 (ab.sh, 2 threads), and the prefetch distance of 64 rows level. */
#ifndef AF_GEMM_KC
#if AF__GMR == 6
#define AF_GEMM_KC 512L
#else
#define AF_GEMM_KC 256L
#endif
#endif
#ifndef AF_GEMM_KC16
#define AF_GEMM_KC16 256L
#endif
/* kc of bf16 compute (vdpbf16ps: two k per instruction): KCDP = 2 x 256 keeps the per-tile cost
 * of the C round trip and the column permute per k what it is for f32, and the panel slice
 * (KCDP x 32 bf16 = 32 KB) and the packed A block (MB x KCDP/2 pairs) the size of f32's. */
#ifndef AF_GEMM_KCDP
#define AF_GEMM_KCDP 512L
#endif
/* Rows of A per packed block, whole row tiles (a GEMM's row blocks share its row tiles evenly).
 * 336 on AVX-512 (24 tiles; the A block is 336 x 256 floats = 344 KB of L2): each slice of a
 * weight panel brought into L1/L2 then serves up to 24 row tiles before the next row block
 * streams it in again.  Measured with Tools/gemm-bench/ab.sh (2 threads, 16 weight copies):
 * against 112 rows for M >= 672, 1.03-1.09x at 1088 x {768, 3072} x {768, 3072} (AMD, 120
 * alternations); for every M (session 27, Intel, 40 alternations, with AF_GEMM_TPT 1) 1.06-1.08x
 * at M = 128, 256 and 320 where N or K is 3072, 1.00-1.02x at 768 x 768 and at M = 448 and
 * 1088.  (With 4 tiles per thread a short M's single block had been packed by 8 panel groups:
 * 0.96-1.03x at M = 320 then, so M < 672 had kept 112 rows.)  AVX2 keeps 108: on a Zen 3 (512 KB
 * L2, session 37; Tools/gemm-bench/run.sh 2 2, five alternations on 2048^3 and three shapes of
 * 2077-2397 rows) 216 and 324 rows were no better, own/OpenBLAS medians 0.91-0.95 at 108, 0.85-0.96
 * at 216 and 0.82-0.96 at 324. */
#ifndef AF_GEMM_MB
#if AF__GMR == 14
#define AF_GEMM_MB ((336L / AF__GMR) * AF__GMR)
#else
#define AF_GEMM_MB ((112L / AF__GMR) * AF__GMR)
#endif
#endif
#ifndef AF_GEMM_NGMAX
#define AF_GEMM_NGMAX 32L
#endif
/* Tiles per thread the panel groups aim at: more absorb a stalled thread at the end of a GEMM,
 * fewer pack each A block fewer times (every group of a row block packs it again).  1: one task
 * per thread where the row blocks allow, so M = 1088 against N = 768 packs its A once, not twice.
 * Measured on an Intel Xeon (2 MB L2; session 27) with Tools/gemm-bench/ab.sh (2 threads, 16
 * weight copies, 40 alternations, against 4): 1.05-1.10x at 1088 x 768 x 768 and 1088 x 768 x
 * 3072, 1.03-1.08x at M = 320, 0.98-1.04x (level) at N = 3072; the width-768 FLUX NFE 1.04-1.12x
 * at 1024 tokens and 1.01-1.11x at 256 (6 alternations each).  4 was the default before, never
 * measured against 1 on the AMD hosts; `FLAGS_B=-DAF_GEMM_TPT=4` compares them there. */
#ifndef AF_GEMM_TPT
#define AF_GEMM_TPT 1L
#endif
/* The same for a GEMM of one row block, whose A all tasks share (packed once): 4 tiles per thread
 * absorb a stalled thread at no packing cost. */
#ifndef AF_GEMM_TPT_SHARED
#define AF_GEMM_TPT_SHARED 4L
#endif
/* The same for the AMX GEMM (128-row tasks), where 1 measured 0.95-0.98x at M = 320 (DT=3 ab.sh). */
#ifndef AF__AMX_TPT
#define AF__AMX_TPT 4L
#endif
/* af__gemm_packed_blocks' panel-outer order (below): the share of L2 a task's K-outer working
 * set passes to take it, and the fewest row tiles per sub-block (with more sub-blocks the
 * weights are read too often). */
#ifndef AF_GEMM_PO_FILL
#define AF_GEMM_PO_FILL 0.3
#endif
#ifndef AF_GEMM_PO_TILES
#define AF_GEMM_PO_TILES 7L
#endif
/* The weight-outer order for expanded panels (int8; bf16 compute without vdpbf16ps): M is one row
 * block and each (panel, K block) slice is expanded once per GEMM (af__gemm_weight_outer), not once
 * per row block.  Measured on a Zen 3 (AVX2, 512 KB L2; session 43), where 108-row blocks and the
 * panel-outer sub-blocks had expanded each weight 22 times at M = 1088: DT=4 ab.sh 2 30 16 on the
 * six M = 320 and 1088 model shapes 0.97-1.10x by medians, every best run faster; DT=3 1.56-1.78x;
 * in the width-768 FLUX NFE (alternate.py) int8 went from 1.051x f32's time to 0.949x at 256
 * tokens and from 1.106x to 1.028x at 1024.  f32 panels keep their row blocks (the same order read
 * 0.85-0.99x for them).  AVX2 only: AVX-512's 336-row blocks expand a weight 4 times at M = 1088,
 * and the order has not been measured there (FLAGS_B=-DAF_GEMM_WOUTER=1 DT=4 ab.sh compares). */
#ifndef AF_GEMM_WOUTER
#define AF_GEMM_WOUTER (AF__GMR == 6)
#endif
#ifndef AF_GEMM_PFC
#define AF_GEMM_PFC 32L /* rows of k before a tile's end at which its C rows are prefetched */
#endif
/* 32 rows (4 KB of an f32 panel) ahead: a weight slice is first read from memory by a row block's
 * first tile, and 8 rows (about 30 ns of its FMAs) had not covered the latency.  ab.sh (session 27,
 * Intel, 2 threads, 16 weight copies, 40 alternations) against 8: 1.04-1.09x at M = 64, 1.01-1.05x
 * at M = 320, level at M = 1088; 16 read half that, 48 and 64 level with 32.  Past a slice's end
 * it reaches into the same panel's next K block and then the next panel (panels are contiguous). */
#ifndef AF_GEMM_PFB
#define AF_GEMM_PFB 32
#endif
#define AF__GKCMAX0 (AF_GEMM_KC > AF_GEMM_KC16 ? AF_GEMM_KC : AF_GEMM_KC16)
#define AF__GKCMAX (AF__GKCMAX0 > (AF_GEMM_KCDP + 1) / 2 ? AF__GKCMAX0 : (AF_GEMM_KCDP + 1) / 2) /* floats per packed A row */

/* Epilogue activations applied in the store of the last K block (the fusions GEMMs head). */
#define AF_GEMM_ACT_NONE 0
#define AF_GEMM_ACT_GELU_TANH 1
#define AF_GEMM_ACT_SILU 2

/* The store of one tile: t (mr rows of AF__GW floats) into c (row stride ldc, ncols <= AF__GW
 * valid columns).  first: C is written, else accumulated; last: the bias (nullable, at the
 * tile's first column) is added and the activation applied while the rows are still in L1.
 * Whole tiles store from registers themselves and call this (t NULL) for the activation.
 * Out of line: one copy serves every tile shape (inlined into each, the activations made the
 * kernel ~100 KB per row count), and it runs once per tile against kc * mr * AF__GNV FMAs. */
static void af__gemm_store(const float *restrict t, int mr, float *restrict c, long ldc, long ncols, int first,
                           int last, const float *restrict bias, int act) {
    for (int r = 0; r < mr; r++) {
        const float *tr = t ? t + r * AF__GW : NULL;
        float *cr = c + r * ldc;
        if (!tr) {
            /* t NULL: C already holds the sums (+ bias); only the activation is left. */
        } else if (first) {
#pragma omp simd
            for (long j = 0; j < ncols; j++) cr[j] = tr[j];
        } else {
#pragma omp simd
            for (long j = 0; j < ncols; j++) cr[j] += tr[j];
        }
        if (!last) continue;
        if (bias) {
#pragma omp simd
            for (long j = 0; j < ncols; j++) cr[j] += bias[j];
        }
        if (act == AF_GEMM_ACT_GELU_TANH) {
#pragma omp simd
            for (long j = 0; j < ncols; j++) cr[j] = af_gelu_tanh(cr[j]);
        } else if (act == AF_GEMM_ACT_SILU) {
#pragma omp simd
            for (long j = 0; j < ncols; j++) cr[j] = af_silu(cr[j]);
        }
    }
}

/* The accumulators of one register tile (mr rows) into C: a whole tile straight from the
 * registers (+ bias, then the activation over the rows in place), a column tail through
 * af__gemm_store. */
AF__INLINE void af__gemm_put(const int mr, const int nv, af__gv acc[AF__GMR][AF__GNV], float *restrict c, long ldc,
                             long ncols, int first, int last, const float *restrict bias, int act) {
    if (nv == AF__GNV && ncols == AF__GW) {
        /* A whole tile: straight from the registers into C (+ bias), the activation after. */
        af__gv bias_v[AF__GNV];
#pragma GCC unroll 8
        for (int v = 0; v < AF__GNV; v++) bias_v[v] = last && bias ? af__gld(bias + v * AF__GVW) : af__gzero();
#pragma GCC unroll 16
        for (int r = 0; r < mr; r++)
#pragma GCC unroll 8
            for (int v = 0; v < AF__GNV; v++) {
                float *cp = c + r * ldc + v * AF__GVW;
                af__gv x = first ? acc[r][v] : af__gadd(af__gld(cp), acc[r][v]);
                af__gst(cp, last && bias ? af__gadd(x, bias_v[v]) : x);
            }
        if (last && act != AF_GEMM_ACT_NONE) af__gemm_store(NULL, mr, c, ldc, AF__GW, 0, 1, NULL, act);
        return;
    }
    float t[AF__GMR * AF__GW];
#pragma GCC unroll 16
    for (int r = 0; r < mr; r++)
#pragma GCC unroll 8
        for (int v = 0; v < nv; v++) af__gst(t + r * AF__GW + v * AF__GVW, acc[r][v]);
    af__gemm_store(t, mr, c, ldc, ncols, first, last, bias, act);
}

/* One register tile: rows 0..mr-1 of C from the packed A micro-panel a (element (k, r) at
 * k*AF__GMR + r, kc columns) and the panel slice b (kc rows of AF_GEMM_NR elements of type dt,
 * starting at this tile's first column), then af__gemm_store.  mr and dt are constants at
 * every call site (af__gemm_rows), so the loops over rows and vectors unroll and the
 * accumulators live in registers. */
AF__INLINE void af__gemm_tile(const int mr, const int nv, const int dt, long kc, const float *restrict a,
                              const void *restrict b, float *restrict c, long ldc, long ncols,
                              int first, int last, const float *restrict bias, int act) {
    af__gv acc[AF__GMR][AF__GNV];
#pragma GCC unroll 16
    for (int r = 0; r < mr; r++)
#pragma GCC unroll 8
        for (int v = 0; v < nv; v++) acc[r][v] = af__gzero();
    const float *bf = (const float *)b;
    const uint16_t *bh = (const uint16_t *)b;
    /* The C tile this one adds to (every K block after the first) was written a whole panel
     * group ago and has likely left L2: its rows are prefetched AF_GEMM_PFC rows of k before
     * the end, so the read-modify-write in af__gemm_put does not wait on L3. */
#if AF__GVW > 1
    const long kpf = first || kc <= AF_GEMM_PFC ? -1 : kc - AF_GEMM_PFC;
#endif
    for (long k = 0; k < kc; k++) {
#if AF__GVW > 1
        if (k == kpf)
#pragma GCC unroll 16
            for (int r = 0; r < mr; r++) {
                _mm_prefetch((const char *)(c + r * ldc), _MM_HINT_T0);
                if (ncols > 16) _mm_prefetch((const char *)(c + r * ldc + 16), _MM_HINT_T0);
            }
#endif
        af__gv bv[AF__GNV];
#pragma GCC unroll 8
        for (int v = 0; v < nv; v++) {
            const long o = k * AF_GEMM_STRIP + v * AF__GVW;
            bv[v] = dt == 0 ? af__gld(bf + o) : dt == 1 ? af__gld_bf16(bh + o) : af__gld_f16(bh + o);
        }
        const float *ak = a + k * AF__GMR;
#if AF_GEMM_PFB > 0 && AF__GVW > 1
        _mm_prefetch((const char *)b + (k + AF_GEMM_PFB) * AF_GEMM_STRIP * (dt == 0 ? 4 : 2), _MM_HINT_T0);
        if (dt == 0 && AF_GEMM_STRIP * 4 > 64) /* an f32 strip row past one cache line: its second line too */
            _mm_prefetch((const char *)b + (k + AF_GEMM_PFB) * AF_GEMM_STRIP * 4 + 64, _MM_HINT_T0);
#endif
#pragma GCC unroll 16
        for (int r = 0; r < mr; r++) {
            const af__gv av = af__gset1(ak[r]);
#pragma GCC unroll 8
            for (int v = 0; v < nv; v++) acc[r][v] = af__gfma(av, bv[v], acc[r][v]);
        }
    }
    af__gemm_put(mr, nv, acc, c, ldc, ncols, first, last, bias, act);
}

/* af__gemm_tile with mr and dt as constants: one instance per row count and storage type. */
#define AF__GEMM_ROWS(NAME, DT)                                                                   \
    static void NAME(int mr, long kc, const float *restrict a, const void *restrict b,           \
                     float *restrict c, long ldc, long ncols, int first, int last,                \
                     const float *restrict bias, int act) {                                        \
        switch (mr) {                                                                             \
        AF__GEMM_CASES(DT)                                                                        \
        default: break;                                                                           \
        }                                                                                         \
    }
/* A tile of at most one vector of valid columns (N's last panel, N mod 32 in 1..16 on AVX-512)
 * runs one vector wide: half the FMAs of a whole tile (a 6-column panel pads 10 lanes, not 26). */
#define AF__GEMM_CASE(MR, DT) case MR: \
    if (AF__GNV == 2 && ncols <= AF__GVW) af__gemm_tile(MR, 1, DT, kc, a, b, c, ldc, ncols, first, last, bias, act); \
    else af__gemm_tile(MR, AF__GNV, DT, kc, a, b, c, ldc, ncols, first, last, bias, act); \
    break;
#if AF__GMR == 14
#define AF__GEMM_CASES(DT) AF__GEMM_CASE(1, DT) AF__GEMM_CASE(2, DT) AF__GEMM_CASE(3, DT) AF__GEMM_CASE(4, DT) \
    AF__GEMM_CASE(5, DT) AF__GEMM_CASE(6, DT) AF__GEMM_CASE(7, DT) AF__GEMM_CASE(8, DT) AF__GEMM_CASE(9, DT)    \
    AF__GEMM_CASE(10, DT) AF__GEMM_CASE(11, DT) AF__GEMM_CASE(12, DT) AF__GEMM_CASE(13, DT) AF__GEMM_CASE(14, DT)
#elif AF__GMR == 6
#define AF__GEMM_CASES(DT) AF__GEMM_CASE(1, DT) AF__GEMM_CASE(2, DT) AF__GEMM_CASE(3, DT) AF__GEMM_CASE(4, DT) \
    AF__GEMM_CASE(5, DT) AF__GEMM_CASE(6, DT)
#else
#define AF__GEMM_CASES(DT) AF__GEMM_CASE(1, DT) AF__GEMM_CASE(2, DT) AF__GEMM_CASE(3, DT) AF__GEMM_CASE(4, DT)
#endif
AF__GEMM_ROWS(af__gemm_rows_f32, 0)
AF__GEMM_ROWS(af__gemm_rows_bf16, 1)
AF__GEMM_ROWS(af__gemm_rows_f16, 2)

/* bf16 compute (dt 3, `--compute bf16`): bf16 panels times A rounded to bf16, products summed
 * in f32 by vdpbf16ps (AVX-512 BF16), two k per instruction, so twice the FMA rate on Zen 4 and
 * Zen 5.  Its panels are stored in pairs (the dt-3 layout above): row q holds, for each of the 32
 * columns j, the bf16 pair (b[2q][j], b[2q+1][j]), which is the operand vdpbf16ps takes, so a
 * pair row is two plain loads.  A is packed as bf16 pairs: element (q, r) of a micro-panel, at
 * q*AF__GMR + r, is the 32-bit pair (a[r][2q], a[r][2q+1]) (an odd kc ends with (a[r][kc-1], 0),
 * whose zero meets the panel's zero padding past K).  vdpbf16ps rounds to nearest even and
 * treats denormals as zero.  Without AVX-512 BF16 (a -march build for another CPU) each K block
 * of a panel is widened to f32 rows (af__gemm_pairs_unpack) for the f32 kernel, on A rounded to
 * bf16: the same products, summed one k at a time. */
#if defined(__AVX512BF16__) && AF__GMR == 14
#define AF__GEMM_DPBF16 1
AF__INLINE void af__gemm_tile_dp(const int mr, long kc, const float *restrict a, const void *restrict b,
                                 float *restrict c, long ldc, long ncols, int first, int last,
                                 const float *restrict bias, int act) {
    __m512 acc[AF__GMR][AF__GNV];
#pragma GCC unroll 16
    for (int r = 0; r < mr; r++) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    const uint32_t *ap = (const uint32_t *)(const void *)a;
    const uint16_t *bh = (const uint16_t *)b;
    const long kp = (kc + 1) / 2;
    for (long q = 0; q < kp; q++) {
        const __m512bh b0 = (__m512bh)_mm512_loadu_si512((const void *)(bh + 2 * q * AF_GEMM_NR));
        const __m512bh b1 = (__m512bh)_mm512_loadu_si512((const void *)(bh + 2 * q * AF_GEMM_NR + AF_GEMM_NR));
#if AF_GEMM_PFB > 0
        _mm_prefetch((const char *)(bh + 2 * (q + AF_GEMM_PFB) * AF_GEMM_NR), _MM_HINT_T0);
        _mm_prefetch((const char *)(bh + 2 * (q + AF_GEMM_PFB) * AF_GEMM_NR + AF_GEMM_NR), _MM_HINT_T0);
#endif
        const uint32_t *aq = ap + q * AF__GMR;
#pragma GCC unroll 16
        for (int r = 0; r < mr; r++) {
            const __m512bh av = (__m512bh)_mm512_set1_epi32((int)aq[r]);
            acc[r][0] = _mm512_dpbf16_ps(acc[r][0], av, b0);
            acc[r][1] = _mm512_dpbf16_ps(acc[r][1], av, b1);
        }
    }
    af__gemm_put(mr, AF__GNV, acc, c, ldc, ncols, first, last, bias, act);
}
#define AF__GEMM_DP_CASE(MR) case MR: af__gemm_tile_dp(MR, kc, a, b, c, ldc, ncols, first, last, bias, act); break;
static void af__gemm_rows_dpbf16(int mr, long kc, const float *restrict a, const void *restrict b, float *restrict c,
                                 long ldc, long ncols, int first, int last, const float *restrict bias, int act) {
    switch (mr) {
    AF__GEMM_DP_CASE(1) AF__GEMM_DP_CASE(2) AF__GEMM_DP_CASE(3) AF__GEMM_DP_CASE(4) AF__GEMM_DP_CASE(5)
    AF__GEMM_DP_CASE(6) AF__GEMM_DP_CASE(7) AF__GEMM_DP_CASE(8) AF__GEMM_DP_CASE(9) AF__GEMM_DP_CASE(10)
    AF__GEMM_DP_CASE(11) AF__GEMM_DP_CASE(12) AF__GEMM_DP_CASE(13) AF__GEMM_DP_CASE(14)
    default: break;
    }
}
#else
#define AF__GEMM_DPBF16 0
#endif

#if AF__GMR == 14 && AF__GVW == 16
/* 16 columns of a whole row tile (14 rows, stride lda) into its micro-panel d: a 16 x 16
 * register transpose (rows 14 and 15 zero) whose 16 columns are stored 14 floats each, masked.
 * Every panel group packs its A blocks again, so with few row blocks (M = 64 text rows, 3-12
 * groups) the element-wise copy (a load and a scattered store per float) had cost 5-11% of the
 * GEMM; this is about 0.3 shuffles per float (Tools/gemm-bench/ab.sh; the values are the same;
 * the AVX2 variant below gained 2-8% there with MARCH=x86-64-v3). */
AF__INLINE void af__gemm_pack_a16(const float *restrict a, long lda, float *restrict d) {
    __m512 r[16], t[16], u[16];
#pragma GCC unroll 16
    for (int i = 0; i < 16; i++) r[i] = i < AF__GMR ? _mm512_loadu_ps(a + i * lda) : _mm512_setzero_ps();
#pragma GCC unroll 8
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]); /* per 128-bit lane: r_i[0] r_i+1[0] r_i[1] r_i+1[1] */
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
#pragma GCC unroll 4
    for (int i = 0; i < 16; i += 4) { /* u[i + m]: per lane, rows i..i+3 of the lane's column m */
        u[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
        u[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
        u[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
        u[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
    }
#pragma GCC unroll 4
    for (int m = 0; m < 4; m++) { /* lanes j of u[m], u[4+m], u[8+m], u[12+m] make column 4j + m */
        const __m512 v0 = _mm512_shuffle_f32x4(u[m], u[4 + m], 0x88), v1 = _mm512_shuffle_f32x4(u[m], u[4 + m], 0xdd);
        const __m512 w0 = _mm512_shuffle_f32x4(u[8 + m], u[12 + m], 0x88), w1 = _mm512_shuffle_f32x4(u[8 + m], u[12 + m], 0xdd);
        _mm512_mask_storeu_ps(d + (m + 0) * AF__GMR, 0x3fff, _mm512_shuffle_f32x4(v0, w0, 0x88));
        _mm512_mask_storeu_ps(d + (m + 8) * AF__GMR, 0x3fff, _mm512_shuffle_f32x4(v0, w0, 0xdd));
        _mm512_mask_storeu_ps(d + (m + 4) * AF__GMR, 0x3fff, _mm512_shuffle_f32x4(v1, w1, 0x88));
        _mm512_mask_storeu_ps(d + (m + 12) * AF__GMR, 0x3fff, _mm512_shuffle_f32x4(v1, w1, 0xdd));
    }
}
#define AF__GPACKW 16
#define af__gemm_pack_block af__gemm_pack_a16
#elif AF__GMR == 6 && AF__GVW == 8
/* The AVX2 tile (6 rows): the same with 8 columns, an 8 x 8 transpose (rows 6 and 7 zero). */
AF__INLINE void af__gemm_pack_a8(const float *restrict a, long lda, float *restrict d) {
    __m256 r[8], t[8], u[8];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++) r[i] = i < AF__GMR ? _mm256_loadu_ps(a + i * lda) : _mm256_setzero_ps();
#pragma GCC unroll 4
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]); /* per 128-bit lane: r_i[0] r_i+1[0] r_i[1] r_i+1[1] */
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
#pragma GCC unroll 2
    for (int i = 0; i < 8; i += 4) { /* u[i + m]: rows i..i+3 of column m (low lane) and m + 4 (high) */
        u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
        u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xee);
        u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xee);
    }
#pragma GCC unroll 4
    for (int m = 0; m < 4; m++) { /* columns m and m + 4, 6 floats each: 4 + 2 (vmaskmovps stores are slow on AMD) */
        const __m256 lo = _mm256_permute2f128_ps(u[m], u[4 + m], 0x20), hi = _mm256_permute2f128_ps(u[m], u[4 + m], 0x31);
        _mm_storeu_ps(d + m * AF__GMR, _mm256_castps256_ps128(lo));
        _mm_storel_pi((__m64 *)(void *)(d + m * AF__GMR + 4), _mm256_extractf128_ps(lo, 1));
        _mm_storeu_ps(d + (m + 4) * AF__GMR, _mm256_castps256_ps128(hi));
        _mm_storel_pi((__m64 *)(void *)(d + (m + 4) * AF__GMR + 4), _mm256_extractf128_ps(hi, 1));
    }
}
#define AF__GPACKW 8
#define af__gemm_pack_block af__gemm_pack_a8
#endif

#ifdef AF__GPACKW
/* One whole row tile (AF__GMR rows of n 32-bit values, row stride lds) into its micro-panel d,
 * element (k, r) at k*AF__GMR + r: transposes of AF__GPACKW columns, then the last n mod
 * AF__GPACKW columns one value at a time, copied as bits (af__gemm_pack_a_pairs passes bf16
 * pairs through here). */
static void af__gemm_pack_tile(const float *restrict src, long lds, long n, float *restrict d) {
    long k = 0;
    for (; k + AF__GPACKW <= n; k += AF__GPACKW) af__gemm_pack_block(src + k, lds, d + k * AF__GMR);
    for (long r = 0; r < AF__GMR; r++)
        for (long kk = k; kk < n; kk++) memcpy(d + kk * AF__GMR + r, src + r * lds + kk, sizeof(float));
}
#endif

/* Rows 0..rows-1, columns 0..kc-1 of a (row stride lda) as micro-panels of AF__GMR rows: row
 * tile t at dst + t*AF__GMR*kc, element (k, r) at k*AF__GMR + r.  In a tail tile the rows past
 * `rows` are left unwritten: the kernel for mr rows never reads them.  round: each value
 * rounded to bf16 (dt 3 without AVX-512 BF16). */
static void af__gemm_pack_a(const float *restrict a, long lda, long rows, long kc, int round, float *restrict dst) {
    for (long i = 0; i < rows; i += AF__GMR) {
        const long mr = rows - i < AF__GMR ? rows - i : AF__GMR;
        float *d = dst + i * kc;
#ifdef AF__GPACKW
        if (mr == AF__GMR && !round) {
            af__gemm_pack_tile(a + i * lda, lda, kc, d);
            continue;
        }
#endif
        for (long r = 0; r < mr; r++) {
            const float *s = a + (i + r) * lda;
            if (round)
                for (long k = 0; k < kc; k++) d[k * AF__GMR + r] = af_bf16_to_f32(af_f32_to_bf16(s[k]));
            else
                for (long k = 0; k < kc; k++) d[k * AF__GMR + r] = s[k];
        }
    }
}

/* The same as bf16 pairs for af__gemm_tile_dp: row tile t at dst + t*AF__GMR*kp (kp = ceil(kc/2)
 * 32-bit pairs per row), pair (q, r) at q*AF__GMR + r.  Each row is converted into a scratch
 * row by the vector af_f32_to_bf16_pairs, then spread to the micro-panel: the packing is
 * repeated for every panel group, and one scalar rounding per element had made it a quarter
 * of the time of GEMMs with N = 768. */
static AF__UNUSED void af__gemm_pack_a_pairs(const float *restrict a, long lda, long rows, long kc, uint32_t *restrict dst) {
    const long kp = (kc + 1) / 2;
    uint32_t row[AF__GKCMAX] __attribute__((aligned(64)));
    for (long i = 0; i < rows; i += AF__GMR) {
        const long mr = rows - i < AF__GMR ? rows - i : AF__GMR;
        uint32_t *d = dst + i * kp;
#ifdef AF__GPACKW
        if (mr == AF__GMR) {
            /* A whole row tile: its rows as pairs, then af__gemm_pack_a's transposes over the
             * 32-bit pairs (the shuffles and the tail's memcpy move bits; vector loads and stores
             * may alias). */
            uint32_t tile[AF__GMR * AF__GKCMAX] __attribute__((aligned(64)));
            for (long r = 0; r < mr; r++) af_f32_to_bf16_pairs(a + (i + r) * lda, kc, tile + r * AF__GKCMAX);
            af__gemm_pack_tile((const float *)(const void *)tile, AF__GKCMAX, kp, (float *)(void *)d);
            continue;
        }
#endif
        for (long r = 0; r < mr; r++) {
            af_f32_to_bf16_pairs(a + (i + r) * lda, kc, row);
            for (long q = 0; q < kp; q++) d[q * AF__GMR + r] = row[q];
        }
    }
}

/* ======================================================================================
 * bf16 compute on Intel AMX (`--compute bf16` where the CPU has AMX-BF16: Sapphire Rapids and
 * later Xeons).  There vdpbf16ps runs at half the f32 FMA rate (af_bf16_peak_gflops), so the
 * dt-3 GEMM uses the tile unit instead: TDPBF16PS multiplies a 16 x 32 bf16 tile of A by a
 * 32 x 16 bf16 tile of B (K pairs interleaved, "VNNI" rows) into a 16 x 16 f32 tile, 16 times
 * the work of a vdpbf16ps per instruction.  The products are the same as af__gemm_tile_dp's
 * (bf16 A and B, sums in f32); only the order of the sums differs.
 *
 * Blocking: a task is (row block of AF__AMX_MB rows, panel group).  Its A rows are rounded to
 * bf16 once, row-major with K padded with zeros to a multiple of 32.  The weight panels are
 * already the B tiles' layout (dt 3 pair panels, zero past K): a B tile is 16 pair rows of 16
 * columns, read in place.  (Reshaping bf16 panels of plain rows into pairs per task had taken
 * half of the GEMM's time at 1088 x 3072 x 768: 1.0 against 2.0 TFLOP/s on one core without it.)
 * Register tiles: 32 rows x 32 columns of C in four tiles (tmm0-3), two A tiles (tmm4-5) and two
 * B tiles (tmm6-7); every C tile sums the whole of K before it is stored, so C is written once,
 * and each C element is summed by one tile in k order: results do not depend on the thread count.
 * Linux hands the tile state to a process only on request (arch_prctl ARCH_REQ_XCOMP_PERM);
 * where that is refused the dt-3 GEMM keeps the vdpbf16ps kernel.
 * ==================================================================================== */
#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BF16__) && defined(__linux__) && AF__GMR == 14
#define AF__GEMM_AMX 1
#ifndef AF__AMX_MB
#define AF__AMX_MB 128L /* rows per task: the bf16 A block is MB x K x 2 bytes (L2) */
#endif
extern long syscall(long number, ...);

/* 1 once this process may use the AMX tile state, 0 where the kernel refuses it. */
static int af__amx_ready(void) {
    static int state = -1; /* -1 not asked yet */
    int s;
#pragma omp atomic read
    s = state;
    if (s < 0) {
        /* arch_prctl (158 on x86-64) ARCH_REQ_XCOMP_PERM (0x1023) for XFEATURE_XTILEDATA (18) */
        s = syscall(158L, 0x1023L, 18L) == 0;
#pragma omp atomic write
        state = s;
    }
    return s;
}

/* The tile shapes of this kernel: palette 1, tiles 0-7 of 16 rows x 64 bytes (colsb little-endian
 * 16-bit at byte 16 + 2t, rows at byte 48 + t).  A constant: gcc 12 drops stores into a local
 * array that only ldtilecfg reads (the loaded configuration then had no tiles: #UD). */
static const unsigned char af__amx_cfg[64] __attribute__((aligned(64))) = {
    [0] = 1,
    [16] = 64, [18] = 64, [20] = 64, [22] = 64, [24] = 64, [26] = 64, [28] = 64, [30] = 64,
    [48] = 16, [49] = 16, [50] = 16, [51] = 16, [52] = 16, [53] = 16, [54] = 16, [55] = 16,
};
AF__INLINE void af__amx_configure(void) { _tile_loadconfig(af__amx_cfg); }

/* C[M, N] = act(A . B + bias) over bf16 panels b (dt 3), M >= 1; see the section comment.  0
 * (nothing written) where the A blocks cannot be allocated: the caller runs the vdpbf16ps path. */
static int af__gemm_amx(const float *restrict a, long lda, const uint16_t *restrict b, const float *restrict bias,
                        int act, float *restrict c, long ldc, long M, long N, long K) {
    const long Kp = AF__GPAIRK(K), panels = (N + AF_GEMM_NR - 1) / AF_GEMM_NR;
    const long MB = AF__AMX_MB, mblocks = (M + MB - 1) / MB;
    const int nth = omp_get_max_threads();
    const int big = (double)M * (double)N * (double)K >= 1e6 && nth > 1;
    long groups = big ? (AF__AMX_TPT * nth + mblocks - 1) / mblocks : 1;
    groups = groups < panels ? groups : panels;
    const long ng = (panels + groups - 1) / groups;
    groups = (panels + ng - 1) / ng;
    const int par = big && mblocks * groups > 1, team = par ? nth : 1;
    /* per thread: an A block (MB rows, 32-row tiles padded with zero rows) */
    uint16_t *ablocks = (uint16_t *)aligned_alloc(64, sizeof(uint16_t) * (size_t)(MB * Kp) * (size_t)team);
    if (!ablocks) return 0;
#pragma omp parallel num_threads(team) if (par)
    {
        uint16_t *abuf = ablocks + (size_t)omp_get_thread_num() * (size_t)(MB * Kp);
        float ct[16 * 16] __attribute__((aligned(64)));
        af__amx_configure();
#pragma omp for collapse(2) schedule(dynamic, 1)
        for (long mb = 0; mb < mblocks; mb++)
            for (long g = 0; g < groups; g++) {
                const long i0 = mb * MB, i1 = M < i0 + MB ? M : i0 + MB, rows = (i1 - i0 + 31) & ~31L;
                for (long r = 0; r < rows; r++) { /* row r: K values as bf16, zeros to Kp (and for padding rows) */
                    uint16_t *d = abuf + r * Kp;
                    const long k = i0 + r < i1 ? 2 * ((K + 1) / 2) : 0;
                    if (k) af_f32_to_bf16_pairs(a + (i0 + r) * lda, K, (uint32_t *)(void *)d);
                    memset(d + k, 0, sizeof(uint16_t) * (size_t)(Kp - k));
                }
                const long p1 = panels < (g + 1) * ng ? panels : (g + 1) * ng;
                for (long p = g * ng; p < p1; p++) {
                    const uint16_t *panel = b + (size_t)p * (size_t)Kp * AF_GEMM_NR; /* pair rows, as stored */
                    const long j0 = p * AF_GEMM_NR, ncols = N - j0 < AF_GEMM_NR ? N - j0 : AF_GEMM_NR;
                    for (long i = i0; i < i1; i += 32) {
                        const uint16_t *at = abuf + (i - i0) * Kp;
                        _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
                        for (long k = 0; k < Kp; k += 32) {
                            _tile_loadd(4, at + k, Kp * 2);
                            _tile_loadd(5, at + 16 * Kp + k, Kp * 2);
                            _tile_loadd(6, panel + k * AF_GEMM_NR, 4 * AF_GEMM_NR);
                            _tile_loadd(7, panel + k * AF_GEMM_NR + AF_GEMM_NR, 4 * AF_GEMM_NR);
                            _tile_dpbf16ps(0, 4, 6);
                            _tile_dpbf16ps(1, 4, 7);
                            _tile_dpbf16ps(2, 5, 6);
                            _tile_dpbf16ps(3, 5, 7);
                        }
                        const long mr = i1 - i < 32 ? i1 - i : 32;
                        /* whole 16 x 16 tiles straight into C, partial ones through ct */
#define AF__AMX_PUT(T, R, J)                                                                          \
                        if (mr > (R) && ncols > (J)) {                                                \
                            float *cp = c + (i + (R)) * ldc + j0 + (J);                              \
                            if (mr >= (R) + 16 && ncols >= (J) + 16) _tile_stored(T, cp, ldc * 4);   \
                            else {                                                                    \
                                _tile_stored(T, ct, 64);                                              \
                                for (long r = 0; r < 16 && (R) + r < mr; r++)                         \
                                    for (long j = 0; j < 16 && (J) + j < ncols; j++) cp[r * ldc + j] = ct[r * 16 + j]; \
                            }                                                                         \
                        }
                        AF__AMX_PUT(0, 0, 0)
                        AF__AMX_PUT(1, 0, 16)
                        AF__AMX_PUT(2, 16, 0)
                        AF__AMX_PUT(3, 16, 16)
#undef AF__AMX_PUT
                        if (bias) /* the last K block's store of af__gemm_put: + bias, then the activation */
                            for (long r = 0; r < mr; r++) {
                                float *cr = c + (i + r) * ldc + j0;
#pragma omp simd
                                for (long j = 0; j < ncols; j++) cr[j] += bias[j0 + j];
                            }
                        if (act != AF_GEMM_ACT_NONE) af__gemm_store(NULL, (int)mr, c + i * ldc + j0, ldc, ncols, 0, 1, NULL, act);
                    }
                }
            }
        _tile_release();
    }
    free(ablocks);
    return 1;
}
#else
#define AF__GEMM_AMX 0
#endif

/* C = act(bias) (0 without one): a GEMM over an empty K, for every packed GEMM. */
static AF__UNUSED void af_gemm_empty_k(const float *restrict bias, int act, float *restrict c, long ldc, long M, long N) {
    for (long i = 0; i < M; i++)
        for (long j = 0; j < N; j++) {
            const float x = bias ? bias[j] : 0.0f;
            c[i * ldc + j] = act == AF_GEMM_ACT_GELU_TANH ? af_gelu_tanh(x) : act == AF_GEMM_ACT_SILU ? af_silu(x) : x;
        }
}

/* A K block of one panel as f32 (kc rows of each strip in turn: element (k, j) at
 * (j / AF_GEMM_STRIP) * kc * AF_GEMM_STRIP + (k - k0) * AF_GEMM_STRIP + j % AF_GEMM_STRIP), from
 * weights stored otherwise: gemm_int8.h's dequantization. */
typedef void (*af__gemm_panel_fn)(const void *restrict b, long p, long K, long g, long k0, long kc, float *restrict out);

/* A K block of dt-3 panel p (pairs of k, see above) as f32 rows: the bf16 compute of a build
 * without AVX-512 BF16 runs the f32 kernel on it (g unused). */
static AF__UNUSED void af__gemm_pairs_unpack(const void *restrict b, long p, long K, long g, long k0, long kc, float *restrict out) {
    (void)g;
    const uint16_t *panel = (const uint16_t *)b + (size_t)p * (size_t)AF__GPAIRK(K) * AF_GEMM_NR;
    for (long k = k0; k < k0 + kc; k++)
        for (long j = 0; j < AF_GEMM_NR; j++)
            out[af__strip_at(j, k - k0, kc)] = af_bf16_to_f32(panel[(k / 2) * 2 * AF_GEMM_NR + 2 * j + k % 2]);
}

/* Rows 0..rows-1 (at most a row block), columns 0..kc-1 of A into micro-panels: bf16 pairs for
 * the vdpbf16ps kernel, else floats (rounded to bf16 where that kernel is emulated). */
static void af__gemm_pack_any(const float *restrict a, long lda, long rows, long kc, int pairs, int round, float *restrict dst) {
    if (pairs) af__gemm_pack_a_pairs(a, lda, rows, kc, (uint32_t *)(void *)dst);
    else af__gemm_pack_a(a, lda, rows, kc, round, dst);
}

/* A row-tile kernel (af__gemm_rows_f32 and its siblings): mr rows, kc deep, into C. */
typedef void (*af__gemm_rows_fn)(int mr, long kc, const float *restrict a, const void *restrict b, float *restrict c, long ldc,
                                 long ncols, int first, int last, const float *restrict bias, int act);

/* What every (panel, K block) step of one af__gemm_packed_blocks call shares. */
typedef struct {
    af__gemm_rows_fn rows;
    const void *b;
    size_t esize;  /* bytes per element of the rows the kernel reads */
    long Kstride;  /* rows of k per panel */
    af__gemm_panel_fn unpack;
    long qgroup, K, N, ldc;
    const float *bias;
    int act;
    float *c;
} af__gemm_job;

/* Panel p's K block at k0 (kc rows) against the packed A rows r0..r1-1 (micro-panels from
 * `a`, `at` 4-byte units per packed row), into C: first for k0 = 0, the bias and activation with
 * the last block. */
static void af__gemm_panel_step(const af__gemm_job *j, long p, long k0, long kc, const float *a, long at, long r0,
                                long r1, float *unpacked) {
    const int last = k0 + kc == j->K;
    /* Strip s of the slice starts at panel + s * rows * AF_GEMM_STRIP elements: rows is K in a
     * stored panel, kc in an unpacked slice.  (Pair panels, whole rows, are read in place only by
     * vdpbf16ps, an AVX-512 build whose strip is the whole panel; elsewhere they are unpacked.) */
    const char *panel = (const char *)j->b + ((size_t)p * (size_t)j->Kstride * AF_GEMM_NR + (size_t)k0 * AF_GEMM_STRIP) * j->esize;
    size_t rows = (size_t)j->Kstride;
    if (j->unpack) { j->unpack(j->b, p, j->K, j->qgroup, k0, kc, unpacked); panel = (const char *)unpacked; rows = (size_t)kc; }
    for (long j0 = p * AF_GEMM_NR; j0 < j->N && j0 < (p + 1) * AF_GEMM_NR; j0 += AF__GW) {
        const long ncols = j->N - j0 < AF__GW ? j->N - j0 : AF__GW;
        const void *bt = panel + (size_t)((j0 - p * AF_GEMM_NR) / AF_GEMM_STRIP) * rows * AF_GEMM_STRIP * j->esize;
        const float *bias_t = j->bias ? j->bias + j0 : NULL;
        for (long i = r0; i < r1; i += AF__GMR) {
            const int mr = r1 - i < AF__GMR ? (int)(r1 - i) : AF__GMR;
            j->rows(mr, kc, a + (i - r0) * at, bt, j->c + i * j->ldc + j0, j->ldc, ncols, k0 == 0, last, bias_t, j->act);
        }
    }
}

/* The L2 cache's bytes: sysconf's (1 MB where it does not say), or $ARCFLOW_GEMM_L2, which the
 * tests set to run both loop orders of af__gemm_packed_blocks on any machine (read per GEMM: a
 * few hundred calls per model evaluation).  The order never changes the sums. */
static long af__l2_bytes(void) {
    static long l2 = 0;
    const char *forced = getenv("ARCFLOW_GEMM_L2");
    if (forced && atol(forced) > 0) return atol(forced);
    if (!l2) {
        const long v = sysconf(_SC_LEVEL2_CACHE_SIZE);
        l2 = v > 0 ? v : 1L << 20;
    }
    return l2;
}

/* Row tile t of A's K block kb (AF__GMR rows, fewer at M's end) into a shared A block `blk`, whose
 * tile t starts at t * AF__GMR * at (at: 4-byte units per packed row of that K block). */
static void af__gemm_pack_shared_tile(const float *restrict a, long lda, long M, long K, long KC, long kb, long t, int pairs,
                                      int round, float *restrict blk) {
    const long k0 = kb * KC, kc = K - k0 < KC ? K - k0 : KC, at = pairs ? (kc + 1) / 2 : kc;
    const long rows = M - t * AF__GMR < AF__GMR ? M - t * AF__GMR : AF__GMR;
    af__gemm_pack_any(a + t * AF__GMR * lda + k0, lda, rows, kc, pairs, round, blk + t * AF__GMR * at);
}

/* The weight-outer order (AF_GEMM_WOUTER; expanded panels, M one row block of rtiles >= 8 tiles):
 * K block by K block, the threads pack its A for all M rows into `shared` (M x kc), then run the
 * panel groups over every row tile, so each (panel, K block) slice is expanded once per GEMM.
 * K-outer, not panel-outer: both threads read the same A block from L3 at about the same time,
 * where each panel over all of K streamed the whole of A once per panel (level at M = 320, 1.07x
 * slower in the 1024-token NFE, session 43).  One K block of A at a time, not all of K: the
 * buffer is M x kc floats, not M x K (4608 x 12288 in a 1024-pixel FLUX's MLP: 226 MB). */
static void af__gemm_weight_outer(const af__gemm_job *job, const float *restrict a, long lda, long M, long KC, int pairs,
                                  int round, long groups, long ng, float *restrict shared, int par) {
    const long rtiles = (M + AF__GMR - 1) / AF__GMR, panels = (job->N + AF_GEMM_NR - 1) / AF_GEMM_NR;
#pragma omp parallel if (par)
    {
        float unpacked[AF_GEMM_KC * AF_GEMM_NR] __attribute__((aligned(64)));
        for (long kb = 0; kb * KC < job->K; kb++) {
            const long k0 = kb * KC, kc = job->K - k0 < KC ? job->K - k0 : KC, at = pairs ? (kc + 1) / 2 : kc;
#pragma omp for schedule(static)
            for (long t = 0; t < rtiles; t++) af__gemm_pack_shared_tile(a, lda, M, job->K, KC, kb, t, pairs, round, shared);
            /* (the implicit barrier: every group reads tiles the other threads packed; and the
             * next K block's packing waits for every group to finish with this one) */
#pragma omp for schedule(dynamic, 1)
            for (long g = 0; g < groups; g++)
                for (long p = g * ng; p < panels && p < (g + 1) * ng; p++) af__gemm_panel_step(job, p, k0, kc, shared, at, 0, M, unpacked);
        }
    }
}

/* af_gemm_packed, or with `unpack` non-null: B is in unpack's format (groups of qgroup along K), and
 * each thread expands one K block of a panel at a time into f32 rows, which every row tile of
 * its row block then reads (int8 weights run the f32 micro-kernel at the cost of one
 * conversion per weight per row block). */
static void af__gemm_packed_blocks(const float *restrict a, long lda, const void *restrict b, int dt,
                                   const float *restrict bias, int act, float *restrict c, long ldc,
                                   long M, long N, long K, long qgroup, af__gemm_panel_fn unpack) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) { af_gemm_empty_k(bias, act, c, ldc, M, N); return; }
    /* With unpack, each weight slice is expanded once per row block it serves: 336-row blocks
     * convert a 1088-row GEMM's weights 4 times (AVX-512, where the shared blocking measured
     * 1.06-1.07x at M = 1088 with N = 768 against int8's own 448-row blocks: DT=4 ab.sh, session
     * 27, Intel), AVX2's 108-row blocks 11 times.  AF_GEMM_WOUTER (above) makes the whole M one
     * row block instead, so each slice is expanded once per GEMM. */
    const int wouter = unpack != NULL && AF_GEMM_WOUTER;
    const long MB = wouter ? (M + AF__GMR - 1) / AF__GMR * AF__GMR : AF_GEMM_MB;
    const long panels = (N + AF_GEMM_NR - 1) / AF_GEMM_NR, mblocks = (M + MB - 1) / MB;
    const size_t esize = dt == 0 || unpack ? sizeof(float) : sizeof(uint16_t); /* of the rows the kernel reads */
    const int pairs = dt == 3 && AF__GEMM_DPBF16, round = dt == 3 && !pairs;
    const long KC = dt == 0 || unpack ? AF_GEMM_KC : pairs ? AF_GEMM_KCDP : AF_GEMM_KC16; /* even: only K's last block may hold an odd kc */
    const long Kstride = dt == 3 ? AF__GPAIRK(K) : K; /* rows of k per panel */
    af__gemm_rows_fn rows = dt == 0 || unpack ? af__gemm_rows_f32 : dt == 2 ? af__gemm_rows_f16 : af__gemm_rows_bf16;
#if AF__GEMM_DPBF16
    if (pairs) rows = af__gemm_rows_dpbf16;
#endif
    const int nth = omp_get_max_threads();
    const int big = (double)M * (double)N * (double)K >= 1e6 && nth > 1;
    /* Row blocks share the row tiles evenly (M = 1088 is 19 + 20 + 19 + 20 tiles of 14, not
     * 336 + 336 + 336 + 80 rows), so no block is a short straggler. */
    const long rtiles = (M + AF__GMR - 1) / AF__GMR;
    /* One row block of 8 or more row tiles (M in 99..AF_GEMM_MB): its A is packed once, before
     * the tasks, into a buffer they all read, instead of once per panel group, and the groups can
     * be as many as balance asks (AF_GEMM_TPT_SHARED).  ab.sh (session 27, Intel, 2 threads, 60
     * alternations) against packing per group: 1.01-1.05x at M = 256 and 320; at M = 64, whose
     * packing is cheap, 0.95-0.97x with N = 768 (its tasks then read tiles packed by the other
     * core), so a short M packs per group as before. */
    const int share = big && mblocks == 1 && rtiles >= 8;
    /* Panel groups: about AF_GEMM_TPT tiles per thread, as few groups as that allows (each
     * group packs its A blocks once), none wider than AF_GEMM_NGMAX panels; then, up to twice
     * that many, the first count whose tiles split evenly over the threads (M = 700 on 2
     * threads: 3 row blocks, so 2 groups and 6 tiles, not 1 group where one thread would do 2
     * while the other waits after 1). */
    const long tpt = share ? AF_GEMM_TPT_SHARED : AF_GEMM_TPT;
    long groups = big ? (tpt * nth + mblocks - 1) / mblocks : 1;
    if (groups < (panels + AF_GEMM_NGMAX - 1) / AF_GEMM_NGMAX) groups = (panels + AF_GEMM_NGMAX - 1) / AF_GEMM_NGMAX;
    if (groups > panels) groups = panels;
    for (long g = groups; big && g <= 2 * groups && g <= panels; g++) {
        const long width = (panels + g - 1) / g, count = (panels + width - 1) / width; /* g groups, as formed below */
        if (mblocks * count % nth == 0) { groups = count; break; }
    }
    const long ng = (panels + groups - 1) / groups;
    groups = (panels + ng - 1) / ng;
    const int par = big && mblocks * groups > 1;
    const af__gemm_job job = {rows, b, esize, Kstride, unpack, qgroup, K, N, ldc, bias, act, c};
    /* The shared A (share): K block kb's micro-panels at shared + kb * rtiles * AF__GMR * KCu (the
     * weight-outer order's one K block at a time at shared), row tile t at t * AF__GMR * at within
     * it; NULL (allocation failed) packs per task as below. */
    const long KCu = pairs ? (KC + 1) / 2 : KC, kblocks = (K + KC - 1) / KC; /* 4-byte units per full packed row */
    const size_t region = (size_t)rtiles * AF__GMR * (size_t)KCu;
    float *shared = share ? (float *)aligned_alloc(64, (sizeof(float) * region * (size_t)(wouter ? 1 : kblocks) + 63) & ~(size_t)63) : NULL;
    if (wouter && shared) {
        af__gemm_weight_outer(&job, a, lda, M, KC, pairs, round, groups, ng, shared, par);
        free(shared);
        return;
    }
    /* Panel-outer order where the K-outer one (below) loses C from L2: when a task's C block
     * and one K block of its A pass 0.3 of L2 (AF_GEMM_PO_FILL), the C tiles a K block adds
     * to were written a whole panel group ago, with the group's weight slices streamed through
     * L2 since, and come back from L3 or memory.  Then K goes in passes of kspan blocks, and per
     * pass the task's rows go in sub-blocks (as few as possible, their A over the pass's K
     * blocks within half of L2) and each panel runs the pass's K blocks in turn, so its C tiles
     * are still in L2: C comes back from L3 once per pass, not once per K block.  Each extra
     * sub-block reads the weights once more, so the passes are the fewest that keep
     * AF_GEMM_PO_TILES row tiles per sub-block; one K block per pass is the K-outer order.  The
     * sums and their order are the same either way.  Why 0.3 of L2 and 7 tiles (ab.sh, sessions
     * 29-30, Intel with 2 MB L2): 1.02-1.06x where it moved 2048^3, 4096 x 4096 x 1024 and
     * 1100 x 1300 x 1700 to panel-outer, level on the width-768 model; passes of fewer K blocks
     * than K has: session 32 (README, "Own GEMM over packed weights", has the figures). */
    const long l2 = af__l2_bytes(), ptiles = (rtiles + mblocks - 1) / mblocks; /* row tiles of the largest row block */
    long kspan = 1, ktiles = ptiles; /* K blocks per pass; row tiles per sub-block */
    for (long passes = 1; passes < kblocks; passes++) {
        const long span = (kblocks + passes - 1) / passes, cap = l2 / 2 / ((long)sizeof(float) * AF__GMR * KCu * span);
        const long kt = cap < 1 ? 1 : cap < ptiles ? cap : ptiles, nsub = (ptiles + kt - 1) / kt;
        if (nsub == 1 || ptiles / nsub >= AF_GEMM_PO_TILES) { kspan = span; ktiles = kt; break; }
    }
    /* Whether the largest task passes the threshold below (no task passes unless it does): only
     * then the heap holds a sub-block's A over a pass's K blocks.  Never in the weight-outer order
     * (af__gemm_weight_outer says why). */
    const int po_any = !wouter && kspan > 1 &&
                       (double)sizeof(float) * (double)(ptiles * AF__GMR) * (double)(ng * AF_GEMM_NR + KCu) > AF_GEMM_PO_FILL * (double)l2;
#pragma omp parallel if (par)
    {
        if (shared) {
#pragma omp for collapse(2) schedule(static)
            for (long kb = 0; kb < kblocks; kb++)
                for (long t = 0; t < rtiles; t++) af__gemm_pack_shared_tile(a, lda, M, K, KC, kb, t, pairs, round, shared + (size_t)kb * region);
            /* its implicit barrier: every task reads tiles the other threads packed */
        }
        const size_t kbytes = po_any ? sizeof(float) * (size_t)(ktiles * AF__GMR * KCu * kspan) : 0, obytes = sizeof(float) * (size_t)(MB * AF__GKCMAX);
        float *heap = shared ? NULL : (float *)aligned_alloc(64, ((kbytes > obytes ? kbytes : obytes) + 63) & ~(size_t)63);
        float local[AF__GMR * AF__GKCMAX];
        /* kc x 32 floats (32 KB; 64 KB at AVX2's kc); touched only with unpack */
        float unpacked[AF_GEMM_KC * AF_GEMM_NR] __attribute__((aligned(64)));
        float *abuf = heap ? heap : local;
#pragma omp for collapse(2) schedule(dynamic, 1)
        for (long mb = 0; mb < mblocks; mb++)
            for (long g = 0; g < groups; g++) {
                const long t0 = mb * rtiles / mblocks, t1 = (mb + 1) * rtiles / mblocks; /* row tiles */
                const long i0 = t0 * AF__GMR, i1 = M < t1 * AF__GMR ? M : t1 * AF__GMR;
                const long p0 = g * ng, p1 = panels < p0 + ng ? panels : p0 + ng;
                /* The K-outer order's L2 working set: the task's C block and one K block of its A. */
                const double kouter = (double)sizeof(float) * (double)(i1 - i0) * (double)((p1 - p0) * AF_GEMM_NR + KCu);
                const long nsub = (t1 - t0 + ktiles - 1) / ktiles;
                const int po = po_any && (shared || heap) && kouter > AF_GEMM_PO_FILL * (double)l2 && (nsub == 1 || (t1 - t0) / nsub >= AF_GEMM_PO_TILES);
                /* K-outer is a pass per K block over the task's rows at once (one row tile at a
                 * time in `local`, where the heap allocation failed). */
                const long span = po ? kspan : 1, subs = po ? nsub : shared || heap ? 1 : t1 - t0;
                for (long kb0 = 0; kb0 < kblocks; kb0 += span) {
                    const long kb1 = kblocks < kb0 + span ? kblocks : kb0 + span;
                    for (long sb = 0; sb < subs; sb++) {
                        const long r0 = (t0 + sb * (t1 - t0) / subs) * AF__GMR, r1e = (t0 + (sb + 1) * (t1 - t0) / subs) * AF__GMR;
                        const long r1 = M < r1e ? M : r1e, kstep = (r1e - r0) * KCu; /* floats of one K block in abuf */
                        if (!shared)
                            for (long kb = kb0; kb < kb1; kb++)
                                af__gemm_pack_any(a + r0 * lda + kb * KC, lda, r1 - r0, K - kb * KC < KC ? K - kb * KC : KC, pairs, round,
                                                  abuf + (kb - kb0) * kstep);
                        for (long p = p0; p < p1; p++)
                            for (long kb = kb0; kb < kb1; kb++) {
                                const long k0 = kb * KC, kc = K - k0 < KC ? K - k0 : KC, at = pairs ? (kc + 1) / 2 : kc;
                                const float *ak = shared ? shared + (size_t)kb * region + (size_t)(r0 * at) : abuf + (kb - kb0) * kstep;
                                af__gemm_panel_step(&job, p, k0, kc, ak, at, r0, r1, unpacked);
                            }
                    }
                }
            }
        free(heap);
    }
    free(shared);
}

/* Panels one pass of a one-row GEMM works on: independent FMA chains per column, enough to
 * cover the FMA latency, and as many weight streams as the prefetchers follow. */
#define AF__GEMV_PANELS 4

/* One pass of af__gemv_f32 / af__gemv_i8 (always inlined with a constant i8, so each storage
 * type gets its own loop): c[j] for the columns of panels p0 .. p0+3 (fewer at the end).
 * B: f32 panels (i8 = 0), or gemm_int8.h's int8 panels of `pbytes` bytes, scales then codes,
 * with groups of g along K (i8 = 1). */
AF__INLINE void af__gemv_pass(const float *restrict a, const void *restrict b, int i8, long pbytes, long g,
                              const float *restrict bias, int act, float *restrict c, long N, long K, long p0) {
    enum { V = AF_GEMM_NR / AF__GVW };
    const long panels = (N + AF_GEMM_NR - 1) / AF_GEMM_NR, groups = i8 ? (K + g - 1) / g : 1;
    if (!i8) g = K;
    const char *panel[AF__GEMV_PANELS];
    for (int u = 0; u < AF__GEMV_PANELS; u++)
        /* past the last panel: the last one again, computed and not stored (fixed trip counts keep
         * the accumulators in registers) */
        panel[u] = (const char *)b + (p0 + u < panels ? p0 + u : panels - 1) * pbytes;
    float sum[AF__GEMV_PANELS][AF_GEMM_NR] __attribute__((aligned(64)));
    for (long k0 = 0; k0 < K; k0 += AF_GEMM_KC) {
        const long k1 = K - k0 < AF_GEMM_KC ? K : k0 + AF_GEMM_KC;
        af__gv acc[AF__GEMV_PANELS][V];
        for (int u = 0; u < AF__GEMV_PANELS; u++)
            for (int v = 0; v < V; v++) acc[u][v] = af__gzero();
        for (long k = k0, grp = k0 / g; k < k1; grp++) {
            const long ke = (grp + 1) * g < k1 ? (grp + 1) * g : k1;
            for (; k < ke; k++) {
                const af__gv ak = af__gset1(a[k]);
                for (int u = 0; u < AF__GEMV_PANELS; u++)
                    for (int v = 0; v < V; v++) {
                        af__gv w;
                        if (i8) {
                            const float *sk = (const float *)(const void *)panel[u] + grp * AF_GEMM_NR + v * AF__GVW;
                            const int8_t *qk = (const int8_t *)(panel[u] + groups * AF_GEMM_NR * (long)sizeof(float)) + k * AF_GEMM_NR + v * AF__GVW;
                            w = af__gmul(af__gld_i8(qk), af__gld(sk));
                        } else {
                            w = af__gld((const float *)(const void *)panel[u] + af__strip_at(v * AF__GVW, k, K));
                        }
                        acc[u][v] = af__gfma(ak, w, acc[u][v]);
                    }
            }
        }
        for (int u = 0; u < AF__GEMV_PANELS; u++)
            for (int v = 0; v < V; v++)
                af__gst(&sum[u][v * AF__GVW], k0 == 0 ? acc[u][v] : af__gadd(af__gld(&sum[u][v * AF__GVW]), acc[u][v]));
    }
    for (int u = 0; u < AF__GEMV_PANELS; u++) {
        const long j0 = (p0 + u) * AF_GEMM_NR;
        for (long j = j0; j < N && j < j0 + AF_GEMM_NR; j++) {
            const float x = bias ? sum[u][j - j0] + bias[j] : sum[u][j - j0];
            c[j] = act == AF_GEMM_ACT_GELU_TANH ? af_gelu_tanh(x) : act == AF_GEMM_ACT_SILU ? af_silu(x) : x;
        }
    }
}

/* c[N] = act(a[K] . B + bias): one row (M = 1: the AdaLN modulations, one row against some of
 * the largest weights of a model).  The blocked path spends a row tile of 14 on it, packs A and
 * (int8) expands each weight into f32 rows that this one row reads once; here each weight goes
 * from memory to an FMA (dequantized in registers), four panels at a time.  Same values and
 * summation order as the blocked path (per column: k ascending within K blocks of AF_GEMM_KC,
 * the block sums added in turn, then bias and activation), so the result is bit-identical to it.
 * Measured with Tools/gemm-bench/ab.sh (1 thread, 1 x 4608 x 768 and the other modulation
 * shapes): 1.9-2.0x the blocked path for f32, 2.4-2.8x for int8. */
static void af__gemv_f32(const float *restrict a, const float *restrict b, const float *restrict bias, int act,
                         float *restrict c, long N, long K) {
    const long passes = ((N + AF_GEMM_NR - 1) / AF_GEMM_NR + AF__GEMV_PANELS - 1) / AF__GEMV_PANELS;
#pragma omp parallel for schedule(static) if ((double)N * (double)K >= 1e6 && omp_get_max_threads() > 1)
    for (long pass = 0; pass < passes; pass++)
        af__gemv_pass(a, b, 0, K * AF_GEMM_NR * (long)sizeof(float), K, bias, act, c, N, K, pass * AF__GEMV_PANELS);
}

/* The same over int8 panels (gemm_int8.h) of pbytes bytes with groups of g along K. */
static AF__UNUSED void af__gemv_i8(const float *restrict a, const void *restrict b, long pbytes, long g,
                                   const float *restrict bias, int act, float *restrict c, long N, long K) {
    const long passes = ((N + AF_GEMM_NR - 1) / AF_GEMM_NR + AF__GEMV_PANELS - 1) / AF__GEMV_PANELS;
#pragma omp parallel for schedule(static) if ((double)N * (double)K >= 1e6 && omp_get_max_threads() > 1)
    for (long pass = 0; pass < passes; pass++) af__gemv_pass(a, b, 1, pbytes, g, bias, act, c, N, K, pass * AF__GEMV_PANELS);
}

/* C[M, N] (row stride ldc) = act(A[M, K] (row stride lda) . B + bias), B packed as described
 * above with storage type dt (0 f32, 1 bf16, 2 f16; 3 bf16 with bf16 compute, see
 * af__gemm_tile_dp); bias nullable; act an AF_GEMM_ACT_*.
 * Opens its own parallel region above ~1 MFLOP (called from serial code, like the row kernels).
 * Scratch: one MB x kc block of A per thread (344 KB), or for a GEMM of one row block all of A
 * packed once (rows x K floats), from the heap; where that fails, a stack micro-panel of one row
 * tile (the same arithmetic, packing repeated per row tile).
 * One row of f32 panels: af__gemv_f32.  dt 3 from 16 rows on a CPU with AMX: af__gemm_amx. */
AF__API void af_gemm_packed(const float *restrict a, long lda, const void *restrict b, int dt,
                            const float *restrict bias, int act, float *restrict c, long ldc,
                            long M, long N, long K) {
    if (M == 1 && dt == 0 && N > 0 && K > 0) {
        af__gemv_f32(a, (const float *)b, bias, act, c, N, K);
        return;
    }
#if AF__GEMM_AMX
    /* bf16 compute on the tile unit, where this process may use it (a 32-row tile pair pays from 16 rows) */
    if (dt == 3 && M >= 16 && N > 0 && K > 0 && af__amx_ready() && af__gemm_amx(a, lda, (const uint16_t *)b, bias, act, c, ldc, M, N, K))
        return;
#endif
    af__gemm_packed_blocks(a, lda, b, dt, bias, act, c, ldc, M, N, K, 0, dt == 3 && !AF__GEMM_DPBF16 ? af__gemm_pairs_unpack : NULL);
}

/* Columns per strip of this build's packed panels (AF_GEMM_STRIP): the Swift packer lays the
 * weights out for it, and a model folder is checked against it when loaded. */
AF__API int af_gemm_strip(void) { return AF_GEMM_STRIP; }

/* C[M, N] = A[M, K] . op(B) for an f32 B that is not a packed weight (training: activations,
 * gradients, weights read as inputs; tb: B is [N, K], else [K, N]): op(B) is copied into panels
 * on each call, then the packed GEMM runs, so these GEMMs get the same micro-kernel as inference
 * and do not depend on which kernels OpenBLAS picked (OPENBLAS_CORETYPE).  The copy is O(N K)
 * against the GEMM's O(M N K): KernelEmitter.matmul routes here only where M is large. */
AF__API void af_gemm_f32(const float *restrict a, const float *restrict b, int tb, float *restrict c,
                         long M, long N, long K) {
    const long panels = (N + AF_GEMM_NR - 1) / AF_GEMM_NR;
    float *p = (float *)aligned_alloc(64, (sizeof(float) * (size_t)(panels * K * AF_GEMM_NR) + 63) & ~(size_t)63);
    if (!p) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, tb ? CblasTrans : CblasNoTrans, (int)M, (int)N, (int)K, 1.0f, a, (int)K,
                    b, tb ? (int)K : (int)N, 0.0f, c, (int)N);
        return;
    }
#pragma omp parallel for schedule(static) if (panels > 1 && panels * K * AF_GEMM_NR >= AF_PAR_MIN_ELEMS && omp_get_max_threads() > 1)
    for (long q = 0; q < panels; q++) {
        float *d = p + q * K * AF_GEMM_NR;
        const long j0 = q * AF_GEMM_NR, nj = N - j0 < AF_GEMM_NR ? N - j0 : AF_GEMM_NR;
        for (long s0 = 0; s0 < AF_GEMM_NR; s0 += AF_GEMM_STRIP) {
            float *ds = d + s0 * K; /* strip s0 / AF_GEMM_STRIP: K rows of AF_GEMM_STRIP */
            const long ns = nj - s0 < 0 ? 0 : nj - s0 < AF_GEMM_STRIP ? nj - s0 : AF_GEMM_STRIP;
            if (!tb) {
                for (long k = 0; k < K; k++) {
                    if (ns) memcpy(ds + k * AF_GEMM_STRIP, b + k * N + j0 + s0, sizeof(float) * (size_t)ns);
                    for (long j = ns; j < AF_GEMM_STRIP; j++) ds[k * AF_GEMM_STRIP + j] = 0.0f;
                }
            } else {
                /* rows of B are the strip's columns: read each along K, write it down the strip */
                for (long j = 0; j < AF_GEMM_STRIP; j++) {
                    const float *src = b + (j0 + s0 + j) * K;
                    if (j < ns)
                        for (long k = 0; k < K; k++) ds[k * AF_GEMM_STRIP + j] = src[k];
                    else
                        for (long k = 0; k < K; k++) ds[k * AF_GEMM_STRIP + j] = 0.0f;
                }
            }
        }
    }
    af__gemm_packed_blocks(a, K, p, 0, NULL, AF_GEMM_ACT_NONE, c, N, M, N, K, 0, NULL);
    free(p);
}

/* ------------------------------------------------------------------------------------------
 * Machine ceiling
 * ------------------------------------------------------------------------------------------ */

/* The clock af_fma_peak_gflops reads (seconds): wall time, or Tools/gemm-bench's process CPU
 * time on a machine shared with other work (-DAF_PEAK_CLOCK=...). */
#ifndef AF_PEAK_CLOCK
#define AF_PEAK_CLOCK omp_get_wtime
#endif

/* One run of a unit's peak in GFLOP/s over all OpenMP threads (its length in *seconds when not
 * NULL), iters steps of: unit 0 f32 FMAs (each thread 12 independent chains of vector FMAs,
 * enough to cover FMA latency on two pipes; 2^21 steps take ~7 ms with AVX-512 on Zen 4),
 * 1 `vdpbf16ps` (AVX-512 BF16 only, the same chains: each lane two products and two sums),
 * 2 the AMX tile unit (four independent TDPBF16PS chains, each 16 x 16 x 32 products). */
AF__UNUSED static double af__peak_run(int unit, long iters, double *seconds) {
    const int bf16 = unit == 1;
    (void)bf16;   /* read only by the AVX-512 path */
    int threads = 1;
    float sink = 0.0f;
    const double t0 = AF_PEAK_CLOCK();
    #pragma omp parallel reduction(+ : sink)
    {
        #pragma omp single
        threads = omp_get_num_threads();
#if AF__GEMM_AMX
        if (unit == 2) {
            af__amx_configure();
            _tile_zero(4); _tile_zero(5); _tile_zero(6); _tile_zero(7);
            for (long i = 0; i < iters; i++) {
                _tile_dpbf16ps(0, 4, 6);
                _tile_dpbf16ps(1, 4, 7);
                _tile_dpbf16ps(2, 5, 6);
                _tile_dpbf16ps(3, 5, 7);
            }
            _tile_release();
        } else
#endif
        {
#if defined(__AVX512F__)
            __m512 a[12];
            for (int j = 0; j < 12; j++) a[j] = _mm512_set1_ps(1.0f + (float)j);
            if (bf16) {
#if defined(__AVX512BF16__)
                const __m512bh m = (__m512bh)_mm512_set1_epi32(0x3f7f3f7f), c = (__m512bh)_mm512_set1_epi32(0x33d633d6);
                for (long i = 0; i < iters; i++)
                    for (int j = 0; j < 12; j++) a[j] = _mm512_dpbf16_ps(a[j], m, c);
#endif
            } else {
                const __m512 m = _mm512_set1_ps(0.9999999f), c = _mm512_set1_ps(1e-7f);
                for (long i = 0; i < iters; i++)
                    for (int j = 0; j < 12; j++) a[j] = _mm512_fmadd_ps(a[j], m, c);
            }
            for (int j = 0; j < 12; j++) sink += _mm512_reduce_add_ps(a[j]);
#elif defined(__AVX2__) && defined(__FMA__)
            const __m256 m = _mm256_set1_ps(0.9999999f), c = _mm256_set1_ps(1e-7f);
            __m256 a[12];
            for (int j = 0; j < 12; j++) a[j] = _mm256_set1_ps(1.0f + (float)j);
            for (long i = 0; i < iters; i++)
                for (int j = 0; j < 12; j++) a[j] = _mm256_fmadd_ps(a[j], m, c);
            float lanes[8];
            for (int j = 0; j < 12; j++) { _mm256_storeu_ps(lanes, a[j]); for (int l = 0; l < 8; l++) sink += lanes[l]; }
#else
            float a[12];
            for (int j = 0; j < 12; j++) a[j] = 1.0f + (float)j;
            for (long i = 0; i < iters; i++)
                for (int j = 0; j < 12; j++) a[j] = a[j] * 0.9999999f + 1e-7f;
            for (int j = 0; j < 12; j++) sink += a[j];
#endif
        }
    }
    const double t = AF_PEAK_CLOCK() - t0;
#if defined(__AVX512F__)
    const double flops = bf16 ? 64.0 : 32.0;   /* per instruction: 16 lanes × (2 products + 2 sums), or × FMA */
#elif defined(__AVX2__) && defined(__FMA__)
    const double flops = 16.0;
#else
    const double flops = 2.0;
#endif
    const double per_iter = unit == 2 ? 4.0 * 16.0 * 16.0 * 32.0 * 2.0 : 12.0 * flops;
    if (seconds) *seconds = t;
    return sink == sink ? (double)threads * (double)iters * per_iter / t / 1e9 : 0.0;
}

/* The default run length of af__peak_run: ~3-7 ms. */
#define AF__PEAK_ITERS(unit) ((unit) == 2 ? 1L << 14 : 1L << 21)

/* The peak of one unit, measured: best of five default runs.  Best of three ~2 ms runs read half
 * the peak or less now and then on a shared host (one vCPU descheduled for a few ms in every
 * run), which made a GEMM read above 100% of it; longer and more runs make a low reading, never
 * a high one, rarer. */
AF__UNUSED static double af__peak_gflops(int unit) {
    double best = 0.0;
    for (int rep = 0; rep < 5; rep++) {
        const double g = af__peak_run(unit, AF__PEAK_ITERS(unit), NULL);
        if (g > best) best = g;
    }
    return best;
}

/* One run of unit's peak lasting about `seconds` (Tools/gemm-bench: a GEMM's share of the peak
 * sustained over as long as the GEMM ran, beside the best of af__peak_gflops's short runs; on a
 * host whose clock moves within seconds, a 3 ms run catches highs that a 100 ms one averages). */
AF__UNUSED static double af__peak_window_gflops(int unit, double seconds) {
    double t = 0;
    af__peak_run(unit, AF__PEAK_ITERS(unit), &t);
    const long iters = t > 0 ? (long)((double)AF__PEAK_ITERS(unit) * seconds / t) : AF__PEAK_ITERS(unit);
    return af__peak_run(unit, iters > 1 ? iters : 1, NULL);
}

/* The fp32 FMA peak of this machine: benchmarks report GFLOP/s against this, not against a data
 * sheet. */
AF__API double af_fma_peak_gflops(void) { return af__peak_gflops(0); }

/* Which unit runs `--compute bf16` in this process: 2 the AMX tile unit, 1 vdpbf16ps, 0 f32 FMAs
 * on A rounded to bf16 (a build without AVX-512 BF16). */
AF__API int af_bf16_compute_unit(void) {
#if AF__GEMM_AMX
    if (af__amx_ready()) return 2;
#endif
    return AF__GEMM_DPBF16 ? 1 : 0;
}

/* The bf16 dot-product peak (`vdpbf16ps`, or the AMX tile unit where the dt-3 GEMM runs on it);
 * 0 without AVX-512 BF16.  `--compute bf16` pays off only where this is well above the f32 FMA
 * peak: about twice it on Zen 4 and Zen 5 (vdpbf16ps), 15-17 times on the AMX Xeon of session 26;
 * vdpbf16ps alone there runs at half the FMA rate (session 21: the mode ran slower than f32 before
 * AMX), so compile compares the two and says so. */
AF__API double af_bf16_peak_gflops(void) {
#if AF__GEMM_AMX
    if (af__amx_ready()) return af__peak_gflops(2);
#endif
#if defined(__AVX512BF16__)
    return af__peak_gflops(1);
#else
    return 0.0;
#endif
}

#endif /* ARCFLOW_GEMM_H */
