package org.espnetmobile.demo

/**
 * ExecuTorch through the project's C++ runner (src/main/cpp, built from
 * converters/executorch/cpp_runner) instead of the ExecuTorch AAR. Only present
 * when the app is built with -Pespnet.nativeRunner=true.
 */
class NativeRunner(path: String) : AutoCloseable {
    private var handle: Long = nativeLoad(path)

    /** Logits for one float32 input laid out as [shape] (NCHW, from the manifest). */
    fun run(input: FloatArray, shape: IntArray): FloatArray {
        check(handle != 0L) { "runner is closed" }
        return nativeRun(handle, input, shape)
    }

    /** Runs a .bpte's bundled cases; one line per case, "PASS" or "FAIL" with its max error. */
    fun verifyBundled(atol: Double, rtol: Double): String = nativeVerifyBundled(handle, atol, rtol)

    override fun close() {
        if (handle != 0L) nativeClose(handle)
        handle = 0L
    }

    companion object {
        /** True when libespnet_et_jni.so was packaged (the native build was enabled). */
        val available: Boolean = runCatching { System.loadLibrary("espnet_et_jni") }.isSuccess

        @JvmStatic private external fun nativeLoad(path: String): Long
        @JvmStatic private external fun nativeRun(handle: Long, input: FloatArray, shape: IntArray): FloatArray
        @JvmStatic private external fun nativeVerifyBundled(handle: Long, atol: Double, rtol: Double): String
        @JvmStatic private external fun nativeClose(handle: Long)
    }
}
