// Control-character removal and whitespace normalization in one native pass over a document.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "text/scan.h"

namespace fastlm {
namespace text {

struct CleanOptions {
  bool remove_control = true;  // drop Cc except \t \n \r, and U+FEFF
  bool whitespace = true;      // line breaks, space runs, trailing spaces, blank lines, trim
  bool keep_indentation = true;  // leading spaces/tabs of a line are kept verbatim
  int max_blank_lines = 2;       // longer runs of empty lines are cut to this many
};

// Output of one document: code units of the same kind as the input (removing characters and
// writing ASCII never needs a wider kind). `kind` tells which vector is used.
struct CleanResult {
  int kind = 1;
  std::basic_string<uint8_t> u8;
  std::basic_string<uint16_t> u16;
  std::basic_string<uint32_t> u32;
};

// True for the code points the control step removes.
inline bool is_removed_control(uint32_t c) {
  return (c < 0x20 && c != '\t' && c != '\n' && c != '\r') || (c >= 0x7F && c <= 0x9F) ||
         c == 0xFEFF;
}

CleanResult clean_text(const CodeUnits& s, const CleanOptions& opt);

std::vector<CleanResult> clean_batch(const std::vector<CodeUnits>& docs, const CleanOptions& opt,
                                     int num_threads);

}  // namespace text
}  // namespace fastlm
