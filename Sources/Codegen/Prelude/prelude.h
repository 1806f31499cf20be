/*
 * arcflow kernel prelude.
 *
 * Included textually at the top of every generated C11 translation unit (several TUs
 * may be linked into one .so), so everything here is `static` / `static inline` and
 * there is no global mutable state.  Build flags assumed by the generator:
 *   gcc -std=c11 -O3 -march=native -fopenmp -fno-math-errno -fPIC -shared ...
 * Nothing requires AVX-512: the intrinsic paths are guarded by __AVX512F__ / __AVX2__
 * and there is a portable C fallback.  No alignment is assumed for any pointer.
 *
 * Contents
 *   scalar math     af_exp af_expm1 af_tanh af_sigmoid af_silu af_gelu_tanh
 *   conversions     af_bf16_to_f32 af_f32_to_bf16 af_f16_to_f32 af_f32_to_f16
 *   row kernels     af_softmax af_log_softmax af_reduce_sum af_reduce_mean
 *                   af_reduce_max af_layer_norm af_rms_norm af_group_norm
 *   data movement   af_gather_rows
 *   convolution     af_conv2d (im2col tiles + cblas_sgemm)
 *   attention       af_attention af_attention_ex (additive bias, causal mask)
 *
 * Names starting with af__ (two underscores) are internal.
 *
 * Notes for generated code
 *  - Threads: row kernels and af_attention open their own `omp parallel` regions with
 *    omp_get_max_threads() threads (only above a work threshold) and are meant to be
 *    called from serial code.  Called inside a parallel region they still work but run on
 *    one thread (nested parallelism is off by default).  No global mutable state:
 *    concurrent calls from different threads are safe.
 *  - Pointers: no alignment is assumed; inputs and outputs must not alias (restrict).
 *  - af_attention allocates (2*D + 264) * 64 floats of scratch per thread with
 *    aligned_alloc per call; if that fails it falls back to an O(1)-memory path.
 *  - Determinism: af_attention gives bitwise identical results for any thread count.  The
 *    row kernels too, except a reduction over a single long contiguous row (few rows,
 *    >= AF_PAR_MIN_ELEMS elements), which is split into one partial sum per thread.
 *  - gcc in -std=c11 mode does not contract a*b+c into an FMA (-ffp-contract=off); use
 *    fmaf() explicitly in generated loops where a fused multiply-add is wanted.
 */
#ifndef ARCFLOW_PRELUDE_H
#define ARCFLOW_PRELUDE_H

#include <math.h>
#include <stdint.h>
#include <string.h>
#include <stddef.h>
#include <stdlib.h>
#include <omp.h>
#include <cblas.h>
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#if defined(__GNUC__) || defined(__clang__)
#define AF__INLINE static inline __attribute__((always_inline))
#define AF__UNUSED __attribute__((unused))
#else
#define AF__INLINE static inline
#define AF__UNUSED
#endif

/* -std=c11 turns off floating-point contraction in gcc (-ffp-contract=off), so a*b+c is
 * never fused on its own.  The polynomials below ask for fused multiply-adds explicitly
 * when the target has them (fmaf is then a single instruction that vectorizes; without
 * hardware FMA it would be a slow libm call, so the fallback is a plain mul+add). */
#if defined(__FMA__) || defined(__AVX512F__)
#define AF__FMA(a, b, c) fmaf((a), (b), (c))
#else
#define AF__FMA(a, b, c) ((a) * (b) + (c))
#endif

/* Row kernels only open a parallel region when at least this many elements are touched:
 * below that the fork/join (a few microseconds) costs more than it saves. */
#define AF_PAR_MIN_ELEMS 32768L

/* Bit casts through memcpy: well defined in C11 and vectorized by gcc/clang. */
AF__INLINE uint32_t af__f2u(float f) { uint32_t u; memcpy(&u, &f, sizeof u); return u; }
AF__INLINE float af__u2f(uint32_t u) { float f; memcpy(&f, &u, sizeof f); return f; }
AF__INLINE uint64_t af__d2u(double f) { uint64_t u; memcpy(&u, &f, sizeof u); return u; }

/* ======================================================================================
 * Scalar math
 *
 * All functions are branch-free (selects only) so that a `#pragma omp simd` loop calling
 * them vectorizes.  Clamps are written as `x < lo ? lo : x`, which is false for NaN, so
 * NaN flows through to the result.  Rounding to an integer uses the 1.5*2^23 "magic"
 * addition (no float->int conversion, hence no UB on NaN/inf); the integer is read back
 * from the low mantissa bits.
 * ==================================================================================== */

#define AF__MAGIC 12582912.0f            /* 1.5 * 2^23 */
#define AF__LOG2E 1.44269504088896341f
#define AF__LN2_HI 0.693359375f          /* 9 significant bits: n*LN2_HI is exact */
#define AF__LN2_LO (-2.12194440e-4f)     /* ln2 - LN2_HI */

/* q(r) = (expm1(r) - r) / r^2 on |r| <= ln2/2: degree-4 fit (Lawson/minimax on the
 * *relative* error of r + r^2 q(r) versus expm1(r), max 1.3e-8 before float rounding).
 * Shared by af_exp (as 1 + expm1(r)) and af_expm1, which needs the relative accuracy of
 * expm1(r) itself near r = 0. */
AF__INLINE float af__expm1_poly(float r) {
    float q = 0.0013882516650483012f;
    q = AF__FMA(q, r, 0.008366547524929047f);
    q = AF__FMA(q, r, 0.04166720062494278f);
    q = AF__FMA(q, r, 0.1666654348373413f);
    q = AF__FMA(q, r, 0.4999999701976776f);
    return AF__FMA(q, r * r, r);
}

/* exp(x) = 2^n * exp(r), n = rint(x/ln2), r = x - n*ln2 (Cody-Waite, |r| <= ln2/2).
 * x is clamped below at -110 (a float select; NaN passes).  The upper end is bounded in the
 * integer domain instead, n = min(n, 128), and n*ln2 is re-derived from the clamped n:
 * for x > 89 (incl. +inf) r > 0.38 and p > 1.4, so the result overflows to +inf, and a
 * second float clamp is avoided (gcc merges two selects on one value into ~10 mask
 * instructions).  2^n is applied as 2^(n>>1) * 2^(n - (n>>1)), two normal powers of two
 * for every n in [-159, 128], so overflow (x > 88.72) and gradual underflow to 0
 * (x < -103.97) fall out of the final rounding.  Max relative error ~1.5e-7. */
AF__INLINE float af_exp(float x) {
    float xc = x < -110.0f ? -110.0f : x;
    float t = AF__FMA(xc, AF__LOG2E, AF__MAGIC);
    int32_t n = (int32_t)(af__f2u(t) - af__f2u(AF__MAGIC));  /* rint(x/ln2), modular */
    n = n < 128 ? n : 128;
    float nf = (float)n;
    uint32_t n1 = (uint32_t)(n >> 1);
    uint32_t n2 = (uint32_t)n - n1;
    float r = AF__FMA(nf, -AF__LN2_HI, xc);
    r = AF__FMA(nf, -AF__LN2_LO, r);
    float p = af__expm1_poly(r) + 1.0f;
    float s1 = af__u2f((n1 + 127u) << 23);
    float s2 = af__u2f((n2 + 127u) << 23);
    return p * s1 * s2;
}

/* expm1(x) = 2^n (1 + e) - 1 with e = expm1(r) from the polynomial, evaluated as
 * 2 * (s*e + (s - 0.5)) with s = 2^(n-1): s - 0.5 is exact for the n that matter, n = 0
 * returns e unchanged (tiny x keeps full relative accuracy), and s <= 2^127 stays finite
 * so overflow only happens in the final doubling.  x is clamped below at -30
 * (expm1(-30) == -1 in float); the upper end is bounded through n as in af_exp.
 * Max relative error ~2e-7. */
AF__INLINE float af_expm1(float x) {
    float xc = x < -30.0f ? -30.0f : x;
    float t = AF__FMA(xc, AF__LOG2E, AF__MAGIC);
    int32_t n = (int32_t)(af__f2u(t) - af__f2u(AF__MAGIC));
    n = n < 128 ? n : 128;
    float nf = (float)n;
    float r = AF__FMA(nf, -AF__LN2_HI, xc);
    r = AF__FMA(nf, -AF__LN2_LO, r);
    float e = af__expm1_poly(r);
    float s = af__u2f(((uint32_t)n + 126u) << 23);         /* 2^(n-1) */
    return 2.0f * AF__FMA(s, e, s - 0.5f);
}

/* tanh(|x|) = e / (e + 2) with e = expm1(2|x|): no cancellation near 0 (unlike
 * 1 - 2/(exp(2x)+1)); |x| is clamped at 10 where tanh rounds to 1.  Odd by copysign. */
AF__INLINE float af_tanh(float x) {
    float a = fabsf(x);
    a = a > 10.0f ? 10.0f : a;
    float e = af_expm1(2.0f * a);
    return copysignf(e / (e + 2.0f), x);
}

/* sigmoid(x) = (x >= 0 ? 1 : e) / (1 + e), e = exp(-|x|) in (0, 1]: never inf/inf, and
 * for very negative x the result is e/(1+e), accurate down to the subnormal range. */
AF__INLINE float af_sigmoid(float x) {
    float e = af_exp(-fabsf(x));
    float num = x >= 0.0f ? 1.0f : e;
    return num / (1.0f + e);
}

/* silu(x) = x * sigmoid(x).  The multiplier is clamped at -1e4 (where sigmoid is exactly
 * 0) so that silu(-inf) is -0 instead of -inf*0 = NaN. */
AF__INLINE float af_silu(float x) {
    float xm = x < -1.0e4f ? -1.0e4f : x;
    return xm * af_sigmoid(x);
}

/* gelu_tanh(x) = 0.5 x (1 + tanh(u)) = x * sigmoid(z), z = 2u = 2 sqrt(2/pi) (x + 0.044715 x^3).
 * In the negative tail z reaches -70 while the result is still ~1e-30; a float z would carry
 * an absolute error ~1e-5 there, i.e. a 1e-5 relative error of exp(z).  So |z| and the
 * range reduction r = n*ln2 - |z| are computed in double (a handful of vector ops); the exp
 * polynomial and the rest stay in float: sigmoid(z) = (x >= 0 ? 1 : e) / (1 + e) with
 * e = exp(-|z|).  |x| is clamped to 11 (|z| <= 112.5, e == 0 in float beyond) with an
 * integer min on the bits: a float compare-select here makes gcc branch around the exp
 * and the loop no longer vectorizes.  NaN still reaches the result through the x factor;
 * the factor is clamped at -1e4 so gelu(-inf) = -0 rather than -inf*0 = NaN. */
AF__INLINE float af_gelu_tanh(float x) {
    uint32_t axb = af__f2u(x) & 0x7FFFFFFFu;
    axb = axb < 0x41300000u ? axb : 0x41300000u;         /* min(|x|, 11.0f) */
    double ax = (double)af__u2f(axb);
    double az = ax * (1.5957691216057308 + 0.071354816272112 * (ax * ax));   /* |z| */
    double td = az * 1.4426950408889634 + 6755399441055744.0; /* 1.5*2^52: rint */
    double nd = td - 6755399441055744.0;
    uint32_t n = (uint32_t)af__d2u(td);                  /* rint(|z|/ln2) in [0, 163] */
    float r = (float)(nd * 0.6931471805599453 - az);     /* exp(-|z|) = 2^-n exp(r) */
    float p = af__expm1_poly(r) + 1.0f;
    uint32_t n1 = n >> 1, n2 = n - n1;
    float e = p * af__u2f((127u - n1) << 23) * af__u2f((127u - n2) << 23);
    float num = x >= 0.0f ? 1.0f : e;
    float xm = x < -1.0e4f ? -1.0e4f : x;
    return xm * (num / (1.0f + e));
}

/* ---------------- 16-bit float conversions (exact, branch-free) -------------------- */

/* bf16 is the top half of an f32. */
AF__INLINE float af_bf16_to_f32(uint16_t h) { return af__u2f((uint32_t)h << 16); }

/* Round to nearest even by adding 0x7FFF + lsb before truncating; values above the
 * largest bf16 carry into the exponent and become inf as IEEE requires.  NaN is kept
 * as a quiet NaN with its sign (the carry trick could otherwise turn it into inf). */
AF__INLINE uint16_t af_f32_to_bf16(float f) {
    uint32_t u = af__f2u(f);
    uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
    uint32_t qnan = (u >> 16) | 0x0040u;
    return (uint16_t)((u & 0x7FFFFFFFu) > 0x7F800000u ? qnan : rounded);
}

/* binary16 -> f32: normals/inf/NaN by rebiasing the exponent (+112, or +224 for the
 * all-ones exponent).  Subnormals/zero: the same bits with the exponent field raised to
 * 2^-14 read as 2^-14 + m*2^-24, so subtracting 2^-14 is exact.  The two candidates are
 * merged with a bit mask: a ?: select here makes gcc branch and the loop stops vectorizing. */
AF__INLINE float af_f16_to_f32(uint16_t h) {
    uint32_t sign = ((uint32_t)h & 0x8000u) << 16;
    uint32_t em = (uint32_t)h & 0x7FFFu;
    uint32_t o = (em << 13) + 0x38000000u;
    o = em >= 0x7C00u ? o + 0x38000000u : o;
    float sub = af__u2f(o + 0x00800000u) - 6.103515625e-05f;
    uint32_t mask = 0u - (uint32_t)(em < 0x0400u);
    return af__u2f(((af__f2u(sub) & mask) | (o & ~mask)) | sign);
}

/* f32 -> binary16, round to nearest even (F. Giesen's float_to_half_fast3_rtne, written
 * with selects): |f| >= 65536 (and NaN/inf) -> inf or quiet NaN; |f| < 2^-14 -> subnormal
 * via a float addition of 0.5, whose ulp 2^-24 is the half subnormal spacing, so the FPU
 * does the RNE; otherwise rebias and round with 0xFFF + lsb (carries give inf at 65520). */
AF__INLINE uint16_t af_f32_to_f16(float f) {
    uint32_t u = af__f2u(f);
    uint32_t sign = (u >> 16) & 0x8000u;
    uint32_t a = u & 0x7FFFFFFFu;
    uint32_t infnan = a > 0x7F800000u ? 0x7E00u : 0x7C00u;
    uint32_t sub = af__f2u(af__u2f(a) + 0.5f) - 0x3F000000u;
    uint32_t norm = (a + 0xC8000FFFu + ((a >> 13) & 1u)) >> 13;
    uint32_t r = a >= 0x47800000u ? infnan : (a < 0x38800000u ? sub : norm);
    return (uint16_t)(r | sign);
}

/* ======================================================================================
 * Row kernels.  View [outer, n, inner]: element (o, i, j) at x[(o*n + i)*inner + j].
 * inner == 1 (contiguous rows) is the fast path; inner > 1 processes blocks of AF__COLB
 * adjacent columns at once so the loads stay unit-stride and vectorize across j.
 * Sums are accumulated in double (vectorized), which keeps 1e5-element sums at ~1e-8.
 * ==================================================================================== */

#define AF__COLB 64

/* exp(x - m) for softmax.  The float difference d = x - m carries a rounding error of up
 * to |d| * 2^-24, which exp turns into a relative error of the same size (1e-6 at d = -20).
 * TwoSum recovers that error exactly (c = (x - m) - d) and exp(d + c) = exp(d) * (1 + c),
 * so the result is as accurate as af_exp itself for any spread of the row. */
AF__INLINE float af__exp_diff(float x, float m) {
    float d = x - m;
    float xv = d + m;                 /* TwoSum(x, -m) */
    float mv = xv - d;
    float c = (x - xv) + (mv - m);
    float e = af_exp(d);
    return AF__FMA(e, c, e);
}

AF__INLINE int af__par_ok(long elems) { return elems >= AF_PAR_MIN_ELEMS; }

/* NaN-propagating max of x[0..n) (-inf for n == 0).  Written as 32 independent lanes rather
 * than an `omp simd reduction(max:)`: clang does not vectorize a select-based max reduction
 * without fast-math (and warns), both compilers vectorize this form.  A lane that has seen a
 * NaN keeps it: (v > m || v != v) is false for every later v when m is NaN. */
#define AF__MAXL 32
AF__INLINE float af__maxf(const float *restrict x, long n) {
    float mv[AF__MAXL];
    for (int l = 0; l < AF__MAXL; l++) mv[l] = -INFINITY;
    long i = 0;
    for (; i + AF__MAXL <= n; i += AF__MAXL)
        for (int l = 0; l < AF__MAXL; l++) {
            float v = x[i + l];
            mv[l] = (v > mv[l] || v != v) ? v : mv[l];
        }
    for (; i < n; i++) mv[0] = (x[i] > mv[0] || x[i] != x[i]) ? x[i] : mv[0];
    float m = mv[0];
    for (int l = 1; l < AF__MAXL; l++) m = (mv[l] > m || mv[l] != mv[l]) ? mv[l] : m;
    return m;
}

/* Sums of exp over a contiguous row are taken in float over blocks of AF__SUMB elements
 * (16 lanes x 32 terms: error ~1e-7 relative) and the block sums are added in double, so
 * the accuracy does not depend on n and the inner loop stays a plain float reduction (a
 * per-element double accumulator costs ~13% of the softmax throughput). */
#define AF__SUMB 512

/* One contiguous softmax row: max pass, exp pass (stores e, block sums), scale pass. */
static void af__softmax_row(const float *restrict x, float *restrict y, long n) {
    float m = af__maxf(x, n);
    double s = 0.0;
    for (long i0 = 0; i0 < n; i0 += AF__SUMB) {
        long i1 = n - i0 < AF__SUMB ? n : i0 + AF__SUMB;
        float bs = 0.0f;
#pragma omp simd reduction(+ : bs)
        for (long i = i0; i < i1; i++) {
            float e = af__exp_diff(x[i], m);
            y[i] = e;
            bs += e;
        }
        s += (double)bs;
    }
    float inv = (float)(1.0 / s);
#pragma omp simd
    for (long i = 0; i < n; i++) y[i] *= inv;
}

/* w (<= AF__COLB) adjacent columns of a strided axis: same three passes, vector over j. */
static void af__softmax_cols(const float *restrict x, float *restrict y, long n, long inner,
                             long w) {
    float m[AF__COLB];
    double s[AF__COLB];
    float inv[AF__COLB];
    for (long j = 0; j < w; j++) { m[j] = -INFINITY; s[j] = 0.0; }
    for (long i = 0; i < n; i++) {
        const float *xr = x + i * inner;
#pragma omp simd
        for (long j = 0; j < w; j++) m[j] = xr[j] > m[j] ? xr[j] : m[j];
    }
    for (long i = 0; i < n; i++) {
        const float *xr = x + i * inner;
        float *yr = y + i * inner;
#pragma omp simd
        for (long j = 0; j < w; j++) {
            float e = af__exp_diff(xr[j], m[j]);
            yr[j] = e;
            s[j] += (double)e;
        }
    }
    for (long j = 0; j < w; j++) inv[j] = (float)(1.0 / s[j]);
    for (long i = 0; i < n; i++) {
        float *yr = y + i * inner;
#pragma omp simd
        for (long j = 0; j < w; j++) yr[j] *= inv[j];
    }
}

/* y = softmax(x) along the middle axis (max-subtracted). */
static AF__UNUSED void af_softmax(const float *restrict x, float *restrict y, long outer, long n,
                                  long inner) {
    if (outer <= 0 || n <= 0 || inner <= 0) return;
    if (inner == 1) {
#pragma omp parallel for schedule(static) if (outer > 1 && af__par_ok(outer * n))
        for (long o = 0; o < outer; o++) af__softmax_row(x + o * n, y + o * n, n);
        return;
    }
    long nb = (inner + AF__COLB - 1) / AF__COLB;
#pragma omp parallel for schedule(static) if (outer * nb > 1 && af__par_ok(outer * n * inner))
    for (long t = 0; t < outer * nb; t++) {
        long o = t / nb, j0 = (t % nb) * AF__COLB;
        long w = inner - j0 < AF__COLB ? inner - j0 : AF__COLB;
        af__softmax_cols(x + o * n * inner + j0, y + o * n * inner + j0, n, inner, w);
    }
}

/* log_softmax row: y = (x - max) - log(sum exp(x - max)).  Both terms are <= 0 / >= 0 so
 * the final subtraction never cancels.  The elements equal to the max contribute exactly 1
 * each; they are counted instead of summed, and log1p(count - 1 + rest) keeps the relative
 * accuracy of the remainder when one element dominates (y_max = -log1p(1e-14) must not
 * round to 1 + 1e-14 first).  One libm call per row. */
static void af__log_softmax_row(const float *restrict x, float *restrict y, long n) {
    float m = af__maxf(x, n);
    double s = 0.0;
    long cnt = 0;
    for (long i0 = 0; i0 < n; i0 += AF__SUMB) {
        long i1 = n - i0 < AF__SUMB ? n : i0 + AF__SUMB;
        float bs = 0.0f;
        int bc = 0;
#pragma omp simd reduction(+ : bs, bc)
        for (long i = i0; i < i1; i++) {
            float d = x[i] - m;
            bs += af_exp(d) * (float)(d != 0.0f); /* a ?: here makes gcc branch */
            bc += d == 0.0f;
        }
        s += (double)bs;
        cnt += bc;
    }
    float ls = (float)log1p((double)(cnt - 1) + s);
#pragma omp simd
    for (long i = 0; i < n; i++) y[i] = (x[i] - m) - ls;
}

static void af__log_softmax_cols(const float *restrict x, float *restrict y, long n, long inner,
                                 long w) {
    float m[AF__COLB], ls[AF__COLB];
    double s[AF__COLB];
    long cnt[AF__COLB];
    for (long j = 0; j < w; j++) { m[j] = -INFINITY; s[j] = 0.0; cnt[j] = 0; }
    for (long i = 0; i < n; i++) {
        const float *xr = x + i * inner;
#pragma omp simd
        for (long j = 0; j < w; j++) m[j] = xr[j] > m[j] ? xr[j] : m[j];
    }
    for (long i = 0; i < n; i++) {
        const float *xr = x + i * inner;
#pragma omp simd
        for (long j = 0; j < w; j++) {
            float d = xr[j] - m[j];
            s[j] += (double)(af_exp(d) * (float)(d != 0.0f));
            cnt[j] += d == 0.0f;
        }
    }
    for (long j = 0; j < w; j++) ls[j] = (float)log1p((double)(cnt[j] - 1) + s[j]);
    for (long i = 0; i < n; i++) {
        const float *xr = x + i * inner;
        float *yr = y + i * inner;
#pragma omp simd
        for (long j = 0; j < w; j++) yr[j] = (xr[j] - m[j]) - ls[j];
    }
}

static AF__UNUSED void af_log_softmax(const float *restrict x, float *restrict y, long outer,
                                      long n, long inner) {
    if (outer <= 0 || n <= 0 || inner <= 0) return;
    if (inner == 1) {
#pragma omp parallel for schedule(static) if (outer > 1 && af__par_ok(outer * n))
        for (long o = 0; o < outer; o++) af__log_softmax_row(x + o * n, y + o * n, n);
        return;
    }
    long nb = (inner + AF__COLB - 1) / AF__COLB;
#pragma omp parallel for schedule(static) if (outer * nb > 1 && af__par_ok(outer * n * inner))
    for (long t = 0; t < outer * nb; t++) {
        long o = t / nb, j0 = (t % nb) * AF__COLB;
        long w = inner - j0 < AF__COLB ? inner - j0 : AF__COLB;
        af__log_softmax_cols(x + o * n * inner + j0, y + o * n * inner + j0, n, inner, w);
    }
}

/* ---------------- reductions ----------------
 * op: 0 = sum, 1 = mean, 2 = max.  max propagates NaN; sum/mean accumulate in double. */
#define AF__RED_SUM 0
#define AF__RED_MEAN 1
#define AF__RED_MAX 2

AF__INLINE double af__sum_d(const float *restrict x, long n) {
    double s = 0.0;
#pragma omp simd reduction(+ : s)
    for (long i = 0; i < n; i++) s += (double)x[i];
    return s;
}

/* Contiguous row reduction.  A long row (few rows, large n) is split across threads in
 * fixed static chunks whose partials are combined in thread order: deterministic for a
 * given thread count. */
static float af__reduce_row(const float *restrict x, long n, int op, int par) {
    int nt = par ? omp_get_max_threads() : 1;
    if (nt > 64) nt = 64;
    if (nt <= 1 || !af__par_ok(n)) {
        if (op == AF__RED_MAX) return af__maxf(x, n);
        double s = af__sum_d(x, n);
        return (float)(op == AF__RED_MEAN ? s / (double)n : s);
    }
    double part[64];
    float mpart[64];
    int used = 1;
#pragma omp parallel num_threads(nt)
    {
        int t = omp_get_thread_num(), T = omp_get_num_threads();
        long lo = n * t / T, hi = n * (t + 1) / T;
        if (op == AF__RED_MAX) mpart[t] = af__maxf(x + lo, hi - lo);
        else part[t] = af__sum_d(x + lo, hi - lo);
        if (t == 0) used = T;
    }
    if (op == AF__RED_MAX) {
        float m = mpart[0];
        for (int t = 1; t < used; t++) m = (mpart[t] > m || mpart[t] != mpart[t]) ? mpart[t] : m;
        return m;
    }
    double s = 0.0;
    for (int t = 0; t < used; t++) s += part[t];
    return (float)(op == AF__RED_MEAN ? s / (double)n : s);
}

/* w adjacent columns of a strided axis, vector over j. */
static void af__reduce_cols(const float *restrict x, float *restrict y, long n, long inner, long w,
                            int op) {
    if (op == AF__RED_MAX) {
        float m[AF__COLB];
        for (long j = 0; j < w; j++) m[j] = -INFINITY;
        for (long i = 0; i < n; i++) {
            const float *xr = x + i * inner;
#pragma omp simd
            for (long j = 0; j < w; j++) {
                float v = xr[j];
                m[j] = (v > m[j] || v != v) ? v : m[j];
            }
        }
        for (long j = 0; j < w; j++) y[j] = m[j];
        return;
    }
    double s[AF__COLB];
    for (long j = 0; j < w; j++) s[j] = 0.0;
    for (long i = 0; i < n; i++) {
        const float *xr = x + i * inner;
#pragma omp simd
        for (long j = 0; j < w; j++) s[j] += (double)xr[j];
    }
    for (long j = 0; j < w; j++) y[j] = (float)(op == AF__RED_MEAN ? s[j] / (double)n : s[j]);
}

static void af__reduce(const float *restrict x, float *restrict y, long outer, long n, long inner,
                       int op) {
    if (outer <= 0 || inner <= 0) return;
    if (n <= 0) {  /* empty reduction: identity (sum 0, max -inf, mean NaN) */
        float id = op == AF__RED_SUM ? 0.0f : (op == AF__RED_MAX ? -INFINITY : NAN);
        for (long t = 0; t < outer * inner; t++) y[t] = id;
        return;
    }
    int nt = omp_get_max_threads();
    if (inner == 1) {
        if (outer >= 4L * nt || !af__par_ok(outer * n)) {
#pragma omp parallel for schedule(static) if (outer > 1 && af__par_ok(outer * n))
            for (long o = 0; o < outer; o++) y[o] = af__reduce_row(x + o * n, n, op, 0);
        } else {
            for (long o = 0; o < outer; o++) y[o] = af__reduce_row(x + o * n, n, op, 1);
        }
        return;
    }
    long nb = (inner + AF__COLB - 1) / AF__COLB;
#pragma omp parallel for schedule(static) if (outer * nb > 1 && af__par_ok(outer * n * inner))
    for (long t = 0; t < outer * nb; t++) {
        long o = t / nb, j0 = (t % nb) * AF__COLB;
        long w = inner - j0 < AF__COLB ? inner - j0 : AF__COLB;
        af__reduce_cols(x + o * n * inner + j0, y + o * inner + j0, n, inner, w, op);
    }
}

/* y[o, j] = sum_i x[o, i, j]   (y has shape [outer, inner]) */
static AF__UNUSED void af_reduce_sum(const float *restrict x, float *restrict y, long outer, long n,
                                     long inner) {
    af__reduce(x, y, outer, n, inner, AF__RED_SUM);
}
/* y[o, j] = mean_i x[o, i, j] */
static AF__UNUSED void af_reduce_mean(const float *restrict x, float *restrict y, long outer,
                                      long n, long inner) {
    af__reduce(x, y, outer, n, inner, AF__RED_MEAN);
}
/* y[o, j] = max_i x[o, i, j]  (NaN if any element is NaN) */
static AF__UNUSED void af_reduce_max(const float *restrict x, float *restrict y, long outer, long n,
                                     long inner) {
    af__reduce(x, y, outer, n, inner, AF__RED_MAX);
}

/* ---------------- normalization ---------------- */

/* Layer norm over contiguous rows of length n.  Two passes in double (mean, then the
 * centered sum of squares) so a large mean (1000 + N(0,1)) costs no accuracy.  The output
 * pass is float: (x - mean_f) - (mean - mean_f) keeps the double mean's precision (the
 * first difference is exact when x is near the mean, the correction is tiny). */
/* Mean (f64) and 1/sqrt(biased variance + eps) of x[0..n): two passes in double, shared by
 * layer norm (per row) and group norm (per group). */
AF__INLINE double af__mean_rstd(const float *restrict x, long n, float eps, float *rstd) {
    const double mean = af__sum_d(x, n) / (double)n;
    double ss = 0.0;
#pragma omp simd reduction(+ : ss)
    for (long i = 0; i < n; i++) {
        const double d = (double)x[i] - mean;
        ss += d * d;
    }
    *rstd = (float)(1.0 / sqrt(ss / (double)n + (double)eps));
    return mean;
}

static AF__UNUSED void af_layer_norm(const float *restrict x, float *restrict y,
                                     const float *restrict gamma, const float *restrict beta,
                                     long rows, long n, float eps) {
    if (rows <= 0 || n <= 0) return;
#pragma omp parallel for schedule(static) if (rows > 1 && af__par_ok(rows * n))
    for (long r = 0; r < rows; r++) {
        const float *xr = x + r * n;
        float *yr = y + r * n;
        float rstd;
        const double mean = af__mean_rstd(xr, n, eps, &rstd);
        float mf = (float)mean;
        float mc = (float)(mean - (double)mf);
        if (gamma && beta) {
#pragma omp simd
            for (long i = 0; i < n; i++) yr[i] = AF__FMA(((xr[i] - mf) - mc) * rstd, gamma[i], beta[i]);
        } else if (gamma) {
#pragma omp simd
            for (long i = 0; i < n; i++) yr[i] = ((xr[i] - mf) - mc) * rstd * gamma[i];
        } else if (beta) {
#pragma omp simd
            for (long i = 0; i < n; i++) yr[i] = ((xr[i] - mf) - mc) * rstd + beta[i];
        } else {
#pragma omp simd
            for (long i = 0; i < n; i++) yr[i] = ((xr[i] - mf) - mc) * rstd;
        }
    }
}

/* RMS norm over contiguous rows: y = x / sqrt(mean(x^2) + eps) * gamma; sum of squares in
 * double. */
static AF__UNUSED void af_rms_norm(const float *restrict x, float *restrict y,
                                   const float *restrict gamma, long rows, long n, float eps) {
    if (rows <= 0 || n <= 0) return;
#pragma omp parallel for schedule(static) if (rows > 1 && af__par_ok(rows * n))
    for (long r = 0; r < rows; r++) {
        const float *xr = x + r * n;
        float *yr = y + r * n;
        double ss = 0.0;
#pragma omp simd reduction(+ : ss)
        for (long i = 0; i < n; i++) ss += (double)xr[i] * (double)xr[i];
        float rstd = (float)(1.0 / sqrt(ss / (double)n + (double)eps));
        if (gamma) {
#pragma omp simd
            for (long i = 0; i < n; i++) yr[i] = (xr[i] * rstd) * gamma[i];
        } else {
#pragma omp simd
            for (long i = 0; i < n; i++) yr[i] = xr[i] * rstd;
        }
    }
}

/* Group norm of x [N, C, spatial] (spatial = product of the trailing axes): per sample and
 * group of C/groups channels, which is one contiguous run of (C/groups)*spatial floats,
 * mean and biased variance in double (two passes, as af_layer_norm: a VAE group at 512x512
 * has 10^6 elements), then per channel y = (x - mean) * rstd * gamma[c] + beta[c].  Parallel
 * over (n, group); a single group runs on one thread. */
static AF__UNUSED void af_group_norm(const float *restrict x, float *restrict y,
                                     const float *restrict gamma, const float *restrict beta,
                                     long N, long C, long spatial, long groups, float eps) {
    const long cpg = groups > 0 ? C / groups : 0, per = cpg * spatial;
    if (N <= 0 || per <= 0) return;
#pragma omp parallel for schedule(static) if (N * groups > 1 && af__par_ok(N * C * spatial))
    for (long t = 0; t < N * groups; t++) {
        const float *xg = x + t * per;
        float *yg = y + t * per;
        float rstd;
        const double mean = af__mean_rstd(xg, per, eps, &rstd);
        float mf = (float)mean, mc = (float)(mean - (double)mf);
        for (long c = 0; c < cpg; c++) {
            const long ch = (t % groups) * cpg + c;
            const float a = rstd * gamma[ch], b = beta[ch];
            const float *xr = xg + c * spatial;
            float *yr = yg + c * spatial;
#pragma omp simd
            for (long i = 0; i < spatial; i++) yr[i] = AF__FMA((xr[i] - mf) - mc, a, b);
        }
    }
}

/* ======================================================================================
 * Gather (embedding lookup)
 * ==================================================================================== */

/* out row r = table row idx[r], rows of row_bytes bytes (any storage type: a bf16 table
 * gives bf16 rows, as the IR types it).  The interpreter rejects an index that is not an
 * integer in [0, rows); a kernel cannot report an error, so such an index (negative, too
 * large, fractional, NaN) yields a zero row instead: never a read outside the table.
 * Tokenizers produce valid ids, so this only guards against misuse. */
static AF__UNUSED void af_gather_rows(const void *restrict table, const float *restrict idx,
                                      void *restrict out, long n, long rows, long row_bytes) {
#pragma omp parallel for schedule(static) if (n > 1 && af__par_ok(n * row_bytes / 4))
    for (long r = 0; r < n; r++) {
        const float f = idx[r];
        char *dst = (char *)out + r * row_bytes;
        /* f < 2^62 before the conversion, so (long)f is defined */
        const long i = f >= 0.0f && f < 4.6e18f && f == floorf(f) ? (long)f : -1;
        if (i >= 0 && i < rows) memcpy(dst, (const char *)table + i * row_bytes, (size_t)row_bytes);
        else memset(dst, 0, (size_t)row_bytes);
    }
}

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
 * see af__mk_pv).  Per-thread memory: (2*D + KT + 8) * 64 floats, independent of Sq/Sk.
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

/* Micro-kernel 1: st[r][c] = sum_d a[r*lda + d] * b[d*AF__QB + c] for r < R (R <= AF__RK,
 * a compile-time constant after inlining), c < AF__CB; mx[c] = max(mx[c], st[r][c]). */
AF__INLINE void af__mk_qk(const float *restrict a, long lda, const float *restrict b, long D,
                          float *restrict st, float *restrict mx, const int R) {
    af__vec c[AF__RK][AF__NV];
    for (int r = 0; r < R; r++)
        for (int v = 0; v < AF__NV; v++) c[r][v] = af__vzero();
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
 * sums, whose rounding error grows with sqrt(chunk) + sqrt(Sk/chunk) instead of sqrt(Sk). */
AF__INLINE void af__mk_pv(const float *restrict a, long lda, const float *restrict p, long kt,
                          float *restrict ot, const float *restrict al, const int R) {
    af__vec c[AF__RK][AF__NV];
    for (int r = 0; r < R; r++)
        for (int v = 0; v < AF__NV; v++) c[r][v] = af__vzero();
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
                        float *restrict st, float *restrict mx, long rows) {
    long r = 0;
    for (; r + AF__RK <= rows; r += AF__RK)
        af__mk_qk(a + r * lda, lda, b, D, st + r * AF__QB, mx, AF__RK);
    switch (rows - r) {
    case 5: af__mk_qk(a + r * lda, lda, b, D, st + r * AF__QB, mx, 5); break;
    case 4: af__mk_qk(a + r * lda, lda, b, D, st + r * AF__QB, mx, 4); break;
    case 3: af__mk_qk(a + r * lda, lda, b, D, st + r * AF__QB, mx, 3); break;
    case 2: af__mk_qk(a + r * lda, lda, b, D, st + r * AF__QB, mx, 2); break;
    case 1: af__mk_qk(a + r * lda, lda, b, D, st + r * AF__QB, mx, 1); break;
    default: break;
    }
}

static void af__pv_rows(const float *restrict a, long lda, const float *restrict p, long kt,
                        float *restrict ot, const float *restrict al, long D) {
    long r = 0;
    for (; r + AF__RK <= D; r += AF__RK)
        af__mk_pv(a + r, lda, p, kt, ot + r * AF__QB, al, AF__RK);
    switch (D - r) {
    case 5: af__mk_pv(a + r, lda, p, kt, ot + r * AF__QB, al, 5); break;
    case 4: af__mk_pv(a + r, lda, p, kt, ot + r * AF__QB, al, 4); break;
    case 3: af__mk_pv(a + r, lda, p, kt, ot + r * AF__QB, al, 3); break;
    case 2: af__mk_pv(a + r, lda, p, kt, ot + r * AF__QB, al, 2); break;
    case 1: af__mk_pv(a + r, lda, p, kt, ot + r * AF__QB, al, 1); break;
    default: break;
    }
}

/* floats of scratch one thread needs for one query tile */
AF__INLINE long af__attn_scratch(long D) { return (2 * D + AF__KT + 8) * AF__QB; }

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
                          float *restrict buf) {
    float *qt = buf;                   /* D x QB  transposed queries (sign of scale applied) */
    float *ot = qt + D * AF__QB;       /* D x QB  unnormalized output, transposed */
    float *st = ot + D * AF__QB;       /* KT x QB scores, then probabilities */
    float *m = st + AF__KT * AF__QB;   /* running max of the scaled scores */
    float *al = m + AF__QB;            /* rescale factor of the old state */
    float *mt = al + AF__QB;           /* max of the current key tile (unscaled) */
    double *l = (double *)(void *)(mt + 2 * AF__QB);   /* running sum (double) */
    double *ls = l + AF__QB;                            /* sum of the current tile */
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
        for (long d = 0; d < D; d++) qt[d * AF__QB + i] = qr[d] * sgn;
    }
    for (long d = 0; d < D; d++)
        for (long i = rq; i < AF__QB; i++) qt[d * AF__QB + i] = 0.0f;
    memset(ot, 0, sizeof(float) * (size_t)(D * AF__QB));
    for (long i = 0; i < AF__QB; i++) { m[i] = -INFINITY; l[i] = 0.0; }
    const long Sv = qpos >= 0 && qpos + rq < Sk ? qpos + rq : Sk; /* keys any query sees */

    for (long j0 = 0; j0 < Sv; j0 += AF__KT) {
        long kt = Sv - j0 < AF__KT ? Sv - j0 : AF__KT;
        for (long i = 0; i < AF__QB; i++) { mt[i] = -INFINITY; ls[i] = 0.0; }
        for (long c0 = 0; c0 < AF__QB; c0 += AF__CB)
            af__qk_rows(k + j0 * ld, ld, qt + c0, D, st + c0, mt + c0, kt);
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
#pragma omp simd
            for (long i = 0; i < AF__QB; i++) ls[i] += (double)cs[i];
            for (long c0 = 0; c0 < AF__QB; c0 += AF__CB)
                af__pv_rows(v + (j0 + jc) * ld, ld, st + jc * AF__QB + c0, nc, ot + c0,
                            jc == 0 ? al + c0 : NULL, D);
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

/* One work unit of af_attention_ex: query tile t of ntask in (b, h, tile) order. */
AF__INLINE void af__attn_task(const float *restrict q, const float *restrict k,
                              const float *restrict v, const float *restrict bias,
                              float *restrict out, long t, long nqt, long Sq, long Sk, long H,
                              long D, float scale, int causal, float *restrict tb) {
    const long ld = H * D, bh = t / nqt, i0 = (t % nqt) * AF__QB;
    const long b = bh / H, h = bh % H;
    const long rq = Sq - i0 < AF__QB ? Sq - i0 : AF__QB;
    af__attn_tile(q + (b * Sq + i0) * ld + h * D, k + b * Sk * ld + h * D, v + b * Sk * ld + h * D,
                  out + (b * Sq + i0) * ld + h * D, ld, D, rq, Sk, scale,
                  bias ? bias + (h * Sq + i0) * Sk : NULL, causal ? i0 : -1, tb);
}

/* out[b,i,h,:] = sum_j softmax_j(scale * <q[b,i,h,:], k[b,j,h,:]> + bias[h,i,j]) v[b,j,h,:]
 * q, out: [B, Sq, H, D]; k, v: [B, Sk, H, D]; bias [H, Sq, Sk] or NULL (shared by the
 * batch); causal: key j only for queries i >= j (then Sq = Sk).  Parallel over (b, h, query
 * tile) with a static schedule in (b, h)-major order, so each thread works through whole
 * heads and that head's K/V stay in its L2; causal tiles differ in cost (tile i sees i + 1
 * key tiles), so they are dealt out dynamically, costliest first.  Uses
 * omp_get_max_threads() threads. */
static AF__UNUSED void af_attention_ex(const float *restrict q, const float *restrict k,
                                       const float *restrict v, const float *restrict bias,
                                       float *restrict out, long B, long Sq, long Sk, long H,
                                       long D, float scale, int causal) {
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
#pragma omp parallel num_threads(nth) if (nth > 1)
    {
        float *tb = buf + (size_t)omp_get_thread_num() * (size_t)per;
        if (causal) {
#pragma omp for schedule(dynamic, 1)
            for (long u = 0; u < ntask; u++) { /* last query tile of every head first */
                const long t = (u % (ntask / nqt)) * nqt + (nqt - 1 - u / (ntask / nqt));
                af__attn_task(q, k, v, bias, out, t, nqt, Sq, Sk, H, D, scale, causal, tb);
            }
        } else {
#pragma omp for schedule(static)
            for (long t = 0; t < ntask; t++)
                af__attn_task(q, k, v, bias, out, t, nqt, Sq, Sk, H, D, scale, causal, tb);
        }
    }
    free(buf);
}

/* Plain attention: no bias, no mask. */
static AF__UNUSED void af_attention(const float *restrict q, const float *restrict k,
                                    const float *restrict v, float *restrict out, long B, long Sq,
                                    long Sk, long H, long D, float scale) {
    af_attention_ex(q, k, v, NULL, out, B, Sq, Sk, H, D, scale, 0);
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

#endif /* ARCFLOW_PRELUDE_H */
