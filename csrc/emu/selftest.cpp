// Kernels with deliberate bugs (and their correct twins) that the emulator must catch:
// tests/test_cuda_emu.py shows that a broken kernel fails there, i.e. that a passing kernel
// test means something. Written in CUDA style, run through the same launch path.
#include <string>
#include <vector>

#include "kernels/cuda_common.cuh"
#include "kernels/wgmma.cuh"

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

// out[i] += in[i] by atomics, and the same for out[i] through cp.async of `in` (first 32
// threads, 4 floats each); `past` moves the last thread's atomic and copy one vector past the
// tensors the test names (set_global_regions).
__global__ void global_bounds_kernel(const float* in, float* out, int past) {
  FASTLM_DYNAMIC_SMEM(raw);
  float* s = reinterpret_cast<float*>(raw);
  const int i = threadIdx.x;
  const int off = (i == kN - 1 ? 4 * past : 0);
  atomicAdd(out + i + off, in[i]);
  if (i < kN / 4) cp_async16(s + 4 * i, in + 4 * i + (i == kN / 4 - 1 ? 4 * past : 0), true);
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();
  out[i] += s[i] - in[i];
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

// One warpgroup computes D = A B (64 x 64, k = 16, small integers: exact) with wgmma and writes
// per thread sum_i acc[i] * (i + 1); A and B^T come by cp.async from `img` (chunk-planar, as
// wgmma.cuh lays out tiles). bug 1: no wgmma.fence before the product; 2: reads an accumulator
// before the wait_group; 3: overwrites the B operand in shared memory before it; 4: no
// fence.proxy.async between the copies and the product; 6: issues the product before the
// copies' wait, fence and barrier (they all come before its wait_group).
float wgmma_a(int r, int k) { return static_cast<float>((r + k) % 5 - 2); }
float wgmma_b(int k, int n) { return static_cast<float>((3 * k + n) % 7 - 3); }

__global__ void wgmma_kernel(const __nv_bfloat16* img, float* out, int bug) {
  FASTLM_DYNAMIC_SMEM(raw);
  auto* s = reinterpret_cast<__nv_bfloat16*>(raw);  // A (64 x 16), then B^T (64 x 16)
  for (int i = threadIdx.x; i < 2 * 64 * 16 / 8; i += kN) cp_async16(s + 8 * i, img + 8 * i, true);
  cp_async_commit();
  float acc[32];
  auto issue = [&] {
    if (bug != 1) cuda::wgmma_fence();
    cuda::wgmma_ss<__nv_bfloat16, 64>(acc, cuda::wgmma_desc(s, 64 * 16, 128),
                                      cuda::wgmma_desc(s + 64 * 16, 64 * 16, 128), 0);
    cuda::wgmma_commit();
  };
  if (bug == 6) issue();
  cp_async_wait<0>();
  if (bug != 4) cuda::fence_proxy_async();
  __syncthreads();
  if (bug != 6) issue();
  float sum = bug == 2 ? acc[0] : 0.f;
  if (bug == 3) {
    for (int i = threadIdx.x; i < 64 * 16; i += kN) s[64 * 16 + i] = __float2bfloat16(0.f);
    __syncthreads();
  }
  cuda::wgmma_wait<0>();
  for (int i = 0; i < 32; ++i) sum += acc[i] * (i + 1);
  out[threadIdx.x] = sum;
}

// wgmma_kernel's product with A from registers (wgmma_rs_tb; `img` holds B as 16 x 64,
// MN-major); `bug` changes an A register while the product is in flight.
__global__ void wgmma_regs_kernel(const __nv_bfloat16* img, float* out, bool bug) {
  FASTLM_DYNAMIC_SMEM(raw);
  auto* s = reinterpret_cast<__nv_bfloat16*>(raw);
  for (int i = threadIdx.x; i < 64 * 16 / 8; i += kN) cp_async16(s + 8 * i, img + 8 * i, true);
  cp_async_commit();
  cp_async_wait<0>();
  cuda::fence_proxy_async();
  __syncthreads();
  const int w = threadIdx.x / 32, g = threadIdx.x % 32 / 4, t = threadIdx.x % 4;
  uint32_t a[4];  // the m16n8k16 A fragment of rows 16w..16w+15
  for (int i = 0; i < 4; ++i) {
    const int r = 16 * w + g + 8 * (i % 2), k = 2 * t + 8 * (i / 2);
    a[i] = cuda::pack2<__nv_bfloat16>(wgmma_a(r, k), wgmma_a(r, k + 1));
  }
  float acc[32];
  cuda::wgmma_fence();
  cuda::wgmma_rs_tb<__nv_bfloat16, 64>(acc, a, cuda::wgmma_desc(s, 128, 16 * 16), 0);
  cuda::wgmma_commit();
  if (bug) a[0] ^= 1u;
  cuda::wgmma_wait<0>();
  float sum = 0.f;
  for (int i = 0; i < 32; ++i) sum += acc[i] * (i + 1);
  out[threadIdx.x] = sum;
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
  if (base == "global_bounds") {  // room past both tensors, so a missed check writes nothing
    std::vector<float> room(kN + 4, 0.f);
    for (int i = 0; i < kN; ++i) want[i] = in[i];
    set_global_regions({{reinterpret_cast<uintptr_t>(in.data()), kN * sizeof(float)},
                        {reinterpret_cast<uintptr_t>(room.data()), kN * sizeof(float)}});
    want.resize(kN + 4, 0.f);
    const std::string r = check([&] { FASTLM_LAUNCH(global_bounds_kernel, 1, kN, smem, nullptr)(
                                          in.data(), room.data(), good ? 0 : 1); },
                                want, room);
    set_global_regions({});
    return r;
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
  const int wgmma_bug = base == "wgmma_fence"   ? 1
                        : base == "wgmma_wait"  ? 2
                        : base == "wgmma_reuse" ? 3
                        : base == "wgmma_proxy" ? 4
                        : base == "wgmma_regs"  ? 5
                        : base == "wgmma_early" ? 6
                                                : -1;
  if (wgmma_bug > 0) {
    std::vector<__nv_bfloat16> img(2 * 64 * 16);
    for (int i = 0; i < 64 * 16; ++i) {
      const int r = i / 16, k = i % 16;
      if (wgmma_bug == 5) {  // B alone, MN-major (16 x 64)
        img[cuda::planar(k, r, 16)] = __float2bfloat16(wgmma_b(k, r));
        continue;
      }
      img[cuda::planar(r, k, 64)] = __float2bfloat16(wgmma_a(r, k));
      img[64 * 16 + cuda::planar(r, k, 64)] = __float2bfloat16(wgmma_b(k, r));
    }
    for (int i = 0; i < kN; ++i) {
      const int w = i / 32, g = i % 32 / 4, t = i % 4;
      want[i] = 0.f;
      for (int e = 0; e < 32; ++e) {
        const int row = 16 * w + g + 8 * ((e / 2) % 2), col = 8 * (e / 4) + 2 * t + e % 2;
        float d = 0.f;
        for (int k = 0; k < 16; ++k) d += wgmma_a(row, k) * wgmma_b(k, col);
        want[i] += d * (e + 1);
      }
    }
    if (wgmma_bug == 5)
      return check([&] { FASTLM_LAUNCH(wgmma_regs_kernel, 1, kN, 64 * 16 * 2, nullptr)(
                             img.data(), out.data(), !good); },
                   want, out);
    return check([&] { FASTLM_LAUNCH(wgmma_kernel, 1, kN, 2 * 64 * 16 * 2, nullptr)(
                           img.data(), out.data(), good ? 0 : wgmma_bug); },
                 want, out);
  }
  throw std::invalid_argument("selftest: unknown case '" + name + "'");
}

}  // namespace emu
}  // namespace fastlm
