// et_runner: run one ExecuTorch program (.pte) or bundled program (.bpte) from C++.
//
//   et_runner MODEL [INPUT.f32 OUTPUT.f32] [--shape 1,3,H,W] [--method NAME]
//             [--warmup N] [--repeat N]
//             [--verify-bundled [--atol X] [--rtol Y]]
//
// INPUT is raw little-endian float32 in the method's input layout (NCHW for the
// segmentation models); OUTPUT receives the first output's raw bytes (float32
// for logits). The output shape, dtype and latency are printed as `key: value`
// lines on stdout so that a caller can parse them. With --verify-bundled (a
// .bpte only) every bundled test case of the method is run and its outputs are
// compared with the bundled expected ones: |out - exp| <= atol + rtol * |exp|.
//
// Exit status: 0 success, 1 verification failed, 2 usage or load/run error.
//
// The program logic (load, run, compare) lives in et_runner_lib.{h,cpp}, so an
// Android app can call the same code through JNI; this file is only the CLI.

#include "et_runner_lib.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

namespace {

void usage(const char* argv0) {
  std::fprintf(stderr,
               "usage: %s MODEL.pte|MODEL.bpte [INPUT.f32 OUTPUT.f32] [--shape 1,3,H,W]\n"
               "          [--method forward] [--warmup N] [--repeat N]\n"
               "          [--verify-bundled [--atol X] [--rtol Y]]\n",
               argv0);
}

bool parse_shape(const std::string& text, std::vector<int32_t>* out) {
  out->clear();
  size_t start = 0;
  while (start <= text.size()) {
    size_t comma = text.find(',', start);
    std::string part = text.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    if (part.empty()) return false;
    char* end = nullptr;
    long v = std::strtol(part.c_str(), &end, 10);
    if (*end != '\0' || v <= 0 || v > (1L << 30)) return false;
    out->push_back(static_cast<int32_t>(v));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return !out->empty();
}

bool read_file(const std::string& path, std::vector<float>* out, std::string* error) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) {
    *error = "cannot open input file " + path;
    return false;
  }
  std::streamsize size = in.tellg();
  if (size % 4 != 0) {
    *error = "input file " + path + " has " + std::to_string(size) + " bytes, not a whole number of float32";
    return false;
  }
  out->resize(static_cast<size_t>(size / 4));
  in.seekg(0);
  if (!in.read(reinterpret_cast<char*>(out->data()), size)) {
    *error = "cannot read input file " + path;
    return false;
  }
  return true;
}

std::string join(const std::vector<int32_t>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + std::to_string(v[i]);
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> positional;
  std::vector<int32_t> shape;
  std::string method = "forward";
  bool verify = false;
  double atol = 1e-5, rtol = 1e-5;
  int warmup = 1, repeat = 1;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto need = [&](const char* name) -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "et_runner: %s needs a value\n", name);
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--shape") {
      if (!parse_shape(need("--shape"), &shape)) {
        std::fprintf(stderr, "et_runner: --shape wants comma-separated positive integers, e.g. 1,3,256,256\n");
        return 2;
      }
    } else if (a == "--method") {
      method = need("--method");
    } else if (a == "--verify-bundled") {
      verify = true;
    } else if (a == "--atol") {
      atol = std::atof(need("--atol"));
    } else if (a == "--rtol") {
      rtol = std::atof(need("--rtol"));
    } else if (a == "--warmup") {
      warmup = std::atoi(need("--warmup"));
    } else if (a == "--repeat") {
      repeat = std::atoi(need("--repeat"));
    } else if (a == "-h" || a == "--help") {
      usage(argv[0]);
      return 0;
    } else if (a.size() > 1 && a[0] == '-' && a[1] == '-') {
      std::fprintf(stderr, "et_runner: unknown option %s\n", a.c_str());
      usage(argv[0]);
      return 2;
    } else {
      positional.push_back(a);
    }
  }
  bool run_input = positional.size() == 3;
  if (!(positional.size() == 3 || (positional.size() == 1 && verify))) {
    usage(argv[0]);
    return 2;
  }
  if (repeat < 1 || warmup < 0) {
    std::fprintf(stderr, "et_runner: --repeat must be >= 1 and --warmup >= 0\n");
    return 2;
  }

  etrunner::Runner runner;
  std::string error;
  if (!runner.load(positional[0], method, &error)) {
    std::fprintf(stderr, "et_runner: %s\n", error.c_str());
    return 2;
  }
  std::printf("model: %s\n", positional[0].c_str());
  std::printf("bundled: %s\n", runner.is_bundled() ? "yes" : "no");
  std::printf("input_shape: %s\n", join(runner.input_shape()).c_str());

  int status = 0;
  if (run_input) {
    std::vector<float> input;
    if (!read_file(positional[1], &input, &error)) {
      std::fprintf(stderr, "et_runner: %s\n", error.c_str());
      return 2;
    }
    if (shape.empty()) shape = runner.input_shape();
    etrunner::Output out;
    etrunner::Timing timing;
    if (!runner.run(input.data(), input.size(), shape, warmup, repeat, &out, &timing, &error)) {
      std::fprintf(stderr, "et_runner: %s\n", error.c_str());
      return 2;
    }
    std::ofstream f(positional[2], std::ios::binary | std::ios::trunc);
    f.write(reinterpret_cast<const char*>(out.bytes.data()), static_cast<std::streamsize>(out.bytes.size()));
    if (!f) {
      std::fprintf(stderr, "et_runner: cannot write %s\n", positional[2].c_str());
      return 2;
    }
    std::printf("output_shape: %s\n", join(out.sizes).c_str());
    std::printf("output_dtype: %s\n", out.dtype.c_str());
    std::printf("load_ms: %.3f\n", runner.load_ms());
    std::printf("latency_ms: %.3f\n", timing.median_ms);
    std::printf("latency_min_ms: %.3f\n", timing.min_ms);
    std::printf("runs: %d\n", timing.runs);
  }
  if (verify) {
    std::vector<etrunner::CaseResult> results;
    if (!runner.verify_bundled(atol, rtol, &results, &error)) {
      std::fprintf(stderr, "et_runner: %s\n", error.c_str());
      return 2;
    }
    size_t failed = 0;
    for (const auto& r : results) {
      std::printf("bundled_case %zu: %s max_abs_err=%.6g worst_excess=%.6g%s%s\n", r.index,
                  r.passed ? "PASS" : "FAIL", r.max_abs_error, r.worst_excess, r.message.empty() ? "" : " ",
                  r.message.c_str());
      if (!r.passed) ++failed;
    }
    std::printf("verify: cases=%zu failed=%zu atol=%g rtol=%g\n", results.size(), failed, atol, rtol);
    if (failed) status = 1;
  }
  std::fflush(stdout);
  return status;
}
