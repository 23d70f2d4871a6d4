#include "precision.h"

#include <stdexcept>

namespace mlx_precise {

Precision parse_precision(const std::string& name, const char* op_name) {
  if (name == "float32")
    return Precision::Float32;
  if (name == "extended")
    return Precision::Extended;
  if (name == "dd")
    return Precision::DoubleDouble;
  throw std::invalid_argument(
      std::string(op_name) + ": unknown precision '" + name +
      "'; pass precision=\"float32\", \"extended\" or \"dd\"");
}

const char* precision_name(Precision p) {
  switch (p) {
    case Precision::Float32:
      return "float32";
    case Precision::Extended:
      return "extended";
    default:
      return "dd";
  }
}

} // namespace mlx_precise
