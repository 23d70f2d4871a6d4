#pragma once

#include <string>

namespace mlx_precise {

// What each mode promises (docs/design.md, "The contract"):
//   Float32  float32 arithmetic, documented order.
//   Extended every intermediate has >= 48 significant bits (float64 registers
//            on CPU and CUDA); the output is rounded to float32 once.
//   DoubleDouble the double-word (float32 pair) algorithm, same operations in
//            the same order on every backend: identical output bits everywhere.
enum class Precision { Float32, Extended, DoubleDouble };

Precision parse_precision(const std::string& name, const char* op_name);
const char* precision_name(Precision p);

} // namespace mlx_precise
