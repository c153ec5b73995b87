// Python bindings of the diffusion step's backward kernels. Arguments: the forward's 36 (in the order
// of genfast/ops/diffusion.py::_ext_args, out/out_x0/thresholds 0), then grad_prev, grad_x0,
// grad_sample, grad_model, grad_cond, grad_noise (pointers, 0 = none), then for CUDA the stream and device.
#include <pybind11/pybind11.h>

#include "diffusion_backward.h"

namespace py = pybind11;

namespace genfast {
namespace {

constexpr size_t kForwardArgs = 36;
constexpr size_t kBackwardArgs = kForwardArgs + 6;

StepBackwardParams backward_params_from(const py::args& a, size_t expected) {
  if (a.size() != expected)
    throw std::invalid_argument("genfast._C.diffusion_step_backward: expected " + std::to_string(expected) +
                                " arguments, got " + std::to_string(a.size()));
  StepBackwardParams q;
  StepParams& p = q.fwd;
  size_t k = 0;
  auto I = [&]() { return a[k++].cast<int64_t>(); };
  auto U = [&]() { return a[k++].cast<uint64_t>(); };
  auto F = [&]() { return a[k++].cast<float>(); };
  auto B = [&]() { return a[k++].cast<bool>(); };
  p.kind = static_cast<int>(I());
  p.mode_abs_x0 = static_cast<int>(I());
  p.n = I();
  p.inner = I();
  p.out = U(); p.out_x0 = U(); p.sample = U(); p.model = U(); p.cond = U(); p.noise = U();
  p.dtype = static_cast<int>(I());
  p.noise_dtype = static_cast<int>(I());
  p.alpha_t_ptr = U(); p.alpha_t_per_sample = B();
  p.alpha_prev_ptr = U(); p.alpha_prev_per_sample = B();
  p.alpha_t = F(); p.alpha_prev = F(); p.eta = F();
  p.prediction_type = static_cast<int>(I());
  p.variance_type = static_cast<int>(I());
  p.guidance = B(); p.guidance_scale = F();
  p.clip = B(); p.clip_range = F();
  p.thresh_lo = U(); p.thresh_hi = U();
  p.thresh_weight = F(); p.thresh_max = F();
  p.use_clipped = B();
  p.noise_mode = static_cast<int>(I());
  p.noise_src = static_cast<int>(I());
  p.seed = U(); p.offset = U(); p.seed_ptr = U(); p.offset_ptr = U();
  q.grad_prev = U(); q.grad_x0 = U();
  q.grad_sample = U(); q.grad_model = U(); q.grad_cond = U(); q.grad_noise = U();
  check_step_backward_params(q);
  return q;
}

}  // namespace

void bind_diffusion_backward(py::module_& m) {
  m.def(
      "diffusion_step_backward_cpu",
      [](py::args a) {
        StepBackwardParams q = backward_params_from(a, kBackwardArgs);
        py::gil_scoped_release nogil;
        diffusion_step_backward_cpu(q);
      },
      "Backward of one fused DDIM/DDPM step on CPU (arguments: see genfast/ops/diffusion.py::_backward_ext_args)");
#ifdef GENFAST_WITH_CUDA
  m.def(
      "diffusion_step_backward_cuda",
      [](py::args a) {
        StepBackwardParams q = backward_params_from(a, kBackwardArgs + 2);
        diffusion_step_backward_cuda(q, a[kBackwardArgs].cast<uintptr_t>(), a[kBackwardArgs + 1].cast<int>());
      },
      "Backward of one fused DDIM/DDPM step on a CUDA stream (the CPU arguments, then stream and device)");
#endif
}

}  // namespace genfast
