/*
 * gemm-ab: two builds of our packed f32 GEMM (af_gemm_packed) in one process, called in turn
 * (order flipped every repetition) on the same operands, so both see the same machine state:
 * on a shared host the spread between runs of one build (5-15%) hides the changes a kernel
 * edit makes; the ratio of medians here does not.  ab.sh builds A and B from two versions of
 * Prelude/gemm.h and/or two flag sets.  NC > 1 cycles through NC copies of the packed weight,
 * so that with NC x the weight's size above the L3 each call streams its panels from memory
 * as a model's GEMMs do (a weight is read once per NFE).  DT=3 in the environment times bf16
 * compute (bf16 panels, vdpbf16ps; B is then compared with A to 1e-6 relative, not bitwise).  Also checks that B's C equals A's
 * (exit 1 otherwise: a kernel change that alters values is not a speed change).
 *
 *   gemm-ab THREADS REPS NC [M N K]...
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void gemm_ab_a(const float *a, long lda, const void *b, int dt, float *c, long ldc, long M, long N, long K);
void gemm_ab_b(const float *a, long lda, const void *b, int dt, float *c, long ldc, long M, long N, long K);
#define NR 32 /* AF_GEMM_NR */

static int cmpd(const void *x, const void *y) {
    const double a = *(const double *)x, b = *(const double *)y;
    return a < b ? -1 : a > b;
}

int main(int argc, char **argv) {
    if (argc < 7 || (argc - 4) % 3 != 0) {
        fprintf(stderr, "usage: gemm-ab THREADS REPS NC M N K [M N K]...\n");
        return 2;
    }
    const int threads = atoi(argv[1]), reps = atoi(argv[2]), nc = atoi(argv[3]);
    const int dt = getenv("DT") && atoi(getenv("DT")) == 3 ? 3 : 0;
    const size_t es = dt == 3 ? 2 : 4;
    if (threads < 1 || reps < 1 || nc < 1) { fprintf(stderr, "gemm-ab: THREADS, REPS and NC must be positive\n"); return 2; }
    omp_set_num_threads(threads);
    printf("threads %d, %d repetitions, %d weight cop%s, %s; GFLOP/s median (min time), B/A = ratio of median times\n",
           threads, reps, nc, nc == 1 ? "y" : "ies", dt == 3 ? "bf16 compute" : "f32");
    int status = 0;
    for (int s = 4; s + 2 < argc; s += 3) {
        const long M = atol(argv[s]), N = atol(argv[s + 1]), K = atol(argv[s + 2]), P = (N + NR - 1) / NR;
        float *a = aligned_alloc(64, sizeof(float) * (size_t)(M * K + 16));
        float *ca = aligned_alloc(64, sizeof(float) * (size_t)(M * N + 16)), *cb = aligned_alloc(64, sizeof(float) * (size_t)(M * N + 16));
        uint32_t r = 12345;
        for (long i = 0; i < M * K; i++) { r = r * 1664525u + 1013904223u; a[i] = (float)(r >> 8) / 16777216.0f - 0.5f; }
        void **w = malloc(sizeof(void *) * (size_t)nc);
        for (int q = 0; q < nc; q++) {
            w[q] = calloc((size_t)(P * K * NR), es);
            for (long j = 0; j < N; j++)
                for (long k = 0; k < K; k++) {
                    r = r * 1664525u + 1013904223u;
                    const float x = (float)(r >> 8) / 16777216.0f - 0.5f;
                    const long at = (j / NR) * K * NR + k * NR + j % NR;
                    if (dt == 3) { uint32_t u; memcpy(&u, &x, 4); ((uint16_t *)w[q])[at] = (uint16_t)(u >> 16); }
                    else ((float *)w[q])[at] = x;
                }
        }
        double *ta = malloc(sizeof(double) * (size_t)reps), *tb = malloc(sizeof(double) * (size_t)reps);
        gemm_ab_a(a, K, w[0], dt, ca, N, M, N, K); /* warm-up, both */
        gemm_ab_b(a, K, w[0], dt, cb, N, M, N, K);
        double num = 0, den = 0;
        for (long i = 0; i < M * N; i++) { num += ((double)ca[i] - cb[i]) * ((double)ca[i] - cb[i]); den += (double)ca[i] * ca[i]; }
        if (dt == 3 ? !(num <= 1e-12 * den) : memcmp(ca, cb, sizeof(float) * (size_t)(M * N)) != 0) {
            printf("%ld x %ld x %ld: B's result differs from A's (relative L2 %.3g)\n", M, N, K, sqrt(num / den));
            status = 1;
        }
        for (int i = 0; i < reps; i++)
            for (int v = 0; v < 2; v++) {
                const int which = (i & 1) ? 1 - v : v;
                const double t0 = omp_get_wtime();
                if (which) gemm_ab_b(a, K, w[i % nc], dt, cb, N, M, N, K); else gemm_ab_a(a, K, w[i % nc], dt, ca, N, M, N, K);
                (which ? tb : ta)[i] = omp_get_wtime() - t0;
            }
        qsort(ta, (size_t)reps, sizeof(double), cmpd);
        qsort(tb, (size_t)reps, sizeof(double), cmpd);
        const double gf = 2.0 * (double)M * (double)N * (double)K / 1e9;
        printf("%5ld %5ld %5ld | A %6.1f (%6.1f) | B %6.1f (%6.1f) | B/A %.3f\n", M, N, K, gf / ta[reps / 2], gf / ta[0],
               gf / tb[reps / 2], gf / tb[0], ta[reps / 2] / tb[reps / 2]);
        for (int q = 0; q < nc; q++) free(w[q]);
        free(w); free(ta); free(tb); free(a); free(ca); free(cb);
    }
    return status;
}
