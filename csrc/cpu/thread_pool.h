// Parallel loops for the CPU kernels.
//
// The extension does not link OpenMP: torch's CPU wheel ships its own libgomp,
// and a second OpenMP runtime in the process oversubscribes the cores. Two ways
// to run a loop, both capped by the thread count the Python wrapper passes with
// every call (torch.get_num_threads()):
//  - torch's own OpenMP team, found at run time among the libraries already
//    loaded (use_process_openmp). This is the default from Python: the threads
//    that just ran a torch matmul are still spinning, waiting for work, and on a
//    small machine they would otherwise steal the cores from a second pool.
//  - a small persistent std::thread pool, when no OpenMP runtime is loaded.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

namespace reward_engine::cpu {

using RangeFn = std::function<void(int64_t begin, int64_t end)>;

// Runs fn over [0, n) split into contiguous chunks that the calling thread and
// up to num_threads - 1 pool workers claim one at a time; returns when all are
// done. Runs inline when num_threads <= 1, when called from inside a pool
// worker, or when another thread is using the pool. Rethrows the first
// exception a chunk threw.
// max_chunks caps how finely [0, n) is split (default: a few chunks per thread);
// pass n to make every index its own chunk when items differ a lot in cost.
void parallel_for(int64_t n, int num_threads, const RangeFn& fn, int64_t max_chunks = 0);

// How many threads to use for `bytes` of memory traffic spread over `rows`
// rows: one per kMinBytesPerThread, at most max_threads and at most rows.
// Below that size waking a thread costs more than it saves.
int threads_for(int64_t bytes, int64_t rows, int max_threads);

// Looks for an OpenMP runtime already loaded in the process (libgomp, libiomp5
// or libomp, all of which export the GOMP entry points) and runs parallel_for
// on it from now on. Returns its path, or "" (and keeps the pool) if none is
// loaded.
std::string use_process_openmp();

// Runs parallel_for on the own thread pool from now on.
void use_thread_pool();

// "openmp <path>" or "pool".
std::string threading_runtime();

}  // namespace reward_engine::cpu
