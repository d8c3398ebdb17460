// A small persistent thread pool for the CPU kernels.
//
// The extension does not link OpenMP: torch's CPU wheel ships its own libgomp,
// and a second OpenMP runtime in the process oversubscribes the cores. Instead
// the Python wrapper passes torch.get_num_threads() with every call and the
// pool runs at most that many threads (the calling thread included).
#pragma once

#include <cstdint>
#include <functional>

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

}  // namespace reward_engine::cpu
