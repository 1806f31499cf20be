/* ======================================================================================
 * Autodiff kernels: attention's backward and scatter_add (the transpose of gather).
 * Appended to prelude.h in every translation unit; uses its macros (AF__UNUSED).
 * ====================================================================================== */

/* s_ij = scale * <q_i, k_j> + bias_ij for one query row and one key row (float lanes). */
static inline float af__attn_logit(const float *restrict qi, const float *restrict kj, long D,
                                   float scale, float bias) {
    float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
    for (long d = 0; d < D; d++) dot += qi[d] * kj[d];
    return dot * scale + bias;
}

static inline float af__dot(const float *restrict a, const float *restrict b, long D) {
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (long d = 0; d < D; d++) s += a[d] * b[d];
    return s;
}

/* Per (b, h, i): lse_i = log sum_j exp(s_ij) over the visible keys (one pass with a running
 * max, rescaling the sum when the max grows) and delta_i = <dout_i, out_i> = sum_j P_ij dP_ij,
 * the row term of the softmax backward.  Arrays are [B, H, Sq]. */
static void af__attn_bwd_stats(const float *restrict q, const float *restrict k,
                               const float *restrict bias, const float *restrict out,
                               const float *restrict dout, float *restrict lse,
                               float *restrict delta, long B, long Sq, long Sk, long H, long D,
                               float scale, int causal) {
    long ld = H * D;
#pragma omp parallel for collapse(2) schedule(static)
    for (long bh = 0; bh < B * H; bh++) {
        for (long i = 0; i < Sq; i++) {
            long b = bh / H, h = bh % H;
            const float *qi = q + (b * Sq + i) * ld + h * D;
            long visible = causal ? i + 1 : Sk;
            float m = -INFINITY, s = 0.0f;
            for (long j = 0; j < visible; j++) {
                float x = af__attn_logit(qi, k + (b * Sk + j) * ld + h * D, D, scale,
                                         bias ? bias[(h * Sq + i) * Sk + j] : 0.0f);
                if (x > m) { s = s * expf(m - x) + 1.0f; m = x; } else s += expf(x - m);
            }
            lse[bh * Sq + i] = m + logf(s);
            const long r = (b * Sq + i) * ld + h * D;
            delta[bh * Sq + i] = af__dot(dout + r, out + r, D);
        }
    }
}

#define AF__BWD_KB 32L

/* Attention backward without an Sq x Sk buffer (FlashAttention's backward, in two sweeps so no
 * two threads ever add to the same row):
 *   sweep 1, parallel over (b, h, block of AF__BWD_KB keys): for every query row, recompute
 *     P_ij = exp(s_ij - lse_i), dP_ij = <dout_i, v_j>, dS_ij = P_ij (dP_ij - delta_i), and
 *     accumulate dv_j += P_ij dout_i, dk_j += scale dS_ij q_i;
 *   sweep 2, parallel over (b, h, i): dq_i = scale sum_j dS_ij k_j.
 * out: [B, Sq + 2 Sk, H, D] = dq | dk | dv along the sequence axis. */
static AF__UNUSED void af_attention_grad(const float *restrict q, const float *restrict k,
                                         const float *restrict v, const float *restrict bias,
                                         const float *restrict o, const float *restrict dout,
                                         float *restrict out, long B, long Sq, long Sk, long H,
                                         long D, float scale, int causal) {
    long ld = H * D, total = Sq + 2 * Sk;
    memset(out, 0, sizeof(float) * (size_t)(B * total * ld));
    if (B <= 0 || Sq <= 0 || Sk <= 0 || H <= 0 || D <= 0) return;
    float *lse = (float *)malloc(sizeof(float) * (size_t)(2 * B * H * Sq));
    if (!lse) abort();
    float *delta = lse + B * H * Sq;
    af__attn_bwd_stats(q, k, bias, o, dout, lse, delta, B, Sq, Sk, H, D, scale, causal);
    long nkb = (Sk + AF__BWD_KB - 1) / AF__BWD_KB;
#pragma omp parallel for schedule(dynamic)
    for (long t = 0; t < B * H * nkb; t++) {
        long bh = t / nkb, j0 = (t % nkb) * AF__BWD_KB;
        long b = bh / H, h = bh % H;
        long j1 = j0 + AF__BWD_KB < Sk ? j0 + AF__BWD_KB : Sk;
        for (long i = causal ? j0 : 0; i < Sq; i++) {
            const float *qi = q + (b * Sq + i) * ld + h * D, *gi = dout + (b * Sq + i) * ld + h * D;
            const float l = lse[bh * Sq + i], dl = delta[bh * Sq + i];
            long jend = causal && i + 1 < j1 ? i + 1 : j1;
            for (long j = j0; j < jend; j++) {
                const float *kj = k + (b * Sk + j) * ld + h * D, *vj = v + (b * Sk + j) * ld + h * D;
                float p = expf(af__attn_logit(qi, kj, D, scale, bias ? bias[(h * Sq + i) * Sk + j] : 0.0f) - l);
                float ds = p * (af__dot(gi, vj, D) - dl) * scale;
                float *dk = out + (b * total + Sq + j) * ld + h * D;
                float *dv = out + (b * total + Sq + Sk + j) * ld + h * D;
#pragma omp simd
                for (long d = 0; d < D; d++) { dv[d] += p * gi[d]; dk[d] += ds * qi[d]; }
            }
        }
    }
#pragma omp parallel for collapse(2) schedule(static)
    for (long bh = 0; bh < B * H; bh++) {
        for (long i = 0; i < Sq; i++) {
            long b = bh / H, h = bh % H;
            const float *qi = q + (b * Sq + i) * ld + h * D, *gi = dout + (b * Sq + i) * ld + h * D;
            float *dq = out + (b * total + i) * ld + h * D;
            const float l = lse[bh * Sq + i], dl = delta[bh * Sq + i];
            long visible = causal ? i + 1 : Sk;
            for (long j = 0; j < visible; j++) {
                const float *kj = k + (b * Sk + j) * ld + h * D, *vj = v + (b * Sk + j) * ld + h * D;
                float p = expf(af__attn_logit(qi, kj, D, scale, bias ? bias[(h * Sq + i) * Sk + j] : 0.0f) - l);
                float ds = p * (af__dot(gi, vj, D) - dl) * scale;
#pragma omp simd
                for (long d = 0; d < D; d++) dq[d] += ds * kj[d];
            }
        }
    }
    free(lse);
}

/* dbias[h, i, j] = sum_b dS_bhij: inherently Sq x Sk (the bias is); parallel over (h, i). */
static AF__UNUSED void af_attention_bias_grad(const float *restrict q, const float *restrict k,
                                              const float *restrict v, const float *restrict bias,
                                              const float *restrict o, const float *restrict dout,
                                              float *restrict out, long B, long Sq, long Sk, long H,
                                              long D, float scale, int causal) {
    long ld = H * D;
    memset(out, 0, sizeof(float) * (size_t)(H * Sq * Sk));
    if (B <= 0 || Sq <= 0 || Sk <= 0 || H <= 0 || D <= 0) return;
    float *lse = (float *)malloc(sizeof(float) * (size_t)(2 * B * H * Sq));
    if (!lse) abort();
    float *delta = lse + B * H * Sq;
    af__attn_bwd_stats(q, k, bias, o, dout, lse, delta, B, Sq, Sk, H, D, scale, causal);
#pragma omp parallel for collapse(2) schedule(static)
    for (long h = 0; h < H; h++) {
        for (long i = 0; i < Sq; i++) {
            float *row = out + (h * Sq + i) * Sk;
            long visible = causal ? i + 1 : Sk;
            for (long b = 0; b < B; b++) {
                long bh = b * H + h;
                const float *qi = q + (b * Sq + i) * ld + h * D, *gi = dout + (b * Sq + i) * ld + h * D;
                for (long j = 0; j < visible; j++) {
                    const float *kj = k + (b * Sk + j) * ld + h * D, *vj = v + (b * Sk + j) * ld + h * D;
                    float p = expf(af__attn_logit(qi, kj, D, scale, bias[(h * Sq + i) * Sk + j]) - lse[bh * Sq + i]);
                    row[j] += p * (af__dot(gi, vj, D) - delta[bh * Sq + i]);
                }
            }
        }
    }
    free(lse);
}

/* table[V, W] = 0; table[idx[p], :] += upd[p, :].  Rows are visited in index order, so the sum is
 * deterministic; the columns of each row are split across threads when the table is wide.
 * An index outside [0, V) is skipped (the interpreter reports it; a kernel must not write
 * memory it does not own). */
static AF__UNUSED void af_scatter_add(const float *restrict upd, const float *restrict idx,
                                      float *restrict table, long P, long V, long W) {
    memset(table, 0, sizeof(float) * (size_t)(V * W));
    long chunks = W >= 4096 ? (W + 1023) / 1024 : 1;
#pragma omp parallel for schedule(static) if (chunks > 1 && P * W >= AF_PAR_MIN_ELEMS)
    for (long c = 0; c < chunks; c++) {
        long e0 = c * 1024, e1 = chunks == 1 ? W : (e0 + 1024 < W ? e0 + 1024 : W);
        for (long p = 0; p < P; p++) {
            float f = idx[p];
            if (!(f >= 0.0f && f < (float)V)) continue;
            long r = (long)f;
#pragma omp simd
            for (long e = e0; e < e1; e++) table[r * W + e] += upd[p * W + e];
        }
    }
}
