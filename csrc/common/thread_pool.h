// parallel_for: split [0, n) into contiguous chunks over worker threads; exceptions propagate.
#pragma once
#include <algorithm>
#include <atomic>
#include <cstddef>
#include <exception>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

namespace fastlm {

// Number of threads to use: `requested` if > 0, else all hardware threads.
inline int resolve_threads(int requested) {
  if (requested > 0) return requested;
  unsigned hw = std::thread::hardware_concurrency();
  return hw == 0 ? 1 : static_cast<int>(hw);
}

// Calls fn(begin, end) on disjoint chunks covering [0, n). Work is handed out in chunks of
// `grain` items from an atomic counter so uneven items (long documents) balance across threads.
// The first exception thrown by any worker is rethrown on the calling thread.
template <typename Fn>
void parallel_for(size_t n, int num_threads, size_t grain, Fn&& fn) {
  if (n == 0) return;
  grain = std::max<size_t>(grain, 1);
  int threads = std::min<size_t>(resolve_threads(num_threads), (n + grain - 1) / grain);
  if (threads <= 1) {
    fn(size_t{0}, n);
    return;
  }
  std::atomic<size_t> next{0};
  std::exception_ptr error;
  std::mutex error_mutex;
  auto worker = [&] {
    try {
      for (;;) {
        size_t begin = next.fetch_add(grain);
        if (begin >= n) break;
        fn(begin, std::min(n, begin + grain));
      }
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mutex);
      if (!error) error = std::current_exception();
      next.store(n);  // stop handing out work
    }
  };
  std::vector<std::thread> pool;
  pool.reserve(threads - 1);
  try {
    for (int t = 1; t < threads; ++t) pool.emplace_back(worker);
  } catch (const std::system_error&) {
    // No more threads (process or cgroup limit): the threads already started and this one do the work.
    // Letting the exception unwind past joinable std::threads would call std::terminate.
  }
  worker();
  for (auto& th : pool) th.join();
  if (error) std::rethrow_exception(error);
}

}  // namespace fastlm
