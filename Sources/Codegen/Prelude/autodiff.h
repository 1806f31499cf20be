/* ======================================================================================
 * Autodiff kernels: attention's backward and scatter_add (the transpose of gather).
 * The last prelude family in every translation unit; uses common.h's macros (AF__UNUSED).
 * ====================================================================================== */

/* Attention's backward works on tiles of AF__BWD_T queries x AF__BWD_T keys of one (b, h): the
 * logits, probabilities and their gradients of one tile live in two AF__BWD_T^2 scratch
 * buffers per thread, never an Sq x Sk matrix.  The tile products are small GEMMs through
 * OpenBLAS (single-threaded inside the parallel region); q, k, v, dout and the gradients are
 * read and written in place in their [B, S, H, D] layout (row stride H*D). */
#define AF__BWD_T 64L

/* st = scale * q_tile . k_blockT + bias, -inf where the causal mask hides a key. */
static void af__bwd_logits(const float *restrict q, const float *restrict k, long ld, long rq,
                           long kb, long D, float scale, const float *restrict bias, long Sk,
                           int causal, long i0, long j0, float *restrict st) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rq, (int)kb, (int)D, scale, q, (int)ld,
                k, (int)ld, 0.0f, st, (int)AF__BWD_T);
    for (long r = 0; r < rq; r++) {
        float *row = st + r * AF__BWD_T;
        if (bias) for (long c = 0; c < kb; c++) row[c] += bias[r * Sk + c];
        if (causal) for (long c = i0 + r + 1 - j0 < 0 ? 0 : i0 + r + 1 - j0; c < kb; c++) row[c] = -INFINITY;
    }
}

/* Per (b, h, i): lse_i = log sum_j exp(s_ij) over the visible keys (tile max, then the running
 * sum rescaled when the max grows) and delta_i = <dout_i, out_i> = sum_j P_ij dP_ij, the row
 * term of the softmax backward.  Arrays are [B, H, Sq]. */
static void af__attn_bwd_stats(const float *restrict q, const float *restrict k,
                               const float *restrict bias, const float *restrict out,
                               const float *restrict dout, float *restrict lse,
                               float *restrict delta, long B, long Sq, long Sk, long H, long D,
                               float scale, int causal, float *restrict scratch) {
    long ld = H * D, nqt = (Sq + AF__BWD_T - 1) / AF__BWD_T;
#pragma omp parallel for schedule(dynamic)
    for (long t = 0; t < B * H * nqt; t++) {
        float *st = scratch + (size_t)omp_get_thread_num() * (size_t)(2 * AF__BWD_T * AF__BWD_T);
        long bh = t / nqt, i0 = (t % nqt) * AF__BWD_T, b = bh / H, h = bh % H;
        long rq = Sq - i0 < AF__BWD_T ? Sq - i0 : AF__BWD_T;
        float m[AF__BWD_T], l[AF__BWD_T];
        for (long r = 0; r < rq; r++) { m[r] = -INFINITY; l[r] = 0.0f; }
        for (long j0 = 0; j0 < (causal ? i0 + rq : Sk); j0 += AF__BWD_T) {
            long kb = Sk - j0 < AF__BWD_T ? Sk - j0 : AF__BWD_T;
            af__bwd_logits(q + (b * Sq + i0) * ld + h * D, k + (b * Sk + j0) * ld + h * D, ld, rq, kb, D, scale,
                           bias ? bias + (h * Sq + i0) * Sk + j0 : NULL, Sk, causal, i0, j0, st);
            for (long r = 0; r < rq; r++) {
                const float *row = st + r * AF__BWD_T;
                float bm = -INFINITY, sum = 0.0f;
                for (long c = 0; c < kb; c++) bm = row[c] > bm ? row[c] : bm;
                if (bm == -INFINITY) continue;
                float mn = bm > m[r] ? bm : m[r];
#pragma omp simd reduction(+ : sum)
                for (long c = 0; c < kb; c++) sum += af_exp(row[c] - mn);
                l[r] = l[r] * af_exp(m[r] - mn) + sum;
                m[r] = mn;
            }
        }
        for (long r = 0; r < rq; r++) {
            lse[bh * Sq + i0 + r] = m[r] + logf(l[r]);
            const long at = (b * Sq + i0 + r) * ld + h * D;
            float dl = 0.0f;
#pragma omp simd reduction(+ : dl)
            for (long d = 0; d < D; d++) dl += dout[at + d] * out[at + d];
            delta[bh * Sq + i0 + r] = dl;
        }
    }
}

/* One tile: pt = P = exp(s - lse) and dt = dS = P (dP - delta) with dP = dout_tile . v_blockT. */
static void af__bwd_tile(const float *restrict q, const float *restrict k, const float *restrict v,
                         const float *restrict g, const float *restrict bias, const float *restrict lse,
                         const float *restrict delta, long ld, long rq, long kb, long D, float scale,
                         long Sk, int causal, long i0, long j0, float *restrict pt, float *restrict dt) {
    af__bwd_logits(q, k, ld, rq, kb, D, scale, bias, Sk, causal, i0, j0, pt);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rq, (int)kb, (int)D, 1.0f, g, (int)ld, v, (int)ld,
                0.0f, dt, (int)AF__BWD_T);
    for (long r = 0; r < rq; r++) {
        float *p = pt + r * AF__BWD_T, *ds = dt + r * AF__BWD_T;
        const float li = lse[r], di = delta[r];
#pragma omp simd
        for (long c = 0; c < kb; c++) { p[c] = af_exp(p[c] - li); ds[c] = p[c] * (ds[c] - di); }
    }
}

/* Key block j0 of pair bh against every query tile it sees: dv_block += P^T dout_tile and
 * dk_block += scale dS^T q_tile, and with dq also dq_tile += scale dS k_block (the one-sweep
 * backward).  scratch: the thread's two AF__BWD_T^2 tiles.  out is af__attention_bwd's. */
static void af__bwd_key_block(const float *restrict q, const float *restrict k, const float *restrict v,
                              const float *restrict bias, const float *restrict dout, const float *restrict lse,
                              const float *restrict delta, float *restrict out, long Sq, long Sk, long H, long D,
                              float scale, int causal, long bh, long j0, int dq, float *restrict scratch) {
    const long ld = H * D, total = Sq + 2 * Sk, b = bh / H, h = bh % H;
    float *pt = scratch, *dt = scratch + AF__BWD_T * AF__BWD_T;
    const long kb = Sk - j0 < AF__BWD_T ? Sk - j0 : AF__BWD_T;
    const float *kj = k + (b * Sk + j0) * ld + h * D, *vj = v + (b * Sk + j0) * ld + h * D;
    float *dk = out + (b * total + Sq + j0) * ld + h * D, *dv = out + (b * total + Sq + Sk + j0) * ld + h * D;
    for (long i0 = causal ? j0 / AF__BWD_T * AF__BWD_T : 0; i0 < Sq; i0 += AF__BWD_T) {
        const long rq = Sq - i0 < AF__BWD_T ? Sq - i0 : AF__BWD_T;
        const float *qi = q + (b * Sq + i0) * ld + h * D, *gi = dout + (b * Sq + i0) * ld + h * D;
        af__bwd_tile(qi, kj, vj, gi, bias ? bias + (h * Sq + i0) * Sk + j0 : NULL, lse + bh * Sq + i0,
                     delta + bh * Sq + i0, ld, rq, kb, D, scale, Sk, causal, i0, j0, pt, dt);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)kb, (int)D, (int)rq, 1.0f, pt, (int)AF__BWD_T,
                    gi, (int)ld, 1.0f, dv, (int)ld);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)kb, (int)D, (int)rq, scale, dt, (int)AF__BWD_T,
                    qi, (int)ld, 1.0f, dk, (int)ld);
        if (dq)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)rq, (int)D, (int)kb, scale, dt, (int)AF__BWD_T,
                        kj, (int)ld, 1.0f, out + (b * total + i0) * ld + h * D, (int)ld);
    }
}

/* Attention backward without an Sq x Sk buffer (FlashAttention's backward).  With at least as
 * many (b, h) pairs as threads, one sweep per pair (above the two-sweep code); otherwise two
 * sweeps, so that no two threads ever add to the same row:
 *   sweep 1, parallel over (b, h, key block): for every query tile, recompute P and dS and
 *     accumulate dv_block += P^T dout_tile, dk_block += scale dS^T q_tile;
 *   sweep 2, parallel over (b, h, query tile): dq_tile += scale dS k_block over the key blocks.
 * out: [B, Sq + 2 Sk, H, D] = dq | dk | dv along the sequence axis.  With part_bias, out is
 * dbias [H, Sq, Sk] = sum_b dS (inherently Sq x Sk, as the bias is; sweep 2 only, the batch
 * looped inside each task so every dbias row has one writer). */
static void af__attention_bwd(const float *restrict q, const float *restrict k,
                              const float *restrict v, const float *restrict bias,
                              const float *restrict o, const float *restrict dout,
                              float *restrict out, long B, long Sq, long Sk, long H, long D,
                              float scale, int causal, int part_bias) {
    long ld = H * D, total = Sq + 2 * Sk;
    memset(out, 0, sizeof(float) * (size_t)(part_bias ? H * Sq * Sk : B * total * ld));
    if (B <= 0 || Sq <= 0 || Sk <= 0 || H <= 0 || D <= 0) return;
    long per = 2 * AF__BWD_T * AF__BWD_T;
    int nth = omp_get_max_threads();
    float *stats = (float *)malloc(sizeof(float) * (size_t)(2 * B * H * Sq + per * (long)nth));
    if (!stats) abort();
    float *lse = stats, *delta = stats + B * H * Sq, *scratch = stats + 2 * B * H * Sq;
    af__attn_bwd_stats(q, k, bias, o, dout, lse, delta, B, Sq, Sk, H, D, scale, causal, scratch);
    long nkb = (Sk + AF__BWD_T - 1) / AF__BWD_T, nqt = (Sq + AF__BWD_T - 1) / AF__BWD_T;
    if (!part_bias && B * H >= nth) {
        /* Enough (b, h) pairs for every thread: one sweep per pair, each tile's P and dS computed
         * once for all three gradients (5 tile products instead of the two sweeps' 7).  dq, dk and
         * dv of a pair have one writer, and every sum runs in the two-sweep order (key blocks,
         * then query tiles, ascending), so the result is the same to the bit. */
#pragma omp parallel for schedule(dynamic)
        for (long bh = 0; bh < B * H; bh++)
            for (long j0 = 0; j0 < Sk; j0 += AF__BWD_T)
                af__bwd_key_block(q, k, v, bias, dout, lse, delta, out, Sq, Sk, H, D, scale, causal, bh, j0, 1,
                                  scratch + (size_t)omp_get_thread_num() * (size_t)per);
        free(stats);
        return;
    }
    if (!part_bias) {
#pragma omp parallel for schedule(dynamic)
        for (long t = 0; t < B * H * nkb; t++)
            af__bwd_key_block(q, k, v, bias, dout, lse, delta, out, Sq, Sk, H, D, scale, causal, t / nkb, (t % nkb) * AF__BWD_T, 0,
                              scratch + (size_t)omp_get_thread_num() * (size_t)per);
    }
    long tasks = part_bias ? H * nqt : B * H * nqt;
#pragma omp parallel for schedule(dynamic)
    for (long t = 0; t < tasks; t++) {
        float *pt = scratch + (size_t)omp_get_thread_num() * (size_t)per, *dt = pt + AF__BWD_T * AF__BWD_T;
        long outer = t / nqt, i0 = (t % nqt) * AF__BWD_T;
        long rq = Sq - i0 < AF__BWD_T ? Sq - i0 : AF__BWD_T;
        long b0 = part_bias ? 0 : outer / H, b1 = part_bias ? B : b0 + 1, h = outer % H;
        for (long b = b0; b < b1; b++) {
            long bh = b * H + h;
            const float *qi = q + (b * Sq + i0) * ld + h * D, *gi = dout + (b * Sq + i0) * ld + h * D;
            for (long j0 = 0; j0 < (causal ? i0 + rq : Sk); j0 += AF__BWD_T) {
                long kb = Sk - j0 < AF__BWD_T ? Sk - j0 : AF__BWD_T;
                const float *kj = k + (b * Sk + j0) * ld + h * D, *vj = v + (b * Sk + j0) * ld + h * D;
                af__bwd_tile(qi, kj, vj, gi, bias ? bias + (h * Sq + i0) * Sk + j0 : NULL, lse + bh * Sq + i0,
                             delta + bh * Sq + i0, ld, rq, kb, D, scale, Sk, causal, i0, j0, pt, dt);
                if (part_bias) {
                    for (long r = 0; r < rq; r++)
                        for (long c = 0; c < kb; c++) out[(h * Sq + i0 + r) * Sk + j0 + c] += dt[r * AF__BWD_T + c];
                } else {
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)rq, (int)D, (int)kb, scale, dt, (int)AF__BWD_T,
                                kj, (int)ld, 1.0f, out + (b * total + i0) * ld + h * D, (int)ld);
                }
            }
        }
    }
    free(stats);
}

AF__API void af_attention_grad(const float *restrict q, const float *restrict k,
                               const float *restrict v, const float *restrict bias,
                               const float *restrict o, const float *restrict dout,
                               float *restrict out, long B, long Sq, long Sk, long H,
                               long D, float scale, int causal) {
    af__attention_bwd(q, k, v, bias, o, dout, out, B, Sq, Sk, H, D, scale, causal, 0);
}

AF__API void af_attention_bias_grad(const float *restrict q, const float *restrict k,
                                    const float *restrict v, const float *restrict bias,
                                    const float *restrict o, const float *restrict dout,
                                    float *restrict out, long B, long Sq, long Sk, long H,
                                    long D, float scale, int causal) {
    af__attention_bwd(q, k, v, bias, o, dout, out, B, Sq, Sk, H, D, scale, causal, 1);
}

/* table[V, W] = 0; table[idx[p], :] += upd[p, :].  Rows are visited in index order, so the sum is
 * deterministic; the columns of each row are split across threads when the table is wide.
 * An index outside [0, V) is skipped (the interpreter reports it; a kernel must not write
 * memory it does not own). */
AF__API void af_scatter_add(const float *restrict upd, const float *restrict idx,
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
