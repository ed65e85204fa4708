// API stub of LiteRT 2.3.0 (com.google.ai.edge.litert:litert), for compile checks only.
//
// Written for tests/test_android_app_compiles.py from the published Kotlin sources:
//   repo   github.com/google-ai-edge/LiteRT
//   path   litert/kotlin/src/main/kotlin/com/google/ai/edge/litert/
//   commit f67457790c9c2ab67347d6fe53270e8d3df20868 (main, 2026-08-21; litert/version.bzl:
//          LITERT_EXPERIMENTAL_VERSION = "2.3.0", the version being prepared)
// The v2.3.0 tag was not in the snapshot we could read; the members below are also those of
// release/2.2.0 (145c7523ff08d5e57ab5c582141775eea47da9c7) except Environment.Option
// SystemGpuAcceleratorHandle and NpuCompatibilityChecker.Samsung, which the app does not use.
// Kinds are kept as published: Environment.getAvailableAccelerators() is a method,
// CompiledModel.Options takes vararg accelerators, NpuAcceleratorProvider.downloadLibrary is a
// suspend function, the create() factories are @JvmStatic @JvmOverloads with default arguments.
// Left out: ModelProvider/ModelSelector (need androidx lifecycle and Guava types), GpuOptions and
// QualcommOptions fields the app does not set, TensorBufferRequirements. Bodies only throw.
package com.google.ai.edge.litert

import android.content.Context
import android.content.res.AssetManager

private fun stub(): Nothing = throw UnsupportedOperationException("API stub for compile checks")

enum class Accelerator private constructor(val value: Int) {
    NONE(0), CPU(1), GPU(2), NPU(3);
}

abstract class JniHandle internal constructor(internal val handle: Long) : AutoCloseable {
    protected fun assertNotDestroyed(): Unit = stub()
    protected abstract fun destroy()
    final override fun close(): Unit = stub()
}

enum class Status(val code: Int) {
    Ok(0), ErrorInvalidArgument(1), ErrorMemoryAllocationFailure(2), ErrorRuntimeFailure(3),
    ErrorMissingInputTensor(4), ErrorUnsupported(5), ErrorNotFound(6), ErrorTimeoutExpired(7),
    ErrorWrongVersion(8), ErrorUnknown(9), ErrorAlreadyExists(10), ErrorCancelled(11),
    ErrorFileIO(500), ErrorInvalidFlatbuffer(501), ErrorDynamicLoading(502), ErrorSerialization(503),
    ErrorCompilation(504);

    companion object {
        fun fromCode(code: Int): Status = stub()
    }
}

class LiteRtException(private val status: Status, message: String) : Exception(message) {
    constructor(code: Int, message: String) : this(Status.fromCode(code), message)
}

class Environment private constructor(handle: Long) : JniHandle(handle) {
    enum class Option private constructor(val value: Int) {
        CompilerPluginLibraryDir(0),
        DispatchLibraryDir(1),
        SystemRuntimeHandle(23),
        SystemGpuAcceleratorHandle(30),
    }

    override fun destroy(): Unit = stub()

    @Throws(LiteRtException::class)
    fun getAvailableAccelerators(): Set<Accelerator> = stub()

    companion object {
        @Throws(LiteRtException::class)
        @JvmOverloads
        @JvmStatic
        fun create(context: Context, options: Map<Option, String> = mapOf(), enableCompilerCache: Boolean = true): Environment = stub()

        @Throws(LiteRtException::class)
        @JvmOverloads
        @JvmStatic
        fun create(options: Map<Option, String> = mapOf()): Environment = stub()

        @Throws(LiteRtException::class)
        @JvmOverloads
        @JvmStatic
        fun create(
            context: Context,
            npuAcceleratorProvider: NpuAcceleratorProvider,
            options: Map<Option, String> = mapOf(),
            enableCompilerCache: Boolean = true,
        ): Environment = stub()

        @Throws(LiteRtException::class)
        @JvmOverloads
        @JvmStatic
        fun create(npuAcceleratorProvider: NpuAcceleratorProvider, options: Map<Option, String> = mapOf()): Environment = stub()
    }
}

interface NpuCompatibilityChecker {
    fun isDeviceSupported(): Boolean

    companion object {
        val Qualcomm: NpuCompatibilityChecker get() = stub()
        val Mediatek: NpuCompatibilityChecker get() = stub()
        val GoogleTensor: NpuCompatibilityChecker get() = stub()
        val Samsung: NpuCompatibilityChecker get() = stub()
        val Default: NpuCompatibilityChecker get() = stub()
    }
}

interface NpuAcceleratorProvider {
    fun isDeviceSupported(): Boolean
    fun isLibraryReady(): Boolean
    suspend fun downloadLibrary()
    fun getLibraryDir(): String
}

class BuiltinNpuAcceleratorProvider @JvmOverloads constructor(
    private val context: Context,
    private val npuCompatibilityChecker: NpuCompatibilityChecker = NpuCompatibilityChecker.Default,
) : NpuAcceleratorProvider {
    override fun isDeviceSupported(): Boolean = stub()
    override fun isLibraryReady(): Boolean = stub()
    override suspend fun downloadLibrary(): Unit = stub()
    override fun getLibraryDir(): String = stub()
}

data class TensorType @JvmOverloads constructor(val elementType: ElementType, val layout: Layout? = null) {
    enum class ElementType { INT, FLOAT, INT8, BOOLEAN, INT64 }

    data class Layout @JvmOverloads constructor(val dimensions: List<Int>, val strides: List<Int> = listOf()) {
        val rank: Int get() = stub()
        val hasStrides: Boolean get() = stub()
    }
}

class CompiledModel private constructor(handle: Long) : JniHandle(handle) {
    data class CpuOptions constructor(
        val numThreads: Int? = null,
        val xnnPackFlags: Int? = null,
        val xnnPackWeightCachePath: String? = null,
    )

    class Options constructor(internal val accelerators: Set<Accelerator>) {
        constructor(vararg accelerators: Accelerator) : this(setOf(*accelerators))

        var cpuOptions: CpuOptions? = null

        companion object {
            @JvmStatic val CPU: Options get() = stub()
        }
    }

    @Throws(LiteRtException::class)
    fun createInputBuffer(inputName: String, signature: String = ""): TensorBuffer = stub()

    @Throws(LiteRtException::class)
    fun createOutputBuffer(outputName: String, signature: String = ""): TensorBuffer = stub()

    @Throws(LiteRtException::class)
    @JvmOverloads
    fun createInputBuffers(signatureIndex: Int = 0): List<TensorBuffer> = stub()

    @Throws(LiteRtException::class)
    fun createInputBuffers(signature: String): List<TensorBuffer> = stub()

    @Throws(LiteRtException::class)
    @JvmOverloads
    fun createOutputBuffers(signatureIndex: Int = 0): List<TensorBuffer> = stub()

    @Throws(LiteRtException::class)
    fun createOutputBuffers(signature: String): List<TensorBuffer> = stub()

    @Throws(LiteRtException::class)
    @JvmOverloads
    fun run(inputs: List<TensorBuffer>, signatureIndex: Int = 0): List<TensorBuffer> = stub()

    @Throws(LiteRtException::class)
    @JvmOverloads
    fun run(inputs: List<TensorBuffer>, outputs: List<TensorBuffer>, signatureIndex: Int = 0): Unit = stub()

    @Throws(LiteRtException::class)
    fun run(inputs: List<TensorBuffer>, outputs: List<TensorBuffer>, signature: String): Unit = stub()

    fun getInputTensorType(inputName: String, signature: String = ""): TensorType = stub()
    fun getOutputTensorType(outputName: String, signature: String = ""): TensorType = stub()

    override fun destroy(): Unit = stub()

    companion object {
        @Throws(LiteRtException::class)
        @JvmOverloads
        @JvmStatic
        fun create(assetManager: AssetManager, assetName: String, options: Options = Options.CPU, optionalEnv: Environment? = null): CompiledModel = stub()

        @Throws(LiteRtException::class)
        @JvmOverloads
        @JvmStatic
        fun create(filePath: String, options: Options = Options.CPU, optionalEnv: Environment? = null): CompiledModel = stub()
    }
}

class TensorBuffer internal constructor(handle: Long) : JniHandle(handle) {
    @Throws(LiteRtException::class) fun writeInt(data: IntArray): Unit = stub()
    @Throws(LiteRtException::class) fun writeFloat(data: FloatArray): Unit = stub()
    @Throws(LiteRtException::class) fun writeInt8(data: ByteArray): Unit = stub()
    @Throws(LiteRtException::class) fun writeBoolean(data: BooleanArray): Unit = stub()
    @Throws(LiteRtException::class) fun writeLong(data: LongArray): Unit = stub()
    @Throws(LiteRtException::class) fun readInt(): IntArray = stub()
    @Throws(LiteRtException::class) fun readFloat(): FloatArray = stub()
    @Throws(LiteRtException::class) fun readInt8(): ByteArray = stub()
    @Throws(LiteRtException::class) fun readBoolean(): BooleanArray = stub()
    @Throws(LiteRtException::class) fun readLong(): LongArray = stub()
    override fun destroy(): Unit = stub()
}
