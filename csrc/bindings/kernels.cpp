// Bindings for the CPU kernels (csrc/kernels): numpy views of torch CPU tensors, no copies.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>
#include <string>

#include "common/error.h"
#include "kernels/cross_entropy.h"

namespace py = pybind11;

namespace {

// Checks that `a` is a writable/readable array of dtype T with `ndim` dims, C-contiguous along
// its last dim; returns its data pointer. Never copies: the kernel works in place.
template <typename T>
T* checked_ptr(py::array& a, const char* name, int ndim, bool writable) {
  if (!py::dtype::of<T>().is(a.dtype()))
    throw fastlm::ValueError(std::string(name) + ": wrong dtype " +
                             py::str(a.dtype()).cast<std::string>());
  if (a.ndim() != ndim)
    throw fastlm::ValueError(std::string(name) + ": expected " + std::to_string(ndim) + " dims");
  if (a.ndim() > 0 && a.shape(ndim - 1) > 1 &&
      a.strides(ndim - 1) != static_cast<py::ssize_t>(sizeof(T)))
    throw fastlm::ValueError(std::string(name) + ": last dim must be contiguous");
  if (writable && !a.writeable()) throw fastlm::ValueError(std::string(name) + ": not writable");
  return static_cast<T*>(a.mutable_data());
}

void cross_entropy_chunk(py::array logits, py::array target, py::array loss, py::array lse,
                         std::optional<py::array> grad_scale, float grad_scale_scalar,
                         int64_t ignore_index, float label_smoothing, float z_loss, float softcap,
                         bool write_grad, int num_threads) {
  float* z = checked_ptr<float>(logits, "logits", 2, true);
  const int64_t* t = checked_ptr<int64_t>(target, "target", 1, false);
  float* lo = checked_ptr<float>(loss, "loss", 1, true);
  float* ls = checked_ptr<float>(lse, "lse", 1, true);
  fastlm::CrossEntropyParams p;
  p.rows = logits.shape(0);
  p.vocab = logits.shape(1);
  p.ld = p.rows > 1 ? logits.strides(0) / static_cast<int64_t>(sizeof(float)) : p.vocab;
  p.ignore_index = ignore_index;
  p.label_smoothing = label_smoothing;
  p.z_loss = z_loss;
  p.softcap = softcap;
  fastlm::check(p.ld >= p.vocab && logits.strides(0) % sizeof(float) == 0,
                "logits: rows must not overlap");
  fastlm::check(target.shape(0) == p.rows && loss.shape(0) == p.rows && lse.shape(0) == p.rows,
                "target/loss/lse must have one entry per logits row");
  fastlm::check(p.vocab > 0, "logits: vocab must be > 0");
  fastlm::check(label_smoothing >= 0.f && label_smoothing <= 1.f,
                "label_smoothing must be in [0, 1]");
  fastlm::check(softcap >= 0.f && z_loss >= 0.f, "softcap and z_loss must be >= 0");
  const float* g = nullptr;
  if (grad_scale) {
    g = checked_ptr<float>(*grad_scale, "grad_scale", 1, false);
    fastlm::check(grad_scale->shape(0) == p.rows, "grad_scale must have one entry per row");
  }
  py::gil_scoped_release release;
  fastlm::cross_entropy_chunk_cpu(z, t, p, g, grad_scale_scalar, lo, ls, write_grad,
                                  num_threads);
}

}  // namespace

void bind_kernels(py::module_& m) {
  m.def("cross_entropy_chunk", &cross_entropy_chunk, py::arg("logits"), py::arg("target"),
        py::arg("loss"), py::arg("lse"), py::arg("grad_scale"), py::arg("grad_scale_scalar"),
        py::arg("ignore_index"), py::arg("label_smoothing"), py::arg("z_loss"),
        py::arg("softcap"), py::arg("write_grad"), py::arg("num_threads"),
        "Cross-entropy over a float32 logits chunk (rows x V): fills loss and lse per row and, "
        "if write_grad, overwrites logits with grad_scale * dloss/dlogits.");
}
