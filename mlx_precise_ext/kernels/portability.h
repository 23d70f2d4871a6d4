// Spellings that differ between C++, CUDA and Metal Shading Language. Every
// other kernel header is written once against these macros and compiled
// unchanged by all three compilers.
#pragma once

#if defined(__METAL_VERSION__)
#include <metal_stdlib>
#pragma METAL fp contract(off)
#define MP_INLINE inline
#define MP_OUTLINE inline
#define MP_HAS_DOUBLE 0
#define MP_FMAF(a, b, c) metal::fma(a, b, c)
#define MP_RINTF(x) metal::rint(x)
#define MP_LDEXPF(x, e) metal::ldexp(x, e)
#define MP_FLOAT_BITS(x) as_type<unsigned int>(x)
#define MP_BITS_FLOAT(b) as_type<float>(b)
#define MP_CTZ(x) static_cast<int>(metal::ctz(x))
#define MP_CLZ(x) static_cast<int>(metal::clz(x))
#define MP_THREAD thread
#define MP_DEVICE device
#define MP_CONSTANT constant
#define MP_THREADGROUP threadgroup
#define MP_INT64 long
#define MP_UNROLL _Pragma("unroll")
#define MP_ALIGNED(n)
// Atomics on thread-group memory (a row's max |bits|, a list's length).
#define MP_GROUP_UINT metal::atomic_uint
#define MP_GROUP_STORE(p, v) \
  metal::atomic_store_explicit(p, v, metal::memory_order_relaxed)
#define MP_GROUP_LOAD(p) \
  metal::atomic_load_explicit(p, metal::memory_order_relaxed)
#define MP_GROUP_MAX(p, v) \
  metal::atomic_fetch_max_explicit(p, v, metal::memory_order_relaxed)
// Rows may live in threadgroup or device memory (see rfft_conv_rows.h).
#define MP_BARRIER()          \
  metal::threadgroup_barrier( \
      metal::mem_flags::mem_threadgroup | metal::mem_flags::mem_device)
#elif defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define MP_INLINE __device__ __forceinline__
// The rare exact stages' multi-word arithmetic: inlined at every use it made
// the strict module 10 MB of PTX and five minutes of NVRTC.
#define MP_OUTLINE __device__ __noinline__
#define MP_HAS_DOUBLE 1
// NVRTC and nvcc contract a*b+c by default: the intrinsics below are never
// contracted, and __fmaf_rn is the one fused operation we mean.
#define MP_FMAF(a, b, c) __fmaf_rn(a, b, c)
#define MP_RINTF(x) rintf(x)
#define MP_RINT(x) rint(x)
#define MP_LDEXPF(x, e) ldexpf(x, e)
#define MP_LDEXP(x, e) ldexp(x, e)
#define MP_FLOAT_BITS(x) __float_as_uint(x)
#define MP_BITS_FLOAT(b) __uint_as_float(b)
#define MP_DOUBLE_BITS(x) \
  static_cast<unsigned long long>(__double_as_longlong(x))
#define MP_FMA(a, b, c) __fma_rn(a, b, c)
#define MP_CTZ(x) (__ffs(static_cast<int>(x)) - 1)
#define MP_CLZ(x) __clz(static_cast<int>(x))
#define MP_THREAD
#define MP_DEVICE
#define MP_CONSTANT
#define MP_THREADGROUP
#define MP_INT64 long long
#define MP_UNROLL _Pragma("unroll")
#define MP_ALIGNED(n) alignas(n)
#define MP_BARRIER() __syncthreads()

#else
#include <cfloat>
#include <cmath>
// The error-free transforms need every float operation rounded once, to float.
#if defined(__FAST_MATH__)
#error \
    "mlx-precise kernels must not be compiled with -ffast-math: it reassociates TwoSum away"
#endif
#if FLT_EVAL_METHOD != 0
#error \
    "mlx-precise kernels need FLT_EVAL_METHOD == 0 (float evaluated in float, e.g. SSE2, not x87)"
#endif
// Forced: a dd helper left out of line blocks vectorisation of the FFT loops.
#define MP_INLINE inline __attribute__((always_inline))
#define MP_OUTLINE inline
#define MP_HAS_DOUBLE 1
#define MP_FMAF(a, b, c) std::fma(a, b, c)
#define MP_RINTF(x) std::nearbyint(x)
#define MP_RINT(x) std::nearbyint(x)
#define MP_LDEXPF(x, e) std::ldexp(static_cast<float>(x), e)
#define MP_LDEXP(x, e) std::ldexp(static_cast<double>(x), e)
#include <cstring>
inline unsigned int mp_float_bits(float x) {
  unsigned int b;
  std::memcpy(&b, &x, sizeof(b));
  return b;
}
inline float mp_bits_float(unsigned int b) {
  float x;
  std::memcpy(&x, &b, sizeof(x));
  return x;
}
inline unsigned long long mp_double_bits(double x) {
  unsigned long long b;
  std::memcpy(&b, &x, sizeof(b));
  return b;
}
#define MP_FLOAT_BITS(x) mp_float_bits(x)
#define MP_BITS_FLOAT(b) mp_bits_float(b)
#define MP_DOUBLE_BITS(x) mp_double_bits(x)
#define MP_FMA(a, b, c) std::fma(a, b, c)
#define MP_CTZ(x) __builtin_ctz(x)
#define MP_CLZ(x) __builtin_clz(x)
#define MP_THREAD
#define MP_DEVICE
#define MP_CONSTANT
#define MP_THREADGROUP
#define MP_INT64 long long
// Loops over a pass's registers have constant trip counts; optimising
// compilers unroll them unasked.
#define MP_UNROLL
#define MP_ALIGNED(n)
// A C++ "group" is one thread running every step in turn (tests).
#define MP_BARRIER()
#endif

// Uncontracted float add/sub/mul. On C++ and Metal the compiler flag or pragma
// turns contraction off; on CUDA the _rn intrinsics are never contracted.
#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define MP_ADDF(a, b) __fadd_rn(a, b)
#define MP_SUBF(a, b) __fsub_rn(a, b)
#define MP_MULF(a, b) __fmul_rn(a, b)
#else
#define MP_ADDF(a, b) ((a) + (b))
#define MP_SUBF(a, b) ((a) - (b))
#define MP_MULF(a, b) ((a) * (b))
#endif

// Floats 2m and 2m + 1 of an 8-byte-aligned row: one 8-byte load on CUDA.
#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define MP_FLOAT_PAIR float2
#define MP_LOAD_FLOAT_PAIR(p, m) (reinterpret_cast<const float2*>(p)[m])
#else
struct mp_float_pair {
  float x;
  float y;
};
#define MP_FLOAT_PAIR mp_float_pair
#define MP_LOAD_FLOAT_PAIR(p, m) (mp_float_pair{(p)[2 * (m)], (p)[2 * (m) + 1]})
#endif

// Correctly rounded float division and square root. C++ and CUDA (NVRTC's
// defaults -prec-div=true, -prec-sqrt=true) round `/` and sqrt correctly;
// Metal spells them metal::precise::divide / metal::precise::sqrt (MLX builds
// run-time libraries with fast math off as well).
#if defined(__METAL_VERSION__)
#define MP_DIVF(a, b) metal::precise::divide(a, b)
#define MP_SQRTF(x) metal::precise::sqrt(x)
#else
#define MP_DIVF(a, b) ((a) / (b))
#define MP_SQRTF(x) sqrt(x)
#endif
