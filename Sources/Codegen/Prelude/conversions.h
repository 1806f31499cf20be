/* arcflow prelude, 16-bit storage types and row gathers over any storage type (needs common.h). */
#ifndef ARCFLOW_CONVERSIONS_H
#define ARCFLOW_CONVERSIONS_H

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

/* dst[q] = the bf16 pair (s[2q], s[2q+1]) as one 32-bit word (low half first; 0 past n), for
 * q < ceil(n/2): the operand layout of vdpbf16ps, which is just the bf16 values in order.
 * With AVX-512 BF16, 32 values per vcvtne2ps2bf16: rounding to nearest even as
 * af_f32_to_bf16, but denormals flush to zero (vdpbf16ps reads them as zero anyway). */
AF__INLINE void af_f32_to_bf16_pairs(const float *restrict s, long n, uint32_t *restrict dst) {
    long q = 0;
#if defined(__AVX512BF16__)
    for (; 2 * q + 32 <= n; q += 16)
        _mm512_storeu_si512((void *)(dst + q), (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(s + 2 * q + 16), _mm512_loadu_ps(s + 2 * q)));
#endif
    for (; 2 * q < n; q++) {
        const uint32_t hi = 2 * q + 1 < n ? af_f32_to_bf16(s[2 * q + 1]) : 0u;
        dst[q] = (uint32_t)af_f32_to_bf16(s[2 * q]) | hi << 16;
    }
}

/* dst[e] = the bf16 pair (x[e], y[e]) (y NULL: 0) for e < n: two rows interleaved, the layout
 * of a vdpbf16ps operand whose pairs run across rows. */
AF__INLINE void af_f32_to_bf16_zip(const float *restrict x, const float *restrict y, long n, uint32_t *restrict dst) {
    long e = 0;
#if defined(__AVX512BF16__) && defined(__AVX512BW__)
    /* word e of the result takes 16-bit element e (x's) and 16 + e (y's) of [x0..x15 | y0..y15] */
    const __m512i zip = _mm512_setr_epi32(0x100000, 0x110001, 0x120002, 0x130003, 0x140004, 0x150005, 0x160006, 0x170007,
                                          0x180008, 0x190009, 0x1A000A, 0x1B000B, 0x1C000C, 0x1D000D, 0x1E000E, 0x1F000F);
    for (; e + 16 <= n; e += 16) {
        const __m512 xv = _mm512_loadu_ps(x + e), yv = y ? _mm512_loadu_ps(y + e) : _mm512_setzero_ps();
        _mm512_storeu_si512((void *)(dst + e), _mm512_permutexvar_epi16(zip, (__m512i)_mm512_cvtne2ps_pbh(yv, xv)));
    }
#endif
    for (; e < n; e++) dst[e] = (uint32_t)af_f32_to_bf16(x[e]) | (y ? (uint32_t)af_f32_to_bf16(y[e]) : 0u) << 16;
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

#endif /* ARCFLOW_CONVERSIONS_H */
