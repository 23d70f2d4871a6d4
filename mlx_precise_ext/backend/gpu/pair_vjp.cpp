// eval_gpu of the gradients' pair primitives (pair_vjp_primitives.h) that
// have no kernel in the builds without CUDA (Metal, no GPU): a clear error,
// never a silent move to the CPU. (PairBroadcast is a view and runs
// everywhere: pair_vjp.cpp; PairSum, PairRows, PairLayerNormVJP and
// PairCrossEntropy have one eval_gpu per backend: backend/metal/pair_ops.cpp,
// backend/no_gpu.cpp. CUDA: backend/cuda/pair_ops.cpp and rfft_conv.cpp.)
#include <stdexcept>
#include <string>

#include "pair_vjp_primitives.h"

namespace mlx_precise {

namespace {
[[noreturn]] void no_gpu_kernel(const char* op) {
  throw std::runtime_error(
      std::string(op) +
      ": gradients through pairs (mlx_precise.pair, M2-BERT "
      "precision=\"exact\") run on the CPU and CUDA only in this version "
      "(Metal has the pair sum, take_rows, layer_norm and cross_entropy "
      "gradients, not this one); "
      "pass stream=mx.cpu (or mx.set_default_device(mx.cpu))");
}
} // namespace

void PairRFFTCorrelate::eval_gpu(
    const std::vector<mx::array>&,
    std::vector<mx::array>&) {
  no_gpu_kernel("pair rfft_conv gradient");
}

} // namespace mlx_precise
