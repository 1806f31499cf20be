/* Second translation unit linked into the same .so: proves the prelude can be included by
 * several TUs of one library (everything static, no duplicate symbols). */
#ifndef ARCFLOW_ATTENTION_H /* standalone compile (-I Sources/Codegen/Prelude): the families in order */
#include "common.h"
#include "elementwise.h"
#include "conversions.h"
#include "norms.h"
#include "gemm.h"
#include "attention.h"
#endif
void kb_tu2_softmax(const float *x, float *y, long o, long n, long i) { af_softmax(x, y, o, n, i); }
