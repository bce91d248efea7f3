// csrc/cuda/module.cu compiled as C++ for the CPU emulator: the same bindings as fastlm._cuda,
// taking CPU pointers, plus set_seed.
#define FASTLM_CUDA_MODULE _cuda_emu
#include "cuda/module.cu"
