/*
 * polytune-blas: OpenBLAS products on tensors that live in the wasm backend's heap.
 *
 * Node-API (C, ABI-stable: built once, loaded by any Node >= 20), linked against Debian's
 * OpenBLAS. The caller passes the wasm memory (a typed array over it: ArrayBuffer, or
 * SharedArrayBuffer on a threaded wasm build) and float offsets into it; cblas_sgemm reads and
 * writes there directly, so a product costs no copy in or out of the heap. No JS runs during a
 * call, so the memory cannot grow (and move) under it.
 *
 * Exports:
 *   sgemm(heap, batch, m, n, k, transA, transB, aOff, aStride, bOff, bStride, cOff,
 *         biasOff, activation, alpha)
 *     C[i] = act(op(A[i]) op(B[i]) + bias) for i < batch, row-major, all offsets and batch
 *     strides in floats (a stride of 0 broadcasts one matrix over the batch); C[i] is
 *     contiguous [m, n]; biasOff < 0: no bias, else a [n] row added to every row;
 *     activation: 0 linear, 1 relu, 2 relu6, 3 leakyrelu (alpha), 4 sigmoid, 5 elu.
 *   unary(heap, op, xOff, yOff, n)
 *     y = op(x) over n floats; op 0 is exp: glibc's vector expf (libmvec, SSE to AVX-512 by
 *     the CPU), about 12x the wasm backend's scalar Exp on [131, 32000] (the loss head's chunks),
 *     within 3e-7 relative, and exact on -inf, inf and NaN.
 *   setNumThreads(n), numThreads(), config()   OpenBLAS's thread count and build string.
 *
 * Build: scripts/build-native.sh (gcc -shared, Node's headers, -lopenblas).
 */
#include <math.h>
#include <stdio.h>
#include <stdint.h>
#include <string.h>
#include <cblas.h>
#include <node_api.h>

/* In every OpenBLAS build (pthread, openmp, serial); declared here so that another cblas.h works. */
extern void openblas_set_num_threads(int num_threads);
extern int openblas_get_num_threads(void);
extern char *openblas_get_config(void);

#define CHECK(call)                                                                   \
  do {                                                                                \
    if ((call) != napi_ok) {                                                          \
      napi_throw_error(env, NULL, "polytune-blas: Node-API call failed: " #call);    \
      return NULL;                                                                    \
    }                                                                                 \
  } while (0)

static int get_i64(napi_env env, napi_value v, int64_t *out, const char *name) {
  double d;
  if (napi_get_value_double(env, v, &d) != napi_ok || d != d || d != (double)(int64_t)d) {
    char msg[96];
    snprintf(msg, sizeof msg, "polytune-blas: %s must be an integer", name);
    napi_throw_type_error(env, NULL, msg);
    return 0;
  }
  *out = (int64_t)d;
  return 1;
}

static void activate(float *c, size_t count, int activation, float alpha) {
  size_t j;
  switch (activation) {
    case 1:
      for (j = 0; j < count; j++) c[j] = c[j] > 0.f ? c[j] : 0.f;
      break;
    case 2:
      for (j = 0; j < count; j++) c[j] = c[j] < 0.f ? 0.f : (c[j] > 6.f ? 6.f : c[j]);
      break;
    case 3:
      for (j = 0; j < count; j++) c[j] = c[j] < 0.f ? alpha * c[j] : c[j];
      break;
    case 4:
      for (j = 0; j < count; j++) c[j] = 1.f / (1.f + expf(-c[j]));
      break;
    case 5:
      for (j = 0; j < count; j++) c[j] = c[j] < 0.f ? expf(c[j]) - 1.f : c[j];
      break;
    default:
      break;
  }
}

static napi_value sgemm(napi_env env, napi_callback_info info) {
  size_t argc = 15;
  napi_value argv[15];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc != 15) {
    napi_throw_type_error(env, NULL, "polytune-blas: sgemm takes 15 arguments");
    return NULL;
  }
  bool is_typed;
  CHECK(napi_is_typedarray(env, argv[0], &is_typed));
  if (!is_typed) {
    napi_throw_type_error(env, NULL, "polytune-blas: heap must be a Float32Array");
    return NULL;
  }
  napi_typedarray_type type;
  size_t length;
  void *data;
  CHECK(napi_get_typedarray_info(env, argv[0], &type, &length, &data, NULL, NULL));
  if (type != napi_float32_array || data == NULL) {
    napi_throw_type_error(env, NULL, "polytune-blas: heap must be a Float32Array");
    return NULL;
  }
  static const char *names[] = {"batch", "m", "n", "k", "transA", "transB", "aOff", "aStride",
                                "bOff", "bStride", "cOff", "biasOff", "activation"};
  int64_t v[13];
  for (int i = 0; i < 13; i++) {
    if (!get_i64(env, argv[i + 1], &v[i], names[i])) return NULL;
  }
  double alpha_d;
  CHECK(napi_get_value_double(env, argv[14], &alpha_d));
  const int64_t batch = v[0], m = v[1], n = v[2], k = v[3];
  const int trans_a = v[4] != 0, trans_b = v[5] != 0;
  const int64_t a_off = v[6], a_stride = v[7], b_off = v[8], b_stride = v[9], c_off = v[10];
  const int64_t bias_off = v[11];
  const int activation = (int)v[12];
  const int64_t len = (int64_t)length;
  /* Every matrix read or written lies inside the heap: a wrong offset is an exception, not a crash. */
  if (batch < 0 || m < 0 || n < 0 || k < 0 || m > INT32_MAX || n > INT32_MAX || k > INT32_MAX ||
      a_off < 0 || b_off < 0 || c_off < 0 || a_stride < 0 || b_stride < 0 || activation < 0 ||
      activation > 5 || (batch > 0 && (a_off + (batch - 1) * a_stride + m * k > len ||
                                        b_off + (batch - 1) * b_stride + k * n > len ||
                                        c_off + batch * m * n > len)) ||
      (bias_off >= 0 && bias_off + n > len)) {
    napi_throw_range_error(env, NULL, "polytune-blas: sgemm operands out of the heap's bounds");
    return NULL;
  }
  float *heap = (float *)data;
  for (int64_t i = 0; i < batch; i++) {
    const float *a = heap + a_off + i * a_stride;
    const float *b = heap + b_off + i * b_stride;
    float *c = heap + c_off + i * m * n;
    float beta = 0.f;
    if (bias_off >= 0) {
      for (int64_t r = 0; r < m; r++) memcpy(c + r * n, heap + bias_off, (size_t)n * sizeof(float));
      beta = 1.f;
    }
    if (m == 0 || n == 0) continue;
    if (k == 0) {
      if (beta == 0.f) memset(c, 0, (size_t)(m * n) * sizeof(float));
    } else {
      cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
                  (int)m, (int)n, (int)k, 1.f, a, trans_a ? (int)m : (int)k, b, trans_b ? (int)k : (int)n,
                  beta, c, (int)n);
    }
    activate(c, (size_t)(m * n), activation, (float)alpha_d);
  }
  return NULL;
}

/* glibc declares its vector variants only under -ffast-math; declared here so that the loop
 * vectorises without fast-math's assumptions (no NaN, no infinity). */
#pragma omp declare simd notinbranch
extern float expf(float);

__attribute__((target_clones("avx512f", "avx2", "default")))
static void exp_f32(const float *restrict x, float *restrict y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; i++) y[i] = expf(x[i]);
}

static napi_value unary(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc != 5) {
    napi_throw_type_error(env, NULL, "polytune-blas: unary takes 5 arguments");
    return NULL;
  }
  napi_typedarray_type type;
  size_t length;
  void *data;
  bool is_typed;
  CHECK(napi_is_typedarray(env, argv[0], &is_typed));
  if (is_typed) CHECK(napi_get_typedarray_info(env, argv[0], &type, &length, &data, NULL, NULL));
  if (!is_typed || type != napi_float32_array || data == NULL) {
    napi_throw_type_error(env, NULL, "polytune-blas: heap must be a Float32Array");
    return NULL;
  }
  static const char *names[] = {"op", "xOff", "yOff", "n"};
  int64_t v[4];
  for (int i = 0; i < 4; i++) {
    if (!get_i64(env, argv[i + 1], &v[i], names[i])) return NULL;
  }
  const int64_t op = v[0], x_off = v[1], y_off = v[2], n = v[3], len = (int64_t)length;
  if (op != 0 || n < 0 || x_off < 0 || y_off < 0 || x_off + n > len || y_off + n > len) {
    napi_throw_range_error(env, NULL, "polytune-blas: unary: unknown op or operands out of the heap's bounds");
    return NULL;
  }
  float *heap = (float *)data;
  exp_f32(heap + x_off, heap + y_off, n);
  return NULL;
}

static napi_value set_num_threads(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  int64_t n;
  if (argc != 1 || !get_i64(env, argv[0], &n, "threads")) return NULL;
  if (n < 1 || n > 1024) {
    napi_throw_range_error(env, NULL, "polytune-blas: threads must be in [1, 1024]");
    return NULL;
  }
  openblas_set_num_threads((int)n);
  return NULL;
}

static napi_value num_threads(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value out;
  CHECK(napi_create_int32(env, openblas_get_num_threads(), &out));
  return out;
}

static napi_value config(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value out;
  const char *s = openblas_get_config();
  CHECK(napi_create_string_utf8(env, s ? s : "", NAPI_AUTO_LENGTH, &out));
  return out;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"sgemm", NULL, sgemm, NULL, NULL, NULL, napi_enumerable, NULL},
      {"unary", NULL, unary, NULL, NULL, NULL, napi_enumerable, NULL},
      {"setNumThreads", NULL, set_num_threads, NULL, NULL, NULL, napi_enumerable, NULL},
      {"numThreads", NULL, num_threads, NULL, NULL, NULL, napi_enumerable, NULL},
      {"config", NULL, config, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  CHECK(napi_define_properties(env, exports, sizeof props / sizeof props[0], props));
  /* One worker a core is the rule: single-threaded until told otherwise. */
  openblas_set_num_threads(1);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
