/*
 * gemm-bench: our packed GEMM (af_gemm_packed, Prelude/gemm.h) against OpenBLAS sgemm and the
 * measured FMA peak, in the same run, on THREADS threads (omp_set_num_threads and
 * openblas_set_num_threads).  Compiled with the prelude prepended, as the generator does.
 * Prints GFLOP/s best of N runs for C = A . B^T (B a [N, K] weight, as `linear` uses it): f32
 * panels, bf16 panels, bf16 compute (dt 3: A rounded to bf16, vdpbf16ps where the CPU has it),
 * sgemm, and the ratios (bl: sgemm time / ours; pk: share of the measured peak, which for bf16
 * compute is the f32 FMA peak, so it can pass 100%; the peak is measured again before each
 * repetition of a shape, and pk is the shape's best time against the best of those peaks, with
 * their range printed beside; pkw: the same best time against the best peak sustained over as
 * long as the GEMM's own call, measured right after it in each repetition: on this project's
 * shared hosts the clock moves within seconds, and the best of many ~3 ms peak runs catches
 * highs that a 50-200 ms GEMM averages over); checks the results against sgemm
 * (relative L2 < 1e-5, bf16 compute < 1e-2) and exits 1 if one is off.
 * Shapes: big squares (M = N = K >= 1024, the 85%-of-peak criterion) and the GEMMs of
 * the width-768 FLUX/Qwen benchmarks (M = 320 / 1088 tokens; q/k/v/out, MLP, single-block
 * fused projections), or "M N K" triples given on the command line.
 *
 * Each kernel is timed on its second of two back-to-back calls (operands where its first call
 * left them, as GEMM benchmarks are usually timed); f32's first call, the one right after the
 * peak measurement, is also printed (cold/pk): on a host shared with other tenants part of the
 * operands' lines leave the L3 during the peak's ~20 ms (session 29: a read of A, B and C before
 * it recovered most of that call's 4-5%).  The operands are 64-byte aligned, as the runtime's
 * arena and weights are (malloc's big blocks start 16 bytes into a page: every C row would
 * straddle a cache line more).
 *
 *   gemm-bench [RUNS [THREADS [M N K]...]]
 */

/* bytes, 64-byte aligned: the runtime's alignment for activations and weights. */
static void *bench_alloc(size_t bytes) { return aligned_alloc(64, (bytes + 63) & ~(size_t)63); }

/* B^T ([N, K] row-major) as AF_GEMM_NR-column panels of dtype dt (0 f32, 1 bf16: strips of
 * AF_GEMM_STRIP columns; 3 bf16 in pairs of k, K padded to AF__GPAIRK), like the compiler's
 * packWeightPanels. */
static void *bench_pack(const float *w, long N, long K, int dt) {
    const long P = (N + AF_GEMM_NR - 1) / AF_GEMM_NR, Kp = dt == 3 ? AF__GPAIRK(K) : K;
    const size_t es = dt == 0 ? 4 : 2;
    const size_t bytes = (size_t)(P * Kp * AF_GEMM_NR) * es;
    char *out = bench_alloc(bytes);
    memset(out, 0, bytes);
    for (long j = 0; j < N; j++)
        for (long k = 0; k < K; k++) {
            const long at = (j / AF_GEMM_NR) * Kp * AF_GEMM_NR + (dt == 3 ? k / 2 * 2 * AF_GEMM_NR + 2 * (j % AF_GEMM_NR) + k % 2
                                                                           : af__strip_at(j % AF_GEMM_NR, k, Kp));
            if (dt == 0) ((float *)out)[at] = w[j * K + k];
            else ((uint16_t *)out)[at] = af_f32_to_bf16(w[j * K + k]);
        }
    return out;
}

static double bench_now(void) { return AF_PEAK_CLOCK(); }

/* n floats, 64-byte aligned (bench_alloc). */
static float *bench_floats(long n) { return bench_alloc(sizeof(float) * (size_t)n); }

int main(int argc, char **argv) {
    const int runs = argc > 1 ? atoi(argv[1]) : 5, threads = argc > 2 ? atoi(argv[2]) : 1;
    if (runs < 1 || threads < 1 || (argc > 3 && (argc - 3) % 3 != 0)) {
        fprintf(stderr, "usage: gemm-bench [RUNS [THREADS [M N K]...]]\n");
        return 2;
    }
    omp_set_num_threads(threads);
    openblas_set_num_threads(threads);
    const double peak = af_fma_peak_gflops();
    printf("threads %d, OpenBLAS core %s, clock %s, measured FMA peak at start %.1f GFLOP/s\n", threads, openblas_get_corename(),
           AF_PEAK_CLOCK == omp_get_wtime ? "wall" : "process CPU time", peak);
    printf("%5s %5s %5s | %9s %9s %9s %9s | %7s %7s %7s %7s %7s %7s %7s\n", "M", "N", "K", "own f32", "own bf16", "bf16cmp", "sgemm",
           "f32/bl", "f32/pk", "f32/pkw", "cold/pk", "bf16/pk", "cmp/pk", "cmp/f32");
    long shapes[64][3] = {{1024, 1024, 1024}, {2048, 2048, 2048}, {64, 3072, 768},
                          {320, 2304, 768}, {320, 768, 768}, {320, 3072, 768}, {320, 768, 3072},
                          {1088, 2304, 768}, {1088, 768, 768}, {1088, 3072, 768}, {1088, 768, 3072},
                          {1088, 5376, 768}, {1088, 768, 3840}};
    size_t nshapes = 13;
    if (argc > 3) {
        nshapes = 0;
        for (int i = 3; i + 2 < argc && nshapes < 64; i += 3, nshapes++)
            for (int d = 0; d < 3; d++) shapes[nshapes][d] = atol(argv[i + d]);
    }
    int status = 0;
    for (size_t s = 0; s < nshapes; s++) {
        const long M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
        float *a = bench_floats(M * K), *w = bench_floats(N * K), *c0 = bench_floats(M * N), *c1 = bench_floats(M * N);
        float *c2 = bench_floats(M * N);
        uint32_t r = 12345;
        for (long i = 0; i < M * K; i++) { r = r * 1664525u + 1013904223u; a[i] = (float)(r >> 8) / 16777216.0f - 0.5f; }
        for (long i = 0; i < N * K; i++) { r = r * 1664525u + 1013904223u; w[i] = af_bf16_to_f32(af_f32_to_bf16((float)(r >> 8) / 16777216.0f - 0.5f)); }
        void *pf = bench_pack(w, N, K, 0), *ph = bench_pack(w, N, K, 1), *pp = bench_pack(w, N, K, 3);
        double best[4] = {1e30, 1e30, 1e30, 1e30}, cold = 1e30, pk_hi = 0, pk_lo = 1e30, pw_hi = 0;
        for (int rep = 0; rep < runs; rep++) {
            /* The peak again before each repetition: this host's clock moves by 10-20% within
             * seconds, so the share of the peak compares a GEMM with the peak of its own moment
             * (best against best over the same repetitions), not with the one taken at start. */
            const double pk = af_fma_peak_gflops();
            if (pk > pk_hi) pk_hi = pk;
            if (pk < pk_lo) pk_lo = pk;
            double f32_time = 0;
            for (int kind = 0; kind < 4; kind++)
                for (int call = 0; call < 2; call++) {
                    const double t0 = bench_now();
                    if (kind == 2)
                        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)M, (int)N, (int)K, 1.0f, a, (int)K, w, (int)K, 0.0f,
                                    c0, (int)N);
                    else
                        af_gemm_packed(a, K, kind == 0 ? pf : kind == 1 ? ph : pp, kind, NULL, AF_GEMM_ACT_NONE, kind == 3 ? c2 : c1, N,
                                       M, N, K);
                    const double t = bench_now() - t0;
                    if (call == 1 && t < best[kind]) best[kind] = t;
                    if (call == 0 && kind == 0 && t < cold) cold = t;
                    if (call == 1 && kind == 0) f32_time = t;
                }
            /* The peak sustained over as long as this repetition's f32 call took (pkw). */
            const double pw = af__peak_window_gflops(0, f32_time);
            if (pw > pw_hi) pw_hi = pw;
        }
        double num = 0, num2 = 0, den = 0;
        for (long i = 0; i < M * N; i++) {
            const double d = (double)c1[i] - c0[i], d2 = (double)c2[i] - c0[i];
            num += d * d; num2 += d2 * d2; den += (double)c0[i] * c0[i];
        }
        const double err = sqrt(num / den), err2 = sqrt(num2 / den);
        if (!(err < 1e-5)) { printf("MISMATCH: relative L2 %.3g\n", err); status = 1; }
        /* bf16 compute rounds A to bf16: relative L2 about 2^-9 / sqrt(3) */
        if (!(err2 < 1e-2)) { printf("MISMATCH (bf16 compute): relative L2 %.3g\n", err2); status = 1; }
        const double fl = 2.0 * M * N * K / 1e9;
        printf("%5ld %5ld %5ld | %9.1f %9.1f %9.1f %9.1f | %7.2f %6.0f%% %6.0f%% %6.0f%% %6.0f%% %6.0f%% %7.2f   (peak %.0f-%.0f, sustained %.0f; bf16 compute rel. L2 %.1e)\n",
               M, N, K, fl / best[0], fl / best[1], fl / best[3], fl / best[2], best[2] / best[0], 100 * fl / best[0] / pk_hi,
               100 * fl / best[0] / pw_hi, 100 * fl / cold / pk_hi, 100 * fl / best[1] / pk_hi, 100 * fl / best[3] / pk_hi,
               best[0] / best[3], pk_lo, pk_hi, pw_hi, err2);
        free(a); free(w); free(c0); free(c1); free(c2); free(pf); free(ph); free(pp);
    }
    return status;
}
