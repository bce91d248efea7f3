// wgmma (sm_90a): the warpgroup-wide asynchronous tensor-core MMA of Hopper, m64nNk16 with fp32
// accumulators and bf16/fp16 operands, for the kernels that use it (attention v7). A warpgroup is
// 4 consecutive warps (warp % 4 == 0 first); one wgmma computes a 64 x N tile, warp w of the
// group owning rows 16w..16w+15 with the mma.m16n8k16 fragment layouts (cuda_common.cuh):
//   accumulator d[4 * j + e] = row 16w + g + 8 * (e / 2), column 8j + 2t + e % 2;
//   A from registers (4 per thread per k16): the m16n8k16 A fragment of the warp's 16 rows.
// Operands in shared memory are given by 64-bit descriptors. fastlm uses one layout for them, the
// PTX "interleave" canonical layout (no swizzle) in a chunk-planar order: a tile of R rows x C
// 16-bit columns stores element (r, c) at (c / 8) * R * 8 + r * 8 + c % 8, so every 8 x 8 core
// matrix (8 rows of 16 bytes) is 128 contiguous bytes and a cp.async of 16 bytes per thread, 8
// consecutive rows per 8 threads, writes 128 contiguous bytes without bank conflicts. Read as
//   K-major (rows = M or N, columns = K; A of Q K^T, B = K):   LBO = R * 16 B, SBO = 128 B,
//   MN-major (rows = K, columns = N; B = V of P V, trans-b): LBO = 128 B,    SBO = R * 16 B,
// following CUTLASS's canonical forms (cute/atom/mma_traits_sm90_gmma.hpp):
//   K-major  ((8,m),(T,2k)):((1T,SBO),(1,LBO)),  MN-major ((T,1,m),(8,k)):((1,T,SBO),(1T,LBO)),
// T = 8 elements. Order of a product (PTX ISA, "Asynchronous warpgroup level matrix multiply"):
// shared memory written by threads (cp.async included) -> fence.proxy.async + barrier;
// wgmma.fence after the thread last touched the accumulator / A registers; the mma_async;
// commit_group; wait_group before the results (or the shared operands) are touched again.
// The CPU emulator (FASTLM_CUDA_EMU) runs the same calls with that order enforced.
#pragma once
#include "kernels/cuda_common.cuh"

namespace fastlm {
namespace cuda {

// Offset (elements) of (r, c) in a chunk-planar tile of `rows` rows (see above).
__device__ __forceinline__ int planar(int r, int c, int rows) {
  return (c >> 3) * rows * 8 + r * 8 + (c & 7);
}

#ifdef FASTLM_CUDA_EMU
__device__ __forceinline__ uint32_t smem_address(const void* p) {
  return ::fastlm::emu::smem_address(p);
}
#else
__device__ __forceinline__ uint32_t smem_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
#endif

// Descriptor of a shared-memory operand at p: start address, leading and stride byte offsets
// (bits 0-13, 16-29, 32-45, each in 16-byte units), base offset 0, no swizzle (bits 62-63 = 0).
// Moving the start by b bytes (a later k-step) is adding b >> 4 (no carry out of 14 bits: shared
// addresses are < 228 KB).
__device__ __forceinline__ uint64_t wgmma_desc(const void* p, uint32_t lbo, uint32_t sbo) {
  return static_cast<uint64_t>((smem_address(p) & 0x3FFFF) >> 4) |
         (static_cast<uint64_t>((lbo >> 4) & 0x3FFF) << 16) |
         (static_cast<uint64_t>((sbo >> 4) & 0x3FFF) << 32);
}

// Descriptors of a chunk-planar tile of `rows` rows in the two forms above. `swap` is a fallback
// for a GPU that reads the two offsets the other way round (AttentionParams::wgmma_swap, from
// FASTLM_WGMMA_SWAP; 0 otherwise): bit 0 swaps them in the K-major form, bit 1 in the MN-major
// form. tests/test_wgmma.py says which bit a failing GPU needs, and tools/gpu_check.sh then runs
// v7 / v8 with it, so that a wrong reading costs no rebuild.
__device__ __forceinline__ uint64_t desc_k_major(const void* p, int rows, int swap) {
  return (swap & 1) ? wgmma_desc(p, 128, rows * 16) : wgmma_desc(p, rows * 16, 128);
}
__device__ __forceinline__ uint64_t desc_mn_major(const void* p, int rows, int swap) {
  return (swap & 2) ? wgmma_desc(p, rows * 16, 128) : wgmma_desc(p, 128, rows * 16);
}

#ifdef FASTLM_CUDA_EMU
inline void wgmma_fence() { ::fastlm::emu::wgmma_fence(); }
inline void wgmma_commit() { ::fastlm::emu::wgmma_commit(); }
template <int N> inline void wgmma_wait() { ::fastlm::emu::wgmma_wait(N); }
inline void fence_proxy_async() { ::fastlm::emu::fence_proxy_async(); }
// A plain store to shared memory that a wgmma reads later (the emulator checks that the storing
// thread runs fence.proxy.async before that read, as for cp.async data).
template <typename V> inline void store_for_wgmma(V* p, V v) {
  *p = v;
  ::fastlm::emu::mark_store_for_wgmma(p, sizeof(V));
}
template <int N> inline void fence_operands(float*) {}
template <int N> inline void fence_operands(uint32_t*) {}
// D (64 x N) = A (64 x 16, shared, K-major) B (16 x N, shared, K-major) + (scale_d ? D : 0).
template <typename T, int N> inline void wgmma_ss(float* d, uint64_t da, uint64_t db, int scale_d) {
  ::fastlm::emu::wgmma(d, N, nullptr, da, db, scale_d != 0, false, false,
                       std::is_same<T, __nv_bfloat16>::value);
}
// D (64 x N) = A (registers) B (16 x N, shared, MN-major: trans-b) + (scale_d ? D : 0).
template <typename T, int N>
inline void wgmma_rs_tb(float* d, const uint32_t* a, uint64_t db, int scale_d) {
  ::fastlm::emu::wgmma(d, N, a, 0, db, scale_d != 0, false, true,
                       std::is_same<T, __nv_bfloat16>::value);
}
// D (64 x N) = A (64 x 16, shared, MN-major: trans-a) B (16 x N, shared, MN-major: trans-b)
// + (scale_d ? D : 0).
template <typename T, int N>
inline void wgmma_ss_tab(float* d, uint64_t da, uint64_t db, int scale_d) {
  ::fastlm::emu::wgmma(d, N, nullptr, da, db, scale_d != 0, true, true,
                       std::is_same<T, __nv_bfloat16>::value);
}
#else
__device__ __forceinline__ void wgmma_fence() {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void wgmma_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int N> __device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Makes this thread's generic-proxy writes of shared memory (st.shared, cp.async) visible to
// wgmma's reads (async proxy); then a barrier for the other threads' writes.
__device__ __forceinline__ void fence_proxy_async() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
template <typename V> __device__ __forceinline__ void store_for_wgmma(V* p, V v) { *p = v; }
// Keeps the compiler from moving accesses of in-flight accumulator / A registers across the
// wgmma calls (CUTLASS's warpgroup_fence_operand).
template <int N> __device__ __forceinline__ void fence_operands(float* r) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}
template <int N> __device__ __forceinline__ void fence_operands(uint32_t* r) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+r"(r[i])::"memory");
}

// Operand lists of the inline PTX: "{%0, ..., %K-1}" for the K = N / 2 accumulators per thread
// of a 64 x N product and their "+f" bindings, built from blocks of 8.
#define FASTLM_WGMMA_R8(a, b, c, d, e, f, g, h) \
  "%" #a ", %" #b ", %" #c ", %" #d ", %" #e ", %" #f ", %" #g ", %" #h
#define FASTLM_WGMMA_R16 FASTLM_WGMMA_R8(0, 1, 2, 3, 4, 5, 6, 7) ", " \
  FASTLM_WGMMA_R8(8, 9, 10, 11, 12, 13, 14, 15)
#define FASTLM_WGMMA_R32 FASTLM_WGMMA_R16 ", " FASTLM_WGMMA_R8(16, 17, 18, 19, 20, 21, 22, 23) \
  ", " FASTLM_WGMMA_R8(24, 25, 26, 27, 28, 29, 30, 31)
#define FASTLM_WGMMA_R64 FASTLM_WGMMA_R32 ", " FASTLM_WGMMA_R8(32, 33, 34, 35, 36, 37, 38, 39) \
  ", " FASTLM_WGMMA_R8(40, 41, 42, 43, 44, 45, 46, 47) ", "                             \
  FASTLM_WGMMA_R8(48, 49, 50, 51, 52, 53, 54, 55) ", "                                  \
  FASTLM_WGMMA_R8(56, 57, 58, 59, 60, 61, 62, 63)
#define FASTLM_WGMMA_REGS16 "{" FASTLM_WGMMA_R16 "}"
#define FASTLM_WGMMA_REGS32 "{" FASTLM_WGMMA_R32 "}"
#define FASTLM_WGMMA_REGS64 "{" FASTLM_WGMMA_R64 "}"
#define FASTLM_WGMMA_OUT8(i)                                                                \
  "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), \
      "+f"(d[i + 6]), "+f"(d[i + 7])
#define FASTLM_WGMMA_OUT16 FASTLM_WGMMA_OUT8(0), FASTLM_WGMMA_OUT8(8)
#define FASTLM_WGMMA_OUT32 FASTLM_WGMMA_OUT16, FASTLM_WGMMA_OUT8(16), FASTLM_WGMMA_OUT8(24)
#define FASTLM_WGMMA_OUT64 \
  FASTLM_WGMMA_OUT32, FASTLM_WGMMA_OUT8(32), FASTLM_WGMMA_OUT8(40), FASTLM_WGMMA_OUT8(48), \
      FASTLM_WGMMA_OUT8(56)

template <typename T, int N>
__device__ __forceinline__ void wgmma_ss(float* d, uint64_t da, uint64_t db, int scale_d);
template <typename T, int N>
__device__ __forceinline__ void wgmma_rs_tb(float* d, const uint32_t* a, uint64_t db, int scale_d);
template <typename T, int N>
__device__ __forceinline__ void wgmma_ss_tab(float* d, uint64_t da, uint64_t db, int scale_d);

// Operand numbers: the N/2 accumulators first (%0..), then the inputs.
#define FASTLM_WGMMA_SS(FN, TA, TB, TYPE, PTX, N, NR, IA, IB, IS)                            \
  template <>                                                                              \
  __device__ __forceinline__ void FN<TYPE, N>(float* d, uint64_t da, uint64_t db,           \
                                              int scale_d) {                               \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" IS ", 0;\n"                           \
                 "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." PTX "." PTX " "          \
                 FASTLM_WGMMA_REGS##NR ", %" IA ", %" IB ", p, 1, 1, " #TA ", " #TB ";\n}\n" \
                 : FASTLM_WGMMA_OUT##NR                                                    \
                 : "l"(da), "l"(db), "r"(scale_d));                                        \
  }
#define FASTLM_WGMMA_RS_TB(TYPE, PTX, N, NR, A0, A1, A2, A3, IB, IS)                        \
  template <>                                                                              \
  __device__ __forceinline__ void wgmma_rs_tb<TYPE, N>(float* d, const uint32_t* a,         \
                                                       uint64_t db, int scale_d) {         \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" IS ", 0;\n"                           \
                 "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." PTX "." PTX " "          \
                 FASTLM_WGMMA_REGS##NR ", {%" A0 ", %" A1 ", %" A2 ", %" A3 "}, %" IB       \
                 ", p, 1, 1, 1;\n}\n"                                                      \
                 : FASTLM_WGMMA_OUT##NR                                                    \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(scale_d));     \
  }
FASTLM_WGMMA_SS(wgmma_ss, 0, 0, __nv_bfloat16, "bf16", 64, 32, "32", "33", "34")
FASTLM_WGMMA_SS(wgmma_ss, 0, 0, __nv_bfloat16, "bf16", 128, 64, "64", "65", "66")
FASTLM_WGMMA_SS(wgmma_ss, 0, 0, __half, "f16", 64, 32, "32", "33", "34")
FASTLM_WGMMA_SS(wgmma_ss, 0, 0, __half, "f16", 128, 64, "64", "65", "66")
FASTLM_WGMMA_SS(wgmma_ss_tab, 1, 1, __nv_bfloat16, "bf16", 32, 16, "16", "17", "18")
FASTLM_WGMMA_SS(wgmma_ss_tab, 1, 1, __nv_bfloat16, "bf16", 64, 32, "32", "33", "34")
FASTLM_WGMMA_SS(wgmma_ss_tab, 1, 1, __half, "f16", 32, 16, "16", "17", "18")
FASTLM_WGMMA_SS(wgmma_ss_tab, 1, 1, __half, "f16", 64, 32, "32", "33", "34")
FASTLM_WGMMA_RS_TB(__nv_bfloat16, "bf16", 64, 32, "32", "33", "34", "35", "36", "37")
FASTLM_WGMMA_RS_TB(__nv_bfloat16, "bf16", 128, 64, "64", "65", "66", "67", "68", "69")
FASTLM_WGMMA_RS_TB(__half, "f16", 64, 32, "32", "33", "34", "35", "36", "37")
FASTLM_WGMMA_RS_TB(__half, "f16", 128, 64, "64", "65", "66", "67", "68", "69")
#undef FASTLM_WGMMA_SS
#undef FASTLM_WGMMA_RS_TB
#endif  // FASTLM_CUDA_EMU

}  // namespace cuda
}  // namespace fastlm
