// csrc/kernels/attention.cu compiled as C++ for the CPU emulator (fastlm._cuda_emu).
#include "kernels/attention.cu"
