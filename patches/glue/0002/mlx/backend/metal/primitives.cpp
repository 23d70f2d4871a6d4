
void StrictAddmm::eval_gpu(const std::vector<array>& inputs, array& out) {
  throw std::runtime_error("[StrictAddmm::eval_gpu] Metal precision= NYI.");
}

void StrictLayerNorm::eval_gpu(const std::vector<array>& inputs, array& out) {
  throw std::runtime_error("[StrictLayerNorm::eval_gpu] Metal precision= NYI.");
}

void StrictLayerNormVJP::eval_gpu(
    const std::vector<array>& inputs,
    std::vector<array>& outputs) {
  throw std::runtime_error(
      "[StrictLayerNormVJP::eval_gpu] Metal precision= NYI.");
}
