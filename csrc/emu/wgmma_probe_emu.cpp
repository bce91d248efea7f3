// csrc/kernels/wgmma_probe.cu compiled as C++ for the CPU emulator (fastlm._cuda_emu).
#include "kernels/wgmma_probe.cu"
