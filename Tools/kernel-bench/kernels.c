/*
 * kernel-bench: the kernel translation unit.
 *
 * run.sh prepends the prelude text to this file, exactly as the code generator does, and
 * builds it with the generator's command.  The file exports thin non-static wrappers that
 * main.c resolves with dlsym (the arcflow runtime loads generated kernels the same way).
 * It also holds two alternative attention implementations that exist only for comparison
 * in the benchmark:
 *   kb_attention_sgemm_tiles : flash-style streaming softmax whose two tile GEMMs are
 *                              single-threaded cblas_sgemm calls made inside the parallel
 *                              region (query tile QB x key tile KB)
 *   kb_attention_full        : non-streaming, per head S = QK^T materialized (Sq x Sk) with
 *                              multi-threaded sgemm, row softmax, O = PV with sgemm
 */
#ifndef ARCFLOW_ATTENTION_H /* standalone compile (-I Sources/Codegen/Prelude): the families in order */
#include "common.h"
#include "elementwise.h"
#include "conversions.h"
#include "norms.h"
#include "gemm.h"
#include "attention.h"
#endif

/* ---- elementwise maps: the loop shape the generator emits ---- */
#define KB_MAP(name, fn)                                                  \
    void name(const float *restrict x, float *restrict y, long n) {       \
        _Pragma("omp simd") for (long i = 0; i < n; i++) y[i] = fn(x[i]); \
    }
KB_MAP(kb_exp, af_exp)
KB_MAP(kb_expm1, af_expm1)
KB_MAP(kb_tanh, af_tanh)
KB_MAP(kb_sigmoid, af_sigmoid)
KB_MAP(kb_silu, af_silu)
KB_MAP(kb_gelu_tanh, af_gelu_tanh)

/* libm loops for the throughput comparison (same flags, plain loops of scalar libm calls) */
#define KB_LOOP(name, fn)                                                 \
    void name(const float *restrict x, float *restrict y, long n) {       \
        for (long i = 0; i < n; i++) y[i] = fn(x[i]);                     \
    }
static inline float kb__libm_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }
static inline float kb__libm_gelu(float x) {
    return 0.5f * x * (1.0f + tanhf(0.7978845608f * (x + 0.044715f * x * x * x)));
}
KB_LOOP(kb_libm_exp, expf)
KB_LOOP(kb_libm_expm1, expm1f)
KB_LOOP(kb_libm_tanh, tanhf)
KB_LOOP(kb_libm_sigmoid, kb__libm_sigmoid)
KB_LOOP(kb_libm_gelu_tanh, kb__libm_gelu)

void kb_f32_to_bf16(const float *restrict x, uint16_t *restrict y, long n) {
#pragma omp simd
    for (long i = 0; i < n; i++) y[i] = af_f32_to_bf16(x[i]);
}
void kb_bf16_to_f32(const uint16_t *restrict x, float *restrict y, long n) {
#pragma omp simd
    for (long i = 0; i < n; i++) y[i] = af_bf16_to_f32(x[i]);
}
void kb_f32_to_f16(const float *restrict x, uint16_t *restrict y, long n) {
#pragma omp simd
    for (long i = 0; i < n; i++) y[i] = af_f32_to_f16(x[i]);
}
void kb_f16_to_f32(const uint16_t *restrict x, float *restrict y, long n) {
#pragma omp simd
    for (long i = 0; i < n; i++) y[i] = af_f16_to_f32(x[i]);
}
/* scalar (non-inlined-into-a-loop) entry points, to test the functions outside simd loops */
float kb_exp_scalar(float x) { return af_exp(x); }
uint16_t kb_f32_to_f16_scalar(float x) { return af_f32_to_f16(x); }

/* ---- row kernels ---- */
void kb_softmax(const float *x, float *y, long o, long n, long i) { af_softmax(x, y, o, n, i); }
void kb_log_softmax(const float *x, float *y, long o, long n, long i) { af_log_softmax(x, y, o, n, i); }
void kb_reduce_sum(const float *x, float *y, long o, long n, long i) { af_reduce_sum(x, y, o, n, i); }
void kb_reduce_mean(const float *x, float *y, long o, long n, long i) { af_reduce_mean(x, y, o, n, i); }
void kb_reduce_max(const float *x, float *y, long o, long n, long i) { af_reduce_max(x, y, o, n, i); }
void kb_layer_norm(const float *x, float *y, const float *g, const float *b, long rows, long n,
                   float eps) {
    af_layer_norm(x, y, g, b, rows, n, eps);
}
void kb_rms_norm(const float *x, float *y, const float *g, long rows, long n, float eps) {
    af_rms_norm(x, y, g, rows, n, eps);
}

/* ---- attention ---- */
void kb_attention(const float *q, const float *k, const float *v, float *o, long B, long Sq,
                  long Sk, long H, long D, float scale) {
    af_attention(q, k, v, o, B, Sq, Sk, H, D, scale);
}
void kb_attention_noscratch(const float *q, const float *k, const float *v, float *o, long B,
                            long Sq, long Sk, long H, long D, float scale) {
    af__attn_noscratch(q, k, v, NULL, o, B, Sq, Sk, H, D, scale, 0);
}

const char *kb_blas_core(void) { return openblas_get_corename(); }

void kb_sgemm(long M, long N, long K, const float *a, const float *b, float *c) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)M, (int)N, (int)K, 1.0f, a, (int)K,
                b, (int)N, 0.0f, c, (int)N);
}

/* Alternative 1: streaming softmax with per-tile cblas_sgemm (single-threaded inside the
 * parallel region).  S = scale * Q_t K_t^T (QB x KB, row = query), online softmax along
 * rows, O = alpha*O + P V_t. */
void kb_attention_sgemm_tiles(const float *restrict q, const float *restrict k,
                              const float *restrict v, float *restrict out, long B, long Sq,
                              long Sk, long H, long D, float scale, long QB, long KB) {
    long ld = H * D, nqt = (Sq + QB - 1) / QB, ntask = B * H * nqt;
#pragma omp parallel
    {
        float *S = (float *)malloc(sizeof(float) * (size_t)(QB * KB));
        float *O = (float *)malloc(sizeof(float) * (size_t)(QB * D));
        float *m = (float *)malloc(sizeof(float) * (size_t)QB);
        float *l = (float *)malloc(sizeof(float) * (size_t)QB);
#pragma omp for schedule(static)
        for (long t = 0; t < ntask; t++) {
            long bh = t / nqt, i0 = (t % nqt) * QB, b = bh / H, h = bh % H;
            long rq = Sq - i0 < QB ? Sq - i0 : QB;
            const float *qp = q + (b * Sq + i0) * ld + h * D;
            memset(O, 0, sizeof(float) * (size_t)(QB * D));
            for (long i = 0; i < rq; i++) { m[i] = -INFINITY; l[i] = 0.0f; }
            for (long j0 = 0; j0 < Sk; j0 += KB) {
                long kt = Sk - j0 < KB ? Sk - j0 : KB;
                const float *kp = k + (b * Sk + j0) * ld + h * D;
                const float *vp = v + (b * Sk + j0) * ld + h * D;
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rq, (int)kt, (int)D, scale,
                            qp, (int)ld, kp, (int)ld, 0.0f, S, (int)KB);
                for (long i = 0; i < rq; i++) {
                    float *sr = S + i * KB, mt = af__maxf(sr, kt);
                    mt = mt > m[i] ? mt : m[i];
                    float al = af_exp(m[i] - mt), sum = 0.0f;
#pragma omp simd reduction(+ : sum)
                    for (long j = 0; j < kt; j++) {
                        float p = af_exp(sr[j] - mt);
                        sr[j] = p;
                        sum += p;
                    }
                    l[i] = l[i] * al + sum;
                    m[i] = mt;
                    float *orow = O + i * D;
#pragma omp simd
                    for (long d = 0; d < D; d++) orow[d] *= al;
                }
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)rq, (int)D, (int)kt, 1.0f,
                            S, (int)KB, vp, (int)ld, 1.0f, O, (int)D);
            }
            for (long i = 0; i < rq; i++) {
                float inv = 1.0f / l[i];
                float *orow = out + (b * Sq + i0 + i) * ld + h * D;
                for (long d = 0; d < D; d++) orow[d] = O[i * D + d] * inv;
            }
        }
        free(S); free(O); free(m); free(l);
    }
}

/* Alternative 2 (not streaming, memory Sq*Sk): per head, threaded sgemm for S and PV. */
void kb_attention_full(const float *restrict q, const float *restrict k, const float *restrict v,
                       float *restrict out, long B, long Sq, long Sk, long H, long D, float scale) {
    long ld = H * D;
    float *S = (float *)malloc(sizeof(float) * (size_t)(Sq * Sk));
    for (long b = 0; b < B; b++)
        for (long h = 0; h < H; h++) {
            const float *qp = q + b * Sq * ld + h * D, *kp = k + b * Sk * ld + h * D;
            const float *vp = v + b * Sk * ld + h * D;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)Sq, (int)Sk, (int)D, scale, qp,
                        (int)ld, kp, (int)ld, 0.0f, S, (int)Sk);
            float *Sc = S;
#pragma omp parallel for schedule(static)
            for (long i = 0; i < Sq; i++) {
                float *sr = Sc + i * Sk, mt = af__maxf(sr, Sk), sum = 0.0f;
#pragma omp simd reduction(+ : sum)
                for (long j = 0; j < Sk; j++) { float p = af_exp(sr[j] - mt); sr[j] = p; sum += p; }
                float inv = 1.0f / sum;
#pragma omp simd
                for (long j = 0; j < Sk; j++) sr[j] *= inv;
            }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)Sq, (int)D, (int)Sk, 1.0f, S,
                        (int)Sk, vp, (int)ld, 0.0f, out + b * Sq * ld + h * D, (int)ld);
        }
    free(S);
}

/* memory-bandwidth reference for the row kernels: y = x with all threads */
void kb_copy(const float *restrict x, float *restrict y, long n) {
#pragma omp parallel for simd schedule(static) if (n >= AF_PAR_MIN_ELEMS)
    for (long i = 0; i < n; i++) y[i] = x[i];
}
