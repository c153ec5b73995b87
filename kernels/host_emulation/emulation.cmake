# genfast._C_emulated: the same bindings as genfast._C (csrc/module.cpp with another module name), the CPU
# kernels, and kernels/*.cu compiled as C++ against this folder's CUDA execution layer.
# Inputs: GENFAST_CPU_SOURCES (csrc/*.cpp), GENFAST_KERNELS_DIR, GENFAST_EMULATED_MODULE_NAME,
# GENFAST_EMULATION_SANITIZERS.
find_package(CUDAToolkit QUIET)
set(_gf_emu_cuda_include "")
if(CUDAToolkit_FOUND)
  set(_gf_emu_cuda_include ${CUDAToolkit_INCLUDE_DIRS})
endif()
find_path(_gf_emu_fp16_dir cuda_fp16.h HINTS ${_gf_emu_cuda_include} /usr/local/cuda/include)
if(NOT _gf_emu_fp16_dir)
  message(FATAL_ERROR "genfast: GENFAST_CUDA_EMULATION needs the CUDA toolkit's headers (cuda_fp16.h, "
                      "cuda_runtime_api.h); none found. Set CUDAToolkit_ROOT, or build without the emulation.")
endif()

set(_gf_emu_dir ${GENFAST_KERNELS_DIR}/host_emulation)
file(GLOB _gf_emu_kernels CONFIGURE_DEPENDS ${GENFAST_KERNELS_DIR}/*.cu)
list(APPEND _gf_emu_kernels ${_gf_emu_dir}/selftest_kernels.cu)
# .cu files are CUDA sources to CMake (and to _C in this same directory); a one-line C++ wrapper per file
# lets the host compiler take them without touching their LANGUAGE.
set(_gf_emu_wrappers "")
foreach(_cu ${_gf_emu_kernels})
  get_filename_component(_stem ${_cu} NAME_WE)
  set(_wrapper ${CMAKE_CURRENT_BINARY_DIR}/emulated/${_stem}.cu.cpp)
  file(CONFIGURE OUTPUT ${_wrapper} CONTENT "#include \"${_cu}\"\n")
  list(APPEND _gf_emu_wrappers ${_wrapper})
endforeach()

file(GLOB _gf_emu_bind ${CMAKE_CURRENT_SOURCE_DIR}/csrc/bind_*.cpp ${CMAKE_CURRENT_SOURCE_DIR}/csrc/module.cpp)
set(_gf_emu_target ${GENFAST_EMULATED_MODULE_NAME})
pybind11_add_module(${_gf_emu_target} MODULE NO_EXTRAS ${GENFAST_CPU_SOURCES} ${_gf_emu_wrappers}
                    ${_gf_emu_dir}/emulator.cpp ${_gf_emu_dir}/bind_emulation.cpp)
target_include_directories(${_gf_emu_target} BEFORE PRIVATE ${_gf_emu_dir}/include)
target_include_directories(${_gf_emu_target} PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/csrc ${GENFAST_KERNELS_DIR} ${_gf_emu_dir}
                           ${_gf_emu_fp16_dir})
target_compile_definitions(${_gf_emu_target} PRIVATE GENFAST_WITH_CUDA=1 GENFAST_CUDA_EMULATION=1
                           GENFAST_MODULE_NAME=${GENFAST_EMULATED_MODULE_NAME})
target_compile_options(${_gf_emu_target} PRIVATE -Wall -Wno-unknown-pragmas)
# The kernels: the layer's header first; no strict aliasing (the kernels reinterpret 16-byte vectors as
# arrays of T, as CUDA code does and nvcc allows).
set(_gf_emu_kernel_flags -include ${_gf_emu_dir}/cuda_emulation.h -fno-strict-aliasing)
if(GENFAST_EMULATION_SANITIZERS)
  # Only the kernels and the layer are instrumented (the bindings and CPU kernels are not under test here);
  # -O1 -g: ASan's recommendation, with line numbers in its reports.
  target_compile_definitions(${_gf_emu_target} PRIVATE GENFAST_EMULATION_SANITIZERS=1)
  list(APPEND _gf_emu_kernel_flags -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer)
  set_source_files_properties(${_gf_emu_dir}/emulator.cpp PROPERTIES COMPILE_FLAGS
                              "-O1 -g -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer")
  target_link_options(${_gf_emu_target} PRIVATE -fsanitize=address,undefined)
else()
  # The race check: ThreadSanitizer's compile-time instrumentation of the kernels, whose hooks the layer
  # defines (emulator.cpp); the TSan runtime is not linked.
  target_compile_definitions(${_gf_emu_target} PRIVATE GENFAST_EMULATION_RACE_CHECK=1)
  if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
    list(APPEND _gf_emu_kernel_flags -fsanitize=thread --param=tsan-instrument-func-entry-exit=0)
  else()
    list(APPEND _gf_emu_kernel_flags -fsanitize=thread -mllvm -tsan-instrument-func-entry-exit=0)
  endif()
endif()
string(REPLACE ";" " " _gf_emu_kernel_flags_str "${_gf_emu_kernel_flags}")
set_source_files_properties(${_gf_emu_wrappers} PROPERTIES COMPILE_FLAGS "${_gf_emu_kernel_flags_str}")
find_package(OpenMP)
if(OpenMP_CXX_FOUND)
  target_link_libraries(${_gf_emu_target} PRIVATE OpenMP::OpenMP_CXX)
  target_compile_definitions(${_gf_emu_target} PRIVATE GENFAST_OPENMP=1)
endif()
message(STATUS "genfast: ${GENFAST_EMULATED_MODULE_NAME} ON (kernels from ${GENFAST_KERNELS_DIR}, sanitizers ${GENFAST_EMULATION_SANITIZERS})")
