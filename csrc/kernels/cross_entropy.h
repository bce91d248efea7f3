// Cross-entropy on one chunk of logits: loss, logsumexp and (in place) dlogits in one pass per row.
//
// Shared by the CPU kernel (cross_entropy.cpp) and the CUDA kernel (cross_entropy.cu): the per-row
// math is written once here as FASTLM_HD functions so the two cannot drift.
//
// For a row z (after the optional soft-cap z = c*tanh(raw/c)) with target t:
//   lse  = log(sum_j exp z_j)
//   loss = lse - (1-eps)*z_t - (eps/V)*sum_j z_j + zl*lse^2          (0 for ignored rows)
//   dloss/dz_j = p_j*(1 + 2*zl*lse) - eps/V - (1-eps)*[j==t],   p_j = exp(z_j - lse)
//   dloss/draw_j = dloss/dz_j * (1 - (z_j/c)^2)                    (soft-cap chain rule)
// The gradient written over the logits is g_r * dloss/draw, where g_r is the row's grad scale
// (1/n_valid for mean, 1 for sum, grad_output[r] for reduction='none'); ignored rows get zeros.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define FASTLM_HD __host__ __device__ __forceinline__
#else
#define FASTLM_HD inline
#endif

namespace fastlm {

struct CrossEntropyParams {
  int64_t rows = 0;             // rows in this chunk
  int64_t vocab = 0;            // V: columns of each row
  int64_t ld = 0;               // elements between consecutive rows of the logits (>= vocab)
  int64_t ignore_index = -100;  // target value whose row contributes no loss and no gradient
  float label_smoothing = 0.f;  // eps in [0, 1]
  float z_loss = 0.f;           // zl: weight of lse^2 (PaLM's z-loss), 0 = off
  float softcap = 0.f;          // c: logits become c*tanh(logits/c) first, 0 = off
};

// Loss of one row from its statistics (see the header comment).
FASTLM_HD float ce_row_loss(float lse, float z_t, float sum_z, const CrossEntropyParams& p) {
  float eps = p.label_smoothing;
  return lse - (1.f - eps) * z_t - (eps / static_cast<float>(p.vocab)) * sum_z +
         p.z_loss * lse * lse;
}

// dloss/draw_j for a non-target column, given p_j = exp(z_j - lse) and the capped logit z_j.
// CAP = false: compiled for p.softcap == 0 (no soft-cap code; CUDA v3 without a soft-cap).
template <bool CAP = true>
FASTLM_HD float ce_row_grad(float prob, float z, float lse, const CrossEntropyParams& p) {
  float d = prob * (1.f + 2.f * p.z_loss * lse) - p.label_smoothing / static_cast<float>(p.vocab);
  if (CAP && p.softcap > 0.f) {
    float u = z / p.softcap;
    d *= 1.f - u * u;
  }
  return d;
}

// The extra term of the target column: -(1-eps) * (soft-cap factor at z_t).
template <bool CAP = true>
FASTLM_HD float ce_target_term(float z_t, const CrossEntropyParams& p) {
  float d = -(1.f - p.label_smoothing);
  if (CAP && p.softcap > 0.f) {
    float u = z_t / p.softcap;
    d *= 1.f - u * u;
  }
  return d;
}

// CPU kernel. logits: rows x ld floats (first vocab columns used), overwritten with
// grad_scale[r] (or grad_scale_scalar when grad_scale is null) * dloss/dlogits when write_grad.
// target: rows int64 (each in [0, vocab) or == ignore_index). loss, lse: rows floats out
// (loss 0 and lse still computed for ignored rows). Throws ValueError on a bad target.
void cross_entropy_chunk_cpu(float* logits, const int64_t* target, const CrossEntropyParams& p,
                             const float* grad_scale, float grad_scale_scalar, float* loss,
                             float* lse, bool write_grad, int num_threads);

}  // namespace fastlm
