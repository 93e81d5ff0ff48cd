// A small persistent thread pool for the CPU backend's data-parallel loops. parallel_for splits [0, n) into a
// few contiguous chunks per thread that the threads (the caller included) claim from an atomic counter, so a
// thread the OS preempts does not hold the loop up. Workers spin briefly before sleeping: a decode step issues
// hundreds of short loops, and waking a sleeping thread costs more than most of them.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace gpt_oss {

class ThreadPool {
 public:
  // num_threads <= 0 → std::thread::hardware_concurrency().
  explicit ThreadPool(int num_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  // Calls fn(begin, end) on disjoint ranges covering [0, n), concurrently; every range boundary but the last is
  // a multiple of `grain`. Returns when all calls have returned; rethrows the first exception a call threw
  // (the chunks not yet started are then skipped). Not reentrant: fn must not call parallel_for.
  void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

 private:
  void worker_loop();
  void run_chunks();

  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> stopping_{false};
  // The current job, valid while pending_ > 0.
  const std::function<void(int64_t, int64_t)>* job_ = nullptr;
  int64_t job_n_ = 0, job_chunk_ = 1;
  std::atomic<int64_t> next_{0};  // first row of the next unclaimed chunk
  std::exception_ptr error_;      // the job's first exception, guarded by mutex_
};

}  // namespace gpt_oss
