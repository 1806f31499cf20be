/*
 * arcflow kernel prelude: what every family file builds on.
 *
 * The prelude is one file per kernel family, in this order.  A generated library starts each
 * C11 translation unit with the light families (common, elementwise, conversions: inlined
 * into the kernels) and api.h, the declarations of the heavy families' entry points, which
 * it links from one prelude object (every family, compiled once and cached; see AF__API).
 * Concatenated without AF_PRELUDE_SHARED the families are all `static` / `static inline`
 * and build on their own.  There is no global mutable state:
 *   common.h        includes, helper macros, bit casts, the parallel threshold
 *   elementwise.h   af_exp af_expm1 af_tanh af_sigmoid af_silu af_gelu_tanh
 *   conversions.h   af_bf16_to_f32 af_f32_to_bf16 af_f16_to_f32 af_f32_to_f16, af_gather_rows
 *   norms.h         af_softmax af_log_softmax af_reduce_sum af_reduce_mean af_reduce_max
 *                   af_layer_norm af_rms_norm af_group_norm
 *   gemm.h          af_conv2d (im2col tiles + cblas_sgemm), af_fma_peak_gflops
 *   attention.h     af_attention af_attention_ex (additive bias, causal mask)
 *   autodiff.h      attention backward, scatter_add
 * Build flags assumed by the generator:
 *   gcc -std=c11 -O3 -march=native -fopenmp -fno-math-errno -fPIC -shared ...
 * Nothing requires AVX-512: the intrinsic paths are guarded by __AVX512F__ / __AVX2__
 * and there is a portable C fallback.  No alignment is assumed for any pointer.
 * Every family compiles clean with -Wall -Wextra -Werror (a kernel test checks it).
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
#ifndef ARCFLOW_COMMON_H
#define ARCFLOW_COMMON_H

#include <math.h>
#include <stdint.h>
#include <string.h>
#include <stddef.h>
#include <stdlib.h>
#include <unistd.h> /* sysconf: the cache sizes the GEMM blocks for */
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

/* Linkage of the heavy kernels' entry points (norms, GEMM, attention, autodiff: AF__API).  A
 * generated library compiles these families once, in its prelude object (AF_PRELUDE_SHARED
 * defined: external functions, hidden inside the .so), cached per compiler, flags and CPU;
 * its own translation units see only their declarations (api.h).  gcc spent 2 s (-O1) to
 * 8 s (-O3) of every translation unit instantiating the GEMM and attention micro-kernels,
 * which is most of what building a library took.  Without AF_PRELUDE_SHARED every entry
 * point is static, so the concatenated families still build on their own (kernel-bench). */
#ifdef AF_PRELUDE_SHARED
#define AF__API __attribute__((visibility("hidden")))
#else
#define AF__API static AF__UNUSED
#endif

/* clang 19 and later end every dynamically scheduled OpenMP loop with __kmpc_dispatch_deinit,
 * which LLVM's libomp gained only in 19: a newer clang with an older libomp (Debian 12's libomp
 * 14 beside the Swift toolchain's clang) emits a call that no library defines, and the link
 * fails.  Those runtimes need no such call (the clang they shipped with never made it), so when
 * the libomp Toolchain links is older than 19 (AF_OMP_DISPATCH_DEINIT_SHIM) the prelude object
 * defines it as a no-op, hidden inside the library. */
#if defined(AF_PRELUDE_OBJECT) && defined(AF_OMP_DISPATCH_DEINIT_SHIM)
__attribute__((visibility("hidden"))) void __kmpc_dispatch_deinit(void *loc, int gtid);
void __kmpc_dispatch_deinit(void *loc, int gtid) { (void)loc; (void)gtid; }
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

AF__INLINE int af__par_ok(long elems) { return elems >= AF_PAR_MIN_ELEMS; }

#endif /* ARCFLOW_COMMON_H */
