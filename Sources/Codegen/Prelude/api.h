/* arcflow prelude, the entry points of the heavy families (norms.h, gemm.h, gemm_int8.h,
 * attention.h, autodiff.h) as declarations: what a generated translation unit sees of them,
 * after common.h, elementwise.h and conversions.h, with AF_PRELUDE_SHARED defined.  The prelude
 * object ends with these too, so the compiler checks every declaration against its definition.
 * The comments at the definitions say what each computes. */
#ifndef ARCFLOW_API_H
#define ARCFLOW_API_H

/* norms.h */
AF__API void af_softmax(const float *restrict x, float *restrict y, long outer, long n, long inner);
AF__API void af_log_softmax(const float *restrict x, float *restrict y, long outer, long n, long inner);
AF__API void af_reduce_sum(const float *restrict x, float *restrict y, long outer, long n, long inner);
AF__API void af_reduce_mean(const float *restrict x, float *restrict y, long outer, long n, long inner);
AF__API void af_reduce_max(const float *restrict x, float *restrict y, long outer, long n, long inner);
AF__API void af_layer_norm(const float *restrict x, float *restrict y, const float *restrict gamma,
                           const float *restrict beta, long rows, long n, float eps);
AF__API void af_rms_norm(const float *restrict x, float *restrict y, const float *restrict gamma, long rows, long n,
                         float eps);
AF__API void af_group_norm(const float *restrict x, float *restrict y, const float *restrict gamma,
                           const float *restrict beta, long N, long C, long spatial, long groups, float eps);

/* gemm.h, gemm_int8.h */
AF__API void af_conv2d(const float *restrict x, const float *restrict w, float *restrict out, long N, long C, long H,
                       long W, long O, long KH, long KW, long sh, long sw, long ph, long pw, long dh, long dw);
AF__API void af_gemm_packed(const float *restrict a, long lda, const void *restrict b, int dt,
                            const float *restrict bias, int act, float *restrict c, long ldc, long M, long N, long K);
AF__API int af_gemm_strip(void);
AF__API void af_gemm_f32(const float *restrict a, const float *restrict b, int tb, float *restrict c, long M, long N,
                         long K);
AF__API void af_gemm_packed_int8(const float *restrict a, long lda, const void *restrict b, long g,
                                 const float *restrict bias, int act, float *restrict c, long ldc, long M, long N,
                                 long K);
AF__API double af_fma_peak_gflops(void);
AF__API double af_bf16_peak_gflops(void);
AF__API int af_bf16_compute_unit(void);

/* attention.h */
AF__API void af_attention_ex(const float *restrict q, const float *restrict k, const float *restrict v,
                             const float *restrict bias, float *restrict out, long B, long Sq, long Sk, long H,
                             long D, float scale, int causal);
AF__API void af_attention_bf16(const float *restrict q, const float *restrict k, const float *restrict v,
                               float *restrict out, long B, long Sq, long Sk, long H, long D, float scale);
AF__API void af_attention(const float *restrict q, const float *restrict k, const float *restrict v,
                          float *restrict out, long B, long Sq, long Sk, long H, long D, float scale);

/* autodiff.h */
AF__API void af_attention_grad(const float *restrict q, const float *restrict k, const float *restrict v,
                               const float *restrict bias, const float *restrict o, const float *restrict dout,
                               float *restrict out, long B, long Sq, long Sk, long H, long D, float scale,
                               int causal);
AF__API void af_attention_bias_grad(const float *restrict q, const float *restrict k, const float *restrict v,
                                    const float *restrict bias, const float *restrict o,
                                    const float *restrict dout, float *restrict out, long B, long Sq, long Sk,
                                    long H, long D, float scale, int causal);
AF__API void af_scatter_add(const float *restrict upd, const float *restrict idx, float *restrict table, long P, long V,
                            long W);

#endif /* ARCFLOW_API_H */
