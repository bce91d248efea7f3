// csrc/kernels/cross_entropy.cu compiled as C++ for the CPU emulator (fastlm._cuda_emu).
#include "kernels/cross_entropy.cu"
