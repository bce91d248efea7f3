// Counting pre-tokenized pieces over many documents in parallel (the BPE trainer's input).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <utility>
#include <vector>

#include "tokenizer/pretokenize.h"

namespace fastlm::tokenizer {

// Distinct pieces of all `texts` with their counts, sorted by bytes (unsigned). The views point
// into `texts`, which must outlive the result. Threads run over documents (0 = all cores); the
// result does not depend on the thread count.
std::vector<std::pair<std::string_view, uint64_t>> count_pieces(const std::vector<std::string_view>& texts,
                                                                 Pattern pattern, int num_threads);

}  // namespace fastlm::tokenizer
