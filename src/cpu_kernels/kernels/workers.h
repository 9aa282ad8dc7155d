// The kernels' pool of worker threads (each kernel library has its own), shared by conv.cc and
// dnnl.cc, and SameValues, their check that a kept filter is still the one given. Header-only:
// every library is one translation unit (src/cpu_kernels/build.py).
#ifndef GOOGLENET_KERNELS_WORKERS_H_
#define GOOGLENET_KERNELS_WORKERS_H_

#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace {

// ---- a small pool of worker threads that sleep (no spinning) between calls ----
// Waking a sleeping thread takes tens of microseconds on some machines, as long as a small
// convolution's GEMM. So work is handed out as many small pieces claimed one at a time: the
// calling thread starts at once and a worker helps with whatever is left when it wakes; the call
// never waits for a worker that has not started.

class Workers {
 public:
  static Workers &Get() {
    // Never destroyed: its threads end with the process. Rebuilt in a forked child, which
    // inherits the object but not the threads.
    static Workers *workers = nullptr;
    static pid_t owner = 0;
    static std::mutex create;
    std::lock_guard<std::mutex> lock(create);
    if (workers == nullptr || owner != getpid()) {
      workers = new Workers(UsableCores() - 1);
      owner = getpid();
    }
    return *workers;
  }

  int64_t Threads() const { return count_ + 1; }

  // Runs task(0) ... task(pieces - 1), each once, in any order, on the calling thread and on the
  // pool's threads; on the calling thread alone when another call is using the pool (MindSpore
  // may run kernels concurrently) or when the pool has no threads.
  void Run(int64_t pieces, const std::function<void(int64_t)> &task) {
    std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
    if (!busy.owns_lock() || pieces <= 1 || count_ == 0) {
      for (int64_t piece = 0; piece < pieces; ++piece) task(piece);
      return;
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      task_ = &task;
      pieces_ = pieces;
      next_.store(0);
      open_ = true;
      ++generation_;
    }
    wake_.notify_all();
    Work();
    std::unique_lock<std::mutex> lock(mutex_);
    open_ = false;  // a worker waking from now on finds nothing to do
    done_.wait(lock, [this] { return active_ == 0; });
  }

 private:
  explicit Workers(int count) : count_(std::max(count, 0)) {
    for (int i = 0; i < count_; ++i) std::thread([this] { Loop(); }).detach();
  }

  // $GOOGLENET_KERNEL_THREADS if set, else the cores this process may run on.
  static int UsableCores() {
    if (const char *wanted = std::getenv("GOOGLENET_KERNEL_THREADS")) {
      const int threads = std::atoi(wanted);
      if (threads > 0) return threads;
    }
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(CPU_COUNT(&set), 1);
    return static_cast<int>(std::max(std::thread::hardware_concurrency(), 1u));
  }

  void Work() {
    for (int64_t piece = next_.fetch_add(1); piece < pieces_; piece = next_.fetch_add(1)) (*task_)(piece);
  }

  void Loop() {
    uint64_t seen = 0;
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      wake_.wait(lock, [&] { return generation_ != seen; });
      seen = generation_;
      if (!open_) continue;
      ++active_;
      lock.unlock();
      Work();
      lock.lock();
      if (--active_ == 0) done_.notify_one();
    }
  }

  const int count_;
  std::mutex busy_, mutex_;
  std::condition_variable wake_, done_;
  const std::function<void(int64_t)> *task_ = nullptr;
  int64_t pieces_ = 0;
  std::atomic<int64_t> next_{0};
  bool open_ = false;
  int active_ = 0;
  uint64_t generation_ = 0;
};

// Whether w[0 .. kept.size()) holds exactly the values of `kept`, bit for bit; compared in pieces
// on the worker threads (a network's filters are tens of megabytes, read on every call).
bool SameValues(const std::vector<float> &kept, const float *w) {
  constexpr int64_t kPiece = 1 << 15;
  const int64_t count = static_cast<int64_t>(kept.size());
  std::atomic<bool> same{true};
  Workers::Get().Run((count + kPiece - 1) / kPiece, [&](int64_t piece) {
    const int64_t begin = piece * kPiece;
    if (same.load(std::memory_order_relaxed) &&
        std::memcmp(kept.data() + begin, w + begin, std::min(kPiece, count - begin) * sizeof(float)) != 0) {
      same.store(false, std::memory_order_relaxed);
    }
  });
  return same.load();
}

}  // namespace

#endif  // GOOGLENET_KERNELS_WORKERS_H_
