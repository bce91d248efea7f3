// One-pass state machine for control removal + whitespace normalization (reference:
// tests/reference_text.py::clean_reference).
#include "text/clean.h"

#include "common/error.h"
#include "common/thread_pool.h"

namespace fastlm {
namespace text {

namespace {

// Emits a line lazily: spaces are held back until a non-space character proves they are not
// trailing; newlines are held back until the next non-empty line, so blank-line runs can be
// capped and the document trimmed without a second pass.
template <typename CharT>
void clean_impl(const CharT* in, size_t n, const CleanOptions& opt, std::basic_string<CharT>& out) {
  out.clear();
  out.reserve(n);
  if (!opt.whitespace) {
    for (size_t i = 0; i < n; ++i)
      if (!(opt.remove_control && is_removed_control(in[i]))) out.push_back(in[i]);
    return;
  }
  const size_t max_newlines = static_cast<size_t>(opt.max_blank_lines) + 1;
  std::basic_string<CharT> indent;  // leading spaces/tabs of the current line
  bool at_line_start = true;        // no content yet on this line
  bool pending_space = false;       // a space/tab run after content on this line
  bool started = false;             // some content emitted in the document
  size_t pending_newlines = 0;      // line ends since the last content line
  for (size_t i = 0; i < n; ++i) {
    uint32_t c = in[i];
    if (opt.remove_control && is_removed_control(c)) continue;
    if (c == '\r') {
      // \r\n is one break; a lone \r is a break. Controls between \r and \n were removed
      // above only if they are removable, so look past them the same way.
      size_t j = i + 1;
      while (opt.remove_control && j < n && is_removed_control(in[j])) ++j;
      if (j < n && in[j] == '\n') i = j;
      c = '\n';
    } else if (c == 0x2028 || c == 0x2029) {
      c = '\n';
    }
    if (c == '\n') {
      if (started) ++pending_newlines;
      indent.clear();
      at_line_start = true;
      pending_space = false;
      continue;
    }
    if (c == ' ' || c == '\t') {
      if (at_line_start) {
        if (opt.keep_indentation) indent.push_back(static_cast<CharT>(c));
      } else {
        pending_space = true;
      }
      continue;
    }
    if (at_line_start) {
      if (started) out.append(pending_newlines < max_newlines ? pending_newlines : max_newlines,
                              static_cast<CharT>('\n'));
      out += indent;
      indent.clear();
      pending_newlines = 0;
      at_line_start = false;
    } else if (pending_space) {
      out.push_back(static_cast<CharT>(' '));
    }
    pending_space = false;
    started = true;
    out.push_back(in[i]);
  }
}

}  // namespace

CleanResult clean_text(const CodeUnits& s, const CleanOptions& opt) {
  check(opt.max_blank_lines >= 0, "max_blank_lines must be >= 0");
  CleanResult r;
  r.kind = s.kind;
  switch (s.kind) {
    case 1:
      clean_impl(static_cast<const uint8_t*>(s.data), s.len, opt, r.u8);
      break;
    case 2:
      clean_impl(static_cast<const uint16_t*>(s.data), s.len, opt, r.u16);
      break;
    case 4:
      clean_impl(static_cast<const uint32_t*>(s.data), s.len, opt, r.u32);
      break;
    default:
      throw ValueError("string kind must be 1, 2 or 4");
  }
  return r;
}

std::vector<CleanResult> clean_batch(const std::vector<CodeUnits>& docs, const CleanOptions& opt,
                                     int num_threads) {
  check(opt.max_blank_lines >= 0, "max_blank_lines must be >= 0");
  std::vector<CleanResult> out(docs.size());
  parallel_for(docs.size(), num_threads, 16, [&](size_t begin, size_t end) {
    for (size_t i = begin; i < end; ++i) out[i] = clean_text(docs[i], opt);
  });
  return out;
}

}  // namespace text
}  // namespace fastlm
