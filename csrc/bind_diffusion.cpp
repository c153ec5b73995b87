// Python bindings of the diffusion step kernels: StepParams arrive as plain ints and floats in the order
// of genfast/ops/diffusion.py::_ext_args.
#include <pybind11/pybind11.h>

#include "diffusion.h"

namespace py = pybind11;

namespace genfast {
namespace {

StepParams params_from(const py::args& a, size_t expected) {
  if (a.size() != expected)
    throw std::invalid_argument("genfast._C.diffusion_step: expected " + std::to_string(expected) + " arguments, got " +
                                std::to_string(a.size()));
  StepParams p;
  int k = 0;
  auto I = [&](void) { return a[k++].cast<int64_t>(); };
  auto U = [&](void) { return a[k++].cast<uint64_t>(); };
  auto F = [&](void) { return a[k++].cast<float>(); };
  auto B = [&](void) { return a[k++].cast<bool>(); };
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
  check_step_params(p);
  return p;
}

}  // namespace

void bind_diffusion(py::module_& m) {
  m.def(
      "diffusion_step_cpu",
      [](py::args a) {
        StepParams p = params_from(a, 36);
        py::gil_scoped_release nogil;
        diffusion_step_cpu(p);
      },
      "One fused DDIM/DDPM step on CPU (arguments: see genfast/ops/diffusion.py::_ext_args)");
#ifdef GENFAST_WITH_CUDA
  m.def(
      "diffusion_step_cuda",
      [](py::args a) {
        StepParams p = params_from(a, 38);
        diffusion_step_cuda(p, a[36].cast<uintptr_t>(), a[37].cast<int>());
      },
      "One fused DDIM/DDPM step on a CUDA stream (the CPU arguments, then stream and device)");
#endif
}

}  // namespace genfast
