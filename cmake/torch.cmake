# The libtorch-facing library and the bayesq tool.
find_package(Torch REQUIRED)
find_package(CLI11 REQUIRED)

# libtorch 2.10+ headers need C++20; 1.13 builds as C++17. The code is valid in both.
set(BAYESQ_TORCH_CXX_STANDARD 17)
if(Torch_VERSION VERSION_GREATER_EQUAL 2.10)
  set(BAYESQ_TORCH_CXX_STANDARD 20)
endif()

add_library(bayesq_torch STATIC
  src/model/model_file.cpp
  src/model/graph_walk.cpp
  src/model/block_discovery.cpp
  src/model/block_tensor.cpp
  src/model/forward.cpp
  src/data/data_file.cpp
  src/distributed/world.cpp
  src/calibrate/curvature.cpp
  src/calibrate/grouped_conv.cpp
  src/capture/layer_capture.cpp
  src/gptq/gptq.cpp
  src/gptq/feedback.cpp
  src/gptq/kfac.cpp
  src/gptq/design_queue.cpp
  src/gptq/model_gptq.cpp
  src/measure/joint_allocation.cpp
  src/measure/kl_forward.cpp
  src/measure/measured_table.cpp
  src/measure/suffix_forward.cpp
  src/distill/distill.cpp
  src/export/model_writer.cpp
  src/eval/evaluate.cpp
  src/pipeline/device.cpp
  src/pipeline/memory.cpp
  src/pipeline/session.cpp
  src/pipeline/quantize_model.cpp
  src/pipeline/quantize.cpp
  src/pipeline/compare.cpp
  src/pipeline/commands.cpp
)
target_link_libraries(bayesq_torch PUBLIC bayesq_core ${TORCH_LIBRARIES})
target_include_directories(bayesq_torch PUBLIC ${TORCH_INCLUDE_DIRS})
set_target_properties(bayesq_torch PROPERTIES CXX_STANDARD ${BAYESQ_TORCH_CXX_STANDARD} CXX_STANDARD_REQUIRED ON)
target_compile_options(bayesq_torch PRIVATE -Wall -Wno-unused-parameter)
# One precompiled header for the heavy libtorch includes: each translation unit would otherwise reparse them.
target_precompile_headers(bayesq_torch PRIVATE <torch/script.h> <torch/torch.h>)
# Build switches go on the one source file that reads each, not on the target: the tests reuse the target's
# precompiled header, which GCC ignores when the target's definitions differ from theirs.
if(TORCH_CUDA_LIBRARIES OR TARGET c10_cuda OR TARGET torch_cuda)
  set_property(SOURCE src/pipeline/memory.cpp src/measure/kl_forward.cpp APPEND PROPERTY COMPILE_DEFINITIONS
               BAYESQ_WITH_CUDA)
  # bayesq's own kernels (src/gptq/feedback_block.cu) need nvcc; without it the same work runs on host threads.
  option(BAYESQ_CUDA_KERNELS "Build bayesq's CUDA kernels (needs a CUDA compiler)" ON)
  if(BAYESQ_CUDA_KERNELS)
    include(CheckLanguage)
    check_language(CUDA)
    if(CMAKE_CUDA_COMPILER)
      enable_language(CUDA)
      # The build machine's GPUs by default (libtorch's config may set CMAKE_CUDA_ARCHITECTURES to an old
      # architecture, whose code a new GPU would have to JIT-compile); set this for other targets, e.g. "80;90".
      set(default_architectures "70;80;90")
      if(CMAKE_VERSION VERSION_GREATER_EQUAL 3.24)
        set(default_architectures native)
      endif()
      set(BAYESQ_CUDA_ARCHITECTURES "${default_architectures}" CACHE STRING "CUDA architectures of bayesq's kernels")
      add_library(bayesq_cuda_kernels STATIC src/gptq/feedback_block.cu)
      set_target_properties(bayesq_cuda_kernels PROPERTIES CUDA_ARCHITECTURES "${BAYESQ_CUDA_ARCHITECTURES}")
      target_include_directories(bayesq_cuda_kernels PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/include)
      # libtorch's own (shared) CUDA runtime: one runtime in the process.
      set_target_properties(bayesq_cuda_kernels PROPERTIES CUDA_STANDARD 17 CUDA_STANDARD_REQUIRED ON
                            CUDA_RUNTIME_LIBRARY Shared POSITION_INDEPENDENT_CODE ON)
      target_link_libraries(bayesq_torch PRIVATE bayesq_cuda_kernels)
      set_property(SOURCE src/gptq/gptq.cpp APPEND PROPERTY COMPILE_DEFINITIONS BAYESQ_CUDA_KERNELS)
      message(STATUS "bayesq: CUDA kernels for ${BAYESQ_CUDA_ARCHITECTURES}")
    else()
      message(STATUS "bayesq: no CUDA compiler, GPTQ feedback runs its lazy blocks on host threads")
    endif()
  endif()
endif()

# torch.distributed (c10d, compiled into libtorch): the TCPStore always; ProcessGroupGloo where Gloo's headers
# are found (Debian's libgloo-dev, which scripts/setup.sh installs; PyTorch's wheels do not ship them). Without
# them a job's exchanges go through the store (distributed/world.h).
find_path(BAYESQ_GLOO_INCLUDE_DIR gloo/config.h HINTS ${TORCH_INCLUDE_DIRS})
if(BAYESQ_GLOO_INCLUDE_DIR)
  set_property(SOURCE src/distributed/world.cpp APPEND PROPERTY INCLUDE_DIRECTORIES ${BAYESQ_GLOO_INCLUDE_DIR})
  set_property(SOURCE src/distributed/world.cpp APPEND PROPERTY COMPILE_DEFINITIONS BAYESQ_GLOO USE_C10D_GLOO)
  message(STATUS "bayesq: torch.distributed with Gloo (${BAYESQ_GLOO_INCLUDE_DIR}) and the TCPStore")
else()
  message(STATUS "bayesq: no Gloo headers, multi-process jobs exchange through c10d's TCPStore")
endif()

add_executable(bayesq tools/bayesq.cpp)
target_link_libraries(bayesq PRIVATE bayesq_torch CLI11::CLI11)
set_target_properties(bayesq PROPERTIES CXX_STANDARD ${BAYESQ_TORCH_CXX_STANDARD} CXX_STANDARD_REQUIRED ON)
