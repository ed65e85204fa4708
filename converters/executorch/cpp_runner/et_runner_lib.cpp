#include "et_runner_lib.h"

#include "bundled_reader.h"

#include <executorch/extension/data_loader/buffer_data_loader.h>
#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor.h>
#include <executorch/runtime/core/exec_aten/util/scalar_type_util.h>
#include <executorch/runtime/platform/runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <limits>

namespace etrunner {

using executorch::aten::ScalarType;
using executorch::aten::Tensor;
using executorch::extension::BufferDataLoader;
using executorch::extension::Module;
using executorch::extension::TensorPtr;
using executorch::runtime::Error;
using executorch::runtime::EValue;

namespace {

struct FreeDeleter {
  void operator()(uint8_t* p) const { std::free(p); }
};

std::string error_name(Error e) {
  switch (e) {
    case Error::Ok: return "Ok";
    case Error::Internal: return "Internal";
    case Error::InvalidState: return "InvalidState";
    case Error::EndOfMethod: return "EndOfMethod";
    case Error::NotSupported: return "NotSupported";
    case Error::NotImplemented: return "NotImplemented";
    case Error::InvalidArgument: return "InvalidArgument";
    case Error::InvalidType: return "InvalidType";
    case Error::OperatorMissing: return "OperatorMissing (a kernel library is not linked)";
    case Error::NotFound: return "NotFound";
    case Error::MemoryAllocationFailed: return "MemoryAllocationFailed";
    case Error::AccessFailed: return "AccessFailed";
    case Error::InvalidProgram: return "InvalidProgram";
    case Error::DelegateInvalidCompatibility: return "DelegateInvalidCompatibility (backend not registered?)";
    case Error::DelegateMemoryAllocationFailed: return "DelegateMemoryAllocationFailed";
    case Error::DelegateInvalidHandle: return "DelegateInvalidHandle";
    default: return "error " + std::to_string(static_cast<int>(e));
  }
}

std::string dtype_name(ScalarType t) {
  switch (t) {
    case ScalarType::Float: return "float32";
    case ScalarType::Double: return "float64";
    case ScalarType::Half: return "float16";
    case ScalarType::BFloat16: return "bfloat16";
    case ScalarType::Int: return "int32";
    case ScalarType::Long: return "int64";
    case ScalarType::Short: return "int16";
    case ScalarType::Char: return "int8";
    case ScalarType::Byte: return "uint8";
    case ScalarType::Bool: return "bool";
    default: return executorch::runtime::toString(t);
  }
}

// Element i of a contiguous buffer of type t as double; false if t is unsupported.
bool element(ScalarType t, const uint8_t* data, size_t i, double* out) {
  switch (t) {
    case ScalarType::Float: { float v; std::memcpy(&v, data + 4 * i, 4); *out = v; return true; }
    case ScalarType::Double: { double v; std::memcpy(&v, data + 8 * i, 8); *out = v; return true; }
    case ScalarType::Int: { int32_t v; std::memcpy(&v, data + 4 * i, 4); *out = v; return true; }
    case ScalarType::Long: { int64_t v; std::memcpy(&v, data + 8 * i, 8); *out = static_cast<double>(v); return true; }
    case ScalarType::Short: { int16_t v; std::memcpy(&v, data + 2 * i, 2); *out = v; return true; }
    case ScalarType::Char: *out = static_cast<int8_t>(data[i]); return true;
    case ScalarType::Byte: *out = data[i]; return true;
    case ScalarType::Bool: *out = data[i] ? 1.0 : 0.0; return true;
    default: return false;
  }
}

std::vector<int32_t> sizes_of(const Tensor& t) {
  std::vector<int32_t> s;
  for (auto d : t.sizes()) s.push_back(static_cast<int32_t>(d));
  return s;
}

std::string shape_text(const std::vector<int32_t>& v) {
  std::string s = "(";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + ")";
}

double now_ms() {
  using clock = std::chrono::steady_clock;
  return std::chrono::duration<double, std::milli>(clock::now().time_since_epoch()).count();
}

}  // namespace

struct Runner::Impl {
  std::unique_ptr<uint8_t, FreeDeleter> file;  // whole .bpte, 64-byte aligned
  size_t file_size = 0;
  fb::BundledProgram bundled;
  bool is_bundled = false;
  std::unique_ptr<Module> module;
  std::string method;
  std::vector<int32_t> input_shape;
  ScalarType input_type = ScalarType::Float;
  double load_ms = 0;

  bool execute(const std::vector<EValue>& inputs, std::vector<EValue>* outputs, std::string* error) {
    auto result = module->execute(method, inputs);
    if (!result.ok()) {
      *error = "executing method '" + method + "' failed: " + error_name(result.error());
      return false;
    }
    *outputs = std::move(*result);
    return true;
  }
};

Runner::Runner() : impl_(new Impl) {}
Runner::~Runner() = default;

bool Runner::is_bundled() const { return impl_->is_bundled; }
double Runner::load_ms() const { return impl_->load_ms; }
std::vector<int32_t> Runner::input_shape() const { return impl_->input_shape; }

bool Runner::load(const std::string& path, const std::string& method, std::string* error) {
  executorch::runtime::runtime_init();
  double t0 = now_ms();
  Impl& m = *impl_;
  m.method = method;

  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) {
    *error = "cannot open " + path;
    return false;
  }
  char ident[8] = {0};
  std::streamsize size = in.tellg();
  in.seekg(0);
  if (size >= 8) in.read(ident, 8);
  bool bundled = size >= 8 && std::memcmp(ident + 4, "BP08", 4) == 0;

  if (bundled) {
    // Program data inside a .bpte is 32-byte aligned relative to the file
    // start; keep the whole file in a 64-byte aligned block so that holds in memory.
    size_t n = static_cast<size_t>(size);
    size_t padded = (n + 63) / 64 * 64;
    m.file.reset(static_cast<uint8_t*>(std::aligned_alloc(64, padded)));
    if (!m.file) {
      *error = "out of memory reading " + path;
      return false;
    }
    in.seekg(0);
    if (!in.read(reinterpret_cast<char*>(m.file.get()), size)) {
      *error = "cannot read " + path;
      return false;
    }
    m.file_size = n;
    try {
      m.bundled = fb::parse_bundled(m.file.get(), n);
    } catch (const fb::Error& e) {
      *error = path + ": " + e.what();
      return false;
    }
    m.is_bundled = true;
    m.module = std::make_unique<Module>(
        std::make_unique<BufferDataLoader>(m.bundled.program, m.bundled.program_size));
  } else {
    m.module = std::make_unique<Module>(path, Module::LoadMode::Mmap);
  }

  Error err = m.module->load();
  if (err != Error::Ok) {
    *error = "loading program " + path + " failed: " + error_name(err);
    return false;
  }
  err = m.module->load_method(method);
  if (err != Error::Ok) {
    *error = "loading method '" + method + "' of " + path + " failed: " + error_name(err);
    return false;
  }
  auto meta = m.module->method_meta(method);
  if (!meta.ok()) {
    *error = "no metadata for method '" + method + "': " + error_name(meta.error());
    return false;
  }
  if (meta->num_inputs() > 0) {
    auto info = meta->input_tensor_meta(0);
    if (info.ok()) {
      for (auto d : info->sizes()) m.input_shape.push_back(d);
      m.input_type = info->scalar_type();
    }
  }
  m.load_ms = now_ms() - t0;
  return true;
}

bool Runner::run(const float* data, size_t count, const std::vector<int32_t>& shape, int warmup, int repeat,
                 Output* out, Timing* timing, std::string* error) {
  Impl& m = *impl_;
  size_t numel = 1;
  for (int32_t d : shape) numel *= static_cast<size_t>(d);
  if (numel != count) {
    *error = "input has " + std::to_string(count) + " float32 values but shape " + shape_text(shape) + " needs " +
             std::to_string(numel);
    return false;
  }
  if (!m.input_shape.empty() && shape != m.input_shape) {
    *error = "the program expects an input of shape " + shape_text(m.input_shape) + ", got " + shape_text(shape);
    return false;
  }
  if (m.input_type != ScalarType::Float) {
    *error = "the program's input is " + dtype_name(m.input_type) + ", this runner feeds float32";
    return false;
  }
  // The method may read but never writes its input; a private copy keeps the
  // caller's buffer const-correct.
  std::vector<float> input(data, data + count);
  std::vector<executorch::aten::SizesType> sizes(shape.begin(), shape.end());
  TensorPtr tensor = executorch::extension::from_blob(input.data(), sizes, ScalarType::Float);

  std::vector<EValue> inputs{EValue(*tensor)};
  std::vector<EValue> outputs;
  for (int i = 0; i < warmup; ++i) {
    if (!m.execute(inputs, &outputs, error)) return false;
  }
  std::vector<double> times;
  for (int i = 0; i < repeat; ++i) {
    double t0 = now_ms();
    if (!m.execute(inputs, &outputs, error)) return false;
    times.push_back(now_ms() - t0);
  }
  if (outputs.empty() || !outputs[0].isTensor()) {
    *error = "the method's first output is not a tensor";
    return false;
  }
  const Tensor& y = outputs[0].toTensor();
  out->sizes = sizes_of(y);
  out->dtype = dtype_name(y.scalar_type());
  const uint8_t* bytes = static_cast<const uint8_t*>(y.const_data_ptr());
  out->bytes.assign(bytes, bytes + y.nbytes());
  std::sort(times.begin(), times.end());
  timing->runs = static_cast<int>(times.size());
  timing->min_ms = times.front();
  size_t mid = times.size() / 2;
  timing->median_ms = times.size() % 2 ? times[mid] : 0.5 * (times[mid - 1] + times[mid]);
  return true;
}

bool Runner::verify_bundled(double atol, double rtol, std::vector<CaseResult>* results, std::string* error) {
  Impl& m = *impl_;
  if (!m.is_bundled) {
    *error = "--verify-bundled needs a bundled program (.bpte); this file is a plain .pte";
    return false;
  }
  const std::vector<fb::BundledCase>* cases = nullptr;
  for (const auto& suite : m.bundled.suites) {
    if (suite.first == m.method) cases = &suite.second;
  }
  if (!cases || cases->empty()) {
    *error = "the bundled program has no test case for method '" + m.method + "'";
    return false;
  }
  for (size_t ci = 0; ci < cases->size(); ++ci) {
    const fb::BundledCase& tc = (*cases)[ci];
    CaseResult r;
    r.index = ci;
    // Inputs: copies of the bundled data (kept alive until the run is done).
    std::vector<std::vector<uint8_t>> storage;
    std::vector<TensorPtr> tensors;
    std::vector<EValue> inputs;
    storage.reserve(tc.inputs.size());
    for (const auto& v : tc.inputs) {
      switch (v.kind) {
        case fb::BundledValue::kTensor: {
          storage.emplace_back(v.data, v.data + v.nbytes);
          std::vector<executorch::aten::SizesType> sizes(v.sizes.begin(), v.sizes.end());
          tensors.push_back(executorch::extension::from_blob(storage.back().data(), sizes,
                                                             static_cast<ScalarType>(v.scalar_type)));
          inputs.emplace_back(*tensors.back());
          break;
        }
        case fb::BundledValue::kInt: inputs.emplace_back(v.int_val); break;
        case fb::BundledValue::kBool: inputs.emplace_back(v.bool_val); break;
        case fb::BundledValue::kDouble: inputs.emplace_back(v.double_val); break;
        default: inputs.emplace_back(); break;
      }
    }
    std::vector<EValue> outputs;
    std::string run_error;
    if (!m.execute(inputs, &outputs, &run_error)) {
      r.message = run_error;
      results->push_back(r);
      continue;
    }
    if (outputs.size() < tc.expected.size()) {
      r.message = "method returned " + std::to_string(outputs.size()) + " outputs, " +
                  std::to_string(tc.expected.size()) + " expected";
      results->push_back(r);
      continue;
    }
    bool ok = true;
    double worst = -std::numeric_limits<double>::infinity();
    for (size_t oi = 0; oi < tc.expected.size() && ok; ++oi) {
      const fb::BundledValue& e = tc.expected[oi];
      if (e.kind != fb::BundledValue::kTensor) continue;  // only tensor outputs carry data to compare
      if (!outputs[oi].isTensor()) {
        r.message = "output " + std::to_string(oi) + " is not a tensor";
        ok = false;
        break;
      }
      const Tensor& y = outputs[oi].toTensor();
      std::vector<int32_t> ys = sizes_of(y);
      if (ys != e.sizes) {
        r.message = "output " + std::to_string(oi) + " has shape " + shape_text(ys) + ", expected " +
                    shape_text(e.sizes);
        ok = false;
        break;
      }
      ScalarType et = static_cast<ScalarType>(e.scalar_type);
      size_t n = static_cast<size_t>(y.numel());
      if (e.nbytes != n * executorch::runtime::elementSize(et)) {
        r.message = "expected output " + std::to_string(oi) + " holds " + std::to_string(e.nbytes) +
                    " bytes for " + std::to_string(n) + " elements of " + dtype_name(et);
        ok = false;
        break;
      }
      const uint8_t* yd = static_cast<const uint8_t*>(y.const_data_ptr());
      for (size_t i = 0; i < n; ++i) {
        double a = 0, b = 0;
        if (!element(y.scalar_type(), yd, i, &a) || !element(et, e.data, i, &b)) {
          r.message = "cannot compare dtype " + dtype_name(y.scalar_type()) + " with " + dtype_name(et);
          ok = false;
          break;
        }
        double diff = std::fabs(a - b);
        if (std::isnan(a) || std::isnan(b)) diff = (std::isnan(a) && std::isnan(b)) ? 0 : INFINITY;
        r.max_abs_error = std::max(r.max_abs_error, diff);
        worst = std::max(worst, diff - (atol + rtol * std::fabs(b)));
      }
    }
    r.worst_excess = std::isfinite(worst) || worst > 0 ? worst : 0;
    r.passed = ok && r.message.empty() && !(worst > 0);
    results->push_back(r);
  }
  return true;
}

}  // namespace etrunner
