#include "thread_pool.h"

#include <pthread.h>

#include <algorithm>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace reward_engine::cpu {
namespace {

constexpr int64_t kMinBytesPerThread = 64 * 1024;

thread_local bool t_inside_pool = false;

class ThreadPool {
 public:
  // Returns false (and does nothing) when the pool is busy with another caller.
  bool try_run(int64_t n, int num_chunks, const RangeFn& fn) {
    std::unique_lock<std::mutex> run_lock(run_mu_, std::try_to_lock);
    if (!run_lock.owns_lock()) return false;
    ensure_workers(num_chunks - 1);
    {
      std::lock_guard<std::mutex> lock(mu_);
      fn_ = &fn;
      n_ = n;
      num_chunks_ = num_chunks;
      pending_ = num_chunks - 1;
      error_ = nullptr;
      ++generation_;
    }
    work_cv_.notify_all();
    run_chunk(0);
    std::unique_lock<std::mutex> lock(mu_);
    done_cv_.wait(lock, [this] { return pending_ == 0; });
    fn_ = nullptr;
    if (error_) std::rethrow_exception(error_);
    return true;
  }

 private:
  void ensure_workers(int count) {
    while (int(workers_.size()) < count) {
      const int index = int(workers_.size());
      workers_.emplace_back([this, index] { worker_loop(index); });
    }
  }

  void run_chunk(int chunk) {
    const int64_t begin = n_ * chunk / num_chunks_;
    const int64_t end = n_ * (chunk + 1) / num_chunks_;
    try {
      if (begin < end) (*fn_)(begin, end);
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu_);
      if (!error_) error_ = std::current_exception();
    }
  }

  void worker_loop(int index) {
    t_inside_pool = true;
    uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(mu_);
        // Worker i takes chunk i + 1 of a run; workers beyond the run's chunk
        // count sit it out.
        work_cv_.wait(lock, [&] { return generation_ != seen && index + 1 < num_chunks_; });
        seen = generation_;
      }
      run_chunk(index + 1);
      std::lock_guard<std::mutex> lock(mu_);
      if (--pending_ == 0) done_cv_.notify_one();
    }
  }

  std::mutex run_mu_;  // one parallel_for at a time
  std::mutex mu_;
  std::condition_variable work_cv_, done_cv_;
  std::vector<std::thread> workers_;
  uint64_t generation_ = 0;
  const RangeFn* fn_ = nullptr;
  int64_t n_ = 0;
  int num_chunks_ = 0;
  int pending_ = 0;
  std::exception_ptr error_;
};

// Leaked on purpose: joining blocked workers during interpreter shutdown
// would hang. After fork() the child has none of the parent's threads, so it
// starts a new pool (and leaks the old one, whose locks may be held).
ThreadPool* g_pool = nullptr;
std::mutex g_pool_mu;

ThreadPool& pool() {
  std::lock_guard<std::mutex> lock(g_pool_mu);
  static const int registered = pthread_atfork(nullptr, nullptr, [] { g_pool = nullptr; });
  (void)registered;
  if (g_pool == nullptr) g_pool = new ThreadPool();
  return *g_pool;
}

}  // namespace

int threads_for(int64_t bytes, int64_t rows, int max_threads) {
  int64_t n = std::min<int64_t>({int64_t(max_threads), rows, bytes / kMinBytesPerThread});
  return int(std::max<int64_t>(n, 1));
}

void parallel_for(int64_t n, int num_threads, const RangeFn& fn) {
  if (n <= 0) return;
  const int chunks = int(std::min<int64_t>(std::max(num_threads, 1), n));
  if (chunks == 1 || t_inside_pool || !pool().try_run(n, chunks, fn)) fn(0, n);
}

}  // namespace reward_engine::cpu
