// Build information of the native core (a translation unit so the core library is never empty).
#include "common/version.h"

namespace fastlm {
const char* native_version() { return "0.1.0"; }
}  // namespace fastlm
