// eval_gpu of the pair ops (pair_primitives.h) in the Metal build.
// Their GPU kernels are not written yet (issue #11): a clear error that says
// what to do instead, never a silent move to the CPU.
#include <stdexcept>
#include <string>

#include "pair_primitives.h"
#include "pair_vjp_primitives.h"

namespace mlx_precise {

namespace {
[[noreturn]] void not_on_gpu(const char* op) {
  throw std::runtime_error(
      std::string(op) +
      ": the pair ops (mlx_precise.pair, M2-BERT precision=\"exact\") run on "
      "the CPU only in this version; pass stream=mx.cpu (or "
      "mx.set_default_device(mx.cpu))");
}
} // namespace

void PairElementwise::eval_gpu(
    const std::vector<mx::array>&,
    std::vector<mx::array>&) {
  not_on_gpu("pair elementwise ops");
}

void PairAddmm::eval_gpu(
    const std::vector<mx::array>&,
    std::vector<mx::array>&) {
  not_on_gpu("pair addmm / linear");
}

void PairLayerNorm::eval_gpu(
    const std::vector<mx::array>&,
    std::vector<mx::array>&) {
  not_on_gpu("pair layer_norm");
}

void PairRFFTConv::eval_gpu(
    const std::vector<mx::array>&,
    std::vector<mx::array>&) {
  not_on_gpu("pair rfft_conv");
}

void PairRows::eval_gpu(
    const std::vector<mx::array>&,
    std::vector<mx::array>&) {
  not_on_gpu("pair take_rows");
}

} // namespace mlx_precise
