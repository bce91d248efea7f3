// Linear softmax classifier over hashed n-gram features: AdaGrad training and batch prediction.
//
// Model: for a document with feature ids f_1..f_n (features.h), logits
//   z_c = bias[c] + (1/n) * sum_i W[f_i, c]       (z = bias for a document with no features)
// and probabilities softmax(z). W is row-major [buckets, num_classes] float32. Binary tasks use
// two classes (softmax over two logits equals a logistic regression on their difference).
// Reference for prediction: tests/reference_classifier.py.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

#include "classify/features.h"

namespace fastlm::classify {

struct TrainConfig {
  int epochs = 5;
  float lr = 0.2f;     // AdaGrad base step
  float l2 = 0.0f;     // L2 penalty added to the gradient of each touched weight
  uint64_t seed = 0;   // order of examples in each epoch
  int num_threads = 1; // 1: deterministic; >1: hogwild (lock-free racy updates, as fastText)
};

// Trains W [buckets * k] and bias [k] in place (the caller zero-initializes them, or passes a
// model to continue from). labels[i] in [0, k). Returns the mean cross-entropy of each epoch
// (measured on the fly, before each example's update).
std::vector<double> train(const std::vector<std::string_view>& texts, const int32_t* labels, int k,
                          const FeatureConfig& fcfg, const TrainConfig& tcfg, float* W, float* bias);

// Writes probabilities [texts.size() * k] (row per document).
void predict_proba(const std::vector<std::string_view>& texts, const FeatureConfig& fcfg,
                   const float* W, const float* bias, int k, float* out, int num_threads);

}  // namespace fastlm::classify
