// Spellings that differ between C++, CUDA and Metal Shading Language. Every
// other kernel header is written once against these macros and compiled
// unchanged by all three compilers.
#pragma once

#if defined(__METAL_VERSION__)
#include <metal_stdlib>
#pragma METAL fp contract(off)
#define MP_INLINE inline
#define MP_HAS_DOUBLE 0
#define MP_FMAF(a, b, c) metal::fma(a, b, c)
#define MP_THREAD thread
#define MP_DEVICE device
#define MP_CONSTANT constant
#define MP_THREADGROUP threadgroup
#define MP_INT64 long
// Rows may live in threadgroup or device memory (see rfft_conv_rows.h).
#define MP_BARRIER() \
  metal::threadgroup_barrier(metal::mem_flags::mem_threadgroup | metal::mem_flags::mem_device)
#elif defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define MP_INLINE __device__ __forceinline__
#define MP_HAS_DOUBLE 1
// NVRTC and nvcc contract a*b+c by default: the intrinsics below are never
// contracted, and __fmaf_rn is the one fused operation we mean.
#define MP_FMAF(a, b, c) __fmaf_rn(a, b, c)
#define MP_THREAD
#define MP_DEVICE
#define MP_CONSTANT
#define MP_THREADGROUP
#define MP_INT64 long long
#define MP_BARRIER() __syncthreads()
#else
#include <cmath>
#define MP_INLINE inline
#define MP_HAS_DOUBLE 1
#define MP_FMAF(a, b, c) std::fma(a, b, c)
#define MP_THREAD
#define MP_DEVICE
#define MP_CONSTANT
#define MP_THREADGROUP
#define MP_INT64 long long
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
