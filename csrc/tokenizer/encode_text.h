// Text -> token ids: native pre-tokenization followed by BPE on each piece (tiktoken's encode_ordinary).
#pragma once
#include <cstdint>
#include <string_view>
#include <vector>

#include "tokenizer/bpe_encode.h"
#include "tokenizer/pretokenize.h"

namespace fastlm::tokenizer {

// Appends the ids of `utf8` to `out`: each piece of `pattern` encoded on its own, in order.
void encode_text_into(const BpeEncoder& encoder, std::string_view utf8, Pattern pattern,
                      std::vector<uint32_t>& out);

}  // namespace fastlm::tokenizer
