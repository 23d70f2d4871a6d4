// Error-message text without iostreams. Some toolchains link libstdc++ into the
// extension statically (GCC 13 in /opt/gcc on the H200 host): its streams then
// meet the locale of the libstdc++ that Python and libmlx loaded, and the first
// number written into a std::ostringstream crashed. Strings alone are safe.
#pragma once

#include <string>
#include <string_view>
#include <type_traits>

#include "mlx/array.h"

namespace mlx_precise {

namespace mx = mlx::core;

inline std::string to_text(mx::Dtype t) {
  switch (t.val()) {
    case mx::Dtype::Val::bool_:
      return "bool";
    case mx::Dtype::Val::uint8:
      return "uint8";
    case mx::Dtype::Val::uint16:
      return "uint16";
    case mx::Dtype::Val::uint32:
      return "uint32";
    case mx::Dtype::Val::uint64:
      return "uint64";
    case mx::Dtype::Val::int8:
      return "int8";
    case mx::Dtype::Val::int16:
      return "int16";
    case mx::Dtype::Val::int32:
      return "int32";
    case mx::Dtype::Val::int64:
      return "int64";
    case mx::Dtype::Val::float16:
      return "float16";
    case mx::Dtype::Val::float32:
      return "float32";
    case mx::Dtype::Val::float64:
      return "float64";
    case mx::Dtype::Val::bfloat16:
      return "bfloat16";
    case mx::Dtype::Val::complex64:
      return "complex64";
  }
  return "an unknown dtype";
}

// A shape as Python writes a tuple: (), (3,), (2, 3).
inline std::string to_text(const mx::Shape& s) {
  std::string text = "(";
  for (size_t i = 0; i < s.size(); ++i)
    text += (i ? ", " : "") + std::to_string(s[i]);
  return text + (s.size() == 1 ? ",)" : ")");
}

inline std::string to_text(std::string_view s) {
  return std::string(s);
}

template <class T, class = std::enable_if_t<std::is_arithmetic_v<T>>>
inline std::string to_text(T x) {
  return std::to_string(x);
}

// The pieces' text, concatenated.
template <class... Pieces>
std::string message(const Pieces&... pieces) {
  std::string text;
  ((text += to_text(pieces)), ...);
  return text;
}

} // namespace mlx_precise
