// Python bindings of the sampler step kernels: SamplerStepParams arrive as plain ints and floats in the
// order of genfast/ops/sampler_steps.py::_ext_args.
#include <pybind11/pybind11.h>

#include "sampler_steps.h"

namespace py = pybind11;

namespace genfast {
namespace {

constexpr size_t kSamplerArgs = 39;

// `extra`: trailing arguments after the kernel's (the CUDA stream and device).
SamplerStepParams sampler_params_from(const py::args& a, size_t extra) {
  const size_t expected = kSamplerArgs + extra;
  if (a.size() != expected)
    throw std::invalid_argument("genfast._C.sampler_step: expected " + std::to_string(expected) + " arguments, got " +
                                std::to_string(a.size()));
  SamplerStepParams p;
  size_t k = 0;
  auto I = [&](void) { return a[k++].cast<int64_t>(); };
  auto U = [&](void) { return a[k++].cast<uint64_t>(); };
  auto F = [&](void) { return a[k++].cast<float>(); };
  auto B = [&](void) { return a[k++].cast<bool>(); };
  p.mode_abs_x0 = static_cast<int>(I());
  p.n = I(); p.inner = I(); p.model_stride = I();
  p.out = U(); p.out_aux = U(); p.sample = U(); p.model = U(); p.cond = U(); p.hist1 = U(); p.hist2 = U();
  p.noise = U();
  p.dtype = static_cast<int>(I()); p.aux_dtype = static_cast<int>(I()); p.noise_dtype = static_cast<int>(I());
  p.history = static_cast<int>(I());
  p.guidance = B(); p.guidance_scale = F();
  p.pre_noise = F(); p.conv_x = F(); p.conv_m = F();
  p.thresh_lo = U(); p.thresh_hi = U(); p.thresh_weight = F(); p.thresh_max = F();
  p.to_x0_x = F(); p.to_x0_c = F(); p.from_x0_x = F(); p.from_x0_c = F();
  p.c_x = F(); p.c_0 = F(); p.c_1 = F(); p.c_2 = F(); p.c_noise = F();
  p.noise_src = static_cast<int>(I());
  p.seed = U(); p.offset = U(); p.seed_ptr = U(); p.offset_ptr = U();
  if (k != kSamplerArgs) throw std::logic_error("genfast._C.sampler_step: argument count out of sync");
  check_sampler_step_params(p);
  return p;
}

}  // namespace

void bind_sampler_steps(py::module_& m) {
  m.def(
      "sampler_step_cpu",
      [](py::args a) {
        SamplerStepParams p = sampler_params_from(a, 0);
        py::gil_scoped_release nogil;
        sampler_step_cpu(p);
      },
      "One fused Euler / Euler-ancestral / DPM-Solver step on CPU (arguments: genfast/ops/sampler_steps.py::_ext_args)");
#ifdef GENFAST_WITH_CUDA
  m.def(
      "sampler_step_cuda",
      [](py::args a) {
        SamplerStepParams p = sampler_params_from(a, 2);
        sampler_step_cuda(p, a[kSamplerArgs].cast<uintptr_t>(), a[kSamplerArgs + 1].cast<int>());
      },
      "One fused sampler step on a CUDA stream (the CPU arguments, then stream and device)");
#endif
}

}  // namespace genfast
