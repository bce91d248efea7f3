// Build information of the native core.
#pragma once
namespace fastlm {
const char* native_version();
}  // namespace fastlm
