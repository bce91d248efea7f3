// BPE trainer: weighted pieces -> merges, with incremental pair counts and a lazy max-heap.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string_view>
#include <utility>
#include <vector>

namespace fastlm::tokenizer {

// Learns up to vocab_size - 256 merges from distinct pieces (bytes) and their counts. Merge i creates token
// 256 + i = left + right. Each step takes the adjacent pair with the highest weighted count (overlapping
// positions all count), ties -> smallest (left id, right id); occurrences are replaced left to right without
// overlap ("aaa" -> "Xa"). Stops when no pair is left or the best count < min_frequency. Zero-count pieces
// are ignored. Same result as tests/reference_bpe.py:train. `progress(merges_done)` is called every
// `progress_every` merges when both are set. Throws ValueError on bad arguments.
std::vector<std::pair<uint32_t, uint32_t>> bpe_train(
    const std::vector<std::string_view>& pieces, const std::vector<uint64_t>& counts, size_t vocab_size,
    uint64_t min_frequency, const std::function<void(size_t)>& progress = nullptr, size_t progress_every = 0);

}  // namespace fastlm::tokenizer
