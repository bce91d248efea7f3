// Text -> token ids: native pre-tokenization followed by BPE on each piece (tiktoken's encode_ordinary).
#include "tokenizer/encode_text.h"

namespace fastlm::tokenizer {

void encode_text_into(const BpeEncoder& encoder, std::string_view utf8, Pattern pattern,
                      std::vector<uint32_t>& out) {
  out.reserve(out.size() + utf8.size() / 4);  // ~4 bytes per token on prose: one growth at most
  for_each_piece(utf8, pattern, [&](size_t begin, size_t end) {
    encoder.encode_piece_into(utf8.substr(begin, end - begin), out);
  });
}

}  // namespace fastlm::tokenizer
