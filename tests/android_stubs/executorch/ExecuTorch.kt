// API stub of executorch-android 1.5.1 (org.pytorch:executorch-android), for compile checks only.
//
// Written for tests/test_android_app_compiles.py from the published Kotlin sources:
//   repo   github.com/pytorch/executorch
//   path   extension/android/executorch_android/src/main/java/org/pytorch/executorch/
//   commit cff6f4dd32e630945b7188512c1f2b4f102b05ad (main, 2026-08-22, version.txt 1.5.0)
// The v1.5.1 tag was not in the snapshot we could read; the members below are the same at
// release/1.4 (e4d02f41f7, version 1.4.1) and at that main commit, so 1.5.1 has them too.
// Kinds are kept as published: Tensor's data accessors are Kotlin properties (dataAsFloatArray),
// not getX() methods; Module.load takes a nullable path; forward is vararg. Bodies only throw.
// Left out: members the app does not need (LLM/ASR/training modules, Buffer overloads,
// BackendOptionsMap and the Module.load overload that takes it, which main added on 2026-07-29).
package org.pytorch.executorch

import java.io.Closeable

private fun stub(): Nothing = throw UnsupportedOperationException("API stub for compile checks")

enum class DType(@JvmField val jniCode: Int) {
    UINT8(0), INT8(1), INT16(2), INT32(3), INT64(4), HALF(5), FLOAT(6), DOUBLE(7),
    COMPLEX_HALF(8), COMPLEX_FLOAT(9), COMPLEX_DOUBLE(10), BOOL(11), QINT8(12), QUINT8(13),
    QINT32(14), BFLOAT16(15), QINT4X2(16), QINT2X4(17), BITS1X8(18), BITS2X4(19), BITS4X2(20),
    BITS8(21), BITS16(22),
}

abstract class Tensor internal constructor(shape: LongArray) {
    @JvmField protected val shape: LongArray = shape.copyOf()

    fun numel(): Long = stub()
    fun shape(): LongArray = stub()
    abstract fun dtype(): DType
    fun dtypeJniCode(): Int = stub()

    open val dataAsByteArray: ByteArray get() = stub()
    open val dataAsShortArray: ShortArray get() = stub()
    open val dataAsUnsignedByteArray: ByteArray get() = stub()
    open val dataAsIntArray: IntArray get() = stub()
    open val dataAsFloatArray: FloatArray get() = stub()
    open val dataAsLongArray: LongArray get() = stub()
    open val dataAsDoubleArray: DoubleArray get() = stub()

    fun toByteArray(): ByteArray = stub()

    companion object {
        @JvmStatic fun fromBlobUnsigned(data: ByteArray, shape: LongArray): Tensor = stub()
        @JvmStatic fun fromBlob(data: ByteArray, shape: LongArray): Tensor = stub()
        @JvmStatic fun fromBlob(data: IntArray, shape: LongArray): Tensor = stub()
        @JvmStatic fun fromBlob(data: FloatArray, shape: LongArray): Tensor = stub()
        @JvmStatic fun fromBlob(data: ShortArray, shape: LongArray): Tensor = stub()
        @JvmStatic fun fromBlob(data: LongArray, shape: LongArray): Tensor = stub()
        @JvmStatic fun fromBlob(data: DoubleArray, shape: LongArray): Tensor = stub()
    }
}

class EValue private constructor(@JvmField val mTypeCode: Int) {
    @JvmField var mData: Any? = null

    val isNone: Boolean get() = stub()
    val isTensor: Boolean get() = stub()
    val isBool: Boolean get() = stub()
    val isInt: Boolean get() = stub()
    val isDouble: Boolean get() = stub()
    val isString: Boolean get() = stub()

    fun toTensor(): Tensor = stub()
    fun toBool(): Boolean = stub()
    fun toInt(): Long = stub()
    fun toDouble(): Double = stub()
    fun toStr(): String = stub()

    companion object {
        @JvmStatic fun optionalNone(): EValue = stub()
        @JvmStatic fun from(tensor: Tensor): EValue = stub()
        @JvmStatic fun from(value: Boolean): EValue = stub()
        @JvmStatic fun from(value: Long): EValue = stub()
        @JvmStatic fun from(value: Double): EValue = stub()
        @JvmStatic fun from(value: String): EValue = stub()
    }
}

class MethodMetadata internal constructor(val name: String, val backends: Array<String>)

open class Module private constructor() : Closeable {
    open fun forward(vararg inputs: EValue): Array<EValue> = stub()
    open fun execute(methodName: String, vararg inputs: EValue): Array<EValue> = stub()
    open fun loadMethod(methodName: String): Unit = stub()
    open fun getMethods(): Array<String> = stub()
    open fun getMethodMetadata(name: String): MethodMetadata = stub()
    open fun readLogBuffer(): Array<String>? = stub()
    open fun destroy(): Unit = stub()
    override fun close(): Unit = stub()

    companion object {
        const val LOAD_MODE_FILE = 0
        const val LOAD_MODE_MMAP = 1
        const val LOAD_MODE_MMAP_USE_MLOCK = 2
        const val LOAD_MODE_MMAP_USE_MLOCK_IGNORE_ERRORS = 3

        @JvmStatic
        @JvmOverloads
        fun load(modelPath: String?, loadMode: Int = LOAD_MODE_FILE, numThreads: Int = 0): Module = stub()

        @JvmStatic fun readLogBufferStatic(): Array<String>? = stub()
    }
}

class ExecuTorchRuntime private constructor() {
    companion object {
        @JvmStatic fun getRuntime(): ExecuTorchRuntime = stub()
        @JvmStatic fun validateFilePath(path: String?, description: String): Unit = stub()
        @JvmStatic fun getRegisteredOps(): Array<String> = stub()
        @JvmStatic fun getRegisteredBackends(): Array<String> = stub()
    }
}

open class ExecutorchRuntimeException(val errorCode: Int, details: String?) : RuntimeException(details) {
    constructor(errorCode: Int, details: String?, cause: Throwable?) : this(errorCode, details)

    fun getDetailedError(): String = stub()
}
