/*
 * gemm-ab: two builds of one kernel in one process, called in turn (order flipped every
 * repetition) on the same operands, so both see the same machine state: on a shared host the
 * spread between runs of one build (5-15%) hides the changes a kernel edit makes; the ratio of
 * medians here does not.  ab.sh builds A and B from two versions of Prelude/ and/or two flag
 * sets.  Also checks that B's result equals A's (exit 1 otherwise: a kernel change that alters
 * values is not a speed change; TOL in the environment accepts a relative L2 difference up to
 * TOL, for a change meant to round differently).
 *
 * The kernel (KERNEL in the environment):
 * - gemm (default): our packed f32 GEMM (af_gemm_packed), shapes M N K.  NC > 1 cycles through
 *   NC copies of the packed weight, so that with NC x the weight's size above the L3 each call
 *   streams its panels from memory as a model's GEMMs do (a weight is read once per NFE).  DT=3
 *   times bf16 compute (bf16 panels, vdpbf16ps; then compared to 1e-6 relative, not bitwise);
 *   DT=4 the int8 GEMM (af_gemm_packed_int8, random codes and scales per group of 32 along K).
 * - attention: the fused f32 attention (af_attention), shapes S H D (one batch, Sq = Sk = S,
 *   scale 1/sqrt(D)); NC is ignored.
 *
 *   gemm-ab THREADS REPS NC [M N K | S H D]...
 */
#define _POSIX_C_SOURCE 199309L
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Wall time, or with -DAB_CPU_CLOCK (ab.sh: CLOCK=cpu) this process's CPU time: on one thread the
 * time it actually ran, so the ratios survive a machine shared with other work. */
static double ab_seconds(void) {
#ifdef AB_CPU_CLOCK
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
#else
    return omp_get_wtime();
#endif
}

void gemm_ab_a(const float *a, long lda, const void *b, int dt, float *c, long ldc, long M, long N, long K);
void gemm_ab_b(const float *a, long lda, const void *b, int dt, float *c, long ldc, long M, long N, long K);
void attn_ab_a(const float *q, const float *k, const float *v, float *out, long B, long Sq, long Sk, long H, long D, float scale);
void attn_ab_b(const float *q, const float *k, const float *v, float *out, long B, long Sq, long Sk, long H, long D, float scale);
int strip_ab_a(void);
int strip_ab_b(void);
#define NR 32 /* AF_GEMM_NR */

/* One shape's operands; run(x, side, rep) calls side A (0) or B (1) for repetition rep. */
typedef struct {
    int attention, dt, nc;
    long d0, d1, d2; /* M N K, or S H D */
    float *in[3], *out[2];
    void **w, **wb; /* wb: side B's copies where its panels' strips differ from A's (else NULL) */
} Case;

static void run(const Case *x, int side, int rep) {
    if (x->attention) {
        const float scale = 1.0f / sqrtf((float)x->d2);
        (side ? attn_ab_b : attn_ab_a)(x->in[0], x->in[1], x->in[2], x->out[side], 1, x->d0, x->d0, x->d1, x->d2, scale);
    } else {
        (side ? gemm_ab_b : gemm_ab_a)(x->in[0], x->d2, (side && x->wb ? x->wb : x->w)[rep % x->nc], x->dt, x->out[side], x->d1, x->d0, x->d1, x->d2);
    }
}

static float uniform(uint32_t *r) {
    *r = *r * 1664525u + 1013904223u;
    return (float)(*r >> 8) / 16777216.0f - 0.5f;
}

static int cmpd(const void *x, const void *y) {
    const double a = *(const double *)x, b = *(const double *)y;
    return a < b ? -1 : a > b;
}

int main(int argc, char **argv) {
    if (argc < 7 || (argc - 4) % 3 != 0) {
        fprintf(stderr, "usage: gemm-ab THREADS REPS NC M N K [M N K]...   (KERNEL=attention: S H D)\n");
        return 2;
    }
    const int threads = atoi(argv[1]), reps = atoi(argv[2]), nc = atoi(argv[3]);
    const int attention = getenv("KERNEL") && strcmp(getenv("KERNEL"), "attention") == 0;
    const int dt = attention || !getenv("DT") ? 0 : atoi(getenv("DT")) == 3 ? 3 : atoi(getenv("DT")) == 4 ? 4 : 0;
    const double tol = getenv("TOL") ? atof(getenv("TOL")) : dt == 3 ? 1e-6 : 0.0;
    const size_t es = dt == 3 ? 2 : 4;
    if (threads < 1 || reps < 1 || nc < 1) { fprintf(stderr, "gemm-ab: THREADS, REPS and NC must be positive\n"); return 2; }
    omp_set_num_threads(threads);
    if (attention) printf("threads %d, %d repetitions, attention f32", threads, reps);
    else printf("threads %d, %d repetitions, %d weight cop%s, %s", threads, reps, nc, nc == 1 ? "y" : "ies",
                dt == 3 ? "bf16 compute" : dt == 4 ? "int8 panels" : "f32");
    printf("; GFLOP/s median (min time), B/A = ratio of median times\n");
    int status = 0;
    for (int s = 4; s + 2 < argc; s += 3) {
        Case x = {attention, dt, attention ? 1 : nc, atol(argv[s]), atol(argv[s + 1]), atol(argv[s + 2]), {0}, {0}, NULL, NULL};
        const long M = x.d0, N = x.d1, K = x.d2, P = (N + NR - 1) / NR;
        const long nin = attention ? M * N * K : M * K, nout = attention ? M * N * K : M * N; /* S*H*D, or M*K and M*N */
        uint32_t r = 12345;
        for (int t = 0; t < (attention ? 3 : 1); t++) {
            x.in[t] = aligned_alloc(64, sizeof(float) * (size_t)(nin + 16));
            for (long i = 0; i < nin; i++) x.in[t][i] = attention ? 2.0f * uniform(&r) : uniform(&r);
        }
        for (int t = 0; t < 2; t++) x.out[t] = aligned_alloc(64, sizeof(float) * (size_t)(nout + 16));
        if (!attention) {
            x.w = malloc(sizeof(void *) * (size_t)nc);
            /* int8 panels (gemm_int8.h): per 32 columns, the scales of each group of 32 k, then K
             * rows of 32 codes padded to 64 bytes */
            const long groups = (K + 31) / 32, pbytes = groups * NR * 4 + (K * NR + 63) / 64 * 64;
            for (int q = 0; q < nc && dt == 4; q++) {
                x.w[q] = calloc((size_t)(P * pbytes), 1);
                for (long p = 0; p < P; p++) {
                    char *panel = (char *)x.w[q] + p * pbytes;
                    for (long i = 0; i < groups * NR; i++) ((float *)(void *)panel)[i] = (uniform(&r) + 0.5f) / 127.0f;
                    for (long i = 0; i < K * NR; i++) panel[groups * NR * 4 + i] = (char)(int)(254.0f * uniform(&r));
                }
            }
            /* f32 and bf16 panels in strips of each side's width (the int8 and pair layouts are
             * whole rows on both); where the widths differ, B gets copies of its own */
            const int sa = strip_ab_a(), sb = strip_ab_b();
            if (dt != 4 && dt != 3 && sa != sb) x.wb = malloc(sizeof(void *) * (size_t)nc);
            for (int q = 0; q < nc && dt != 4; q++) {
                /* dt 3: bf16 in pairs of k, K padded to a multiple of 32 (gemm.h) */
                const long Kp = dt == 3 ? (K + 31) / 32 * 32 : K;
                x.w[q] = calloc((size_t)(P * Kp * NR), es);
                if (x.wb) x.wb[q] = calloc((size_t)(P * Kp * NR), es);
                for (long j = 0; j < N; j++)
                    for (long k = 0; k < K; k++) {
                        const float v = uniform(&r);
                        for (int side = 0; side < (x.wb ? 2 : 1); side++) {
                            const long st = side ? sb : sa;
                            const long at = (j / NR) * Kp * NR + (dt == 3 ? k / 2 * 2 * NR + 2 * (j % NR) + k % 2
                                                                          : (j % NR) / st * Kp * st + k * st + j % st);
                            void *w = side ? x.wb[q] : x.w[q];
                            if (dt == 3) { uint32_t u; memcpy(&u, &v, 4); ((uint16_t *)w)[at] = (uint16_t)(u >> 16); }
                            else ((float *)w)[at] = v;
                        }
                    }
            }
        }
        double *ta = malloc(sizeof(double) * (size_t)reps), *tb = malloc(sizeof(double) * (size_t)reps);
        run(&x, 0, 0); /* warm-up, both */
        run(&x, 1, 0);
        double num = 0, den = 0;
        for (long i = 0; i < nout; i++) {
            const double d = (double)x.out[0][i] - x.out[1][i];
            num += d * d;
            den += (double)x.out[0][i] * x.out[0][i];
        }
        if (tol > 0 ? !(num <= tol * tol * den) : memcmp(x.out[0], x.out[1], sizeof(float) * (size_t)nout) != 0) {
            printf("%ld x %ld x %ld: B's result differs from A's (relative L2 %.3g)\n", M, N, K, sqrt(num / den));
            status = 1;
        }
        for (int i = 0; i < reps; i++)
            for (int v = 0; v < 2; v++) {
                const int which = (i & 1) ? 1 - v : v;
                const double t0 = ab_seconds();
                run(&x, which, i);
                (which ? tb : ta)[i] = ab_seconds() - t0;
            }
        qsort(ta, (size_t)reps, sizeof(double), cmpd);
        qsort(tb, (size_t)reps, sizeof(double), cmpd);
        /* FLOPs: 2MNK, or attention's two products 4 H S^2 D */
        const double gf = (attention ? 4.0 * (double)N * (double)M * (double)M * (double)K : 2.0 * (double)M * (double)N * (double)K) / 1e9;
        printf("%5ld %5ld %5ld | A %6.1f (%6.1f) | B %6.1f (%6.1f) | B/A %.3f\n", M, N, K, gf / ta[reps / 2], gf / ta[0],
               gf / tb[reps / 2], gf / tb[0], ta[reps / 2] / tb[reps / 2]);
        if (!attention) {
            for (int q = 0; q < nc; q++) free(x.w[q]);
            free(x.w);
        }
        for (int t = 0; t < 3; t++) free(x.in[t]);
        free(x.out[0]); free(x.out[1]); free(ta); free(tb);
    }
    return status;
}
