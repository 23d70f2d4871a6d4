// GPU entry points of rfft_conv and the strict ops in a build with neither CUDA
// nor Metal: a clear error, never a silent move to the CPU.
#include <stdexcept>

#include "pair_primitives.h"
#include "pair_vjp_primitives.h"
#include "primitives.h"
#include "strict_primitives.h"

namespace mlx_precise {

namespace {
[[noreturn]] void no_gpu(const char* op) {
  throw std::runtime_error(
      std::string(op) +
      ": this build of mlx-precise has no GPU backend (it was built against MLX's CPU "
      "wheel); run it on the CPU with stream=mx.cpu (or mx.set_default_device(mx.cpu))");
}
} // namespace

void RFFTConv::eval_gpu(const std::vector<mx::array>&, mx::array&) {
  no_gpu("rfft_conv");
}

void RFFTConvGradients::eval_gpu(
    const std::vector<mx::array>&,
    std::vector<mx::array>&) {
  no_gpu("rfft_conv (gradients)");
}

void BiasGradient::eval_gpu(const std::vector<mx::array>&, mx::array&) {
  no_gpu("rfft_conv (bias gradient)");
}

void StrictAddmm::eval_gpu(const std::vector<mx::array>&, mx::array&) {
  no_gpu("addmm / linear (extended, dd)");
}

void StrictLayerNorm::eval_gpu(const std::vector<mx::array>&, mx::array&) {
  no_gpu("layer_norm (extended, dd)");
}

void StrictLayerNormVJP::eval_gpu(
    const std::vector<mx::array>&,
    std::vector<mx::array>&) {
  no_gpu("layer_norm gradient (extended, dd)");
}

void PairElementwise::eval_gpu(
    const std::vector<mx::array>&,
    std::vector<mx::array>&) {
  no_gpu("pair elementwise ops");
}

void PairAddmm::eval_gpu(
    const std::vector<mx::array>&,
    std::vector<mx::array>&) {
  no_gpu("pair addmm / linear");
}

void PairLayerNorm::eval_gpu(
    const std::vector<mx::array>&,
    std::vector<mx::array>&) {
  no_gpu("pair layer_norm");
}

void PairRFFTConv::eval_gpu(
    const std::vector<mx::array>&,
    std::vector<mx::array>&) {
  no_gpu("pair rfft_conv");
}

void PairRows::eval_gpu(
    const std::vector<mx::array>&,
    std::vector<mx::array>&) {
  no_gpu("pair take_rows");
}

void PairSum::eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) {
  no_gpu("pair sum");
}

void PairLayerNormVJP::eval_gpu(
    const std::vector<mx::array>&,
    std::vector<mx::array>&) {
  no_gpu("pair layer_norm gradient");
}

void PairCrossEntropy::eval_gpu(
    const std::vector<mx::array>&,
    std::vector<mx::array>&) {
  no_gpu("pair cross_entropy");
}

void PairRFFTCorrelate::eval_gpu(
    const std::vector<mx::array>&,
    std::vector<mx::array>&) {
  no_gpu("pair rfft_conv gradient");
}

} // namespace mlx_precise
