package org.espnetmobile.demo

import android.content.Context
import android.os.Build
import com.google.ai.edge.litert.Accelerator
import com.google.ai.edge.litert.BuiltinNpuAcceleratorProvider
import com.google.ai.edge.litert.CompiledModel
import com.google.ai.edge.litert.Environment
import com.google.ai.edge.litert.LiteRtException
import com.google.ai.edge.litert.TensorBuffer
import org.espnetmobile.core.AndroidRuntime
import org.espnetmobile.core.Bundle
import org.espnetmobile.core.ComputeUnit
import org.espnetmobile.core.DeviceRuntimes
import org.espnetmobile.core.Manifest
import org.espnetmobile.core.ModelInput
import org.espnetmobile.core.ModelOutput
import org.espnetmobile.core.RuntimeOption
import org.espnetmobile.core.SegmentationRunner
import org.espnetmobile.core.Target
import org.pytorch.executorch.EValue
import org.pytorch.executorch.ExecuTorchRuntime
import org.pytorch.executorch.Module
import org.pytorch.executorch.Tensor
import java.io.File

object Runtimes {
    /**
     * Asks the runtimes what this phone and this build offer: ExecuTorch's registered backends,
     * and for LiteRT the accelerators its Environment reports, the NPU only through LiteRT's NPU
     * path (a supported SoC, a vendor dispatch library packaged with the app, and the Environment
     * created with the NPU accelerator provider listing Accelerator.NPU).
     */
    fun probe(context: Context): DeviceRuntimes {
        var etError: String? = null
        val etBackends = try {
            ExecuTorchRuntime.getRegisteredBackends().toSet()
        } catch (e: Throwable) { // UnsatisfiedLinkError when the native library is missing
            etError = e.message ?: e.toString()
            null
        }
        val units = LinkedHashMap<ComputeUnit, String?>()
        try {
            Environment.create(context).use { env ->
                val available = env.getAvailableAccelerators()
                units[ComputeUnit.CPU] = null
                units[ComputeUnit.GPU] = if (Accelerator.GPU in available) null else
                    "LiteRT reports no GPU accelerator on this phone (available: ${available.joinToString { it.name }})"
            }
        } catch (e: LiteRtException) {
            units[ComputeUnit.CPU] = "LiteRT could not start: ${e.message}"
            units[ComputeUnit.GPU] = "LiteRT could not start: ${e.message}"
        } catch (e: UnsatisfiedLinkError) { // litert_jni missing for this ABI
            units[ComputeUnit.CPU] = "LiteRT's native library is missing: ${e.message}"
            units[ComputeUnit.GPU] = "LiteRT's native library is missing: ${e.message}"
        }
        units[ComputeUnit.NPU] = units[ComputeUnit.CPU] ?: Npu.unavailableReason(context)
        return DeviceRuntimes(etBackends, etError, units, NativeRunner.available)
    }

    fun open(context: Context, bundle: Bundle, option: RuntimeOption): SegmentationRunner {
        option.disabledReason?.let { throw IllegalStateException("${option.label} cannot run here: $it") }
        return when (option.runtime) {
            AndroidRuntime.EXECUTORCH -> ExecuTorchRunner(materializeArtifact(context, bundle, option.artifact).path, option, bundle.manifest)
            AndroidRuntime.EXECUTORCH_NATIVE -> NativeExecuTorchRunner(materializeArtifact(context, bundle, option.artifact).path, option, bundle.manifest)
            AndroidRuntime.LITERT -> LiteRtRunner.open(context, verifiedAssetPath(bundle, option.artifact), option, bundle.manifest)
        }
    }
}

/**
 * LiteRT's NPU path as its documentation describes it: the model is compiled on the device (JIT) by
 * the vendor's compiler plugin, which the app must package with the vendor's dispatch library
 * (LiteRT's NPU runtime libraries, delivered with Play Feature Delivery or bundled as native libs).
 */
object Npu {
    private val DISPATCH_LIBRARY = Regex("^libLiteRtDispatch_[A-Za-z]+\\.so$")

    /** The accelerator provider LiteRT's NPU path starts from (SoC check and library folder). */
    fun provider(context: Context) = BuiltinNpuAcceleratorProvider(context)

    /** Null when the NPU can be used, else why not (shown on the disabled choice). */
    fun unavailableReason(context: Context): String? {
        val provider = provider(context)
        if (!provider.isDeviceSupported()) {
            val soc = if (Build.VERSION.SDK_INT >= Build.VERSION_CODES.S) "${Build.SOC_MANUFACTURER} ${Build.SOC_MODEL}" else Build.HARDWARE
            return "LiteRT's NPU path does not support this phone's SoC ($soc); it supports Qualcomm, MediaTek, " +
                "Samsung and Google Tensor (Android 16+) NPUs"
        }
        val libraryDir = provider.getLibraryDir()
        val dispatch = File(libraryDir).list()?.filter { DISPATCH_LIBRARY.matches(it) }.orEmpty()
        if (dispatch.isEmpty()) {
            return "this build packages no LiteRT NPU dispatch library (libLiteRtDispatch_*.so in $libraryDir); " +
                "add the vendor's NPU runtime libraries as android_demo/README.md describes"
        }
        return try {
            Environment.create(context, provider).use { env ->
                val available = env.getAvailableAccelerators()
                if (Accelerator.NPU in available) null
                else "LiteRT loaded ${dispatch.joinToString()} but reports no NPU accelerator (available: ${available.joinToString { it.name }})"
            }
        } catch (e: LiteRtException) {
            "LiteRT could not start with the NPU provider: ${e.message}"
        }
    }
}

/** A .pte through ExecuTorch's Kotlin API. The delegate was chosen at export time; the description names the backends the program uses. */
class ExecuTorchRunner(path: String, option: RuntimeOption, private val manifest: Manifest) : SegmentationRunner {
    private val module: Module = Module.load(path)

    override val description: String

    init {
        val backends = try {
            module.loadMethod("forward")
            module.getMethodMetadata("forward").backends.toList()
        } catch (e: RuntimeException) {
            module.destroy()
            throw e
        }
        val delegates = if (backends.isEmpty()) "portable CPU kernels (no delegate)" else backends.joinToString(" + ")
        description = "ExecuTorch · $delegates · ${option.artifact.precision.key} · ${option.artifact.file}"
    }

    override fun run(input: ModelInput): ModelOutput {
        val tensor = when {
            input.floats != null -> Tensor.fromBlob(input.floats!!, input.shapeLong)
            else -> Tensor.fromBlobUnsigned(input.bytes!!, input.shapeLong)
        }
        val out = module.forward(EValue.from(tensor))[0].toTensor()
        return if (manifest.output.isMask) ModelOutput.mask(out.dataAsIntArray) else ModelOutput.logits(out.dataAsFloatArray)
    }

    override fun close() = module.destroy()
}

/**
 * A .tflite through LiteRT's CompiledModel API. CPU and GPU: the GPU falls back to the CPU when it
 * cannot compile this model, and the description says so. NPU: the Environment carries the NPU
 * accelerator provider and the model is compiled for the NPU on the device; LiteRT runs ops the
 * vendor compiler does not take on the CPU (its API does not report that split). An NPU that
 * cannot compile the model is an error, not a silent CPU run.
 */
class LiteRtRunner private constructor(
    private val model: CompiledModel,
    private val env: Environment,
    private val inputs: List<TensorBuffer>,
    private val outputs: List<TensorBuffer>,
    private val manifest: Manifest,
    override val description: String,
) : SegmentationRunner {

    override fun run(input: ModelInput): ModelOutput {
        val floats = input.floats
            ?: throw IllegalArgumentException("this demo feeds LiteRT float32 input; the bundle's converter writes float I/O .tflite files")
        inputs[0].writeFloat(floats)
        model.run(inputs, outputs)
        return if (manifest.output.isMask) ModelOutput.mask(outputs[0].readInt()) else ModelOutput.logits(outputs[0].readFloat())
    }

    override fun close() {
        inputs.forEach { it.close() }
        outputs.forEach { it.close() }
        model.close()
        env.close()
    }

    companion object {
        fun open(context: Context, assetPath: String, option: RuntimeOption, manifest: Manifest): LiteRtRunner {
            val name = "${option.artifact.precision.key} · ${option.artifact.file}"
            return when (option.unit) {
                ComputeUnit.NPU -> {
                    val env = Environment.create(context, Npu.provider(context))
                    val model = try {
                        CompiledModel.create(context.assets, assetPath, CompiledModel.Options(Accelerator.NPU), env)
                    } catch (e: LiteRtException) {
                        env.close()
                        throw IllegalStateException("the NPU could not compile ${option.artifact.file}: ${e.message}", e)
                    }
                    create(model, env, manifest, "LiteRT · NPU (compiled on device; unsupported ops on the CPU) · $name")
                }
                ComputeUnit.GPU -> {
                    val env = Environment.create(context)
                    try {
                        val model = CompiledModel.create(context.assets, assetPath, CompiledModel.Options(Accelerator.GPU), env)
                        create(model, env, manifest, "LiteRT · GPU · $name")
                    } catch (e: LiteRtException) {
                        val model = try {
                            CompiledModel.create(context.assets, assetPath, CompiledModel.Options(Accelerator.CPU), env)
                        } catch (cpu: LiteRtException) {
                            env.close()
                            throw cpu
                        }
                        create(model, env, manifest, "LiteRT · CPU (XNNPACK) · $name - fell back from the GPU, which could not compile it: ${e.message}")
                    }
                }
                ComputeUnit.CPU -> {
                    val env = Environment.create(context)
                    val model = try {
                        CompiledModel.create(context.assets, assetPath, CompiledModel.Options(Accelerator.CPU), env)
                    } catch (e: LiteRtException) {
                        env.close()
                        throw e
                    }
                    create(model, env, manifest, "LiteRT · CPU (XNNPACK) · $name")
                }
            }
        }

        private fun create(model: CompiledModel, env: Environment, manifest: Manifest, description: String) =
            LiteRtRunner(model, env, model.createInputBuffers(), model.createOutputBuffers(), manifest, description)
    }
}
