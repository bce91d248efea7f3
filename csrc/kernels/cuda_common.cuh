// CUDA helpers shared by the kernels: error checks with file:line, dtype tags, mma.sync wrappers.
#pragma once
#ifdef FASTLM_CUDA_EMU  // compiled as C++ for the CPU emulator (csrc/emu/cuda_emu.h)
#include "emu/cuda_emu.h"
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#endif

#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace fastlm {
namespace cuda {

// Every CUDA call and launch goes through this (llm.c's cudaCheck): errors name file and line.
inline void cuda_check(cudaError_t err, const char* file, int line) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("CUDA error at ") + file + ":" + std::to_string(line) +
                             ": " + cudaGetErrorString(err));
}
#define FASTLM_CUDA_CHECK(x) ::fastlm::cuda::cuda_check((x), __FILE__, __LINE__)
#define FASTLM_LAUNCH_CHECK() ::fastlm::cuda::cuda_check(cudaGetLastError(), __FILE__, __LINE__)

// kernel<<<grid, block, smem, stream>>>(args) as FASTLM_LAUNCH(kernel, grid, block, smem,
// stream)(args), and the block's dynamic shared memory as FASTLM_DYNAMIC_SMEM(name), so that
// the emulator build (FASTLM_CUDA_EMU) can run the same source.
#ifdef FASTLM_CUDA_EMU
#define FASTLM_LAUNCH(kernel, grid, block, smem, stream) \
  ::fastlm::emu::launch(kernel, grid, block, smem, stream)
#define FASTLM_DYNAMIC_SMEM(name) unsigned char* name = ::fastlm::emu::dynamic_smem()
#else
#define FASTLM_LAUNCH(kernel, grid, block, smem, stream) kernel<<<grid, block, smem, stream>>>
#define FASTLM_DYNAMIC_SMEM(name) extern __shared__ __align__(16) unsigned char name[]
#endif

// dtype codes passed from Python (python/fastlm/ops/_dispatch.py: dtype_code).
enum DType : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16(x);
}
template <> __device__ __forceinline__ __half from_float<__half>(float x) {
  return __float2half(x);
}

// An empty asm that reads and rewrites v: the compiler must finish the work that reads v before
// it, in program order with other such fences (used to keep ptxas from interleaving
// independent per-vector work until registers spill). A no-op in the emulator.
__device__ __forceinline__ void register_fence(uint4& v) {
#ifndef FASTLM_CUDA_EMU
  asm volatile("" : "+r"(v.x), "+r"(v.y), "+r"(v.z), "+r"(v.w));
#else
  (void)v;
#endif
}

// out[0] += a and out[1] += b atomically (out 8-byte aligned): one vector atomic on sm_90
// (atomicAdd(float2*), CUDA 12.1+), half the requests to L2 of two scalar ones (sm_80).
__device__ __forceinline__ void atomic_add2(float* out, float a, float b) {
#if defined(FASTLM_CUDA_EMU) || (defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900)
  atomicAdd(reinterpret_cast<float2*>(out), make_float2(a, b));
#else
  atomicAdd(out, a);
  atomicAdd(out + 1, b);
#endif
}

// Two floats -> one 32-bit register holding two 16-bit values (lo in the low half).
template <typename T> __device__ __forceinline__ uint32_t pack2(float lo, float hi);
template <> __device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}
template <> __device__ __forceinline__ uint32_t pack2<__half>(float lo, float hi) {
  __half2 v = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}
// Two 16-bit values from shared memory (not adjacent) -> one register.
template <typename T> __device__ __forceinline__ uint32_t pack_raw(T lo, T hi) {
  uint16_t l = *reinterpret_cast<uint16_t*>(&lo), h = *reinterpret_cast<uint16_t*>(&hi);
  return static_cast<uint32_t>(l) | (static_cast<uint32_t>(h) << 16);
}
template <typename T> __device__ __forceinline__ uint32_t ld32(const T* p) {
  return *reinterpret_cast<const uint32_t*>(p);
}

// ldmatrix: four 8x8 b16 matrices from shared memory; lanes 8m..8m+7 give the 16-byte row
// addresses of matrix m, and register m of lane l receives row l/4, columns 2(l%4)..+1 of
// matrix m (with .trans: row 2(l%4)..+1, column l/4, i.e. the transposed matrix).
#ifdef FASTLM_CUDA_EMU
inline void ldsm_x4(uint32_t* r, const void* p) { ::fastlm::emu::ldmatrix_x4(r, p, false); }
inline void ldsm_x4_trans(uint32_t* r, const void* p) { ::fastlm::emu::ldmatrix_x4(r, p, true); }
inline void cp_async16(void* smem, const void* gmem, bool valid) {
  ::fastlm::emu::cp_async16(smem, gmem, valid);
}
inline void cp_async_commit() { ::fastlm::emu::cp_async_commit(); }
template <int N> inline void cp_async_wait() { ::fastlm::emu::cp_async_wait(N); }
template <typename T> inline void mma16816(float* c, const uint32_t* a, const uint32_t* b) {
  ::fastlm::emu::mma16816(c, a, b, std::is_same<T, __nv_bfloat16>::value);
}
#else
__device__ __forceinline__ void ldsm_x4(uint32_t* r, const void* p) {
  uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}
__device__ __forceinline__ void ldsm_x4_trans(uint32_t* r, const void* p) {
  uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}

// cp.async (sm_80+): 16-byte global -> shared copy; src_bytes 0 zero-fills the destination.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
  uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  int n = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(n));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// D = A(16x16, row) * B(16x8, col) + D in fp32 (sm_80+ tensor cores). Fragment layout, with
// g = lane/4 and t = lane%4: a0 = A[g][2t..2t+1], a1 = A[g+8][2t..], a2 = A[g][2t+8..],
// a3 = A[g+8][2t+8..]; b0 = B[2t..2t+1][g], b1 = B[2t+8..2t+9][g];
// c0,c1 = D[g][2t..2t+1], c2,c3 = D[g+8][2t..2t+1].
template <typename T> __device__ __forceinline__ void mma16816(float* c, const uint32_t* a,
                                                                const uint32_t* b);
template <> __device__ __forceinline__ void mma16816<__nv_bfloat16>(float* c, const uint32_t* a,
                                                                    const uint32_t* b) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
template <> __device__ __forceinline__ void mma16816<__half>(float* c, const uint32_t* a,
                                                             const uint32_t* b) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
#endif  // FASTLM_CUDA_EMU

}  // namespace cuda
}  // namespace fastlm
