// Bytes of GPU memory that mlx-precise allocates itself, outside MLX's
// allocator (the CUDA backend's outputs and workspaces, backend/cuda/
// device_memory.cpp), so outside mx.get_active_memory / mx.get_peak_memory.
// Zero in builds whose GPU memory all comes from MLX's allocator (Metal, CPU).
#pragma once

#include <cstddef>

namespace mlx_precise {

size_t device_active_memory();
size_t device_peak_memory();
void reset_device_peak_memory();

// Tests: fill every new allocation with all-ones bytes (NaN as float32 and
// float64) before any kernel runs, so that an output a kernel fails to write
// shows.
void set_poison_device_memory(bool on);
bool poison_device_memory();

// Called by the allocating backend.
void count_device_malloc(size_t bytes);
void count_device_free(size_t bytes);

} // namespace mlx_precise
