// CUDA cross-entropy chunk kernel: one block per row; logsumexp, loss and dlogits in place.
//
// Per row: pass 1 reads the row once with an online max/sum-exp (and sum z for label
// smoothing) per thread, then one block reduction; pass 2 reads it again (L2-resident: a
// 50304-wide bf16 row is 100 KB) and writes g * dloss/dlogits over it. Bytes: 2 reads + 1 write
// of the chunk, so the floor is 3 * rows * V * sizeof(T) / bandwidth. The math is shared with
// the CPU kernel through cross_entropy.h.
// Versions (whole op, N x d x V = 8192 x 768 x 50304 bf16 fwd+bwd; csrc/kernels/NOTES.md):
//   v1 (this): scalar strided loads, 512 threads/row. NVIDIA H200: 5.12 ms vs eager 7.97 ms
//   (1.56x) at 0.117 of eager's peak memory; the three matmuls (~2.4 ms at the bf16 rate) and
//   the fp32 weight-grad accumulation dominate, not this kernel. Not timed alone yet.
#include "kernels/cross_entropy.h"
#include "kernels/cuda_common.cuh"
#include "kernels/kernels_cuda.h"

namespace fastlm {
namespace cuda {
namespace {

constexpr int kThreads = 512;

__device__ __forceinline__ float cap(float x, float c) { return c > 0.f ? c * tanhf(x / c) : x; }

// Combines two (max, sum of exp(z - max)) pairs.
__device__ __forceinline__ void merge(float& m, float& s, float m2, float s2) {
  float mn = fmaxf(m, m2);
  if (mn == -INFINITY) return;
  s = s * __expf(m - mn) + s2 * __expf(m2 - mn);
  m = mn;
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    ce_chunk_kernel(T* logits, const int64_t* target, CrossEntropyParams p,
                    const float* grad_scale, float grad_scale_scalar, float* loss, float* lse,
                    bool write_grad) {
  const int64_t r = blockIdx.x;
  T* z = logits + r * p.ld;
  const int64_t V = p.vocab;
  const float c = p.softcap;
  float m = -INFINITY, s = 0.f, sz = 0.f;
  for (int64_t j = threadIdx.x; j < V; j += kThreads) {
    float x = cap(to_float(z[j]), c);
    sz += x;
    if (x > m) {
      s = s * __expf(m - x) + 1.f;
      m = x;
    } else {
      s += __expf(x - m);
    }
  }
  // Block reduction: warp shuffles, then one value per warp through shared memory.
  for (int o = 16; o > 0; o >>= 1) {
    float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
    merge(m, s, m2, s2);
    sz += __shfl_xor_sync(0xffffffffu, sz, o);
  }
  __shared__ float sm[kThreads / 32], ss[kThreads / 32], ssz[kThreads / 32];
  __shared__ float row_lse;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) sm[warp] = m, ss[warp] = s, ssz[warp] = sz;
  __syncthreads();  // all warps' partials visible to warp 0
  if (warp == 0) {
    m = lane < kThreads / 32 ? sm[lane] : -INFINITY;
    s = lane < kThreads / 32 ? ss[lane] : 0.f;
    sz = lane < kThreads / 32 ? ssz[lane] : 0.f;
    for (int o = 16; o > 0; o >>= 1) {
      float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
      merge(m, s, m2, s2);
      sz += __shfl_xor_sync(0xffffffffu, sz, o);
    }
    if (lane == 0) {
      float l = m + logf(s);
      int64_t t = target[r];
      bool valid = t != p.ignore_index && t >= 0 && t < V;
      float z_t = valid ? cap(to_float(z[t]), c) : 0.f;
      lse[r] = l;
      loss[r] = valid ? ce_row_loss(l, z_t, sz, p) : 0.f;
      row_lse = l;
    }
  }
  __syncthreads();  // row_lse visible to all threads; also orders the z[t] read before writes
  if (!write_grad) return;
  const int64_t t = target[r];
  const bool valid = t != p.ignore_index && t >= 0 && t < V;
  const float g = grad_scale ? grad_scale[r] : grad_scale_scalar;
  const float l = row_lse;
  if (!valid || g == 0.f) {
    for (int64_t j = threadIdx.x; j < V; j += kThreads) z[j] = from_float<T>(0.f);
    return;
  }
  for (int64_t j = threadIdx.x; j < V; j += kThreads) {
    float x = cap(to_float(z[j]), c);
    float d = ce_row_grad(__expf(x - l), x, l, p);
    if (j == t) d += ce_target_term(x, p);
    z[j] = from_float<T>(g * d);
  }
}

}  // namespace

void cross_entropy_chunk(void* logits, int dtype, const int64_t* target,
                         const CrossEntropyParams& p, const float* grad_scale,
                         float grad_scale_scalar, float* loss, float* lse, bool write_grad,
                         cudaStream_t stream) {
  if (p.rows == 0) return;
  dim3 grid(static_cast<unsigned>(p.rows));
  switch (dtype) {
    case kFloat32:
      FASTLM_LAUNCH(ce_chunk_kernel<float>, grid, kThreads, 0, stream)(
          static_cast<float*>(logits), target, p, grad_scale, grad_scale_scalar, loss, lse,
          write_grad);
      break;
    case kBFloat16:
      FASTLM_LAUNCH(ce_chunk_kernel<__nv_bfloat16>, grid, kThreads, 0, stream)(
          static_cast<__nv_bfloat16*>(logits), target, p, grad_scale, grad_scale_scalar, loss,
          lse, write_grad);
      break;
    case kFloat16:
      FASTLM_LAUNCH(ce_chunk_kernel<__half>, grid, kThreads, 0, stream)(
          static_cast<__half*>(logits), target, p, grad_scale, grad_scale_scalar, loss, lse,
          write_grad);
      break;
    default:
      throw std::invalid_argument("cross_entropy_chunk: unsupported dtype code");
  }
  FASTLM_LAUNCH_CHECK();
}

}  // namespace cuda
}  // namespace fastlm
