// One warpgroup, two chained k16 steps of wgmma in each form attention v7 uses, on a 64 x 32 A
// and a 32 x N B given row-major in global memory: D = A B (fp32, 64 x N row-major).
//   mode 0: A and B^T in shared memory, both K-major (v7's S = Q K^T, S^T = K Q^T), N 64 / 128;
//   mode 1: A from registers, B in shared memory MN-major, trans-b (O += P V, dV += P^T dO), N 64
//           / 128;
//   mode 2: A and B in shared memory, both MN-major, trans-a and trans-b (dQ += dS K), N 32 / 64.
//   modes 3-5: modes 0-2 with the leading and stride byte offsets of every descriptor swapped:
//   the other reading of the PTX ISA's terse definitions. If a mode fails on a GPU and its
//   swapped twin passes, wgmma.cuh's offsets are the wrong way round for that form.
// tests/test_wgmma.py compares it with a matmul on a GPU and in the CPU emulator: on a GPU it
// checks the descriptor layouts of wgmma.cuh against the hardware in isolation from the attention
// kernel, in the emulator that the emulated wgmma reads them the same way.
#include "kernels/cuda_common.cuh"
#include "kernels/kernels_cuda.h"
#include "kernels/wgmma.cuh"

namespace fastlm {
namespace cuda {
namespace {

// Shared memory: a reading of the offsets other than the descriptors' (a swapped mode, or hardware
// that reads them the other way round) reaches past the tiles (up to ~40 KB at N = 128), so every
// mode gets 48 KB, zeroed first: no read leaves the block (an out-of-range read would be a sticky
// CUDA error that ends the diagnosis) and none reads uninitialized memory.
constexpr int kProbeSmem = 48 * 1024;

template <typename T, int N, int MODE, bool SWAP>
__global__ void __launch_bounds__(128) wgmma_probe_kernel(const T* a, const T* b, float* d) {
#if defined(FASTLM_CUDA_EMU) || defined(__CUDA_ARCH_FEAT_SM90_ALL)
  constexpr int swap = SWAP ? 3 : 0;  // every descriptor's two offsets swapped (wgmma.cuh)
  FASTLM_DYNAMIC_SMEM(smem_raw);
  T* sA = reinterpret_cast<T*>(smem_raw);  // 64 x 32, chunk-planar
  T* sB = sA + 64 * 32;                    // mode 0: B^T (N x 32); modes 1, 2: B (32 x N)
  for (int i = threadIdx.x; i < kProbeSmem / 16; i += 128)
    store_for_wgmma(reinterpret_cast<uint4*>(smem_raw) + i, make_uint4(0, 0, 0, 0));
  __syncthreads();
  for (int i = threadIdx.x; i < 64 * 32; i += 128)  // mode 2: A^T (32 x 64)
    store_for_wgmma(sA + (MODE == 2 ? planar(i % 32, i / 32, 32) : planar(i / 32, i % 32, 64)),
                    a[i]);
  for (int i = threadIdx.x; i < 32 * N; i += 128) {
    const int k = i / N, n = i % N;
    store_for_wgmma(sB + (MODE == 0 ? planar(n, k, N) : planar(k, n, 32)), b[i]);
  }
  fence_proxy_async();
  __syncthreads();
  const int warp = threadIdx.x / 32, g = threadIdx.x % 32 / 4, t = threadIdx.x % 4;
  const int r0 = 16 * warp + g;
  uint32_t af[2][4];  // m16n8k16 A fragments of the warp's 16 rows, k-steps 0 and 1
#pragma unroll
  for (int kk = 0; kk < 2; ++kk)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const T* x = a + (r0 + 8 * (i % 2)) * 32 + 16 * kk + 2 * t + 8 * (i / 2);
      af[kk][i] = pack_raw<T>(x[0], x[1]);
    }
  float acc[N / 2];
  wgmma_fence();
  if constexpr (MODE == 0) {
    const uint64_t da = desc_k_major(sA, 64, swap), db = desc_k_major(sB, N, swap);
#pragma unroll
    for (int kk = 0; kk < 2; ++kk)
      wgmma_ss<T, N>(acc, da + ((kk * 2 * 64 * 16) >> 4), db + ((kk * 2 * N * 16) >> 4), kk > 0);
  } else if constexpr (MODE == 1) {
    const uint64_t db = desc_mn_major(sB, 32, swap);
#pragma unroll
    for (int kk = 0; kk < 2; ++kk)
      wgmma_rs_tb<T, N>(acc, af[kk], db + ((kk * 16 * 16) >> 4), kk > 0);
  } else {
    const uint64_t da = desc_mn_major(sA, 32, swap), db = desc_mn_major(sB, 32, swap);
#pragma unroll
    for (int kk = 0; kk < 2; ++kk)
      wgmma_ss_tab<T, N>(acc, da + ((kk * 16 * 16) >> 4), db + ((kk * 16 * 16) >> 4), kk > 0);
  }
  wgmma_commit();
  wgmma_wait<0>();
  fence_operands<N / 2>(acc);
#pragma unroll
  for (int i = 0; i < N / 2; ++i)
    d[(r0 + 8 * ((i / 2) % 2)) * N + 8 * (i / 4) + 2 * t + i % 2] = acc[i];
#elif defined(__CUDA_ARCH__)
  __trap();  // a build without sm_90a code for this GPU: fail, never a silent no-op
#endif
}

template <typename T, int N, int MODE>
void probe(const void* a, const void* b, float* d, bool swap, cudaStream_t stream) {
  auto kernel = swap ? wgmma_probe_kernel<T, N, MODE, true> : wgmma_probe_kernel<T, N, MODE, false>;
  FASTLM_LAUNCH(kernel, 1, 128, kProbeSmem, stream)(static_cast<const T*>(a),
                                                    static_cast<const T*>(b), d);
  FASTLM_LAUNCH_CHECK();
}

// Modes 0 and 1 (3, 4) exist for N = 64 and 128 (v7's shapes), mode 2 (5) for N = 32 and 64.
template <typename T>
void probe_n(const void* a, const void* b, float* d, int n, int mode, cudaStream_t stream) {
  const bool swap = mode >= 3;
  if (mode % 3 == 0)
    n == 64 ? probe<T, 64, 0>(a, b, d, swap, stream) : probe<T, 128, 0>(a, b, d, swap, stream);
  else if (mode % 3 == 1)
    n == 64 ? probe<T, 64, 1>(a, b, d, swap, stream) : probe<T, 128, 1>(a, b, d, swap, stream);
  else
    n == 32 ? probe<T, 32, 2>(a, b, d, swap, stream) : probe<T, 64, 2>(a, b, d, swap, stream);
}

}  // namespace

void wgmma_probe(const void* a, const void* b, float* d, int n, int mode, int dtype,
                 cudaStream_t stream) {
  if (mode < 0 || mode > 5) throw std::invalid_argument("wgmma_probe: mode must be 0 to 5");
  if (mode % 3 < 2 ? n != 64 && n != 128 : n != 32 && n != 64)
    throw std::invalid_argument(
        "wgmma_probe: n must be 64 or 128 (modes 0, 1, 3, 4), 32 or 64 (modes 2, 5)");
  if (dtype != kBFloat16 && dtype != kFloat16)
    throw std::invalid_argument("wgmma_probe: dtype must be bfloat16 or float16");
  if (!wgmma_supported())
    throw std::invalid_argument("wgmma_probe: needs an sm_90 GPU and a build for sm_90a");
  if (dtype == kBFloat16)
    probe_n<__nv_bfloat16>(a, b, d, n, mode, stream);
  else
    probe_n<__half>(a, b, d, n, mode, stream);
}

}  // namespace cuda
}  // namespace fastlm
