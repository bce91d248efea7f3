// CUDA flash attention (FlashAttention-2 scheme): forward with online softmax saving logsumexp,
// backward recomputing the score tiles. bf16/fp16, head dim 64/128, causal or not, GQA.
//
// Tensor cores through mma.sync.m16n8k16 (inline PTX, sm_80+; runs on sm_90 too) in v1-v6, and
// through wgmma (sm_90a) in v7 and v8. Forward (v1-v4): a block owns 64 query rows (4 warps x 16
// rows), loops over 64-key tiles of K and V staged in shared memory; S and O stay in registers
// (fragment layout in cuda_common.cuh), so the per-row rescaling is plain register math.
// Backward (v1-v4): a block owns 64 keys of one KV head (4 warps x 16 keys) and loops over the
// query heads of its group and over query tiles; dK and dV accumulate in registers, dQ
// accumulates in fp32 in global memory with atomics and is converted (and scaled) by a last
// small kernel. Later versions change the tiles and the warp split (below), not the scheme.
// FLOPs: forward 4*B*H*Tq*Tk*D (halved when causal), backward 2.5x that.
// Versions, fwd+bwd ms at D=128, T=4096, 16 heads, B=4, bf16, non-causal; all tables in
// csrc/kernels/NOTES.md. NVIDIA H200 (SDPA flash backend: 6.6 ms):
//   v1 18.44, v2 18.55, v3 12.90, v4 13.55 (12.88 for v3 in the same run);
//   v3 13.02, v5 12.00, v6 11.22 (SDPA 6.74) in one later run.
// NVIDIA H100 80GB: v3 14.11, v5 12.01, v6 11.05 (SDPA 6.70).
// Default: v5 at D=64, v6 at D=128 (python/fastlm/ops/attention.py); 0.55-0.67x of SDPA on both
// cards. Nsight Compute: every version runs 8 warps per SM (registers and shared memory) and issues
// every 4-8 cycles per warp: latency-bound, the tensor pipe ~25% busy in the backward.
//   v1: no cp.async pipelining, B operands gathered with 32/16-bit shared loads, one tile buffer.
//   v2: the same with every shared-memory fragment load through ldmatrix (.trans for the
//       operands stored k-major): 4x fewer shared-load instructions for the "transposed" ones.
//   v3: v2 with tiles copied by cp.async (v1/v2 copy through registers one 16-byte vector at
//       a time, each load waiting for the previous store: few bytes in flight); the forward
//       overlaps the V tile's copy with S = Q K^T and the softmax.
//   v4: v3 with prefetch: forward copies K_{j+1} during softmax + PV of tile j and V_{j+1}
//       during the next S (single buffers, FA2's schedule); backward double-buffers the Q/dO
//       tiles so the next tile's copy overlaps the current tile's five products.
//   v5: forward with 128 query rows per block, 32 per warp, so each K/V fragment feeds two
//       mma and each staged K/V tile serves 128 queries; masks only on the tiles that cross the
//       end or the diagonal; causal warps skip key tiles past their rows. Backward: v3 with 8
//       warps (128 keys per block): each staged Q/dO tile serves twice the keys and the dQ
//       atomics halve (one fp32 add per query x dim per 128 keys, as FA2's kBlockN = 128).
//       Written without a GPU at hand and validated in the CPU emulator first; on the GPU (H200,
//       H100): correct on every tested shape, fwd+bwd 1.0-1.17x of v3's speed (forward unchanged).
//   v6: v5's forward; backward with FA2's partition (attn_bwd_kernel_v6): 128 keys x 64-query
//       tiles, 8 warps, a different warp grid per product (S/dP 2x4 warps of 32x32, dK/dV 4x2
//       of 32 keys x D/2, dQ 2x4 of 32 queries x D/4), P and dS through shared memory: 1/3
//       fewer ldmatrix per mma than v3/v5 (csrc/kernels/NOTES.md). Registers (sm_90): D=64 201,
//       D=128 255 + 12 bytes spilled. On the GPU: correct; backward 1.07-1.12x of v5's at D=128
//       (fwd+bwd 0.59-0.67x of SDPA), 0.94-1.1x at D=64.
//   v7: sm_90a only: wgmma (csrc/kernels/wgmma.cuh) for every product, forward and backward
//       (attn_fwd_kernel_v7, attn_bwd_kernel_v7): 2 warpgroups per block, operands read by the
//       tensor cores straight from shared memory (chunk-planar tiles, no fragment loads), P / dS^T
//       fed from registers, accumulators half of mma.sync's per thread (64 rows per warpgroup).
//       Each step's copies are issued after its first products (the tensor cores do not wait for
//       their address arithmetic). Registers (sm_90a): forward 190 (D=128) / 170 (D=64),
//       backward 230 / 165, no spills. Written without a GPU: validated in the CPU emulator
//       (which models wgmma's asynchrony); not yet run on a GPU.
//   v8: v7's backward; forward with FlashAttention-3's intra-warpgroup pipelining
//       (attn_fwd_kernel_v8): tile j's softmax runs while tile j-1's P V product is on the
//       tensor cores. Registers 241 (D=128) / 184 (D=64), no spills. Written without a GPU
//       (emulator-validated); not yet run on a GPU.
//   v9: v5's forward; v6's backward with the Q / dO tiles double-buffered (attn_bwd_kernel_v6
//       with kPrefetch): the next tile's copies run during this tile's products. v6 waits for
//       each tile's copies at once, and at one block per SM nothing hides that wait. sm_80+.
//       Written without a GPU (emulator-validated); not yet run on a GPU.
#include <cmath>
#include <string>

#include "kernels/cuda_common.cuh"
#include "kernels/kernels_cuda.h"
#include "kernels/wgmma.cuh"

namespace fastlm {
namespace cuda {
namespace {

constexpr float kLog2e = 1.4426950408889634f;
constexpr int kWarps = 4, kThreads = 128;
constexpr int kBr = 64, kBc = 64;  // forward query rows / key columns per tile

// Copies an R x D tile (row stride ld_g in global, LD in shared) with 16-byte vectors;
// rows at or beyond `valid` are zero-filled.
// v3+: cp.async (no registers, all of a thread's copies in flight at once; rows past `valid`
// get src-size 0, i.e. zero-fill). The caller commits/waits and then syncs.
// With NT threads (a multiple of D/8) a thread copies one column chunk of every (NT / (D/8))-th
// row: a fixed, unrolled count per thread, its addresses one step apart (a loop from threadIdx.x
// compiled to a generic loop with a remainder and a branch around every copy).
template <typename T, int D, int LD, int VER, int R, int NT = kThreads>
__device__ __forceinline__ void load_tile(T* s, const T* g, int64_t ld_g, int valid) {
  constexpr int kVec = 8;  // 8 x 16-bit = 16 bytes
  constexpr int kRowStep = NT / (D / kVec), kIters = (R + kRowStep - 1) / kRowStep;
  static_assert(NT % (D / kVec) == 0, "load_tile: threads a multiple of the row's vectors");
  const int r0 = threadIdx.x / (D / kVec), c = (threadIdx.x % (D / kVec)) * kVec;
  const T* src = g + r0 * ld_g + c;
  T* dst = s + r0 * LD + c;
  const int64_t src_step = kRowStep * ld_g;
#pragma unroll
  for (int j = 0; j < kIters; ++j) {
    const int r = r0 + j * kRowStep;
    if (R % kRowStep != 0 && r >= R) break;  // the last step of a tile that does not divide
    const bool ok = r < valid;
    if constexpr (VER >= 3) {
      cp_async16(dst + j * kRowStep * LD, ok ? src + j * src_step : g, ok);
    } else {
      uint4 v = make_uint4(0, 0, 0, 0);
      if (ok) v = *reinterpret_cast<const uint4*>(src + j * src_step);
      *reinterpret_cast<uint4*>(dst + j * kRowStep * LD) = v;
    }
  }
  if constexpr (VER >= 3) cp_async_commit();
}

// Start of head h of batch b in a (B, H, T, D) tensor with element strides {batch, head, time}.
template <typename T>
__device__ __forceinline__ const T* head_base(const void* x, const int64_t* stride, int b, int h) {
  return static_cast<const T*>(x) + b * stride[0] + h * stride[1];
}

// A forward block of BR query rows: batch b and query head h, its first row q0, the keys it
// reads (below k_end: all of them, or up to its last row when causal), the head's Q and its KV
// head's K and V (grouped-query).
template <typename T>
struct FwdBlock {
  int b, h, q0, k_end;
  const T *Q, *K, *V;
};
template <typename T, int BR>
__device__ __forceinline__ FwdBlock<T> fwd_block(const AttentionParams& p) {
  const int b = blockIdx.z, h = blockIdx.y, q0 = blockIdx.x * BR;
  const int hk = h / (p.heads_q / p.heads_kv);
  return {b, h, q0, p.causal ? min(p.t_k, q0 + BR) : p.t_k, head_base<T>(p.q, p.q_stride, b, h),
          head_base<T>(p.k, p.k_stride, b, hk), head_base<T>(p.v, p.v_stride, b, hk)};
}

// This thread's warp and its places in the fragment layouts (cuda_common.cuh): g = lane / 4 and
// t = lane % 4 for mma; lm / lr = which 8x8 matrix and which of its rows it addresses in ldmatrix.
struct LaneLayout {
  int warp, g, t, lm, lr;
};
__device__ __forceinline__ LaneLayout lane_layout() {
  const int lane = threadIdx.x % 32;
  return {static_cast<int>(threadIdx.x / 32), lane / 4, lane % 4, lane / 8, lane % 8};
}

// Epilogues. An accumulator tile acc[NT][4] in the mma.sync C layout (wgmma's per warp too)
// holds, for this thread, rows g ("hi" 0) and g + 8 (hi 1) of a 16 x 8*NT tile: acc[j][e] is row
// g + 8 * (e / 2), column 8j + 2t + e % 2.
// Row hi of the tile times `scale`, as T, to out_row (that row's first column of the tile).
template <typename T, int NT>
__device__ __forceinline__ void store_row(T* out_row, int t, const float (*acc)[4], int hi,
                                          float scale) {
#pragma unroll
  for (int j = 0; j < NT; ++j)
    *reinterpret_cast<uint32_t*>(out_row + j * 8 + 2 * t) =
        pack2<T>(acc[j][2 * hi] * scale, acc[j][2 * hi + 1] * scale);
}

// The tile added into fp32 out (row-major with LD columns, at the tile's first element) with
// atomics (pairs of columns: atomic_add2); rows at or beyond `rows` are skipped.
template <int NT, int LD>
__device__ __forceinline__ void atomic_add_tile(float* out, int rows, int g, int t,
                                                const float (*acc)[4]) {
#pragma unroll
  for (int hi = 0; hi < 2; ++hi) {  // one test per row (per element it became a branch each)
    if (g + hi * 8 >= rows) continue;
    float* out_row = out + (g + hi * 8) * LD + 2 * t;
#pragma unroll
    for (int j = 0; j < NT; ++j) atomic_add2(out_row + j * 8, acc[j][2 * hi], acc[j][2 * hi + 1]);
  }
}

// The forward's end for one 16-row tile of batch b, head h: each row's l summed over its 4
// threads, O = acc / l and lse = (m + log2 l) / log2 e for the rows below t_q (thread rows row0
// and row0 + 8).
template <typename T, int D>
__device__ __forceinline__ void finish_forward_rows(const AttentionParams& p, int b, int h,
                                                    int row0, int t, const float (*o)[4],
                                                    const float* m, const float* l) {
  T* O = static_cast<T*>(p.o) + ((int64_t)b * p.heads_q + h) * p.t_q * D;
  float* LSE = p.lse + ((int64_t)b * p.heads_q + h) * p.t_q;
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    float li = l[i];
    li += __shfl_xor_sync(0xffffffffu, li, 1);
    li += __shfl_xor_sync(0xffffffffu, li, 2);
    const int row = row0 + i * 8;
    if (row < p.t_q) {
      store_row<T, D / 8>(O + (int64_t)row * D, t, o, i, li > 0.f ? 1.f / li : 0.f);
      if (t == 0) LSE[row] = li > 0.f ? (m[i] + log2f(li)) / kLog2e : -INFINITY;
    }
  }
}

template <typename T, int D, int VER>
__global__ void __launch_bounds__(kThreads) attn_fwd_kernel(AttentionParams p) {
  constexpr int LD = D + 8;  // +16 bytes per row: the fragment loads hit distinct banks
  FASTLM_DYNAMIC_SMEM(smem_raw);
  T* sQ = reinterpret_cast<T*>(smem_raw);
  T* sK = sQ + kBr * LD;
  T* sV = sK + kBc * LD;
  const auto [b, h, q0, k_end, Q, K, V] = fwd_block<T, kBr>(p);
  const auto [warp, g, t, lm, lr] = lane_layout();

  load_tile<T, D, LD, VER, kBr>(sQ, Q + q0 * p.q_stride[2], p.q_stride[2], p.t_q - q0);
  if constexpr (VER >= 3) cp_async_wait<0>();
  __syncthreads();  // Q tile complete before fragments are read
  uint32_t qf[D / 16][4];
  const T* qw = sQ + warp * 16 * LD;
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    qf[kk][0] = ld32(qw + g * LD + kk * 16 + 2 * t);
    qf[kk][1] = ld32(qw + (g + 8) * LD + kk * 16 + 2 * t);
    qf[kk][2] = ld32(qw + g * LD + kk * 16 + 2 * t + 8);
    qf[kk][3] = ld32(qw + (g + 8) * LD + kk * 16 + 2 * t + 8);
  }
  float o[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  const float sl2 = p.scale * kLog2e;  // exp(x*scale) = exp2(x*scale*log2e)
  const int row0 = q0 + warp * 16 + g;   // this thread's two rows: row0 and row0 + 8

  if constexpr (VER >= 4) {  // prologue: first K and V tiles in flight (k_end > 0 always)
    load_tile<T, D, LD, VER, kBc>(sK, K, p.k_stride[2], p.t_k);
    load_tile<T, D, LD, VER, kBc>(sV, V, p.v_stride[2], p.t_k);
  }
  for (int k0 = 0; k0 < k_end; k0 += kBc) {
    const bool has_next = k0 + kBc < k_end;
    if constexpr (VER >= 4) {
      // Groups committed so far end with K_j, V_j (j = this tile): all but the newest -> K_j.
      cp_async_wait<1>();
      __syncthreads();  // K_j complete for every thread
    } else {
      __syncthreads();  // every warp is done reading the previous K/V tile
      load_tile<T, D, LD, VER, kBc>(sK, K + k0 * p.k_stride[2], p.k_stride[2], p.t_k - k0);
      load_tile<T, D, LD, VER, kBc>(sV, V + k0 * p.v_stride[2], p.v_stride[2], p.t_k - k0);
      if constexpr (VER >= 3) cp_async_wait<1>();  // K landed; V may still be in flight
      __syncthreads();  // K tile complete (V too before v3)
    }
    float s[kBc / 8][4];
#pragma unroll
    for (int nt = 0; nt < kBc / 8; ++nt) {
      s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
      if constexpr (VER >= 2) {
#pragma unroll
        for (int kk = 0; kk < D / 16; kk += 2) {  // b0,b1 of k-steps kk and kk+1 in one load
          uint32_t bf[4];
          ldsm_x4(bf, sK + (nt * 8 + lr) * LD + kk * 16 + lm * 8);
          mma16816<T>(s[nt], qf[kk], bf);
          mma16816<T>(s[nt], qf[kk + 1], bf + 2);
        }
      } else {
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
          uint32_t bf[2];
          bf[0] = ld32(sK + (nt * 8 + g) * LD + kk * 16 + 2 * t);
          bf[1] = ld32(sK + (nt * 8 + g) * LD + kk * 16 + 2 * t + 8);
          mma16816<T>(s[nt], qf[kk], bf);
        }
      }
    }
    if constexpr (VER >= 4) {
      __syncthreads();  // every warp is done reading K_j: prefetch K_{j+1} over it
      if (has_next)
        load_tile<T, D, LD, VER, kBc>(sK, K + (k0 + kBc) * p.k_stride[2], p.k_stride[2],
                                      p.t_k - k0 - kBc);
      else
        cp_async_commit();  // empty group: keeps the wait counts uniform
    }
    // Scale to log2 units and mask (keys past the end; causal: key > query).
    float mx[2] = {m[0], m[1]};
#pragma unroll
    for (int nt = 0; nt < kBc / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        int key = k0 + nt * 8 + 2 * t + (e & 1), row = row0 + (e >> 1) * 8;
        bool ok = key < p.t_k && (!p.causal || key <= row);
        s[nt][e] = ok ? s[nt][e] * sl2 : -INFINITY;
        mx[e >> 1] = fmaxf(mx[e >> 1], s[nt][e]);
      }
    float alpha[2], mu[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 1));
      mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 2));
      alpha[i] = mx[i] == -INFINITY ? 1.f : exp2f(m[i] - mx[i]);
      m[i] = mx[i];
      mu[i] = mx[i] == -INFINITY ? 0.f : mx[i];  // all masked so far: p = exp2(-inf) = 0
      l[i] *= alpha[i];
    }
#pragma unroll
    for (int nt = 0; nt < kBc / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[nt][e] = exp2f(s[nt][e] - mu[e >> 1]);
        l[e >> 1] += s[nt][e];  // per-thread partial row sum; quad-reduced at the end
      }
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt) {
      o[dt][0] *= alpha[0], o[dt][1] *= alpha[0];
      o[dt][2] *= alpha[1], o[dt][3] *= alpha[1];
    }
    if constexpr (VER >= 4) {
      cp_async_wait<1>();  // groups end with V_j, K_{j+1}: all but the newest -> V_j
      __syncthreads();     // V_j complete for every thread
    } else if constexpr (VER >= 3) {
      cp_async_wait<0>();
      __syncthreads();  // V tile complete (its copy overlapped S = Q K^T and the softmax)
    }
    // O += P V. The S accumulator layout of two adjacent n-tiles is exactly the A layout.
#pragma unroll
    for (int kk = 0; kk < kBc / 16; ++kk) {
      uint32_t af[4];
      af[0] = pack2<T>(s[2 * kk][0], s[2 * kk][1]);
      af[1] = pack2<T>(s[2 * kk][2], s[2 * kk][3]);
      af[2] = pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]);
      af[3] = pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3]);
      if constexpr (VER >= 2) {
        const T* vk = sV + (kk * 16 + (lm & 1) * 8 + lr) * LD + (lm >> 1) * 8;
#pragma unroll
        for (int dt = 0; dt < D / 8; dt += 2) {  // b0,b1 of d-tiles dt and dt+1
          uint32_t bf[4];
          ldsm_x4_trans(bf, vk + dt * 8);
          mma16816<T>(o[dt], af, bf);
          mma16816<T>(o[dt + 1], af, bf + 2);
        }
      } else {
        const T* vk = sV + (kk * 16 + 2 * t) * LD + g;
#pragma unroll
        for (int dt = 0; dt < D / 8; ++dt) {
          uint32_t bf[2];
          bf[0] = pack_raw<T>(vk[dt * 8], vk[LD + dt * 8]);
          bf[1] = pack_raw<T>(vk[8 * LD + dt * 8], vk[9 * LD + dt * 8]);
          mma16816<T>(o[dt], af, bf);
        }
      }
    }
    if constexpr (VER >= 4) {
      __syncthreads();  // every warp is done reading V_j: prefetch V_{j+1} over it
      if (has_next)
        load_tile<T, D, LD, VER, kBc>(sV, V + (k0 + kBc) * p.v_stride[2], p.v_stride[2],
                                      p.t_k - k0 - kBc);
      else
        cp_async_commit();
    }
  }
  // Finalize: full row sums, O /= l, lse = ln(sum exp(s*scale)).
  finish_forward_rows<T, D>(p, b, h, row0, t, o, m, l);
}

// v5 forward: 128 query rows per block, 32 per warp (two 16-row m-tiles), FA2's split. Each K/V
// fragment read from shared memory feeds the mma of both m-tiles (half the shared loads per mma
// of v3), each K/V tile staged in shared memory serves twice the queries (half the global
// traffic), masks are computed only on tiles that need them, and in causal attention a warp
// skips the math of key tiles that lie entirely after its rows. D=64 keeps Q's fragments in
// registers; D=128 re-reads them with ldmatrix per key tile and takes 32-key tiles (registers:
// O 128 + S 32 floats per thread; 64-key tiles spilled 108 bytes at 255 registers, sm_90).
// Copies as in v3 (cp.async, V's copy overlapping S = Q K^T and the softmax).
constexpr int kBr5 = 128;

template <typename T, int D, int BC>
__global__ void __launch_bounds__(kThreads) attn_fwd_kernel_v5(AttentionParams p) {
  constexpr int LD = D + 8;
  constexpr bool kQInRegs = D == 64;
  constexpr int kQk = kQInRegs ? D / 16 : 1;  // Q fragment k-steps kept in registers
  FASTLM_DYNAMIC_SMEM(smem_raw);
  T* sQ = reinterpret_cast<T*>(smem_raw);
  T* sK = sQ + kBr5 * LD;
  T* sV = sK + BC * LD;
  const auto [b, h, q0, k_end, Q, K, V] = fwd_block<T, kBr5>(p);
  const auto [warp, g, t, lm, lr] = lane_layout();

  load_tile<T, D, LD, 3, kBr5>(sQ, Q + q0 * p.q_stride[2], p.q_stride[2], p.t_q - q0);
  cp_async_wait<0>();
  __syncthreads();
  const T* qw = sQ + warp * 32 * LD;  // this warp's 32 rows
  // A fragment of m-tile mt, k-step kk: ldmatrix x4 of rows (lm&1)*8+lr, columns (lm>>1)*8.
  const T* qa = qw + ((lm & 1) * 8 + lr) * LD + (lm >> 1) * 8;
  [[maybe_unused]] uint32_t qf[2][kQk][4];
  if constexpr (kQInRegs) {
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) ldsm_x4(qf[mt][kk], qa + mt * 16 * LD + kk * 16);
  }
  float o[2][D / 8][4];
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int i = 0; i < D / 8; ++i) o[mt][i][0] = o[mt][i][1] = o[mt][i][2] = o[mt][i][3] = 0.f;
  float m[2][2], l[2][2];
#pragma unroll
  for (int mt = 0; mt < 2; ++mt) m[mt][0] = m[mt][1] = -INFINITY, l[mt][0] = l[mt][1] = 0.f;
  const float sl2 = p.scale * kLog2e;
  const int wrow0 = q0 + warp * 32;  // first row of this warp; its rows: wrow0 + mt*16 + g (+8)

  for (int k0 = 0; k0 < k_end; k0 += BC) {
    __syncthreads();  // every warp is done reading the previous K/V tile
    load_tile<T, D, LD, 3, BC>(sK, K + k0 * p.k_stride[2], p.k_stride[2], p.t_k - k0);
    load_tile<T, D, LD, 3, BC>(sV, V + k0 * p.v_stride[2], p.v_stride[2], p.t_k - k0);
    cp_async_wait<1>();  // K landed; V may still be in flight
    __syncthreads();
    // Causal: keys of this tile all after the warp's last row -> nothing to add for this warp.
    const bool active = !p.causal || k0 <= wrow0 + 31;
    float s[2][BC / 8][4];
    if (active) {
#pragma unroll
      for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int nt = 0; nt < BC / 8; ++nt) s[mt][nt][0] = s[mt][nt][1] = s[mt][nt][2] =
            s[mt][nt][3] = 0.f;
      // D=128: not unrolled, which keeps ptxas from hoisting every K fragment load (spills).
#pragma unroll(kQInRegs ? D / 32 : 1)
      for (int kk = 0; kk < D / 16; kk += 2) {  // k-steps kk, kk+1 (one K ldmatrix per n-tile)
        uint32_t a0[4], a1[4], c0[4], c1[4];  // A fragments: m-tile 0/1 at kk (a) and kk+1 (c)
        if constexpr (kQInRegs) {
#pragma unroll
          for (int i = 0; i < 4; ++i)
            a0[i] = qf[0][kk][i], a1[i] = qf[1][kk][i], c0[i] = qf[0][kk + 1][i],
            c1[i] = qf[1][kk + 1][i];
        } else {
          ldsm_x4(a0, qa + kk * 16);
          ldsm_x4(a1, qa + 16 * LD + kk * 16);
          ldsm_x4(c0, qa + (kk + 1) * 16);
          ldsm_x4(c1, qa + 16 * LD + (kk + 1) * 16);
        }
#pragma unroll
        for (int nt = 0; nt < BC / 8; ++nt) {
          uint32_t bf[4];
          ldsm_x4(bf, sK + (nt * 8 + lr) * LD + kk * 16 + lm * 8);
          mma16816<T>(s[0][nt], a0, bf);
          mma16816<T>(s[1][nt], a1, bf);
          mma16816<T>(s[0][nt], c0, bf + 2);
          mma16816<T>(s[1][nt], c1, bf + 2);
        }
      }
      // Scale to log2 units; mask only where the tile crosses the end or the diagonal.
      const bool need_mask = k0 + BC > p.t_k || (p.causal && k0 + BC - 1 > wrow0);
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) {
        float mx[2] = {m[mt][0], m[mt][1]};
#pragma unroll
        for (int nt = 0; nt < BC / 8; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            float x = s[mt][nt][e] * sl2;
            if (need_mask) {
              int key = k0 + nt * 8 + 2 * t + (e & 1), row = wrow0 + mt * 16 + g + (e >> 1) * 8;
              if (key >= p.t_k || (p.causal && key > row)) x = -INFINITY;
            }
            s[mt][nt][e] = x;
            mx[e >> 1] = fmaxf(mx[e >> 1], x);
          }
        float alpha[2], mu[2];
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 1));
          mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 2));
          alpha[i] = mx[i] == -INFINITY ? 1.f : exp2f(m[mt][i] - mx[i]);
          m[mt][i] = mx[i];
          mu[i] = mx[i] == -INFINITY ? 0.f : mx[i];
          l[mt][i] *= alpha[i];
        }
#pragma unroll
        for (int nt = 0; nt < BC / 8; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            s[mt][nt][e] = exp2f(s[mt][nt][e] - mu[e >> 1]);
            l[mt][e >> 1] += s[mt][nt][e];
          }
#pragma unroll
        for (int dt = 0; dt < D / 8; ++dt) {
          o[mt][dt][0] *= alpha[0], o[mt][dt][1] *= alpha[0];
          o[mt][dt][2] *= alpha[1], o[mt][dt][3] *= alpha[1];
        }
      }
    }
    cp_async_wait<0>();
    __syncthreads();  // V tile complete
    if (active) {
      // O += P V; one V ldmatrix (two d-tiles) feeds four mma (two m-tiles x two d-tiles).
#pragma unroll
      for (int kk = 0; kk < BC / 16; ++kk) {
        uint32_t af[2][4];
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) {
          af[mt][0] = pack2<T>(s[mt][2 * kk][0], s[mt][2 * kk][1]);
          af[mt][1] = pack2<T>(s[mt][2 * kk][2], s[mt][2 * kk][3]);
          af[mt][2] = pack2<T>(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
          af[mt][3] = pack2<T>(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
        }
        const T* vk = sV + (kk * 16 + (lm & 1) * 8 + lr) * LD + (lm >> 1) * 8;
#pragma unroll
        for (int dt = 0; dt < D / 8; dt += 2) {
          uint32_t bf[4];
          ldsm_x4_trans(bf, vk + dt * 8);
          mma16816<T>(o[0][dt], af[0], bf);
          mma16816<T>(o[1][dt], af[1], bf);
          mma16816<T>(o[0][dt + 1], af[0], bf + 2);
          mma16816<T>(o[1][dt + 1], af[1], bf + 2);
        }
      }
    }
  }
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
    finish_forward_rows<T, D>(p, b, h, wrow0 + mt * 16 + g, t, o[mt], m[mt], l[mt]);
}

// v7 forward (sm_90a): wgmma. A block of 2 warpgroups (256 threads) owns 128 query rows, 64 per
// warpgroup, and shares each staged K/V tile between them; K/V tiles of BC keys are double-
// buffered (cp.async: tile j+1's copy runs during tile j's math). Per tile and warpgroup:
// S = Q K^T as D/16 wgmma m64n{BC}k16 with both operands in shared memory (no fragment loads);
// v5's online softmax on the accumulators (wgmma's accumulator layout is mma.sync's, per warp);
// O += P V as BC/16 wgmma m64n{D}k16 with P from registers and V from shared memory (MN-major,
// trans-b). Shared tiles are chunk-planar (wgmma.cuh). Registers per thread: O D/2 + S BC/2 +
// P BC/4 floats (v5: O alone held D); BC = 128 (forward_impl says why). Each product is waited
// for before its result is used and both warpgroups meet at one barrier per tile, with one block
// per SM (registers): the tensor cores idle during the softmax. FlashAttention-3's remedies:
// S of the next tile issued before this tile's softmax (v8); the two warpgroups alternating (not
// done). Needs sm_90a: the kernel is empty elsewhere and the host refuses version 7 there.
constexpr int kBr7 = 128, kThreads7 = 256;

// Copies a R x D tile into chunk-planar shared memory (wgmma.cuh); rows at or beyond `valid` are
// zero-filled. Vector i: 8 consecutive threads take 8 consecutive rows of one 8-column chunk (128
// contiguous shared bytes), and the next 8 threads the same rows' next chunk (each 32-byte global
// sector read by one warp). With the block's NT threads every thread's vectors lie in one row,
// kStep columns apart: one row test and one address per thread, the copies at fixed offsets
// from it (a loop from threadIdx.x over i compiled to a generic loop with a branch around every
// copy, and a fully unrolled one to an address per copy: 20 bytes of spill in v8).
template <typename T, int D, int R, int NT>
__device__ __forceinline__ void load_tile_planar(T* s, const T* g, int64_t ld_g, int valid) {
  static_assert(R % 8 == 0 && D % 16 == 0, "planar tiles: rows multiple of 8, D of 16");
  static_assert(NT % 16 == 0 && (NT / 16) % (R / 8) == 0 && R * (D / 8) % NT == 0,
                "planar tiles: a thread's vectors in one row");
  constexpr int kStep = (NT / 16) / (R / 8) * 16;  // columns between a thread's vectors
  const int lo = threadIdx.x & 7, pair = (threadIdx.x >> 3) & 1, rest = threadIdx.x >> 4;
  const int r = (rest % (R / 8)) * 8 + lo, c0 = ((rest / (R / 8)) * 2 + pair) * 8;
  const bool ok = r < valid;
  const T* src = ok ? g + r * ld_g + c0 : g;
  T* dst = s + planar(r, c0, R);
#pragma unroll
  for (int j = 0; j < R * (D / 8) / NT; ++j)
    cp_async16(dst + j * (kStep / 8) * R * 8, ok ? src + j * kStep : g, ok);
  cp_async_commit();
}

// v7/v8's online softmax of one S tile of BC keys from k0 (accumulators s, this warp's rows
// wrow0 + g and + 8; v5's math): scaled to log2 units and masked (keys past t_k, causal), new row
// maxima m, alpha = exp2(old m - new m) for the caller's O rescale, l rescaled and summed, and P
// = exp2(s - m) packed as wgmma A fragments pf (m16n8k16 A layout, k-step kk = keys 16kk..+15).
template <typename T, int BC>
__device__ __forceinline__ void softmax_tile(float (*s)[4], uint32_t (*pf)[4], float* m, float* l,
                                             float* alpha, int k0, int wrow0, int g, int t,
                                             float sl2, const AttentionParams& p) {
  // One branch per tile, selects inside it: a test per element compiles to a branch per element
  // (ptxas wrapped each of them in BSSY / BRA / BSYNC, 3 instructions more per score).
  if (k0 + BC > p.t_k || (p.causal && k0 + BC - 1 > wrow0)) {
    int lim[2];  // this thread's rows see the keys below lim - k0 - 2t (its first column)
#pragma unroll
    for (int i = 0; i < 2; ++i)
      lim[i] = (p.causal ? min(p.t_k, wrow0 + g + 8 * i + 1) : p.t_k) - k0 - 2 * t;
#pragma unroll
    for (int nt = 0; nt < BC / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e)
        s[nt][e] = nt * 8 + (e & 1) < lim[e >> 1] ? s[nt][e] * sl2 : -INFINITY;
  } else {
#pragma unroll
    for (int nt = 0; nt < BC / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[nt][e] *= sl2;
  }
  float mx[2] = {m[0], m[1]};
#pragma unroll
  for (int nt = 0; nt < BC / 8; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) mx[e >> 1] = fmaxf(mx[e >> 1], s[nt][e]);
  float mu[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 1));
    mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 2));
    alpha[i] = mx[i] == -INFINITY ? 1.f : exp2f(m[i] - mx[i]);
    m[i] = mx[i];
    mu[i] = mx[i] == -INFINITY ? 0.f : mx[i];
    l[i] *= alpha[i];
  }
#pragma unroll
  for (int nt = 0; nt < BC / 8; ++nt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      s[nt][e] = exp2f(s[nt][e] - mu[e >> 1]);
      l[e >> 1] += s[nt][e];
    }
    pf[nt / 2][(nt % 2) * 2] = pack2<T>(s[nt][0], s[nt][1]);
    pf[nt / 2][(nt % 2) * 2 + 1] = pack2<T>(s[nt][2], s[nt][3]);
  }
}

// v7/v8's products for one warpgroup (64 query rows), issued, not committed:
// S (64 x BC) = Q K^T, k-step kk reading columns 16kk..16kk+15 (two 8-column chunks) of the
// kBr7-row Q tile (desc_q at this warpgroup's rows) and of the BC-row K tile (both K-major) ...
template <typename T, int D, int BC>
__device__ __forceinline__ void issue_qk(float (*s)[4], uint64_t desc_q, uint64_t desc_k) {
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk)
    wgmma_ss<T, BC>(&s[0][0], desc_q + ((kk * 2 * kBr7 * 16) >> 4),
                    desc_k + ((kk * 2 * BC * 16) >> 4), kk > 0);
}
// ... and O (64 x D) += P V, P from registers (pf[kk]: keys 16kk..16kk+15), V from shared memory
// (desc_v, MN-major: next 8 keys at 128 bytes, next 8 columns at BC * 16).
template <typename T, int D, int BC>
__device__ __forceinline__ void issue_pv(float (*o)[4], const uint32_t (*pf)[4],
                                         uint64_t desc_v) {
#pragma unroll
  for (int kk = 0; kk < BC / 16; ++kk)
    wgmma_rs_tb<T, D>(&o[0][0], pf[kk], desc_v + ((kk * 16 * 16) >> 4), 1);
}
// ... and that product waited for (v7's per tile, v8's last), with the operand fences around it.
template <typename T, int D, int BC>
__device__ __forceinline__ void pv_waited(float (*o)[4], uint32_t (*pf)[4], uint64_t desc_v) {
  fence_operands<D / 2>(&o[0][0]);
  fence_operands<BC / 4>(&pf[0][0]);
  wgmma_fence();
  issue_pv<T, D, BC>(o, pf, desc_v);
  wgmma_commit();
  wgmma_wait<0>();
  fence_operands<D / 2>(&o[0][0]);
}

template <typename T, int D, int BC>
__global__ void __launch_bounds__(kThreads7, 1) attn_fwd_kernel_v7(AttentionParams p) {
  static_assert(BC == kBr7, "v7: every tile of a block is needed by both warpgroups");
#if defined(FASTLM_CUDA_EMU) || defined(__CUDA_ARCH_FEAT_SM90_ALL)
  FASTLM_DYNAMIC_SMEM(smem_raw);
  T* sQ = reinterpret_cast<T*>(smem_raw);  // kBr7 x D, then two buffers of K (BC x D), V (BC x D)
  T* sKV = sQ + kBr7 * D;
  const auto [b, h, q0, k_end, Q, K, V] = fwd_block<T, kBr7>(p);
  const int n_tiles = (k_end + BC - 1) / BC;
  const auto [warp, g, t, lm, lr] = lane_layout();
  (void)lm, (void)lr;
  const int wg = warp / 4;

  load_tile_planar<T, D, kBr7, kThreads7>(sQ, Q + q0 * p.q_stride[2], p.q_stride[2], p.t_q - q0);
  load_tile_planar<T, D, BC, kThreads7>(sKV, K, p.k_stride[2], p.t_k);
  load_tile_planar<T, D, BC, kThreads7>(sKV + BC * D, V, p.v_stride[2], p.t_k);

  float o[D / 8][4], s[BC / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  const float sl2 = p.scale * kLog2e;
  const int wrow0 = q0 + warp * 16;  // this warp's first row; the thread's: wrow0 + g, + 8
  // Q's 64 rows of this warpgroup, K-major: next 8 columns at kBr7 * 16 bytes, next 8 rows at 128.
  const uint64_t desc_q = desc_k_major(sQ + wg * 64 * 8, kBr7, p.wgmma_swap);

  for (int j = 0; j < n_tiles; ++j) {
    const int k0 = j * BC;
    const T* sK = sKV + (j & 1) * 2 * BC * D;
    const T* sV = sK + BC * D;
    cp_async_wait<0>();   // tile j (and Q) copied by this thread
    fence_proxy_async();  // ... and visible to wgmma's reads
    __syncthreads();      // for every thread; every warpgroup done with tile j-1's buffer

    // S = Q K^T; the next tile's copies (into tile j-1's buffer) issued while it runs.
    wgmma_fence();
    issue_qk<T, D, BC>(s, desc_q, desc_k_major(sK, BC, p.wgmma_swap));
    wgmma_commit();
    if (j + 1 < n_tiles) {
      T* nK = sKV + ((j + 1) & 1) * 2 * BC * D;
      const int k1 = k0 + BC;
      load_tile_planar<T, D, BC, kThreads7>(nK, K + k1 * p.k_stride[2], p.k_stride[2], p.t_k - k1);
      load_tile_planar<T, D, BC, kThreads7>(nK + BC * D, V + k1 * p.v_stride[2], p.v_stride[2],
                                            p.t_k - k1);
    }
    wgmma_wait<0>();
    fence_operands<BC / 2>(&s[0][0]);

    // Online softmax (v5's, one 16-row m-tile per warp).
    float alpha[2];
    uint32_t pf[BC / 16][4];  // P as wgmma A fragments (m16n8k16 A layout), k-step kk = 16 keys
    softmax_tile<T, BC>(s, pf, m, l, alpha, k0, wrow0, g, t, sl2, p);
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt) {
      o[dt][0] *= alpha[0], o[dt][1] *= alpha[0];
      o[dt][2] *= alpha[1], o[dt][3] *= alpha[1];
    }

    pv_waited<T, D, BC>(o, pf, desc_mn_major(sV, BC, p.wgmma_swap));  // O += P V
  }
  finish_forward_rows<T, D>(p, b, h, wrow0 + g, t, o, m, l);
#elif defined(__CUDA_ARCH__)
  __trap();  // a build without sm_90a code for this GPU: fail, never a silent no-op
#endif
}

// v8 forward (sm_90a): v7 with FlashAttention-3's intra-warpgroup pipelining (FA3 paper,
// Algorithm 2): at tile j a warpgroup issues S_j = Q K_j^T and then O += P_{j-1} V_{j-1}, waits
// for S_j alone and runs tile j's softmax while the P V product is still on the tensor cores;
// O is rescaled by tile j's alpha once that product lands (O then holds the rows' sums up to
// tile j-1 in tile j's maxima), and the last tile's P V is added after the loop. Loads lag to
// match: the copies issued at step j (after the step's barrier) are K_{j+1} and V_j, each into
// the buffer (of two per operand) whose last reader was waited for before that barrier, so one
// barrier per tile still covers them and every copy has a whole tile's math to land in. With
// BC = kBr7 both warpgroups of a causal block need every tile of the block (the last one holds
// the diagonal of both). Tile 0 and the last P V are peeled out of the loop: ptxas serializes
// every wgmma of a kernel that issues one on a branch it cannot prove warp-uniform (C7520).
// Same shared memory as v7; registers: the P of two tiles.
template <typename T, int D, int BC>
__global__ void __launch_bounds__(kThreads7, 1) attn_fwd_kernel_v8(AttentionParams p) {
  static_assert(BC == kBr7, "v8: every tile of a block is needed by both warpgroups");
#if defined(FASTLM_CUDA_EMU) || defined(__CUDA_ARCH_FEAT_SM90_ALL)
  FASTLM_DYNAMIC_SMEM(smem_raw);
  T* sQ = reinterpret_cast<T*>(smem_raw);  // kBr7 x D, then K buffers 0/1, V buffers 0/1 (BC x D)
  T* sK = sQ + kBr7 * D;
  T* sV = sK + 2 * BC * D;
  const FwdBlock<T> blk = fwd_block<T, kBr7>(p);
  const auto [b, h, q0, k_end, Q, K, V] = blk;  // (step uses blk: a C++17 lambda cannot
                                                 // capture structured bindings)
  const int n_tiles = (k_end + BC - 1) / BC;
  const auto [warp, g, t, lm, lr] = lane_layout();
  (void)lm, (void)lr;
  const int wg = warp / 4;
  // Step j: this thread's copies of tile j (and Q / K_0) landed and visible to wgmma, every
  // thread's (the barrier), every product of step j-1 waited for ...
  auto sync = [] {
    cp_async_wait<0>();
    fence_proxy_async();
    __syncthreads();
  };
  // ... then, once the step's products are issued (so that the tensor cores need not wait for
  // the copies' address arithmetic), K_{j+1} and V_j.
  auto loads = [&](int j) {
    const int k1 = (j + 1) * BC, k0 = j * BC;
    if (j + 1 < n_tiles)
      load_tile_planar<T, D, BC, kThreads7>(sK + ((j + 1) & 1) * BC * D,
                                            blk.K + k1 * p.k_stride[2], p.k_stride[2], p.t_k - k1);
    if (j < n_tiles)
      load_tile_planar<T, D, BC, kThreads7>(sV + (j & 1) * BC * D, blk.V + k0 * p.v_stride[2],
                                            p.v_stride[2], p.t_k - k0);
  };
  auto desc_v = [&](int j) { return desc_mn_major(sV + (j & 1) * BC * D, BC, p.wgmma_swap); };

  load_tile_planar<T, D, kBr7, kThreads7>(sQ, Q + q0 * p.q_stride[2], p.q_stride[2], p.t_q - q0);
  load_tile_planar<T, D, BC, kThreads7>(sK, K, p.k_stride[2], p.t_k);

  float o[D / 8][4], s[BC / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f}, alpha[2];
  const float sl2 = p.scale * kLog2e;
  const int wrow0 = q0 + warp * 16;  // this warp's first row; the thread's: wrow0 + g, + 8
  const uint64_t desc_q = desc_k_major(sQ + wg * 64 * 8, kBr7, p.wgmma_swap);  // as v7's
  uint32_t pf[BC / 16][4];  // P of the previous tile (A of the P V product in flight)

  // Tile 0: S_0 and its softmax (O is still 0).
  sync();
  wgmma_fence();
  issue_qk<T, D, BC>(s, desc_q, desc_k_major(sK, BC, p.wgmma_swap));
  wgmma_commit();
  loads(0);
  wgmma_wait<0>();
  fence_operands<BC / 2>(&s[0][0]);
  softmax_tile<T, BC>(s, pf, m, l, alpha, 0, wrow0, g, t, sl2, p);

  for (int j = 1; j < n_tiles; ++j) {
    sync();
    fence_operands<D / 2>(&o[0][0]);
    fence_operands<BC / 4>(&pf[0][0]);
    wgmma_fence();
    issue_qk<T, D, BC>(s, desc_q, desc_k_major(sK + (j & 1) * BC * D, BC, p.wgmma_swap));
    wgmma_commit();
    issue_pv<T, D, BC>(o, pf, desc_v(j - 1));
    wgmma_commit();
    loads(j);  // into the buffers of K_{j-1} and V_{j-2}, read by products already waited for
    wgmma_wait<1>();  // S_j; the P V product may still run
    fence_operands<BC / 2>(&s[0][0]);
    uint32_t pn[BC / 16][4];  // tile j's P (pf is still being read)
    softmax_tile<T, BC>(s, pn, m, l, alpha, j * BC, wrow0, g, t, sl2, p);
    wgmma_wait<0>();
    fence_operands<D / 2>(&o[0][0]);
    fence_operands<BC / 4>(&pf[0][0]);
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt) {
      o[dt][0] *= alpha[0], o[dt][1] *= alpha[0];
      o[dt][2] *= alpha[1], o[dt][3] *= alpha[1];
    }
#pragma unroll
    for (int kk = 0; kk < BC / 16; ++kk)
#pragma unroll
      for (int i = 0; i < 4; ++i) pf[kk][i] = pn[kk][i];
  }

  // The last tile's P V (V_{n_tiles - 1} was issued at the last step).
  sync();
  pv_waited<T, D, BC>(o, pf, desc_v(n_tiles - 1));

  finish_forward_rows<T, D>(p, b, h, wrow0 + g, t, o, m, l);
#elif defined(__CUDA_ARCH__)
  __trap();  // a build without sm_90a code for this GPU: fail, never a silent no-op
#endif
}

// delta[row] = sum_d dO[row, d] * O[row, d]: one warp per row.
template <typename T, int D>
__global__ void attn_delta_kernel(AttentionParams p) {
  const int64_t row = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  const int64_t rows = (int64_t)p.batch * p.heads_q * p.t_q;
  if (row >= rows) return;
  const int lane = threadIdx.x % 32;
  const int tq = row % p.t_q, bh = row / p.t_q, h = bh % p.heads_q, b = bh / p.heads_q;
  const T* dO = head_base<T>(p.dout, p.do_stride, b, h) + tq * p.do_stride[2];
  const T* O = static_cast<const T*>(p.o) + row * D;
  float acc = 0.f;
  for (int d = lane; d < D; d += 32) acc += to_float(dO[d]) * to_float(O[d]);
  for (int off = 16; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
  if (lane == 0) p.delta[row] = acc;
}

template <typename T, int D, int BQ, int VER, int NW = kWarps>
__global__ void __launch_bounds__(NW * 32) attn_bwd_kernel(AttentionParams p) {
  constexpr int KB = NW * 16, NT = NW * 32;  // keys per block (16 per warp), threads
  constexpr int LD = D + 8, LDS = BQ + 8;
  FASTLM_DYNAMIC_SMEM(smem_raw);
  constexpr int kBufs = VER >= 4 ? 2 : 1;  // Q/dO tile buffers (v4 prefetches the next tile)
  T* sK = reinterpret_cast<T*>(smem_raw);
  T* sV = sK + KB * LD;
  T* sQ = sV + KB * LD;
  T* sdO = sQ + kBufs * BQ * LD;
  T* sdS = sdO + kBufs * BQ * LD;  // dS^T tile: KB keys x BQ queries
  float* sLse = reinterpret_cast<float*>(sdS + KB * LDS);
  float* sDelta = sLse + BQ;
  const int b = blockIdx.z, hk = blockIdx.y, k0 = blockIdx.x * KB;
  const int group = p.heads_q / p.heads_kv;
  const auto [warp, g, t, lm, lr] = lane_layout();
  const T* K = head_base<T>(p.k, p.k_stride, b, hk);
  const T* V = head_base<T>(p.v, p.v_stride, b, hk);
  load_tile<T, D, LD, VER, KB, NT>(sK, K + k0 * p.k_stride[2], p.k_stride[2], p.t_k - k0);
  load_tile<T, D, LD, VER, KB, NT>(sV, V + k0 * p.v_stride[2], p.v_stride[2], p.t_k - k0);
  float dk[D / 8][4], dv[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) dk[i][e] = dv[i][e] = 0.f;
  const float sl2 = p.scale * kLog2e;
  const int key0 = k0 + warp * 16 + g;  // this thread's keys: key0 and key0 + 8
  const T* kw = sK + warp * 16 * LD;
  const T* vw = sV + warp * 16 * LD;
  // dQ tile split: BQ/16 row groups, the rest of the warps split D.
  constexpr int kRowGroups = BQ / 16, kColSplit = NW / kRowGroups, kDw = D / kColSplit;
  const int qr = (warp % kRowGroups) * 16, dc = (warp / kRowGroups) * kDw;
  const int q_begin = p.causal ? (k0 / BQ) * BQ : 0;

  const int nq = (p.t_q - q_begin + BQ - 1) / BQ;  // query tiles per head
  const int n_iter = group * nq;                   // (head of the group, query tile) pairs
  auto q_ptr = [&](int it) {
    const int h = hk * group + it / nq;
    return head_base<T>(p.q, p.q_stride, b, h) + (q_begin + (it % nq) * BQ) * p.q_stride[2];
  };
  auto do_ptr = [&](int it) {
    const int h = hk * group + it / nq;
    return head_base<T>(p.dout, p.do_stride, b, h) +
           (q_begin + (it % nq) * BQ) * p.do_stride[2];
  };
  if constexpr (VER >= 4) {  // prologue: the first Q/dO tile into buffer 0
    load_tile<T, D, LD, VER, BQ, NT>(sQ, q_ptr(0), p.q_stride[2], p.t_q - q_begin);
    load_tile<T, D, LD, VER, BQ, NT>(sdO, do_ptr(0), p.do_stride[2], p.t_q - q_begin);
  }

  for (int it = 0; it < n_iter; ++it) {
    const int h = hk * group + it / nq, q0 = q_begin + (it % nq) * BQ;
    const int64_t bh = (int64_t)b * p.heads_q + h;
    T* cQ = sQ;  // this iteration's tiles (v4: alternating buffers)
    T* cdO = sdO;
    // No barrier here: every warp is past the previous iteration's dS^T barrier (below), so past
    // its reads of sQ/sdO (the buffer written next) and sLse/sDelta; its reads of sdS (the dQ
    // product) end before any warp passes this iteration's barrier after the loads, and sdS is
    // written only after that one. (tools/emu_barrier_sweep.py never caught this barrier's loss.)
    if constexpr (VER >= 4) {
      cQ = sQ + (it & 1) * BQ * LD;
      cdO = sdO + (it & 1) * BQ * LD;
      if (it + 1 < n_iter) {  // prefetch the next tile: its copy overlaps this one's math
        const int q1 = q_begin + ((it + 1) % nq) * BQ;
        load_tile<T, D, LD, VER, BQ, NT>(sQ + ((it + 1) & 1) * BQ * LD, q_ptr(it + 1),
                                         p.q_stride[2], p.t_q - q1);
        load_tile<T, D, LD, VER, BQ, NT>(sdO + ((it + 1) & 1) * BQ * LD, do_ptr(it + 1),
                                         p.do_stride[2], p.t_q - q1);
      } else {
        cp_async_commit();  // empty groups keep the wait count below uniform
        cp_async_commit();
      }
    } else {
      load_tile<T, D, LD, VER, BQ, NT>(sQ, q_ptr(it), p.q_stride[2], p.t_q - q0);
      load_tile<T, D, LD, VER, BQ, NT>(sdO, do_ptr(it), p.do_stride[2], p.t_q - q0);
    }
    for (int i = threadIdx.x; i < BQ; i += NT) {
      bool ok = q0 + i < p.t_q;
      sLse[i] = ok ? p.lse[bh * p.t_q + q0 + i] * kLog2e : INFINITY;
      sDelta[i] = ok ? p.delta[bh * p.t_q + q0 + i] : 0.f;
    }
    if constexpr (VER >= 4)
      cp_async_wait<2>();  // all but the two newest groups (the prefetch): this tile landed
    else if constexpr (VER >= 3)
      cp_async_wait<0>();
    __syncthreads();  // tiles, lse and delta visible (and sK/sV on the first pass)
    // S^T = K Q^T (16 keys x BQ queries per warp) and dP^T = V dO^T.
    float st[BQ / 8][4], dpt[BQ / 8][4];
#pragma unroll
    for (int nt = 0; nt < BQ / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) st[nt][e] = dpt[nt][e] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t ak[4], av[4];
      if constexpr (VER >= 2) {
        ldsm_x4(ak, kw + ((lm & 1) * 8 + lr) * LD + kk * 16 + (lm >> 1) * 8);
        ldsm_x4(av, vw + ((lm & 1) * 8 + lr) * LD + kk * 16 + (lm >> 1) * 8);
#pragma unroll
        for (int nt = 0; nt < BQ / 8; nt += 2) {  // n-tiles nt and nt+1
          uint32_t bq[4], bo[4];
          ldsm_x4(bq, cQ + (nt * 8 + (lm >> 1) * 8 + lr) * LD + kk * 16 + (lm & 1) * 8);
          ldsm_x4(bo, cdO + (nt * 8 + (lm >> 1) * 8 + lr) * LD + kk * 16 + (lm & 1) * 8);
          mma16816<T>(st[nt], ak, bq);
          mma16816<T>(st[nt + 1], ak, bq + 2);
          mma16816<T>(dpt[nt], av, bo);
          mma16816<T>(dpt[nt + 1], av, bo + 2);
        }
        continue;
      }
      ak[0] = ld32(kw + g * LD + kk * 16 + 2 * t);
      ak[1] = ld32(kw + (g + 8) * LD + kk * 16 + 2 * t);
      ak[2] = ld32(kw + g * LD + kk * 16 + 2 * t + 8);
      ak[3] = ld32(kw + (g + 8) * LD + kk * 16 + 2 * t + 8);
      av[0] = ld32(vw + g * LD + kk * 16 + 2 * t);
      av[1] = ld32(vw + (g + 8) * LD + kk * 16 + 2 * t);
      av[2] = ld32(vw + g * LD + kk * 16 + 2 * t + 8);
      av[3] = ld32(vw + (g + 8) * LD + kk * 16 + 2 * t + 8);
#pragma unroll
      for (int nt = 0; nt < BQ / 8; ++nt) {
        uint32_t bq[2], bo[2];
        bq[0] = ld32(cQ + (nt * 8 + g) * LD + kk * 16 + 2 * t);
        bq[1] = ld32(cQ + (nt * 8 + g) * LD + kk * 16 + 2 * t + 8);
        bo[0] = ld32(cdO + (nt * 8 + g) * LD + kk * 16 + 2 * t);
        bo[1] = ld32(cdO + (nt * 8 + g) * LD + kk * 16 + 2 * t + 8);
        mma16816<T>(st[nt], ak, bq);
        mma16816<T>(dpt[nt], av, bo);
      }
    }
    // P^T = exp(S*scale - lse) (0 where masked); dS^T = P^T * (dP^T - delta).
#pragma unroll
    for (int nt = 0; nt < BQ / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        int qi = nt * 8 + 2 * t + (e & 1), key = key0 + (e >> 1) * 8, q = q0 + qi;
        bool ok = key < p.t_k && q < p.t_q && (!p.causal || key <= q);
        float pr = ok ? exp2f(st[nt][e] * sl2 - sLse[qi]) : 0.f;
        st[nt][e] = pr;
        dpt[nt][e] = pr * (dpt[nt][e] - sDelta[qi]);
      }
    // dV += P^T dO and dK += dS^T Q (A operands straight from the accumulators).
#pragma unroll
    for (int kk = 0; kk < BQ / 16; ++kk) {
      uint32_t ap[4], as[4];
      ap[0] = pack2<T>(st[2 * kk][0], st[2 * kk][1]);
      ap[1] = pack2<T>(st[2 * kk][2], st[2 * kk][3]);
      ap[2] = pack2<T>(st[2 * kk + 1][0], st[2 * kk + 1][1]);
      ap[3] = pack2<T>(st[2 * kk + 1][2], st[2 * kk + 1][3]);
      as[0] = pack2<T>(dpt[2 * kk][0], dpt[2 * kk][1]);
      as[1] = pack2<T>(dpt[2 * kk][2], dpt[2 * kk][3]);
      as[2] = pack2<T>(dpt[2 * kk + 1][0], dpt[2 * kk + 1][1]);
      as[3] = pack2<T>(dpt[2 * kk + 1][2], dpt[2 * kk + 1][3]);
      if constexpr (VER >= 2) {
        const int off = (kk * 16 + (lm & 1) * 8 + lr) * LD + (lm >> 1) * 8;
#pragma unroll
        for (int dt = 0; dt < D / 8; dt += 2) {  // d-tiles dt and dt+1
          uint32_t bo[4], bq[4];
          ldsm_x4_trans(bo, cdO + off + dt * 8);
          ldsm_x4_trans(bq, cQ + off + dt * 8);
          mma16816<T>(dv[dt], ap, bo);
          mma16816<T>(dv[dt + 1], ap, bo + 2);
          mma16816<T>(dk[dt], as, bq);
          mma16816<T>(dk[dt + 1], as, bq + 2);
        }
      } else {
        const T* ok_ = cdO + (kk * 16 + 2 * t) * LD + g;
        const T* qk_ = cQ + (kk * 16 + 2 * t) * LD + g;
#pragma unroll
        for (int dt = 0; dt < D / 8; ++dt) {
          uint32_t bo[2], bq[2];
          bo[0] = pack_raw<T>(ok_[dt * 8], ok_[LD + dt * 8]);
          bo[1] = pack_raw<T>(ok_[8 * LD + dt * 8], ok_[9 * LD + dt * 8]);
          bq[0] = pack_raw<T>(qk_[dt * 8], qk_[LD + dt * 8]);
          bq[1] = pack_raw<T>(qk_[8 * LD + dt * 8], qk_[9 * LD + dt * 8]);
          mma16816<T>(dv[dt], ap, bo);
          mma16816<T>(dk[dt], as, bq);
        }
      }
      // Stash dS^T (keys x queries) for the dQ product below.
      *reinterpret_cast<uint32_t*>(sdS + (warp * 16 + g) * LDS + kk * 16 + 2 * t) = as[0];
      *reinterpret_cast<uint32_t*>(sdS + (warp * 16 + g + 8) * LDS + kk * 16 + 2 * t) = as[1];
      *reinterpret_cast<uint32_t*>(sdS + (warp * 16 + g) * LDS + kk * 16 + 2 * t + 8) = as[2];
      *reinterpret_cast<uint32_t*>(sdS + (warp * 16 + g + 8) * LDS + kk * 16 + 2 * t + 8) =
          as[3];
    }
    __syncthreads();  // the whole dS^T tile (every warp's keys) is in shared memory
    // dQ[qr..qr+16, dc..dc+kDw] += dS K over the block's KB keys; fp32 atomics to global.
    float dq[kDw / 8][4];
#pragma unroll
    for (int i = 0; i < kDw / 8; ++i) dq[i][0] = dq[i][1] = dq[i][2] = dq[i][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < KB / 16; ++kk) {
      if constexpr (VER >= 2) {
        uint32_t a[4];  // dS[q][key] = dS^T[key][q]: transposed load of the stored tile
        ldsm_x4_trans(a, sdS + (kk * 16 + (lm >> 1) * 8 + lr) * LDS + qr + (lm & 1) * 8);
        const T* kr = sK + (kk * 16 + (lm & 1) * 8 + lr) * LD + dc + (lm >> 1) * 8;
#pragma unroll
        for (int dt = 0; dt < kDw / 8; dt += 2) {
          uint32_t bk[4];
          ldsm_x4_trans(bk, kr + dt * 8);
          mma16816<T>(dq[dt], a, bk);
          mma16816<T>(dq[dt + 1], a, bk + 2);
        }
        continue;
      }
      const T* sk_ = sdS + (kk * 16 + 2 * t) * LDS + qr + g;  // dS[q][key] = dS^T[key][q]
      uint32_t a[4];
      a[0] = pack_raw<T>(sk_[0], sk_[LDS]);
      a[1] = pack_raw<T>(sk_[8], sk_[LDS + 8]);
      a[2] = pack_raw<T>(sk_[8 * LDS], sk_[9 * LDS]);
      a[3] = pack_raw<T>(sk_[8 * LDS + 8], sk_[9 * LDS + 8]);
      const T* kr = sK + (kk * 16 + 2 * t) * LD + dc + g;
#pragma unroll
      for (int dt = 0; dt < kDw / 8; ++dt) {
        uint32_t bk[2];
        bk[0] = pack_raw<T>(kr[dt * 8], kr[LD + dt * 8]);
        bk[1] = pack_raw<T>(kr[8 * LD + dt * 8], kr[9 * LD + dt * 8]);
        mma16816<T>(dq[dt], a, bk);
      }
    }
    atomic_add_tile<kDw / 8, D>(p.dq_accum + (bh * p.t_q + q0 + qr) * D + dc, p.t_q - q0 - qr,
                                g, t, dq);
  }
  // dK (times scale: S = scale * Q K^T) and dV for this block's keys.
  const int64_t base = ((int64_t)b * p.heads_kv + hk) * p.t_k;
  T* dK = static_cast<T*>(p.dk) + base * D;
  T* dV = static_cast<T*>(p.dv) + base * D;
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int key = key0 + i * 8;
    if (key >= p.t_k) continue;
    store_row<T, D / 8>(dK + (int64_t)key * D, t, dk, i, p.scale);
    store_row<T, D / 8>(dV + (int64_t)key * D, t, dv, i, 1.f);
  }
}

// acc[2][4] (32 rows x 32 columns) = A B^T over ksteps 16-wide k-steps: A's 32 rows and B's 32
// rows in shared memory (row stride LD), two k-steps per B load (v6 backward: S and dP). The
// k-loop stays rolled: unrolled, D=128 spilled 32 bytes instead of 12 (ptxas -v, sm_90).
template <typename T, int LD>
__device__ __forceinline__ void qk_tile(float (*acc)[4][4], const T* a, const T* b, int ksteps,
                                        int lm, int lr) {
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int nt = 0; nt < 4; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[mt][nt][e] = 0.f;
#pragma unroll 1
  for (int kk = 0; kk < ksteps; kk += 2) {
    uint32_t af[2][2][4];  // [k-step][m-tile]
#pragma unroll
    for (int ks = 0; ks < 2; ++ks)
#pragma unroll
      for (int mt = 0; mt < 2; ++mt)
        ldsm_x4(af[ks][mt],
                a + (mt * 16 + (lm & 1) * 8 + lr) * LD + (kk + ks) * 16 + (lm >> 1) * 8);
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
      uint32_t bf[4];  // b0,b1 of k-steps kk and kk+1
      ldsm_x4(bf, b + (nt * 8 + lr) * LD + kk * 16 + lm * 8);
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) {
        mma16816<T>(acc[mt][nt], af[0][mt], bf);
        mma16816<T>(acc[mt][nt], af[1][mt], bf + 2);
      }
    }
  }
}

// v6 backward (FA2's partition): a block owns 128 keys of one KV head (8 warps) and loops over
// 64-query tiles. Each product gets its own warp grid, so that every fragment loaded from shared
// memory feeds several mma: S = Q K^T and dP = dO V^T as 2 x 4 warps of 32 queries x 32 keys
// (0.5 ldmatrix.x4 per mma; v3: 0.75), P and dS go to shared memory, dV += P^T dO and
// dK += dS^T Q as 4 x 2 warps of 32 keys x D/2 dims (0.375; v3: 0.5), dQ = dS K as 2 x 4 warps of
// 32 queries x D/4 dims, added to the fp32 accumulator with atomics. Accumulators per thread:
// dK + dV 2 x 2 x D/16 x 4 floats (128 at D=128, as v3).
constexpr int kKB6 = 128, kBQ6 = 64, kWarps6 = 8, kThreads6 = kWarps6 * 32;

// v9 = v6 with kPrefetch: the Q / dO tiles (and lse / delta) double-buffered, the next tile's
// copies issued before this tile's products. v6 waits for each tile's copies right after issuing
// them, and with one block per SM (255 registers x 256 threads) no other block computes
// meanwhile (v4's double buffering gained nothing in the 4-warp kernel, whose copies other
// resident blocks hid). lse / delta of the next tile travel through two registers and reach
// shared memory at the end of the tile (a plain load stored at once would stall its warps).
// Shared memory: one more Q / dO pair (+34 KB at D=128).
template <typename T, int D, bool kPrefetch>
__global__ void __launch_bounds__(kThreads6) attn_bwd_kernel_v6(AttentionParams p) {
  constexpr int LD = D + 8, LDP = kKB6 + 8;  // +16 bytes per row: distinct banks for ldmatrix
  constexpr int kNd2 = D / 16, kNd4 = D / 32;  // 8-wide d-tiles per warp in dK/dV and in dQ
  constexpr int kBufs = kPrefetch ? 2 : 1;
  FASTLM_DYNAMIC_SMEM(smem_raw);
  T* sK = reinterpret_cast<T*>(smem_raw);
  T* sV = sK + kKB6 * LD;
  T* sQ0 = sV + kKB6 * LD;             // [kBufs] Q tiles, then [kBufs] dO tiles
  T* sdO0 = sQ0 + kBufs * kBQ6 * LD;
  T* sP = sdO0 + kBufs * kBQ6 * LD;  // P, queries x keys
  T* sdS = sP + kBQ6 * LDP;          // dS, queries x keys
  float* sLse0 = reinterpret_cast<float*>(sdS + kBQ6 * LDP);  // [kBufs][kBQ6]
  float* sDelta0 = sLse0 + kBufs * kBQ6;                        // [kBufs][kBQ6]
  const int b = blockIdx.z, hk = blockIdx.y, k0 = blockIdx.x * kKB6;
  const int group = p.heads_q / p.heads_kv;
  const auto [warp, g, t, lm, lr] = lane_layout();
  // Warp grids: S/dP (queries qa.., keys ka..), dK/dV (keys kb.., dims db..), dQ (qc.., dc..).
  const int qa = (warp / 4) * 32, ka = (warp % 4) * 32;
  const int kb = (warp % 4) * 32, db = (warp / 4) * (D / 2);
  const int qc = (warp % 2) * 32, dc = (warp / 2) * (D / 4);
  const T* K = head_base<T>(p.k, p.k_stride, b, hk);
  const T* V = head_base<T>(p.v, p.v_stride, b, hk);
  load_tile<T, D, LD, 3, kKB6, kThreads6>(sK, K + k0 * p.k_stride[2], p.k_stride[2], p.t_k - k0);
  load_tile<T, D, LD, 3, kKB6, kThreads6>(sV, V + k0 * p.v_stride[2], p.v_stride[2], p.t_k - k0);
  float dk[2][kNd2][4], dv[2][kNd2][4];
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int i = 0; i < kNd2; ++i)
#pragma unroll
      for (int e = 0; e < 4; ++e) dk[mt][i][e] = dv[mt][i][e] = 0.f;
  const float sl2 = p.scale * kLog2e;
  const int q_begin = p.causal ? (k0 / kBQ6) * kBQ6 : 0;  // earlier queries see none of the keys
  const int nq = (p.t_q - q_begin + kBQ6 - 1) / kBQ6;
  const int n_iter = group * nq;  // (query head of the group, query tile) pairs
  // Tile `it`: its query head and first query.
  auto head_of = [&](int it) { return hk * group + it / nq; };
  auto q0_of = [&](int it) { return q_begin + (it % nq) * kBQ6; };
  // The Q and dO copies (two cp.async groups) of query head h's tile at q0 into buffer `buf`.
  auto load_q_do = [&](int h, int q0, int buf) {
    load_tile<T, D, LD, 3, kBQ6, kThreads6>(
        sQ0 + buf * kBQ6 * LD, head_base<T>(p.q, p.q_stride, b, h) + q0 * p.q_stride[2],
        p.q_stride[2], p.t_q - q0);
    load_tile<T, D, LD, 3, kBQ6, kThreads6>(
        sdO0 + buf * kBQ6 * LD, head_base<T>(p.dout, p.do_stride, b, h) + q0 * p.do_stride[2],
        p.do_stride[2], p.t_q - q0);
  };
  // That tile's lse (log2 units; +inf past the end: P = 0) and delta for its query i.
  auto lse_delta = [&](int h, int q0, int i, float& lse, float& delta) {
    const int64_t row = ((int64_t)b * p.heads_q + h) * p.t_q + q0 + i;
    const bool ok = q0 + i < p.t_q;
    lse = ok ? p.lse[row] * kLog2e : INFINITY;
    delta = ok ? p.delta[row] : 0.f;
  };
  float next_lse = 0.f, next_delta = 0.f;  // kPrefetch: the next tile's, for thread i < kBQ6
  if constexpr (kPrefetch) {
    if (n_iter > 0) {
      load_q_do(head_of(0), q_begin, 0);
      if (threadIdx.x < kBQ6)
        lse_delta(head_of(0), q_begin, threadIdx.x, sLse0[threadIdx.x], sDelta0[threadIdx.x]);
    }
  }

  for (int it = 0; it < n_iter; ++it) {
    const int h = head_of(it), q0 = q0_of(it);
    const int64_t bh = (int64_t)b * p.heads_q + h;
    const int buf = kPrefetch ? it & 1 : 0;
    T* sQ = sQ0 + buf * kBQ6 * LD;
    T* sdO = sdO0 + buf * kBQ6 * LD;
    float* sLse = sLse0 + buf * kBQ6;
    float* sDelta = sDelta0 + buf * kBQ6;
    __syncthreads();  // every warp is done with the previous tile's sQ/sdO (dK/dV) and sdS (dQ)
    if constexpr (kPrefetch) {
      if (it + 1 < n_iter) {
        const int h1 = head_of(it + 1), q1 = q0_of(it + 1);
        load_q_do(h1, q1, buf ^ 1);  // into the previous tile's buffers
        if (threadIdx.x < kBQ6) lse_delta(h1, q1, threadIdx.x, next_lse, next_delta);
      } else {
        cp_async_commit();  // empty groups keep the wait count below uniform
        cp_async_commit();
      }
      cp_async_wait<2>();  // all but the two newest groups (the next tile's): this tile landed
    } else {
      load_q_do(h, q0, 0);
      for (int i = threadIdx.x; i < kBQ6; i += kThreads6) lse_delta(h, q0, i, sLse[i], sDelta[i]);
      cp_async_wait<0>();
    }
    __syncthreads();  // Q, dO, lse, delta (and K, V on the first pass) visible

    // S = Q K^T and dP = dO V^T: 32 queries x 32 keys per warp, two k-steps per K/V load; one
    // product after the other, so that only one operand pair's fragments is live at a time
    // (registers: dK + dV + S + dP = 192 floats at D=128).
    float s[2][4][4], dp[2][4][4];
    qk_tile<T, LD>(s, sQ + qa * LD, sK + ka * LD, D / 16, lm, lr);
    qk_tile<T, LD>(dp, sdO + qa * LD, sV + ka * LD, D / 16, lm, lr);
    // P = exp(S*scale - lse) (0 where masked), dS = P * (dP - delta), both to shared memory.
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int nt = 0; nt < 4; ++nt)
#pragma unroll
        for (int hi = 0; hi < 2; ++hi) {
          const int qi = qa + mt * 16 + g + hi * 8, ki = ka + nt * 8 + 2 * t;
          const int q = q0 + qi, key = k0 + ki;
          float pr[2], ds[2];
#pragma unroll
          for (int j = 0; j < 2; ++j) {
            const bool ok = key + j < p.t_k && (!p.causal || key + j <= q);
            pr[j] = ok ? exp2f(s[mt][nt][2 * hi + j] * sl2 - sLse[qi]) : 0.f;
            ds[j] = pr[j] * (dp[mt][nt][2 * hi + j] - sDelta[qi]);
          }
          *reinterpret_cast<uint32_t*>(sP + qi * LDP + ki) = pack2<T>(pr[0], pr[1]);
          *reinterpret_cast<uint32_t*>(sdS + qi * LDP + ki) = pack2<T>(ds[0], ds[1]);
        }
    __syncthreads();  // the whole P and dS tiles are in shared memory

    // dV += P^T dO and dK += dS^T Q: 32 keys x D/2 dims per warp, k-steps over the 64 queries.
#pragma unroll
    for (int kk = 0; kk < kBQ6 / 16; ++kk) {
      uint32_t ap[2][4], as[2][4];  // P^T / dS^T fragments (keys x queries): transposed loads
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) {
        const int off = (kk * 16 + (lm >> 1) * 8 + lr) * LDP + kb + mt * 16 + (lm & 1) * 8;
        ldsm_x4_trans(ap[mt], sP + off);
        ldsm_x4_trans(as[mt], sdS + off);
      }
      const int off = (kk * 16 + (lm & 1) * 8 + lr) * LD + db + (lm >> 1) * 8;
#pragma unroll
      for (int dt = 0; dt < kNd2; dt += 2) {  // d-tiles dt and dt+1
        uint32_t bo[4], bq[4];
        ldsm_x4_trans(bo, sdO + off + dt * 8);
        ldsm_x4_trans(bq, sQ + off + dt * 8);
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) {
          mma16816<T>(dv[mt][dt], ap[mt], bo);
          mma16816<T>(dv[mt][dt + 1], ap[mt], bo + 2);
          mma16816<T>(dk[mt][dt], as[mt], bq);
          mma16816<T>(dk[mt][dt + 1], as[mt], bq + 2);
        }
      }
    }
    // dQ += dS K: 32 queries x D/4 dims per warp, k-steps over the 128 keys; fp32 atomics.
    float dq[2][kNd4][4];
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int i = 0; i < kNd4; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) dq[mt][i][e] = 0.f;
#pragma unroll
    for (int kk = 0; kk < kKB6 / 16; ++kk) {
      uint32_t a[2][4];
#pragma unroll
      for (int mt = 0; mt < 2; ++mt)
        ldsm_x4(a[mt], sdS + (qc + mt * 16 + (lm & 1) * 8 + lr) * LDP + kk * 16 + (lm >> 1) * 8);
      const T* kr = sK + (kk * 16 + (lm & 1) * 8 + lr) * LD + dc + (lm >> 1) * 8;
#pragma unroll
      for (int dt = 0; dt < kNd4; dt += 2) {
        uint32_t bk[4];
        ldsm_x4_trans(bk, kr + dt * 8);
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) {
          mma16816<T>(dq[mt][dt], a[mt], bk);
          mma16816<T>(dq[mt][dt + 1], a[mt], bk + 2);
        }
      }
    }
    // (Not atomic_add_tile, nor float2 atomics: with either ptxas spills 24 bytes here instead
    // of 12, sm_90 D=128.)
    float* dqa = p.dq_accum + (bh * p.t_q + q0) * D;
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int dt = 0; dt < kNd4; ++dt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int row = qc + mt * 16 + g + (e >> 1) * 8, col = dc + dt * 8 + 2 * t + (e & 1);
          if (q0 + row < p.t_q) atomicAdd(dqa + row * D + col, dq[mt][dt][e]);
        }
    if constexpr (kPrefetch) {  // the next tile's lse / delta into the buffer its copies went to
      if (it + 1 < n_iter && threadIdx.x < kBQ6) {
        sLse0[(buf ^ 1) * kBQ6 + threadIdx.x] = next_lse;
        sDelta0[(buf ^ 1) * kBQ6 + threadIdx.x] = next_delta;
      }
    }
  }
  // dK (times scale: S = scale * Q K^T) and dV for this block's keys.
  const int64_t base = ((int64_t)b * p.heads_kv + hk) * p.t_k;
  T* dK = static_cast<T*>(p.dk) + base * D;
  T* dV = static_cast<T*>(p.dv) + base * D;
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int hi = 0; hi < 2; ++hi) {
      const int key = k0 + kb + mt * 16 + g + hi * 8;
      if (key >= p.t_k) continue;
      store_row<T, kNd2>(dK + (int64_t)key * D + db, t, dk[mt], hi, p.scale);
      store_row<T, kNd2>(dV + (int64_t)key * D + db, t, dv[mt], hi, 1.f);
    }
}

// v7 backward (sm_90a): wgmma, with FA2/FA3's split of the five products. A block of 2 warpgroups
// owns 128 keys of one KV head (64 per warpgroup) and loops over the query heads of its group and
// 64-query tiles (Q, dO, lse, delta double-buffered: the next tile's copy runs during this one's
// math). Per tile and warpgroup: S^T = K Q^T and dP^T = V dO^T (keys x queries, both operands in
// shared memory); P^T and dS^T in registers, where the accumulators are; dV += P^T dO and
// dK += dS^T Q with A from those registers and B = dO / Q read MN-major (trans-b); dS^T to shared
// memory; dQ += dS K for the 64 queries x this warpgroup's half of the columns (A = dS and B = K
// both MN-major), added to the fp32 dQ buffer with atomics. Registers per thread at D=128: dK, dV
// 64 each, S^T, dP^T 32 each, P^T, dS^T fragments 16 each, dQ 32.
constexpr int kKB7 = 128, kBQ7 = 64;

template <typename T, int D>
__global__ void __launch_bounds__(kThreads7, 1) attn_bwd_kernel_v7(AttentionParams p) {
#if defined(FASTLM_CUDA_EMU) || defined(__CUDA_ARCH_FEAT_SM90_ALL)
  // At D=128, P^T computed while dP^T is in flight needs 255 registers and spills 24 bytes.
  constexpr bool kSplitGroups = D == 64;
  FASTLM_DYNAMIC_SMEM(smem_raw);
  T* sK = reinterpret_cast<T*>(smem_raw);  // every tile chunk-planar (wgmma.cuh)
  T* sV = sK + kKB7 * D;
  T* sQdO = sV + kKB7 * D;               // [2 buffers][Q, dO], kBQ7 x D each
  T* sdS = sQdO + 4 * kBQ7 * D;          // dS^T, kKB7 keys x kBQ7 queries
  float* sLse = reinterpret_cast<float*>(sdS + kKB7 * kBQ7);  // [2 buffers][kBQ7], log2 units
  float* sDelta = sLse + 2 * kBQ7;                            // [2 buffers][kBQ7]
  const int b = blockIdx.z, hk = blockIdx.y, k0 = blockIdx.x * kKB7;
  const int group = p.heads_q / p.heads_kv;
  const auto [warp, g, t, lm, lr] = lane_layout();
  (void)lm, (void)lr;
  const int wg = warp / 4;
  const int krow = wg * 64 + (warp % 4) * 16 + g;  // the thread's key rows: krow, krow + 8
  const T* K = head_base<T>(p.k, p.k_stride, b, hk);
  const T* V = head_base<T>(p.v, p.v_stride, b, hk);
  load_tile_planar<T, D, kKB7, kThreads7>(sK, K + k0 * p.k_stride[2], p.k_stride[2], p.t_k - k0);
  load_tile_planar<T, D, kKB7, kThreads7>(sV, V + k0 * p.v_stride[2], p.v_stride[2], p.t_k - k0);
  const int q_begin = p.causal ? (k0 / kBQ7) * kBQ7 : 0;  // earlier queries see none of the keys
  const int nq = (p.t_q - q_begin + kBQ7 - 1) / kBQ7;
  const int n_iter = group * nq;  // (query head of the group, query tile) pairs
  // Tile `it` of Q and dO (cp.async) and its lse / delta (plain loads) into buffer `buf`.
  auto load_query_tile = [&](int it, int buf) {
    const int h = hk * group + it / nq, q0 = q_begin + (it % nq) * kBQ7;
    const int64_t bh = (int64_t)b * p.heads_q + h;
    T* sQ = sQdO + buf * 2 * kBQ7 * D;
    load_tile_planar<T, D, kBQ7, kThreads7>(
        sQ, head_base<T>(p.q, p.q_stride, b, h) + q0 * p.q_stride[2], p.q_stride[2], p.t_q - q0);
    load_tile_planar<T, D, kBQ7, kThreads7>(
        sQ + kBQ7 * D, head_base<T>(p.dout, p.do_stride, b, h) + q0 * p.do_stride[2],
        p.do_stride[2], p.t_q - q0);
    for (int i = threadIdx.x; i < kBQ7; i += kThreads7) {
      const bool ok = q0 + i < p.t_q;
      sLse[buf * kBQ7 + i] = ok ? p.lse[bh * p.t_q + q0 + i] * kLog2e : INFINITY;  // P = 0 past
      sDelta[buf * kBQ7 + i] = ok ? p.delta[bh * p.t_q + q0 + i] : 0.f;           // the end
    }
  };
  load_query_tile(0, 0);

  float dk[D / 8][4], dv[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) dk[i][e] = dv[i][e] = 0.f;
  const float sl2 = p.scale * kLog2e;
  // K and V as A of S^T / dP^T (this warpgroup's 64 keys, K-major over D); K as B of dQ (MN-major:
  // keys x this warpgroup's D/2 columns); dS^T as A of dQ (MN-major: queries x keys).
  const uint64_t desc_ka = desc_k_major(sK + wg * 64 * 8, kKB7, p.wgmma_swap);
  const uint64_t desc_va = desc_k_major(sV + wg * 64 * 8, kKB7, p.wgmma_swap);
  const uint64_t desc_kb = desc_mn_major(sK + wg * (D / 16) * kKB7 * 8, kKB7, p.wgmma_swap);
  const uint64_t desc_ds = desc_mn_major(sdS, kKB7, p.wgmma_swap);

  for (int it = 0; it < n_iter; ++it) {
    const int buf = it & 1;
    const int h = hk * group + it / nq, q0 = q_begin + (it % nq) * kBQ7;
    const int64_t bh = (int64_t)b * p.heads_q + h;
    cp_async_wait<0>();   // tile it (and K, V) copied by this thread
    fence_proxy_async();  // ... and visible to wgmma's reads
    __syncthreads();      // for every thread; every warpgroup done with tile it-1 (sdS included)
    const T* sQ = sQdO + buf * 2 * kBQ7 * D;
    const T* sdO = sQ + kBQ7 * D;
    const float* lse = sLse + buf * kBQ7;
    const float* delta = sDelta + buf * kBQ7;

    // S^T = K Q^T, dP^T = V dO^T (64 keys x 64 queries per warpgroup, k-steps over D). At D=64
    // two commit groups, so that P^T's exponentials run while dP^T is still on the tensor cores.
    float st[kBQ7 / 8][4], dpt[kBQ7 / 8][4];
    const uint64_t desc_q = desc_k_major(sQ, kBQ7, p.wgmma_swap);
    const uint64_t desc_do = desc_k_major(sdO, kBQ7, p.wgmma_swap);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk)
      wgmma_ss<T, kBQ7>(&st[0][0], desc_ka + ((kk * 2 * kKB7 * 16) >> 4),
                        desc_q + ((kk * 2 * kBQ7 * 16) >> 4), kk > 0);
    if constexpr (kSplitGroups) wgmma_commit();
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk)
      wgmma_ss<T, kBQ7>(&dpt[0][0], desc_va + ((kk * 2 * kKB7 * 16) >> 4),
                        desc_do + ((kk * 2 * kBQ7 * 16) >> 4), kk > 0);
    wgmma_commit();
    // The next tile's copies (into tile it-1's buffers) while S^T and dP^T run.
    if (it + 1 < n_iter) load_query_tile(it + 1, buf ^ 1);
    wgmma_wait<kSplitGroups ? 1 : 0>();  // S^T landed (dP^T may still run)
    fence_operands<kBQ7 / 2>(&st[0][0]);

    // P^T = exp(S^T * scale - lse), 0 where masked; split groups: in place while dP^T runs.
    const int t2 = 2 * t;  // (a lambda may not capture the structured binding t before C++20)
    auto p_of = [&](float x, int nt, int e) {
      const int key = k0 + krow + (e >> 1) * 8, qi = nt * 8 + t2 + (e & 1);
      const bool ok = key < p.t_k && (!p.causal || key <= q0 + qi);
      return ok ? exp2f(x * sl2 - lse[qi]) : 0.f;
    };
    if constexpr (kSplitGroups) {
#pragma unroll
      for (int nt = 0; nt < kBQ7 / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) st[nt][e] = p_of(st[nt][e], nt, e);
      wgmma_wait<0>();  // dP^T landed
    }
    fence_operands<kBQ7 / 2>(&dpt[0][0]);
    // P^T and dS^T = P^T * (dP^T - delta) as A fragments of dV / dK (rows = keys, k = queries),
    // and dS^T to shared memory for dQ.
    uint32_t pf[kBQ7 / 16][4], sf[kBQ7 / 16][4];
#pragma unroll
    for (int nt = 0; nt < kBQ7 / 8; ++nt)
#pragma unroll
      for (int hi = 0; hi < 2; ++hi) {
        const int qi = nt * 8 + 2 * t, i = (nt % 2) * 2 + hi;
        float pr[2], ds[2];
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          pr[j] = kSplitGroups ? st[nt][2 * hi + j] : p_of(st[nt][2 * hi + j], nt, 2 * hi + j);
          ds[j] = pr[j] * (dpt[nt][2 * hi + j] - delta[qi + j]);
        }
        pf[nt / 2][i] = pack2<T>(pr[0], pr[1]);
        sf[nt / 2][i] = pack2<T>(ds[0], ds[1]);
        store_for_wgmma(reinterpret_cast<uint32_t*>(sdS + planar(krow + hi * 8, qi, kKB7)),
                        sf[nt / 2][i]);
      }

    // dV += P^T dO, dK += dS^T Q (k-steps over the 64 queries; B = dO / Q, MN-major).
    const uint64_t desc_dob = desc_mn_major(sdO, kBQ7, p.wgmma_swap);
    const uint64_t desc_qb = desc_mn_major(sQ, kBQ7, p.wgmma_swap);
    fence_operands<D / 2>(&dv[0][0]);
    fence_operands<D / 2>(&dk[0][0]);
    fence_operands<kBQ7 / 4>(&pf[0][0]);
    fence_operands<kBQ7 / 4>(&sf[0][0]);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kBQ7 / 16; ++kk)
      wgmma_rs_tb<T, D>(&dv[0][0], pf[kk], desc_dob + ((kk * 16 * 16) >> 4), 1);
#pragma unroll
    for (int kk = 0; kk < kBQ7 / 16; ++kk)
      wgmma_rs_tb<T, D>(&dk[0][0], sf[kk], desc_qb + ((kk * 16 * 16) >> 4), 1);
    wgmma_commit();
    fence_proxy_async();  // this thread's dS^T stores visible to wgmma
    __syncthreads();      // every thread's

    // dQ (this tile's 64 queries x this warpgroup's D/2 columns) = dS K, k-steps over 128 keys.
    float dq[D / 16][4];
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kKB7 / 16; ++kk)
      wgmma_ss_tab<T, D / 2>(&dq[0][0], desc_ds + ((kk * 16 * 16) >> 4),
                             desc_kb + ((kk * 16 * 16) >> 4), kk > 0);
    wgmma_commit();
    wgmma_wait<0>();  // dV, dK and dQ complete
    fence_operands<D / 2>(&dv[0][0]);
    fence_operands<D / 2>(&dk[0][0]);
    fence_operands<D / 4>(&dq[0][0]);
    const int q = q0 + (warp % 4) * 16;  // this warp's first query of the tile
    atomic_add_tile<D / 16, D>(p.dq_accum + (bh * p.t_q + q) * D + wg * (D / 2), p.t_q - q, g,
                               t, dq);
  }
  // dK (times scale: S = scale * Q K^T) and dV for this block's keys.
  const int64_t base = ((int64_t)b * p.heads_kv + hk) * p.t_k;
  T* dK = static_cast<T*>(p.dk) + base * D;
  T* dV = static_cast<T*>(p.dv) + base * D;
#pragma unroll
  for (int hi = 0; hi < 2; ++hi) {
    const int key = k0 + krow + hi * 8;
    if (key >= p.t_k) continue;
    store_row<T, D / 8>(dK + (int64_t)key * D, t, dk, hi, p.scale);
    store_row<T, D / 8>(dV + (int64_t)key * D, t, dv, hi, 1.f);
  }
#elif defined(__CUDA_ARCH__)
  __trap();  // a build without sm_90a code for this GPU: fail, never a silent no-op
#endif
}

template <typename T>
__global__ void attn_dq_convert_kernel(const float* acc, T* dq, int64_t n, float scale) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x)
    dq[i] = from_float<T>(acc[i] * scale);
}

// Launches one of the kernels above with `smem` bytes of dynamic shared memory (over the default
// 48 KB, so the attribute is raised first).
template <typename Kernel>
void launch_with_smem(Kernel kernel, dim3 grid, int threads, size_t smem, cudaStream_t stream,
                      const AttentionParams& p) {
  FASTLM_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  FASTLM_LAUNCH(kernel, grid, threads, smem, stream)(p);
  FASTLM_LAUNCH_CHECK();
}

template <typename T, int D>
void forward_impl(const AttentionParams& p, cudaStream_t stream) {
  if (p.version == 7 || p.version == 8) {
    // v7 and v8, 128 keys per tile: S = Q K^T reads A (Q, 2 KB) and B (K, 4 KB) from shared
    // memory per k16 step of 64 x 128 x 16 x 2 FLOP per warpgroup, ~95 B/clk at the tensor
    // cores' peak rate (~4096 FLOP/clk/SM), under the 128 B/clk of shared memory; 64-key tiles
    // would need 128. Registers (sm_90a): v7 190 at D=128, 170 at D=64; v8 241 / 184. Shared
    // memory 160 / 80 KB.
    constexpr int BC = 128;
    size_t smem = (kBr7 + 4 * BC) * D * sizeof(T);
    dim3 grid((p.t_q + kBr7 - 1) / kBr7, p.heads_q, p.batch);
    launch_with_smem(p.version == 7 ? attn_fwd_kernel_v7<T, D, BC> : attn_fwd_kernel_v8<T, D, BC>,
                     grid, kThreads7, smem, stream, p);
    return;
  }
  if (p.version >= 5) {
    constexpr int BC = D == 128 ? 32 : 64;
    size_t smem = (kBr5 + 2 * BC) * (D + 8) * sizeof(T);
    dim3 grid((p.t_q + kBr5 - 1) / kBr5, p.heads_q, p.batch);
    launch_with_smem(attn_fwd_kernel_v5<T, D, BC>, grid, kThreads, smem, stream, p);
    return;
  }
  size_t smem = 3 * kBr * (D + 8) * sizeof(T);
  auto kernel = p.version == 1   ? attn_fwd_kernel<T, D, 1>
                : p.version == 2 ? attn_fwd_kernel<T, D, 2>
                : p.version == 3 ? attn_fwd_kernel<T, D, 3>
                                 : attn_fwd_kernel<T, D, 4>;
  dim3 grid((p.t_q + kBr - 1) / kBr, p.heads_q, p.batch);
  launch_with_smem(kernel, grid, kThreads, smem, stream, p);
}

// The backward's main kernel: v1-v5 (attn_bwd_kernel; v5 = v3's code with 8 warps, 128 keys per
// block; v1-v4: 4 warps, 64 keys) or v6 (attn_bwd_kernel_v6).
template <typename T, int D>
void launch_bwd_main(const AttentionParams& p, cudaStream_t stream) {
  if (p.version == 7 || p.version == 8) {
    size_t smem =
        (2 * kKB7 * D + 4 * kBQ7 * D + kKB7 * kBQ7) * sizeof(T) + 4 * kBQ7 * sizeof(float);
    dim3 grid((p.t_k + kKB7 - 1) / kKB7, p.heads_kv, p.batch);
    launch_with_smem(attn_bwd_kernel_v7<T, D>, grid, kThreads7, smem, stream, p);
    return;
  }
  if (p.version == 6 || p.version == 9) {
    const int bufs = p.version == 9 ? 2 : 1;  // Q / dO / lse / delta buffers
    size_t smem =
        (2 * kKB6 * (D + 8) + 2 * bufs * kBQ6 * (D + 8) + 2 * kBQ6 * (kKB6 + 8)) * sizeof(T) +
        2 * bufs * kBQ6 * sizeof(float);
    dim3 grid((p.t_k + kKB6 - 1) / kKB6, p.heads_kv, p.batch);
    launch_with_smem(p.version == 9 ? attn_bwd_kernel_v6<T, D, true>
                                    : attn_bwd_kernel_v6<T, D, false>,
                     grid, kThreads6, smem, stream, p);
    return;
  }
  constexpr int BQ = D == 128 ? 32 : 64;
  const int ver = p.version >= 5 ? 3 : p.version;
  const int warps = p.version >= 5 ? 8 : kWarps, keys = warps * 16;
  const int bufs = ver >= 4 ? 2 : 1;
  size_t smem = (2 * keys * (D + 8) + 2 * bufs * BQ * (D + 8) + keys * (BQ + 8)) * sizeof(T) +
                2 * BQ * sizeof(float);
  auto kernel = p.version >= 5 ? attn_bwd_kernel<T, D, BQ, 3, 8>
                : ver == 1     ? attn_bwd_kernel<T, D, BQ, 1>
                : ver == 2     ? attn_bwd_kernel<T, D, BQ, 2>
                : ver == 3     ? attn_bwd_kernel<T, D, BQ, 3>
                               : attn_bwd_kernel<T, D, BQ, 4>;
  dim3 grid((p.t_k + keys - 1) / keys, p.heads_kv, p.batch);
  launch_with_smem(kernel, grid, warps * 32, smem, stream, p);
}

template <typename T, int D>
void backward_impl(const AttentionParams& p, cudaStream_t stream) {
  const int64_t rows = (int64_t)p.batch * p.heads_q * p.t_q;
  FASTLM_CUDA_CHECK(cudaMemsetAsync(p.dq_accum, 0, rows * D * sizeof(float), stream));
  auto delta_kernel = attn_delta_kernel<T, D>;
  FASTLM_LAUNCH(delta_kernel, (rows + 7) / 8, 256, 0, stream)(p);
  FASTLM_LAUNCH_CHECK();
  launch_bwd_main<T, D>(p, stream);
  int blocks = static_cast<int>(std::min<int64_t>((rows * D + 255) / 256, 65535));
  FASTLM_LAUNCH(attn_dq_convert_kernel<T>, blocks, 256, 0, stream)(
      p.dq_accum, static_cast<T*>(p.dq), rows * D, p.scale);
  FASTLM_LAUNCH_CHECK();
}

void check_params(const AttentionParams& p) {
  if (p.batch <= 0 || p.heads_q <= 0 || p.heads_kv <= 0 || p.heads_q % p.heads_kv != 0 ||
      p.t_q <= 0 || p.t_k <= 0 || (p.causal && p.t_q != p.t_k))
    throw std::invalid_argument("attention: bad sizes (heads_q % heads_kv, causal needs Tq == Tk)");
  if (p.head_dim != 64 && p.head_dim != 128)
    throw std::invalid_argument("attention: head_dim must be 64 or 128");
  if (p.dtype != kBFloat16 && p.dtype != kFloat16)
    throw std::invalid_argument("attention: dtype must be bfloat16 or float16");
  if (p.version < 1 || p.version > 9)
    throw std::invalid_argument("attention: kernel version must be 1 to 9");
}

}  // namespace

bool wgmma_supported() {
#if defined(FASTLM_CUDA_EMU)
  return true;
#elif defined(FASTLM_SM90A)
  int dev = 0, major = 0, minor = 0;  // no device (or a broken one): false, not an error
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return major == 9 && minor == 0;
#else
  return false;
#endif
}

namespace {

// Versions 7 and 8 (forward and backward) use wgmma.
void check_wgmma(const AttentionParams& p) {
  if ((p.version == 7 || p.version == 8) && !wgmma_supported())
    throw std::invalid_argument(
        "attention: kernel version " + std::to_string(p.version) +
        " uses wgmma: it needs an sm_90 GPU (H100/H200) and fastlm._cuda built for sm_90a "
        "(CMAKE_CUDA_ARCHITECTURES containing 90a)");
}

}  // namespace

void attention_forward(const AttentionParams& p, cudaStream_t stream) {
  check_params(p);
  check_wgmma(p);
  if (p.dtype == kBFloat16)
    p.head_dim == 64 ? forward_impl<__nv_bfloat16, 64>(p, stream)
                     : forward_impl<__nv_bfloat16, 128>(p, stream);
  else
    p.head_dim == 64 ? forward_impl<__half, 64>(p, stream) : forward_impl<__half, 128>(p, stream);
}

void attention_backward(const AttentionParams& p, cudaStream_t stream) {
  check_params(p);
  check_wgmma(p);
  if (p.dtype == kBFloat16)
    p.head_dim == 64 ? backward_impl<__nv_bfloat16, 64>(p, stream)
                     : backward_impl<__nv_bfloat16, 128>(p, stream);
  else
    p.head_dim == 64 ? backward_impl<__half, 64>(p, stream)
                     : backward_impl<__half, 128>(p, stream);
}

}  // namespace cuda
}  // namespace fastlm
