/* arcflow prelude, softmax, reductions and normalizations over rows (needs common.h, elementwise.h). */
#ifndef ARCFLOW_NORMS_H
#define ARCFLOW_NORMS_H

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
 * so the result is as accurate as af_exp itself for any spread of the row.  x = -inf (an
 * additive mask) makes c = -inf - (-inf) = NaN while exp(d) = 0: c is taken as 0 there, so a
 * masked entry is exactly 0 (a NaN x still gives NaN through exp(d)). */
AF__INLINE float af__exp_diff(float x, float m) {
    float d = x - m;
    float xv = d + m;                 /* TwoSum(x, -m) */
    float mv = xv - d;
    float c = (x - xv) + (mv - m);
    c = c == c ? c : 0.0f;
    float e = af_exp(d);
    return AF__FMA(e, c, e);
}

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

/* A row-wise kernel along the middle axis of [outer, n, inner]: row (contiguous rows, inner == 1)
 * per outer index, else cols per block of AF__COLB adjacent columns.  One driver for softmax and
 * log_softmax; the kernels are constants at both call sites, so gcc inlines them. */
typedef void (*af__row_fn)(const float *restrict x, float *restrict y, long n);
typedef void (*af__cols_fn)(const float *restrict x, float *restrict y, long n, long inner, long w);
AF__INLINE void af__along_middle(af__row_fn row, af__cols_fn cols, const float *restrict x,
                                 float *restrict y, long outer, long n, long inner) {
    if (outer <= 0 || n <= 0 || inner <= 0) return;
    if (inner == 1) {
#pragma omp parallel for schedule(static) if (outer > 1 && af__par_ok(outer * n))
        for (long o = 0; o < outer; o++) row(x + o * n, y + o * n, n);
        return;
    }
    long nb = (inner + AF__COLB - 1) / AF__COLB;
#pragma omp parallel for schedule(static) if (outer * nb > 1 && af__par_ok(outer * n * inner))
    for (long t = 0; t < outer * nb; t++) {
        long o = t / nb, j0 = (t % nb) * AF__COLB;
        long w = inner - j0 < AF__COLB ? inner - j0 : AF__COLB;
        cols(x + o * n * inner + j0, y + o * n * inner + j0, n, inner, w);
    }
}

/* y = softmax(x) along the middle axis (max-subtracted). */
AF__API void af_softmax(const float *restrict x, float *restrict y, long outer, long n,
                        long inner) {
    af__along_middle(af__softmax_row, af__softmax_cols, x, y, outer, n, inner);
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

/* y = log_softmax(x) along the middle axis. */
AF__API void af_log_softmax(const float *restrict x, float *restrict y, long outer,
                            long n, long inner) {
    af__along_middle(af__log_softmax_row, af__log_softmax_cols, x, y, outer, n, inner);
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
AF__API void af_reduce_sum(const float *restrict x, float *restrict y, long outer, long n,
                           long inner) {
    af__reduce(x, y, outer, n, inner, AF__RED_SUM);
}
/* y[o, j] = mean_i x[o, i, j] */
AF__API void af_reduce_mean(const float *restrict x, float *restrict y, long outer,
                            long n, long inner) {
    af__reduce(x, y, outer, n, inner, AF__RED_MEAN);
}
/* y[o, j] = max_i x[o, i, j]  (NaN if any element is NaN) */
AF__API void af_reduce_max(const float *restrict x, float *restrict y, long outer, long n,
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

AF__API void af_layer_norm(const float *restrict x, float *restrict y,
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
AF__API void af_rms_norm(const float *restrict x, float *restrict y,
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
AF__API void af_group_norm(const float *restrict x, float *restrict y,
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

#endif /* ARCFLOW_NORMS_H */
