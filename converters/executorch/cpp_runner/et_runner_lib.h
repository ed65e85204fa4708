// Loading and running an ExecuTorch program from C++, shared by the et_runner
// CLI and (on Android) a JNI wrapper. Depends only on the ExecuTorch runtime
// (Module, BufferDataLoader, TensorPtr); .bpte files are read with the small
// flatbuffer reader in bundled_reader.h, so the devtools library is not needed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace etrunner {

struct Output {
  std::vector<int32_t> sizes;
  std::string dtype;           // "float32", "int32", ...
  std::vector<uint8_t> bytes;  // raw contiguous data
};

struct Timing {
  double median_ms = 0;
  double min_ms = 0;
  int runs = 0;
};

struct CaseResult {
  size_t index = 0;
  bool passed = false;
  double max_abs_error = 0;  // over all outputs of the case
  double worst_excess = 0;   // max of |out-exp| - (atol + rtol*|exp|); > 0 means a failure
  std::string message;       // why it failed when not a tolerance failure
};

class Runner {
 public:
  Runner();
  ~Runner();
  Runner(const Runner&) = delete;
  Runner& operator=(const Runner&) = delete;

  // Load a .pte or .bpte (recognised by its flatbuffer file identifier) and
  // prepare `method` (delegate initialisation happens here, not per run).
  bool load(const std::string& path, const std::string& method, std::string* error);

  bool is_bundled() const;
  double load_ms() const;
  // Shape of the method's first input as recorded in the program.
  std::vector<int32_t> input_shape() const;

  // Run the method on one float32 input; `warmup` untimed runs, then `repeat`
  // timed ones. The output of the last run is returned.
  bool run(const float* data, size_t count, const std::vector<int32_t>& shape, int warmup, int repeat,
           Output* out, Timing* timing, std::string* error);

  // Run every bundled test case of the method and compare with its expected
  // outputs. Returns false only when the cases cannot be run at all.
  bool verify_bundled(double atol, double rtol, std::vector<CaseResult>* results, std::string* error);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace etrunner
