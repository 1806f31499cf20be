/*
 * int8-gemm bench: the int8 GEMM (af_gemm_packed_int8, Prelude/gemm_int8.h) with scales per block
 * of 32 along K and per output channel, against the packed f32 and bf16 GEMM (af_gemm_packed),
 * in the same run, interleaved, best of RUNS.  C = A . B^T with B a [N, K] weight (as `linear`
 * uses it), shapes of a FLUX.1 block at 256x256 (768 tokens) and its M = 1 modulation GEMM.
 * Prints GFLOP/s, ratios to f32, the weight bytes, and each result's relative L2 error against
 * the f32 GEMM (the quantization error of these uniform random weights).
 *
 *   int8-gemm [RUNS [M N K]...]      (threads: OMP_NUM_THREADS; default shapes: the FLUX.1 ones above)
 */

#ifndef BENCH_COPIES
#define BENCH_COPIES 8
#endif

static void *bench_pack(const float *w, long N, long K, int dt) {
    const long P = (N + AF_GEMM_NR - 1) / AF_GEMM_NR;
    char *out = calloc((size_t)(P * K * AF_GEMM_NR), dt == 0 ? 4 : 2);
    for (long j = 0; j < N; j++)
        for (long k = 0; k < K; k++) {
            const long at = (j / AF_GEMM_NR) * K * AF_GEMM_NR + af__strip_at(j % AF_GEMM_NR, k, K); /* packWeightPanels' strips */
            if (dt == 0) ((float *)out)[at] = w[j * K + k];
            else ((uint16_t *)out)[at] = af_f32_to_bf16(w[j * K + k]);
        }
    return out;
}

/* Int8 panels as the compiler's packInt8Panels lays them out (symmetric, max |w| -> 127). */
static void *bench_pack_i8(const float *w, long N, long K, long g) {
    const long P = (N + AF_I8_NR - 1) / AF_I8_NR, stride = af_i8_panel_bytes(K, g), groups = (K + g - 1) / g;
    char *out = calloc((size_t)(P * stride), 1);
    for (long j = 0; j < N; j++) {
        float *s = (float *)(void *)(out + (j / AF_I8_NR) * stride);
        int8_t *q = (int8_t *)(out + (j / AF_I8_NR) * stride + groups * AF_I8_NR * 4);
        for (long b = 0; b < groups; b++) {
            float m = 0.0f;
            for (long k = b * g; k < K && k < (b + 1) * g; k++) m = fmaxf(m, fabsf(w[j * K + k]));
            const float sc = m / 127.0f;
            s[b * AF_I8_NR + j % AF_I8_NR] = sc;
            for (long k = b * g; k < K && k < (b + 1) * g; k++)
                q[k * AF_I8_NR + j % AF_I8_NR] = sc == 0.0f ? 0 : (int8_t)roundf(w[j * K + k] / sc);
        }
    }
    return out;
}

static double rel_l2(const float *x, const float *ref, long n) {
    double num = 0, den = 0;
    for (long i = 0; i < n; i++) { const double d = (double)x[i] - ref[i]; num += d * d; den += (double)ref[i] * ref[i]; }
    return sqrt(num / den);
}

int main(int argc, char **argv) {
    const int runs = argc > 1 ? atoi(argv[1]) : 5;
    printf("threads %d, measured FMA peak %.1f GFLOP/s\n", omp_get_max_threads(), af_fma_peak_gflops());
    printf("%5s %6s %6s | %8s %8s %8s %8s | %6s %6s %6s | %9s %9s %9s\n", "M", "N", "K", "f32", "bf16", "i8/32", "i8/chan",
           "bf16x", "i8/32x", "i8/chx", "err bf16", "err i8/32", "err i8/ch");
    const long flux[] = {768, 3072, 3072, 768, 12288, 3072, 768, 3072, 12288, 1, 18432, 3072};
    const long given = argc > 4 ? (argc - 2) / 3 : 0, count = given ? given : 4;
    for (long s = 0; s < count; s++) {
        const long M = given ? atol(argv[2 + 3 * s]) : flux[3 * s], N = given ? atol(argv[3 + 3 * s]) : flux[3 * s + 1],
                   K = given ? atol(argv[4 + 3 * s]) : flux[3 * s + 2];
        float *a = malloc(sizeof(float) * (size_t)(M * K)), *w = malloc(sizeof(float) * (size_t)(N * K));
        float *c[4];
        for (int v = 0; v < 4; v++) c[v] = malloc(sizeof(float) * (size_t)(M * N));
        uint32_t r = 12345;
        for (long i = 0; i < M * K; i++) { r = r * 1664525u + 1013904223u; a[i] = (float)(r >> 8) / 16777216.0f - 0.5f; }
        for (long i = 0; i < N * K; i++) { r = r * 1664525u + 1013904223u; w[i] = (float)(r >> 8) / 16777216.0f - 0.5f; }
        /* BENCH_COPIES copies of each weight, used in turn: the panels stream from memory as in a model
         * (whose weights are read once per evaluation), not from a cache the last run warmed */
        void *b[4][BENCH_COPIES];
        for (int cp = 0; cp < BENCH_COPIES; cp++) {
            b[0][cp] = bench_pack(w, N, K, 0); b[1][cp] = bench_pack(w, N, K, 1);
            b[2][cp] = bench_pack_i8(w, N, K, 32); b[3][cp] = bench_pack_i8(w, N, K, K);
        }
        double best[4] = {1e30, 1e30, 1e30, 1e30};
        for (int rep = 0; rep < runs; rep++)
            for (int v = 0; v < 4; v++) {
                const void *bv = b[v][rep % BENCH_COPIES];
                const double t0 = omp_get_wtime();
                if (v < 2) af_gemm_packed(a, K, bv, v, NULL, AF_GEMM_ACT_NONE, c[v], N, M, N, K);
                else af_gemm_packed_int8(a, K, bv, v == 2 ? 32 : K, NULL, AF_GEMM_ACT_NONE, c[v], N, M, N, K);
                const double t = omp_get_wtime() - t0;
                if (t < best[v]) best[v] = t;
            }
        double gf[4];
        for (int v = 0; v < 4; v++) gf[v] = 2.0 * M * N * K / best[v] / 1e9;
        printf("%5ld %6ld %6ld | %8.1f %8.1f %8.1f %8.1f | %6.2f %6.2f %6.2f | %9.2e %9.2e %9.2e\n", M, N, K, gf[0], gf[1], gf[2],
               gf[3], gf[1] / gf[0], gf[2] / gf[0], gf[3] / gf[0], rel_l2(c[1], c[0], M * N), rel_l2(c[2], c[0], M * N),
               rel_l2(c[3], c[0], M * N));
        free(a); free(w);
        for (int v = 0; v < 4; v++) {
            free(c[v]);
            for (int cp = 0; cp < BENCH_COPIES; cp++) free(b[v][cp]);
        }
    }
    return 0;
}
