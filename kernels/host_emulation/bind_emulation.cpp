// Python-visible controls of genfast._C_emulated (the module also has every *_cuda function of
// genfast._C, running the CUDA kernels on host memory through kernels/host_emulation/).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>

#include "emulator.h"

namespace py = pybind11;

namespace genfast {
namespace selftest {
void run_case(const std::string& name, uintptr_t in, uintptr_t out, int n, uintptr_t aux);
}

void bind_emulation(py::module_& m) {
  m.attr("emulation") = true;
#ifdef GENFAST_EMULATION_SANITIZERS
  m.attr("with_sanitizers") = true;
#else
  m.attr("with_sanitizers") = false;
#endif
  m.attr("with_race_check") = gf_emu::race_check_compiled();
  m.attr("emulated_sm_count") = gf_emu::kEmulatedSms;
  py::register_exception<gf_emu::KernelFault>(m, "KernelFault", PyExc_RuntimeError);
  m.def("launch_counts", &gf_emu::launch_counts,
        "dict kernel name -> launches since the last reset_launch_counts() (template arguments dropped)");
  m.def("reset_launch_counts", &gf_emu::reset_launch_counts);
  m.def("set_block_order_seed", &gf_emu::set_block_order_seed, py::arg("seed"),
        "0: blocks (and the threads of a block) run in index order; any other seed shuffles both");
  m.def("block_order_seed", &gf_emu::block_order_seed);
  m.def("emulation_stats", []() {
    const gf_emu::Stats s = gf_emu::stats();
    py::dict d;
    d["launches"] = s.launches;
    d["blocks"] = s.blocks;
    d["fiber_resumes"] = s.resumes;
    d["barriers"] = s.barriers;
    d["warp_collectives"] = s.warp_collectives;
    d["memsets"] = s.memsets;
    d["barrier_faults"] = s.barrier_faults;
    d["warp_faults"] = s.warp_faults;
    d["race_faults"] = s.race_faults;
    d["vector_faults"] = s.vector_faults;
    return d;
  }, "cumulative counters of the emulator (for cost measurements)");
  m.def("_selftest", &selftest::run_case, py::arg("case"), py::arg("inp"), py::arg("out"), py::arg("n"),
        py::arg("aux") = 0, "runs one of the layer's test kernels (kernels/host_emulation/selftest_kernels.cu)");
}

}  // namespace genfast
