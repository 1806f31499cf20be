/* arcflow prelude, matrix products: convolution as im2col GEMMs, the machine's FMA ceiling (needs common.h). */
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
static AF__UNUSED void af_conv2d(const float *restrict x, const float *restrict w,
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

/* ------------------------------------------------------------------------------------------
 * Machine ceiling
 * ------------------------------------------------------------------------------------------ */

/* The fp32 FMA peak of this machine in GFLOP/s over all OpenMP threads, measured: each thread
 * runs 12 independent chains of vector FMAs (enough to cover FMA latency on two pipes), best
 * of three ~20 ms runs.  Benchmarks report GFLOP/s against this, not against a data sheet. */
AF__UNUSED static double af_fma_peak_gflops(void) {
    const long iters = 1L << 19;
    double best = 0.0;
    for (int rep = 0; rep < 3; rep++) {
        int threads = 1;
        float sink = 0.0f;
        const double t0 = omp_get_wtime();
        #pragma omp parallel reduction(+ : sink)
        {
            #pragma omp single
            threads = omp_get_num_threads();
#if defined(__AVX512F__)
            const __m512 m = _mm512_set1_ps(0.9999999f), c = _mm512_set1_ps(1e-7f);
            __m512 a[12];
            for (int j = 0; j < 12; j++) a[j] = _mm512_set1_ps(1.0f + (float)j);
            for (long i = 0; i < iters; i++)
                for (int j = 0; j < 12; j++) a[j] = _mm512_fmadd_ps(a[j], m, c);
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
        const double t = omp_get_wtime() - t0;
#if defined(__AVX512F__)
        const double lanes = 16.0;
#elif defined(__AVX2__) && defined(__FMA__)
        const double lanes = 8.0;
#else
        const double lanes = 1.0;
#endif
        const double gflops = (double)threads * (double)iters * 12.0 * lanes * 2.0 / t / 1e9;
        if (gflops > best && sink == sink) best = gflops;
    }
    return best;
}

#endif /* ARCFLOW_GEMM_H */
