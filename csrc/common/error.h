// Error types of the native core; csrc/bindings maps them to Python exceptions in one place.
#pragma once
#include <stdexcept>
#include <string>

namespace fastlm {

// Bad argument or bad input data: becomes ValueError in Python.
struct ValueError : std::runtime_error {
  explicit ValueError(const std::string& msg) : std::runtime_error(msg) {}
};

// Missing key or id: becomes KeyError in Python.
struct KeyError : std::runtime_error {
  explicit KeyError(const std::string& msg) : std::runtime_error(msg) {}
};

// Throws ValueError(msg) unless cond holds. For checks before indexing.
inline void check(bool cond, const std::string& msg) {
  if (!cond) throw ValueError(msg);
}

}  // namespace fastlm
