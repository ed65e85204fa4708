// JNI bridge from the demo app to the ExecuTorch C++ runner library
// (converters/executorch/cpp_runner/et_runner_lib.h): the path used when the
// ExecuTorch AAR is not. Kotlin side: org.espnetmobile.demo.NativeRunner.
#include <jni.h>

#include <string>
#include <vector>

#include "et_runner_lib.h"

namespace {

etrunner::Runner* from_handle(jlong handle) { return reinterpret_cast<etrunner::Runner*>(handle); }

void throw_java(JNIEnv* env, const std::string& message) {
  jclass cls = env->FindClass("java/lang/IllegalStateException");
  if (cls != nullptr) env->ThrowNew(cls, message.c_str());
}

}  // namespace

extern "C" JNIEXPORT jlong JNICALL Java_org_espnetmobile_demo_NativeRunner_nativeLoad(JNIEnv* env, jclass,
                                                                                     jstring path) {
  const char* chars = env->GetStringUTFChars(path, nullptr);
  std::string file(chars);
  env->ReleaseStringUTFChars(path, chars);
  auto* runner = new etrunner::Runner();
  std::string error;
  if (!runner->load(file, "forward", &error)) {
    delete runner;
    throw_java(env, "cannot load " + file + ": " + error);
    return 0;
  }
  return reinterpret_cast<jlong>(runner);
}

extern "C" JNIEXPORT jfloatArray JNICALL Java_org_espnetmobile_demo_NativeRunner_nativeRun(
    JNIEnv* env, jclass, jlong handle, jfloatArray input, jintArray shape) {
  std::vector<int32_t> dims(env->GetArrayLength(shape));
  env->GetIntArrayRegion(shape, 0, static_cast<jsize>(dims.size()), dims.data());
  std::vector<float> data(env->GetArrayLength(input));
  env->GetFloatArrayRegion(input, 0, static_cast<jsize>(data.size()), data.data());
  etrunner::Output out;
  etrunner::Timing timing;
  std::string error;
  if (!from_handle(handle)->run(data.data(), data.size(), dims, 0, 1, &out, &timing, &error)) {
    throw_java(env, error);
    return nullptr;
  }
  if (out.dtype != "float32") {
    throw_java(env, "expected float32 logits, got " + out.dtype);
    return nullptr;
  }
  const auto count = static_cast<jsize>(out.bytes.size() / sizeof(float));
  jfloatArray result = env->NewFloatArray(count);
  env->SetFloatArrayRegion(result, 0, count, reinterpret_cast<const jfloat*>(out.bytes.data()));
  return result;
}

extern "C" JNIEXPORT jstring JNICALL Java_org_espnetmobile_demo_NativeRunner_nativeVerifyBundled(
    JNIEnv* env, jclass, jlong handle, jdouble atol, jdouble rtol) {
  std::vector<etrunner::CaseResult> results;
  std::string error;
  if (!from_handle(handle)->verify_bundled(atol, rtol, &results, &error)) {
    throw_java(env, error);
    return nullptr;
  }
  std::string report;
  for (const auto& r : results) {
    report += "case " + std::to_string(r.index) + (r.passed ? " PASS" : " FAIL") +
              " max_abs_error=" + std::to_string(r.max_abs_error) + (r.message.empty() ? "" : " " + r.message) + "\n";
  }
  return env->NewStringUTF(report.c_str());
}

extern "C" JNIEXPORT void JNICALL Java_org_espnetmobile_demo_NativeRunner_nativeClose(JNIEnv*, jclass, jlong handle) {
  delete from_handle(handle);
}
