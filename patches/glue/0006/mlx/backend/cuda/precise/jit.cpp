
CUfunction get_strict_kernel(int device, const std::string& name_expression) {
  cu::JitModule& module =
      cu::get_jit_module(cu::device(device), "precise_strict", []() {
        return std::make_tuple(
            false,
            std::string(jit_source_strict_kernels),
            strict_kernel_names());
      });
  return module.get_kernel(name_expression);
}
