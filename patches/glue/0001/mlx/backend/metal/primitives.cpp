
void RFFTConv::eval_gpu(const std::vector<array>& inputs, array& out) {
  throw std::runtime_error("[RFFTConv::eval_gpu] Metal rfft_conv NYI.");
}

void BiasGradient::eval_gpu(const std::vector<array>& inputs, array& out) {
  throw std::runtime_error("[BiasGradient::eval_gpu] Metal rfft_conv NYI.");
}
