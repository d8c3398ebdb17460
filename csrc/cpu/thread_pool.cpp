#include "thread_pool.h"

#include <dlfcn.h>
#include <link.h>
#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace reward_engine::cpu {
namespace {

constexpr int64_t kMinBytesPerThread = 128 * 1024;
// Chunks per thread: with dynamic claiming, a late or descheduled worker only
// delays the chunk it holds, not a fixed share of the rows.
constexpr int kChunksPerThread = 4;

thread_local bool t_inside_pool = false;

// One parallel_for call. Threads claim chunks with an atomic counter, so the
// caller never waits for a worker that has not started: a worker that cannot
// get a core simply finds no chunk left when it wakes.
struct Job {
  const RangeFn* fn;
  int64_t n;
  int64_t num_chunks;
  std::atomic<int64_t> next{0};
  std::atomic<int> participants{0};
  std::mutex error_mu;
  std::exception_ptr error;

  void run_chunks() {
    for (int64_t c = next.fetch_add(1, std::memory_order_relaxed); c < num_chunks;
         c = next.fetch_add(1, std::memory_order_relaxed)) {
      try {
        const int64_t begin = n * c / num_chunks, end = n * (c + 1) / num_chunks;
        if (begin < end) (*fn)(begin, end);
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mu);
        if (!error) error = std::current_exception();
      }
    }
  }
};

class ThreadPool {
 public:
  // Returns false (and does nothing) when the pool is busy with another caller.
  bool try_run(int64_t n, int num_threads, int64_t num_chunks, const RangeFn& fn) {
    std::unique_lock<std::mutex> run_lock(run_mu_, std::try_to_lock);
    if (!run_lock.owns_lock()) return false;
    ensure_workers(num_threads - 1);
    Job job;
    job.fn = &fn;
    job.n = n;
    job.num_chunks = num_chunks;
    {
      std::lock_guard<std::mutex> lock(mu_);
      job_ = &job;
      wanted_ = num_threads - 1;
      ++generation_;
    }
    work_cv_.notify_all();
    job.run_chunks();
    {
      // Close the job: a worker that wakes from now on finds nothing to join.
      std::lock_guard<std::mutex> lock(mu_);
      job_ = nullptr;
    }
    // Remaining participants are running their last chunk.
    while (job.participants.load(std::memory_order_acquire) != 0) std::this_thread::yield();
    if (job.error) std::rethrow_exception(job.error);
    return true;
  }

 private:
  void ensure_workers(int count) {
    while (int(workers_.size()) < count) {
      const int index = int(workers_.size());
      workers_.emplace_back([this, index] { worker_loop(index); });
    }
  }

  void worker_loop(int index) {
    t_inside_pool = true;
    uint64_t seen = 0;
    for (;;) {
      Job* job = nullptr;
      {
        std::unique_lock<std::mutex> lock(mu_);
        work_cv_.wait(lock, [&] { return generation_ != seen; });
        seen = generation_;
        // Only the first `wanted_` workers join, so a call never uses more
        // threads than torch.get_num_threads() allowed.
        if (job_ != nullptr && index < wanted_) {
          job = job_;
          job->participants.fetch_add(1, std::memory_order_relaxed);
        }
      }
      if (job != nullptr) {
        job->run_chunks();
        job->participants.fetch_sub(1, std::memory_order_release);
      }
    }
  }

  std::mutex run_mu_;  // one parallel_for at a time
  std::mutex mu_;      // guards job_, wanted_, generation_
  std::condition_variable work_cv_;
  std::vector<std::thread> workers_;
  uint64_t generation_ = 0;
  Job* job_ = nullptr;
  int wanted_ = 0;
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

// The GNU OpenMP ABI entry points parallel_for needs. GOMP_parallel runs
// fn(data) on num_threads threads (the caller included) and returns when all
// are done.
struct OpenMPRuntime {
  void (*parallel)(void (*fn)(void*), void* data, unsigned num_threads, unsigned flags);
  int (*in_parallel)();
  std::string path;
};

std::atomic<const OpenMPRuntime*> g_openmp{nullptr};

void run_job_on_team(void* data) {
  const bool was_inside = t_inside_pool;
  t_inside_pool = true;  // a nested parallel_for runs inline
  static_cast<Job*>(data)->run_chunks();
  t_inside_pool = was_inside;
}

bool is_openmp_runtime(const char* path) {
  const char* base = std::strrchr(path, '/');
  base = base ? base + 1 : path;
  return std::strncmp(base, "libgomp", 7) == 0 || std::strncmp(base, "libiomp5", 8) == 0 ||
         std::strncmp(base, "libomp", 6) == 0;
}

}  // namespace

std::string use_process_openmp() {
  std::string found;
  dl_iterate_phdr(
      [](dl_phdr_info* info, size_t, void* out) {
        if (info->dlpi_name && is_openmp_runtime(info->dlpi_name)) {
          *static_cast<std::string*>(out) = info->dlpi_name;
          return 1;
        }
        return 0;
      },
      &found);
  if (found.empty()) return "";
  // RTLD_NOLOAD: only a runtime that is already there (torch's), never a new one.
  void* handle = dlopen(found.c_str(), RTLD_LAZY | RTLD_NOLOAD);
  if (handle == nullptr) return "";
  auto* runtime = new OpenMPRuntime{
      reinterpret_cast<decltype(OpenMPRuntime::parallel)>(dlsym(handle, "GOMP_parallel")),
      reinterpret_cast<decltype(OpenMPRuntime::in_parallel)>(dlsym(handle, "omp_in_parallel")),
      found};
  if (runtime->parallel == nullptr || runtime->in_parallel == nullptr) {
    delete runtime;
    return "";
  }
  g_openmp.store(runtime);  // never freed: a loop may still be reading the old one
  return found;
}

void use_thread_pool() { g_openmp.store(nullptr); }

std::string threading_runtime() {
  const OpenMPRuntime* omp = g_openmp.load();
  return omp ? "openmp " + omp->path : "pool";
}

int threads_for(int64_t bytes, int64_t rows, int max_threads) {
  int64_t n = std::min<int64_t>({int64_t(max_threads), rows, bytes / kMinBytesPerThread});
  return int(std::max<int64_t>(n, 1));
}

void parallel_for(int64_t n, int num_threads, const RangeFn& fn, int64_t max_chunks) {
  if (n <= 0) return;
  const int threads = int(std::min<int64_t>(std::max(num_threads, 1), n));
  if (max_chunks <= 0) max_chunks = int64_t(threads) * kChunksPerThread;
  const int64_t chunks = std::max<int64_t>(threads, std::min(n, max_chunks));
  if (threads == 1 || t_inside_pool) return fn(0, n);
  const OpenMPRuntime* omp = g_openmp.load();
  if (omp != nullptr && !omp->in_parallel()) {
    Job job;
    job.fn = &fn;
    job.n = n;
    job.num_chunks = chunks;
    omp->parallel(&run_job_on_team, &job, unsigned(threads), 0);
    if (job.error) std::rethrow_exception(job.error);
    return;
  }
  if (!pool().try_run(n, threads, chunks, fn)) fn(0, n);
}

}  // namespace reward_engine::cpu
