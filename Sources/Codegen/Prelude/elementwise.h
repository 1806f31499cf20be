/* arcflow prelude, scalar math for element-wise kernels (needs common.h). */
#ifndef ARCFLOW_ELEMENTWISE_H
#define ARCFLOW_ELEMENTWISE_H

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
#define AF__EXPM1_Q4 0.0013882516650483012f
#define AF__EXPM1_Q3 0.008366547524929047f
#define AF__EXPM1_Q2 0.04166720062494278f
#define AF__EXPM1_Q1 0.1666654348373413f
#define AF__EXPM1_Q0 0.4999999701976776f
AF__INLINE float af__expm1_poly(float r) {
    float q = AF__EXPM1_Q4;
    q = AF__FMA(q, r, AF__EXPM1_Q3);
    q = AF__FMA(q, r, AF__EXPM1_Q2);
    q = AF__FMA(q, r, AF__EXPM1_Q1);
    q = AF__FMA(q, r, AF__EXPM1_Q0);
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

#if defined(__AVX512F__)
/* af_exp on 16 lanes, bit for bit: the same clamp, n, reduction and polynomial, and 2^n applied
 * by one vscalefps instead of two multiplies by powers of two (which also round only once, in
 * the second).  Written out because the compiler's vector form of af_exp spends about twice the
 * instructions on n and 2^n; attention's softmax (one exp per score) is where it counts. */
AF__INLINE __m512 af__exp16(__m512 x) {
    const __m512 xc = _mm512_max_ps(_mm512_set1_ps(-110.0f), x);   /* NaN: max returns x */
    const __m512 magic = _mm512_set1_ps(AF__MAGIC);
    __m512 nf = _mm512_sub_ps(_mm512_fmadd_ps(xc, _mm512_set1_ps(AF__LOG2E), magic), magic); /* rint, exact */
    nf = _mm512_min_ps(_mm512_set1_ps(128.0f), nf);
    __m512 r = _mm512_fmadd_ps(nf, _mm512_set1_ps(-AF__LN2_HI), xc);
    r = _mm512_fmadd_ps(nf, _mm512_set1_ps(-AF__LN2_LO), r);
    __m512 q = _mm512_fmadd_ps(_mm512_set1_ps(AF__EXPM1_Q4), r, _mm512_set1_ps(AF__EXPM1_Q3));
    q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(AF__EXPM1_Q2));
    q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(AF__EXPM1_Q1));
    q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(AF__EXPM1_Q0));
    const __m512 p = _mm512_add_ps(_mm512_fmadd_ps(q, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, nf);
}
#endif

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

#endif /* ARCFLOW_ELEMENTWISE_H */
