// CUDA cross-entropy chunk kernel: one block per row; logsumexp, loss and dlogits in place.
//
// Per row (v1, v2): pass 1 reads the row once with an online max/sum-exp (and sum z for label
// smoothing) per thread, then one block reduction; pass 2 reads it again (L2-resident: a
// 50304-wide bf16 row is 100 KB) and writes g * dloss/dlogits over it. Bytes: 2 reads + 1 write
// of the chunk, so the floor is 3 * rows * V * sizeof(T) / bandwidth. The math is shared with
// the CPU kernel through cross_entropy.h.
// Versions (csrc/kernels/NOTES.md has every run):
//   v1: scalar strided loads, 512 threads/row. Kernel alone, 4096 x 32768 bf16 logits: NVIDIA
//   H200 0.292 ms (2.8 TB/s of its 2 reads + 1 write), H100 0.349 ms.
//   v2 (default): 16-byte vector loads and stores (8 bf16/fp16 or 4 fp32 per access; scalar
//   head/tail where the row start is not 16-byte aligned) and one online-softmax rescale per
//   vector. Why: a 2-byte load per thread per iteration keeps ~4 KB in flight per SM. Kernel
//   alone, same shape: H200 0.206 ms (3.9 TB/s), H100 0.255 ms; 1.4-1.7x v1 in bf16, 1.1x in
//   fp32. Whole op, 8192 x 768 x 50304 bf16 fwd+bwd: H200 4.28 ms vs eager 7.95 (1.86x), H100
//   4.87 vs 9.69 (1.99x), at 0.076 of eager's peak memory.
//   v3: the row held in registers (4, 8 or 16 16-byte vectors per thread, 512 threads; wider rows
//   take v2), so the chunk is read once: 1 read + 1 write. Statistics as max, then sum of exp
//   (no online rescale); compiled without the soft-cap code unless the op has a soft-cap (a test
//   per element made a branch around tanh each; SASS 10360 -> 3352 instructions, static count,
//   bf16 V <= 32768). Registers (sm_90a, no soft-cap): 62 at bf16 V <= 32768 (two blocks per
//   SM), 102 up to 65536 (one block), no spills. Not yet run on a GPU; validated in the
//   emulator. Prediction (H100, 4096 x 32768 bf16): 0.255 -> ~0.18-0.2 ms.
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

// v2's vectors: 16 bytes = kVec<T> elements, unpacked to / packed from floats.
template <typename T> constexpr int kVec = 16 / sizeof(T);
template <typename T> __device__ __forceinline__ void unpack(const uint4& u, float* f) {
  const T* e = reinterpret_cast<const T*>(&u);
#pragma unroll
  for (int i = 0; i < kVec<T>; ++i) f[i] = to_float(e[i]);
}
template <typename T> __device__ __forceinline__ uint4 pack(const float* f) {
  uint4 u;
  T* e = reinterpret_cast<T*>(&u);
#pragma unroll
  for (int i = 0; i < kVec<T>; ++i) e[i] = from_float<T>(f[i]);
  return u;
}

// Online (max, sum exp) update with one value.
__device__ __forceinline__ void online(float& m, float& s, float x) {
  if (x > m) {
    s = s * __expf(m - x) + 1.f;
    m = x;
  } else {
    s += __expf(x - m);
  }
}

// One 16-byte vector of a row into the thread's online (max m, sum exp s) and sum z (after the
// soft-cap c).
template <typename T>
__device__ __forceinline__ void add_vector(const uint4& u, float c, float& m, float& s,
                                           float& sz) {
  float x[kVec<T>];
  unpack<T>(u, x);
  float mv = m;
#pragma unroll
  for (int e = 0; e < kVec<T>; ++e) {
    x[e] = cap(x[e], c);
    sz += x[e];
    mv = fmaxf(mv, x[e]);
  }
  if (mv == -INFINITY) return;  // every value so far is -inf: nothing to add
  float acc = 0.f;
#pragma unroll
  for (int e = 0; e < kVec<T>; ++e) acc += __expf(x[e] - mv);
  s = (m == -INFINITY ? 0.f : s * __expf(m - mv)) + acc;
  m = mv;
}

// g * dloss/dlogits of one vector whose first column is j0 (t: the target column; I: the index
// type, 32-bit in v3; CAP = false: compiled for p.softcap == 0, without the soft-cap code, whose
// test per element otherwise becomes a branch around tanh for each).
template <typename T, bool CAP = true, typename I>
__device__ __forceinline__ uint4 grad_vector(const uint4& u, I j0, I t, float l, float g,
                                             const CrossEntropyParams& p) {
  float x[kVec<T>];
  unpack<T>(u, x);
#pragma unroll
  for (int e = 0; e < kVec<T>; ++e) {
    const float xe = CAP ? cap(x[e], p.softcap) : x[e];
    float d = ce_row_grad<CAP>(__expf(xe - l), xe, l, p);
    if (j0 + e == t) d += ce_target_term<CAP>(xe, p);
    x[e] = g * d;
  }
  return pack<T>(x);
}

// The same for one logit at column j.
template <typename T, typename I>
__device__ __forceinline__ T grad_scalar(T raw, I j, I t, float l, float g,
                                         const CrossEntropyParams& p) {
  const float x = cap(to_float(raw), p.softcap);
  float d = ce_row_grad(__expf(x - l), x, l, p);
  if (j == t) d += ce_target_term(x, p);
  return from_float<T>(g * d);
}

// Row layout for v2: columns [0, head) and [head + nvec * kVec, V) are done one by one (the row
// start need not be 16-byte aligned), the nvec vectors in between with 16-byte accesses.
struct RowSplit {
  int64_t head, nvec, tail0, scalars;
  __device__ __forceinline__ int64_t scalar_col(int64_t k) const {
    return k < head ? k : tail0 + (k - head);
  }
};
template <typename T, int VER>
__device__ __forceinline__ RowSplit split_row(const T* z, int64_t V) {
  RowSplit r{V, 0, V, V};
  if constexpr (VER >= 2) {
    const int64_t mis = static_cast<int64_t>(reinterpret_cast<uintptr_t>(z) % 16);
    r.head = mis % static_cast<int64_t>(sizeof(T)) != 0
                 ? V  // not even element-aligned: all scalar
                 : min(V, ((16 - mis) % 16) / static_cast<int64_t>(sizeof(T)));
    r.nvec = (V - r.head) / kVec<T>;
    r.tail0 = r.head + r.nvec * kVec<T>;
    r.scalars = r.head + (V - r.tail0);
  }
  return r;
}

// Block reduction of the threads' (max, sum exp, sum z) partials of row r; thread 0 writes the
// row's lse and loss. Returns the lse to every thread (after a barrier that also orders the
// target logit's read before any thread overwrites the row).
template <typename T, int NT>
__device__ __forceinline__ float finish_row(float m, float s, float sz, const T* z, int64_t r,
                                            const int64_t* target, const CrossEntropyParams& p,
                                            float* loss, float* lse) {
  for (int o = 16; o > 0; o >>= 1) {
    float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
    merge(m, s, m2, s2);
    sz += __shfl_xor_sync(0xffffffffu, sz, o);
  }
  __shared__ float sm[NT / 32], ss[NT / 32], ssz[NT / 32];
  __shared__ float row_lse;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) sm[warp] = m, ss[warp] = s, ssz[warp] = sz;
  __syncthreads();  // all warps' partials visible to warp 0
  if (warp == 0) {
    m = lane < NT / 32 ? sm[lane] : -INFINITY;
    s = lane < NT / 32 ? ss[lane] : 0.f;
    sz = lane < NT / 32 ? ssz[lane] : 0.f;
    for (int o = 16; o > 0; o >>= 1) {
      float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
      merge(m, s, m2, s2);
      sz += __shfl_xor_sync(0xffffffffu, sz, o);
    }
    if (lane == 0) {
      const int64_t V = p.vocab, t = target[r];
      float l = m + logf(s);
      bool valid = t != p.ignore_index && t >= 0 && t < V;
      float z_t = valid ? cap(to_float(z[t]), p.softcap) : 0.f;
      lse[r] = l;
      loss[r] = valid ? ce_row_loss(l, z_t, sz, p) : 0.f;
      row_lse = l;
    }
  }
  __syncthreads();  // row_lse visible to all threads; also orders the z[t] read before writes
  return row_lse;
}

// Four blocks per SM (2048 threads, full occupancy): v2 fits in 32 registers without spills
// (ptxas -v, sm_90; 47-48 without the bound, i.e. two blocks and half the bytes in flight).
template <typename T, int VER>
__global__ void __launch_bounds__(kThreads, 4)
    ce_chunk_kernel(T* logits, const int64_t* target, CrossEntropyParams p,
                    const float* grad_scale, float grad_scale_scalar, float* loss, float* lse,
                    bool write_grad) {
  const int64_t r = blockIdx.x;
  T* z = logits + r * p.ld;
  const int64_t V = p.vocab;
  const float c = p.softcap;
  const RowSplit rs = split_row<T, VER>(z, V);
  uint4* zv = reinterpret_cast<uint4*>(z + rs.head);  // 16-byte aligned when rs.nvec > 0
  float m = -INFINITY, s = 0.f, sz = 0.f;
  for (int64_t i = threadIdx.x; i < rs.nvec; i += kThreads) add_vector<T>(zv[i], c, m, s, sz);
  for (int64_t k = threadIdx.x; k < rs.scalars; k += kThreads) {
    float x = cap(to_float(z[rs.scalar_col(k)]), c);
    sz += x;
    online(m, s, x);
  }
  const float l = finish_row<T, kThreads>(m, s, sz, z, r, target, p, loss, lse);
  if (!write_grad) return;
  const int64_t t = target[r];
  const bool valid = t != p.ignore_index && t >= 0 && t < V;
  const float g = grad_scale ? grad_scale[r] : grad_scale_scalar;
  if (!valid || g == 0.f) {
    for (int64_t i = threadIdx.x; i < rs.nvec; i += kThreads) zv[i] = make_uint4(0, 0, 0, 0);
    for (int64_t k = threadIdx.x; k < rs.scalars; k += kThreads)
      z[rs.scalar_col(k)] = from_float<T>(0.f);
    return;
  }
  for (int64_t i = threadIdx.x; i < rs.nvec; i += kThreads)
    zv[i] = grad_vector<T>(zv[i], rs.head + i * kVec<T>, t, l, g, p);
  for (int64_t k = threadIdx.x; k < rs.scalars; k += kThreads) {
    const int64_t j = rs.scalar_col(k);
    z[j] = grad_scalar<T>(z[j], j, t, l, g, p);
  }
}

// v3: the row stays in registers between the two passes, so the chunk is read once and written
// once (v2 reads it twice, the second time mostly from L2). Each thread holds up to NV 16-byte
// vectors of the row (vector i of the row in thread i % kThreads3, slot i / kThreads3); rows with
// more than kThreads3 * 16 vectors (bf16: V > 65536) take v2. Head / tail scalars as in v2.
// CAP: compiled with the soft-cap code (p.softcap > 0) or without it (the usual case: no tanh,
// no division, no branch around them).
constexpr int kThreads3 = 512;

template <typename T, int NV, bool CAP>
__global__ void __launch_bounds__(kThreads3, NV <= 8 ? 2 : 1)
    ce_chunk_kernel_v3(T* logits, const int64_t* target, CrossEntropyParams p,
                       const float* grad_scale, float grad_scale_scalar, float* loss, float* lse,
                       bool write_grad) {
  // 32-bit column arithmetic (the host takes v3 only for V < 2^20): registers are the budget.
  const int64_t r = blockIdx.x;
  T* z = logits + r * p.ld;
  const float c = CAP ? p.softcap : 0.f;
  const RowSplit rs64 = split_row<T, 2>(z, p.vocab);
  const int head = static_cast<int>(rs64.head), nvec = static_cast<int>(rs64.nvec);
  const int tail0 = static_cast<int>(rs64.tail0), scalars = static_cast<int>(rs64.scalars);
  uint4* zv = reinterpret_cast<uint4*>(z + head);  // 16-byte aligned when nvec > 0
  const int tid = threadIdx.x;
  uint4 u[NV];
#pragma unroll
  for (int k = 0; k < NV; ++k)  // every load in flight before any is used
    if (tid + k * kThreads3 < nvec) u[k] = zv[tid + k * kThreads3];
  // Statistics from the registers: the max first, then the sum of exp(x - max), so no online
  // rescaling (one exp per value, not one more per vector as in v2).
  auto for_each_held = [&](auto f) {  // f(value) over this thread's vectors, soft-capped
#pragma unroll
    for (int k = 0; k < NV; ++k)
      if (tid + k * kThreads3 < nvec) {
        float x[kVec<T>];
        unpack<T>(u[k], x);
#pragma unroll
        for (int e = 0; e < kVec<T>; ++e) f(CAP ? c * tanhf(x[e] / c) : x[e]);
      }
  };
  float m = -INFINITY, s = 0.f, sz = 0.f;
  for_each_held([&](float x) { sz += x, m = fmaxf(m, x); });
  if (m != -INFINITY) for_each_held([&](float x) { s += __expf(x - m); });
  for (int k = tid; k < scalars; k += kThreads3) {
    float x = cap(to_float(z[k < head ? k : tail0 + (k - head)]), c);
    sz += x;
    online(m, s, x);
  }
  const float l = finish_row<T, kThreads3>(m, s, sz, z, r, target, p, loss, lse);
  if (!write_grad) return;
  const int64_t t64 = target[r];
  const bool valid = t64 != p.ignore_index && t64 >= 0 && t64 < p.vocab;
  const int t = valid ? static_cast<int>(t64) : -1;
  const float g = grad_scale ? grad_scale[r] : grad_scale_scalar;
  const bool zero = !valid || g == 0.f;
#pragma unroll
  for (int k = 0; k < NV; ++k) {
    const int i = tid + k * kThreads3;
    if (i >= nvec) continue;
    if (zero) {
      zv[i] = make_uint4(0, 0, 0, 0);
      continue;
    }
    const int j0 = head + i * kVec<T>;
    zv[i] = grad_vector<T, CAP>(u[k], j0, t, l, g, p);
    // One vector after the other: without this ptxas interleaves the vectors' exponentials and
    // spills (bf16 NV = 8 without CAP: 72 bytes at the 64-register cap; with it none, 62).
    register_fence(u[k]);
  }
  for (int k = tid; k < scalars; k += kThreads3) {
    const int j = k < head ? k : tail0 + (k - head);
    if (zero) {
      z[j] = from_float<T>(0.f);
      continue;
    }
    z[j] = grad_scalar<T>(z[j], j, t, l, g, p);
  }
}

template <typename T, int NV>
auto v3_kernel(bool cap) {
  return cap ? ce_chunk_kernel_v3<T, NV, true> : ce_chunk_kernel_v3<T, NV, false>;
}

template <typename T>
void launch_ce(int version, dim3 grid, cudaStream_t stream, T* logits, const int64_t* target,
               const CrossEntropyParams& p, const float* grad_scale, float grad_scale_scalar,
               float* loss, float* lse, bool write_grad) {
  // v3 holds a row in registers: 4, 8 or 16 vectors per thread, the fewest that cover it.
  const int64_t per_thread = (p.vocab / kVec<T> + kThreads3 - 1) / kThreads3;
  if (version >= 3 && per_thread <= 16) {  // (so V < 2^20: 32-bit columns in v3)
    const bool cap = p.softcap > 0.f;
    auto kernel = per_thread <= 4   ? v3_kernel<T, 4>(cap)
                  : per_thread <= 8 ? v3_kernel<T, 8>(cap)
                                    : v3_kernel<T, 16>(cap);
    FASTLM_LAUNCH(kernel, grid, kThreads3, 0, stream)(logits, target, p, grad_scale,
                                                      grad_scale_scalar, loss, lse, write_grad);
    return;
  }
  auto kernel = version >= 2 ? ce_chunk_kernel<T, 2> : ce_chunk_kernel<T, 1>;
  FASTLM_LAUNCH(kernel, grid, kThreads, 0, stream)(logits, target, p, grad_scale,
                                                   grad_scale_scalar, loss, lse, write_grad);
}

}  // namespace

void cross_entropy_chunk(void* logits, int dtype, const int64_t* target,
                         const CrossEntropyParams& p, const float* grad_scale,
                         float grad_scale_scalar, float* loss, float* lse, bool write_grad,
                         int version, cudaStream_t stream) {
  if (version < 1 || version > 3)
    throw std::invalid_argument("cross_entropy_chunk: kernel version must be 1, 2 or 3");
  if (p.rows == 0) return;
  dim3 grid(static_cast<unsigned>(p.rows));
  switch (dtype) {
    case kFloat32:
      launch_ce(version, grid, stream, static_cast<float*>(logits), target, p, grad_scale,
                grad_scale_scalar, loss, lse, write_grad);
      break;
    case kBFloat16:
      launch_ce(version, grid, stream, static_cast<__nv_bfloat16*>(logits), target, p,
                grad_scale, grad_scale_scalar, loss, lse, write_grad);
      break;
    case kFloat16:
      launch_ce(version, grid, stream, static_cast<__half*>(logits), target, p, grad_scale,
                grad_scale_scalar, loss, lse, write_grad);
      break;
    default:
      throw std::invalid_argument("cross_entropy_chunk: unsupported dtype code");
  }
  FASTLM_LAUNCH_CHECK();
}

}  // namespace cuda
}  // namespace fastlm
