#include "device_memory.h"

#include <atomic>

namespace mlx_precise {

namespace {
std::atomic<size_t> active{0};
std::atomic<size_t> peak{0};
std::atomic<bool> poison{false};
} // namespace

size_t device_active_memory() {
  return active.load();
}

size_t device_peak_memory() {
  return peak.load();
}

void reset_device_peak_memory() {
  peak.store(active.load());
}

void set_poison_device_memory(bool on) {
  poison.store(on);
}

bool poison_device_memory() {
  return poison.load();
}

void count_device_malloc(size_t bytes) {
  const size_t now = active.fetch_add(bytes) + bytes;
  size_t seen = peak.load();
  while (now > seen && !peak.compare_exchange_weak(seen, now)) {
  }
}

void count_device_free(size_t bytes) {
  active.fetch_sub(bytes);
}

} // namespace mlx_precise
