// Host entry points of the CUDA kernels (csrc/kernels/*.cu), called by csrc/cuda/module.cu.
#pragma once
#ifdef FASTLM_CUDA_EMU
#include "emu/cuda_emu.h"
#else
#include <cuda_runtime.h>
#endif

#include <cstdint>

#include "kernels/cross_entropy.h"

namespace fastlm {
namespace cuda {

// Cross-entropy over a logits chunk on the device (see cross_entropy.h for the math). logits is
// rows x ld of dtype (DType), overwritten with the scaled dlogits when write_grad. version: the
// kernel version (cross_entropy.cu header), 1 or 2.
void cross_entropy_chunk(void* logits, int dtype, const int64_t* target,
                         const CrossEntropyParams& p, const float* grad_scale,
                         float grad_scale_scalar, float* loss, float* lse, bool write_grad,
                         int version, cudaStream_t stream);

// Flash attention. q: (B, Hq, Tq, D), k/v: (B, Hkv, Tk, D) with the given element strides for
// batch, head and time (last dim contiguous); o, dout, dq: (B, Hq, Tq, D) and dk, dv: (B, Hkv,
// Tk, D) contiguous; lse, delta: (B, Hq, Tq) fp32; dq_accum: (B, Hq, Tq, D) fp32 scratch.
struct AttentionParams {
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  void* o = nullptr;
  float* lse = nullptr;
  const void* dout = nullptr;  // backward only (strided like q: do_strides)
  void* dq = nullptr;
  void* dk = nullptr;
  void* dv = nullptr;
  float* dq_accum = nullptr;
  float* delta = nullptr;
  int64_t q_stride[3] = {0, 0, 0};  // batch, head, time (elements)
  int64_t k_stride[3] = {0, 0, 0};
  int64_t v_stride[3] = {0, 0, 0};
  int64_t do_stride[3] = {0, 0, 0};
  int batch = 0, heads_q = 0, heads_kv = 0, t_q = 0, t_k = 0, head_dim = 0;
  float scale = 1.f;
  bool causal = false;
  int dtype = 1;    // kBFloat16 or kFloat16
  int version = 2;  // kernel version, 1-9 (attention.cu header)
  int wgmma_swap = 0;  // v7 / v8: descriptor offsets swapped (wgmma.cuh, desc_k_major)
};

void attention_forward(const AttentionParams& p, cudaStream_t stream);
// Whether attention versions 7 and 8 (wgmma) can run on the current device: an sm_90 GPU and
// this module built for sm_90a (FASTLM_SM90A, set by CMakeLists.txt). Always true in the emulator.
bool wgmma_supported();
// tests: D (64 x n, fp32) = A (64 x 32) B (32 x n) through wgmma, both row-major, in the operand
// forms of attention v7 (mode 0: shared x shared; 1: registers x shared, trans-b; 2: shared x
// shared, trans-a and trans-b; 3-5: 0-2 with the descriptors' two byte offsets swapped).
void wgmma_probe(const void* a, const void* b, float* d, int n, int mode, int dtype,
                 cudaStream_t stream);
void attention_backward(const AttentionParams& p, cudaStream_t stream);

}  // namespace cuda
}  // namespace fastlm
