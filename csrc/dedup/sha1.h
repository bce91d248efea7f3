// SHA-1 (FIPS 180-4), only for datasketch-compatible MinHash: its shingle hash is the first
// 4 digest bytes read as a little-endian uint32 (datasketch.hashfunc.sha1_hash32).
#pragma once
#include <cstddef>
#include <cstdint>

namespace fastlm::dedup {

// Writes the 20-byte SHA-1 digest of data[0, len) to digest.
void sha1(const void* data, size_t len, uint8_t digest[20]);

// datasketch's sha1_hash32: struct.unpack("<I", sha1(data).digest()[:4]).
inline uint32_t sha1_hash32(const void* data, size_t len) {
  uint8_t d[20];
  sha1(data, len, d);
  return uint32_t(d[0]) | (uint32_t(d[1]) << 8) | (uint32_t(d[2]) << 16) | (uint32_t(d[3]) << 24);
}

}  // namespace fastlm::dedup
