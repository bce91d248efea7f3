// fastlm._cuda: binds the CUDA kernels. Takes raw device pointers, sizes, strides, dtype codes
// and the caller's cudaStream_t as integers (Python validates the tensors), so it never links
// libtorch and one build works with any torch. Errors become ValueError/RuntimeError.
#include <pybind11/pybind11.h>
#ifdef FASTLM_CUDA_EMU
#include <pybind11/stl.h>  // set_global_regions' list of pairs
#endif

#include <cstdint>
#include <stdexcept>

#include "kernels/cross_entropy.h"
#include "kernels/kernels_cuda.h"

// The emulator build (csrc/emu/module_emu.cpp) compiles this file as fastlm._cuda_emu.
#ifndef FASTLM_CUDA_MODULE
#define FASTLM_CUDA_MODULE _cuda
#endif

namespace py = pybind11;
using fastlm::cuda::AttentionParams;

namespace {

template <typename T>
T* ptr(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}
cudaStream_t stream_of(uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }

// Attention v7 / v8's wgmma descriptor fallback (csrc/kernels/wgmma.cuh, desc_k_major): set once
// from FASTLM_WGMMA_SWAP by fastlm.ops.attention, copied into every launch's parameters.
int g_wgmma_swap = 0;

void set_wgmma_swap(int mask) {
  if (mask < 0 || mask > 3)
    throw py::value_error("set_wgmma_swap: mask must be 0 to 3 (bit 0: K-major, bit 1: MN-major)");
  g_wgmma_swap = mask;
}

void cross_entropy_chunk(uintptr_t logits, int dtype, int64_t rows, int64_t vocab, int64_t ld,
                         uintptr_t target, uintptr_t loss, uintptr_t lse, uintptr_t grad_scale,
                         float grad_scale_scalar, int64_t ignore_index, float label_smoothing,
                         float z_loss, float softcap, bool write_grad, int version,
                         uintptr_t stream) {
  if (rows < 0 || vocab <= 0 || ld < vocab) throw py::value_error("cross_entropy_chunk: bad shape");
  if (!logits || !target || !loss || !lse) throw py::value_error("cross_entropy_chunk: null pointer");
  fastlm::CrossEntropyParams p;
  p.rows = rows;
  p.vocab = vocab;
  p.ld = ld;
  p.ignore_index = ignore_index;
  p.label_smoothing = label_smoothing;
  p.z_loss = z_loss;
  p.softcap = softcap;
  fastlm::cuda::cross_entropy_chunk(ptr<void>(logits), dtype, ptr<const int64_t>(target), p,
                                    ptr<const float>(grad_scale), grad_scale_scalar,
                                    ptr<float>(loss), ptr<float>(lse), write_grad, version,
                                    stream_of(stream));
}

AttentionParams make_params(py::tuple sizes, py::tuple strides, float scale, bool causal,
                            int dtype, int version) {
  // sizes: (B, Hq, Hkv, Tq, Tk, D); strides: 4 tuples (q, k, v, dout) of (batch, head, time).
  if (sizes.size() != 6 || strides.size() != 4) throw py::value_error("attention: bad sizes");
  AttentionParams p;
  p.batch = sizes[0].cast<int>();
  p.heads_q = sizes[1].cast<int>();
  p.heads_kv = sizes[2].cast<int>();
  p.t_q = sizes[3].cast<int>();
  p.t_k = sizes[4].cast<int>();
  p.head_dim = sizes[5].cast<int>();
  int64_t* dst[4] = {p.q_stride, p.k_stride, p.v_stride, p.do_stride};
  for (int i = 0; i < 4; ++i) {
    py::tuple s = strides[i].cast<py::tuple>();
    if (s.size() != 3) throw py::value_error("attention: each stride tuple needs 3 entries");
    for (int j = 0; j < 3; ++j) {
      dst[i][j] = s[j].cast<int64_t>();
      if (dst[i][j] % 8 != 0) throw py::value_error("attention: strides must be multiples of 8");
    }
  }
  p.scale = scale;
  p.causal = causal;
  p.dtype = dtype;
  p.version = version;
  p.wgmma_swap = g_wgmma_swap;
  return p;
}

void attention_forward(uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t o, uintptr_t lse,
                       py::tuple sizes, py::tuple strides, float scale, bool causal, int dtype,
                       int version, uintptr_t stream) {
  AttentionParams p = make_params(sizes, strides, scale, causal, dtype, version);
  if (!q || !k || !v || !o || !lse) throw py::value_error("attention_forward: null pointer");
  p.q = ptr<const void>(q);
  p.k = ptr<const void>(k);
  p.v = ptr<const void>(v);
  p.o = ptr<void>(o);
  p.lse = ptr<float>(lse);
  try {
    fastlm::cuda::attention_forward(p, stream_of(stream));
  } catch (const std::invalid_argument& e) {
    throw py::value_error(e.what());
  }
}

void attention_backward(uintptr_t dout, uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t o,
                        uintptr_t lse, uintptr_t dq, uintptr_t dk, uintptr_t dv,
                        uintptr_t dq_accum, uintptr_t delta, py::tuple sizes, py::tuple strides,
                        float scale, bool causal, int dtype, int version, uintptr_t stream) {
  AttentionParams p = make_params(sizes, strides, scale, causal, dtype, version);
  if (!dout || !q || !k || !v || !o || !lse || !dq || !dk || !dv || !dq_accum || !delta)
    throw py::value_error("attention_backward: null pointer");
  p.dout = ptr<const void>(dout);
  p.q = ptr<const void>(q);
  p.k = ptr<const void>(k);
  p.v = ptr<const void>(v);
  p.o = ptr<void>(o);
  p.lse = ptr<float>(lse);
  p.dq = ptr<void>(dq);
  p.dk = ptr<void>(dk);
  p.dv = ptr<void>(dv);
  p.dq_accum = ptr<float>(dq_accum);
  p.delta = ptr<float>(delta);
  try {
    fastlm::cuda::attention_backward(p, stream_of(stream));
  } catch (const std::invalid_argument& e) {
    throw py::value_error(e.what());
  }
}

void wgmma_probe(uintptr_t a, uintptr_t b, uintptr_t d, int n, int mode, int dtype,
                 uintptr_t stream) {
  if (!a || !b || !d) throw py::value_error("wgmma_probe: null pointer");
  try {
    fastlm::cuda::wgmma_probe(ptr<const void>(a), ptr<const void>(b), ptr<float>(d), n, mode,
                              dtype, stream_of(stream));
  } catch (const std::invalid_argument& e) {
    throw py::value_error(e.what());
  }
}

}  // namespace

PYBIND11_MODULE(FASTLM_CUDA_MODULE, m) {
  m.doc() = "fastlm CUDA kernels (private: use fastlm.ops)";
#ifdef FASTLM_CUDA_EMU
  m.doc() = "fastlm's CUDA kernels run on the CPU by an emulator, for tests (csrc/emu/cuda_emu.h)";
  m.def("set_seed", &fastlm::emu::set_seed, py::arg("seed"),
        "thread scheduling seed of the emulator (0 = threads in index order)");
  m.def("set_copy_timing", &fastlm::emu::set_copy_timing, py::arg("mode"),
        "when cp.async copies land: 'lazy', 'eager' or 'mixed'");
  m.def("set_global_regions", &fastlm::emu::set_global_regions, py::arg("regions"),
        "[(address, bytes), ...]: the global memory cp.async sources and atomics must stay in "
        "(an empty list: unchecked)");
  m.def("float_to_half_bits", &fastlm::emu::float_to_half, py::arg("x"),
        "the emulator's float -> fp16 conversion (round to nearest even), as bits");
  m.def("half_bits_to_float", &fastlm::emu::half_to_float, py::arg("bits"));
  m.def("float_to_bf16_bits", &fastlm::emu::float_to_bf16, py::arg("x"));
  m.def("set_wgmma_reading", &fastlm::emu::set_wgmma_reading, py::arg("mode"),
        "how the emulated wgmma reads a descriptor's two byte offsets: 'isa' (wgmma.cuh's "
        "reading), or the other way round: 'swapped' (every operand), 'swapped-k-major', "
        "'swapped-mn-major'");
  m.def("selftest", &fastlm::emu::selftest, py::arg("name"),
        "runs a deliberately broken kernel (or its '_good' twin): 'ok', 'wrong' or the error");
#endif
  m.def("cross_entropy_chunk", &cross_entropy_chunk, py::arg("logits"), py::arg("dtype"),
        py::arg("rows"), py::arg("vocab"), py::arg("ld"), py::arg("target"), py::arg("loss"),
        py::arg("lse"), py::arg("grad_scale"), py::arg("grad_scale_scalar"),
        py::arg("ignore_index"), py::arg("label_smoothing"), py::arg("z_loss"),
        py::arg("softcap"), py::arg("write_grad"), py::arg("version"), py::arg("stream"));
  m.def("attention_forward", &attention_forward, py::arg("q"), py::arg("k"), py::arg("v"),
        py::arg("o"), py::arg("lse"), py::arg("sizes"), py::arg("strides"), py::arg("scale"),
        py::arg("causal"), py::arg("dtype"), py::arg("version"), py::arg("stream"));
  m.def("set_wgmma_swap", &set_wgmma_swap, py::arg("mask"),
        "attention v7 / v8: swap the two byte offsets of the wgmma descriptors of the K-major "
        "(bit 0) and MN-major (bit 1) operands (a GPU that reads them the other way round)");
  m.def("wgmma_swap", [] { return g_wgmma_swap; });
  m.def("wgmma_supported", &fastlm::cuda::wgmma_supported,
        "whether attention version 7 (wgmma) runs here: an sm_90 GPU and a build for sm_90a");
  m.def("wgmma_probe", &wgmma_probe, py::arg("a"), py::arg("b"), py::arg("d"), py::arg("n"),
        py::arg("mode"), py::arg("dtype"), py::arg("stream"),
        "D (64 x n fp32) = A (64 x 32) B (32 x n), both row-major, through wgmma "
        "(csrc/kernels/wgmma_probe.cu; mode 0: both operands in shared memory, 1: A in registers)");
  m.def("attention_backward", &attention_backward, py::arg("dout"), py::arg("q"), py::arg("k"),
        py::arg("v"), py::arg("o"), py::arg("lse"), py::arg("dq"), py::arg("dk"), py::arg("dv"),
        py::arg("dq_accum"), py::arg("delta"), py::arg("sizes"), py::arg("strides"),
        py::arg("scale"), py::arg("causal"), py::arg("dtype"), py::arg("version"),
        py::arg("stream"));
}
