// BPE trainer: pair -> (count, word ids) index, lazy max-heap, and local updates of the merged words only.
#include "tokenizer/bpe_train.h"

#include <queue>
#include <string>
#include <unordered_map>

#include "common/error.h"

namespace fastlm::tokenizer {
namespace {

inline uint64_t pair_key(uint32_t left, uint32_t right) { return (uint64_t{left} << 32) | right; }

// Heap entry: higher count first, then smaller (left, right), i.e. smaller key.
struct HeapEntry {
  uint64_t count;
  uint64_t key;
  bool operator<(const HeapEntry& o) const {  // "lower priority than o"
    if (count != o.count) return count < o.count;
    return key > o.key;
  }
};

struct PairInfo {
  uint64_t count = 0;
  std::vector<uint32_t> words;  // words that held the pair at some point (may be stale or repeated)
};

class Trainer {
 public:
  Trainer(const std::vector<std::string_view>& pieces, const std::vector<uint64_t>& counts) {
    for (size_t i = 0; i < pieces.size(); ++i) {
      if (counts[i] == 0 || pieces[i].size() < 2) continue;  // no pairs: never changes the result
      std::vector<uint32_t> w(pieces[i].size());
      for (size_t j = 0; j < w.size(); ++j) w[j] = static_cast<unsigned char>(pieces[i][j]);
      words_.push_back(std::move(w));
      weights_.push_back(counts[i]);
    }
    visited_.assign(words_.size(), UINT32_MAX);
    for (uint32_t wi = 0; wi < words_.size(); ++wi) {
      const auto& w = words_[wi];
      for (size_t j = 0; j + 1 < w.size(); ++j) add(pair_key(w[j], w[j + 1]), wi, weights_[wi]);
    }
    for (auto& kv : pairs_) heap_.push({kv.second.count, kv.first});
    touched_.clear();
  }

  // Pops the best live pair: (key, count), or false when none is left.
  bool best(uint64_t* key, uint64_t* count) {
    while (!heap_.empty()) {
      HeapEntry top = heap_.top();
      heap_.pop();
      auto it = pairs_.find(top.key);
      if (it == pairs_.end() || it->second.count == 0) continue;
      if (it->second.count != top.count) {  // stale: re-push with the current count
        if (it->second.count < top.count) heap_.push({it->second.count, top.key});
        continue;  // a higher current count already has its own entry
      }
      *key = top.key;
      *count = top.count;
      return true;
    }
    return false;
  }

  // Replaces (left, right) by new_id in every word holding it, adjusting the neighbouring pair counts.
  void merge(uint64_t key, uint32_t new_id, uint32_t stamp) {
    const uint32_t left = static_cast<uint32_t>(key >> 32), right = static_cast<uint32_t>(key);
    std::vector<uint32_t> holders = std::move(pairs_[key].words);
    pairs_.erase(key);
    for (uint32_t wi : holders) {
      if (visited_[wi] == stamp) continue;
      visited_[wi] = stamp;
      merge_word(wi, left, right, new_id);
    }
    for (uint64_t k : touched_) {
      auto it = pairs_.find(k);
      if (it != pairs_.end() && it->second.count > 0) heap_.push({it->second.count, k});
    }
    touched_.clear();
  }

 private:
  void add(uint64_t key, uint32_t wi, uint64_t weight) {
    PairInfo& p = pairs_[key];
    p.count += weight;
    if (p.words.empty() || p.words.back() != wi) p.words.push_back(wi);
    touched_.push_back(key);
  }
  void sub(uint64_t key, uint64_t weight) {
    auto it = pairs_.find(key);
    if (it != pairs_.end()) it->second.count -= weight;  // the merged pair itself is already erased
  }

  void merge_word(uint32_t wi, uint32_t left, uint32_t right, uint32_t new_id) {
    std::vector<uint32_t>& w = words_[wi];
    const uint64_t weight = weights_[wi];
    size_t out = 0, i = 0;
    const size_t n = w.size();
    while (i < n) {
      if (i + 1 < n && w[i] == left && w[i + 1] == right) {
        if (out > 0) {  // the output's last symbol may already be a new token: its +1 is undone here
          sub(pair_key(w[out - 1], left), weight);
          add(pair_key(w[out - 1], new_id), wi, weight);
        }
        if (i + 2 < n) {
          sub(pair_key(right, w[i + 2]), weight);
          add(pair_key(new_id, w[i + 2]), wi, weight);
        }
        w[out++] = new_id;
        i += 2;
      } else {
        w[out++] = w[i++];
      }
    }
    w.resize(out);
  }

  std::vector<std::vector<uint32_t>> words_;
  std::vector<uint64_t> weights_;
  std::vector<uint32_t> visited_;
  std::unordered_map<uint64_t, PairInfo> pairs_;
  std::priority_queue<HeapEntry> heap_;
  std::vector<uint64_t> touched_;
};

}  // namespace

std::vector<std::pair<uint32_t, uint32_t>> bpe_train(const std::vector<std::string_view>& pieces,
                                                     const std::vector<uint64_t>& counts, size_t vocab_size,
                                                     uint64_t min_frequency,
                                                     const std::function<void(size_t)>& progress,
                                                     size_t progress_every) {
  check(pieces.size() == counts.size(), "bpe_train: pieces and counts differ in length (" +
                                            std::to_string(pieces.size()) + " vs " +
                                            std::to_string(counts.size()) + ")");
  check(vocab_size >= 256, "bpe_train: vocab_size must be >= 256, got " + std::to_string(vocab_size));
  check(vocab_size <= (size_t{1} << 31), "bpe_train: vocab_size too large: " + std::to_string(vocab_size));
  std::vector<std::pair<uint32_t, uint32_t>> merges;
  Trainer trainer(pieces, counts);
  const size_t wanted = vocab_size - 256;
  while (merges.size() < wanted) {
    uint64_t key = 0, count = 0;
    if (!trainer.best(&key, &count) || count < min_frequency) break;
    const uint32_t new_id = static_cast<uint32_t>(256 + merges.size());
    trainer.merge(key, new_id, static_cast<uint32_t>(merges.size()));
    merges.emplace_back(static_cast<uint32_t>(key >> 32), static_cast<uint32_t>(key));
    if (progress && progress_every > 0 && merges.size() % progress_every == 0) progress(merges.size());
  }
  return merges;
}

}  // namespace fastlm::tokenizer
