// Kernels with deliberate bugs (and their correct twins) that the emulator must catch:
// tests/test_cuda_emu.py shows that a broken kernel fails there, i.e. that a passing kernel
// test means something. Written in CUDA style, run through the same launch path.
#include <string>
#include <vector>

#include "kernels/cuda_common.cuh"

namespace fastlm {
namespace emu {
namespace {

using cuda::cp_async16;
using cuda::cp_async_commit;
using cuda::cp_async_wait;
using cuda::ldsm_x4;

constexpr int kN = 128;

// out[i] = in[(i + 37) % kN], exchanged through shared memory; `sync` false drops the barrier.
__global__ void rotate_kernel(const float* in, float* out, bool sync) {
  FASTLM_DYNAMIC_SMEM(raw);
  float* s = reinterpret_cast<float*>(raw);
  const int i = threadIdx.x;
  s[i] = in[i];
  if (sync) __syncthreads();
  out[i] = s[(i + 37) % kN];
}

// The same through cp.async (16 bytes = 4 floats per thread of the first 32 threads).
__global__ void async_rotate_kernel(const float* in, float* out, bool wait) {
  FASTLM_DYNAMIC_SMEM(raw);
  float* s = reinterpret_cast<float*>(raw);
  const int i = threadIdx.x;
  if (i < kN / 4) cp_async16(s + 4 * i, in + 4 * i, true);
  cp_async_commit();
  if (wait) cp_async_wait<0>();
  __syncthreads();
  out[i] = s[(i + 37) % kN];
}

// Two tiles through one buffer; `sync` false drops the barrier before the buffer is reused,
// so a thread can overwrite values another thread has not read yet.
__global__ void reuse_kernel(const float* in, float* out, bool sync) {
  FASTLM_DYNAMIC_SMEM(raw);
  float* s = reinterpret_cast<float*>(raw);
  const int i = threadIdx.x;
  float acc = 0.f;
  for (int tile = 0; tile < 2; ++tile) {
    if (sync) __syncthreads();
    s[i] = in[tile * kN + i];
    __syncthreads();
    acc += s[(i + 37) % kN] * (tile + 1);
  }
  out[i] = acc;
}

__global__ void divergent_sync_kernel(float* out, bool diverge) {
  if (!diverge || threadIdx.x < 32) __syncthreads();
  out[threadIdx.x] = 1.f;
}

__global__ void divergent_shfl_kernel(float* out, bool diverge) {
  float v = static_cast<float>(threadIdx.x);
  if (!diverge || threadIdx.x % 32 < 16) v = __shfl_xor_sync(0xffffffffu, v, 1);
  out[threadIdx.x] = v;
}

__global__ void overflow_kernel(float* out, int extra) {
  FASTLM_DYNAMIC_SMEM(raw);
  float* s = reinterpret_cast<float*>(raw);
  s[threadIdx.x + extra] = 1.f;  // extra > 0 writes past the kN floats launched with
  out[threadIdx.x] = 1.f;
}

__global__ void ldmatrix_kernel(float* out, int offset_bytes) {
  FASTLM_DYNAMIC_SMEM(raw);
  for (int i = threadIdx.x; i < 1024; i += kN) raw[i] = 0;
  __syncthreads();
  uint32_t r[4];
  ldsm_x4(r, raw + (threadIdx.x % 32) * 16 + offset_bytes);
  out[threadIdx.x] = static_cast<float>(r[0]);
}

// A 16-byte vector load from `offset_bytes` past a 16-byte aligned buffer.
__global__ void vector_load_kernel(const float* in, float* out, int offset_bytes) {
  const auto* p = reinterpret_cast<const unsigned char*>(in) + offset_bytes;
  uint4 v = reinterpret_cast<const uint4*>(p)[threadIdx.x % 4];
  volatile unsigned sink = v.x ^ v.w;  // keeps the load
  (void)sink;
  out[threadIdx.x] = 1.f;
}

// Runs `launch`, returns "ok" when it succeeds with the expected output, "wrong" when it
// succeeds with another output, else the launch error.
template <class F>
std::string check(F launch, const std::vector<float>& want, std::vector<float>& out) {
  try {
    launch();
    FASTLM_LAUNCH_CHECK();
  } catch (const std::exception& e) {
    return e.what();
  }
  return out == want ? "ok" : "wrong";
}

}  // namespace

std::string selftest(const std::string& name) {
  std::vector<float> in(2 * kN), out(kN, 0.f), want(kN);
  for (int i = 0; i < 2 * kN; ++i) in[i] = static_cast<float>(i * 7 % 101);
  for (int i = 0; i < kN; ++i) want[i] = in[(i + 37) % kN];
  const size_t smem = kN * sizeof(float);
  const bool good = name.size() > 5 && name.compare(name.size() - 5, 5, "_good") == 0;
  const std::string base = good ? name.substr(0, name.size() - 5) : name;
  if (base == "rotate")
    return check([&] { FASTLM_LAUNCH(rotate_kernel, 1, kN, smem, nullptr)(in.data(), out.data(),
                                                                            good); },
                 want, out);
  if (base == "async_rotate")
    return check([&] { FASTLM_LAUNCH(async_rotate_kernel, 1, kN, smem, nullptr)(
                           in.data(), out.data(), good); },
                 want, out);
  if (base == "reuse") {
    for (int i = 0; i < kN; ++i) want[i] = in[(i + 37) % kN] + 2 * in[kN + (i + 37) % kN];
    return check([&] { FASTLM_LAUNCH(reuse_kernel, 1, kN, smem, nullptr)(in.data(), out.data(),
                                                                           good); },
                 want, out);
  }
  std::fill(want.begin(), want.end(), 1.f);
  if (base == "divergent_sync")
    return check([&] { FASTLM_LAUNCH(divergent_sync_kernel, 1, kN, 0, nullptr)(out.data(),
                                                                                 !good); },
                 want, out);
  if (base == "overflow")
    return check([&] { FASTLM_LAUNCH(overflow_kernel, 1, kN, smem, nullptr)(out.data(),
                                                                              good ? 0 : 1); },
                 want, out);
  if (base == "ldmatrix_misaligned") {
    std::fill(want.begin(), want.end(), 0.f);
    return check([&] { FASTLM_LAUNCH(ldmatrix_kernel, 1, kN, 1024, nullptr)(out.data(),
                                                                              good ? 0 : 8); },
                 want, out);
  }
  if (base == "misaligned_vector")
    return check([&] { FASTLM_LAUNCH(vector_load_kernel, 1, kN, 0, nullptr)(in.data(), out.data(),
                                                                               good ? 0 : 8); },
                 want, out);
  if (base == "divergent_shfl") {
    for (int i = 0; i < kN; ++i) want[i] = static_cast<float>(i ^ 1);
    return check([&] { FASTLM_LAUNCH(divergent_shfl_kernel, 1, kN, 0, nullptr)(out.data(),
                                                                                 !good); },
                 want, out);
  }
  throw std::invalid_argument("selftest: unknown case '" + name + "'");
}

}  // namespace emu
}  // namespace fastlm
