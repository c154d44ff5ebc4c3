// Process-wide settings for grpc++ that both extensions apply when they are imported.

#pragma once

#include <absl/synchronization/mutex.h>

namespace recserve {

// Debian's Abseil is built with assertions on, so every absl::Mutex grpc takes also records its lock order
// in a global graph to look for deadlock cycles: ~5% of grpc's CPU per call under overload (GraphCycles in
// a profile), all of it bookkeeping for a check that only reports. Release builds of Abseil skip it.
inline void SkipMutexDeadlockDetection() {
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
}

}  // namespace recserve
