package org.espnetmobile.demo

import android.content.Context
import com.google.ai.edge.litert.Accelerator
import com.google.ai.edge.litert.CompiledModel
import com.google.ai.edge.litert.Environment
import com.google.ai.edge.litert.LiteRtException
import com.google.ai.edge.litert.TensorBuffer
import org.espnetmobile.core.Artifact
import org.espnetmobile.core.Bundle
import org.espnetmobile.core.ComputeUnit
import org.espnetmobile.core.Manifest
import org.espnetmobile.core.ModelInput
import org.espnetmobile.core.ModelOutput
import org.espnetmobile.core.SegmentationRunner
import org.espnetmobile.core.Target
import org.pytorch.executorch.EValue
import org.pytorch.executorch.Module
import org.pytorch.executorch.Tensor

/** One choice in the runtime picker: an artifact of the bundle on one compute unit. */
data class RuntimeOption(val artifact: Artifact, val unit: ComputeUnit) {
    val runtimeName: String get() = if (artifact.target == Target.EXECUTORCH) "ExecuTorch" else "LiteRT"

    /** Whether the converter listed this compute unit for the artifact. */
    val listedInBundle: Boolean get() = unit in artifact.computeUnits

    val label: String get() = "$runtimeName · ${artifact.precision.key} · ${unit.label}" +
        if (artifact.target == Target.EXECUTORCH) " (${artifact.delegate})" else ""
}

object Runtimes {
    /** ExecuTorch delegates this app links (executorch-android ships XNNPACK; Vulkan and QNN need custom AARs). */
    private val EXECUTORCH_DELEGATES = setOf("xnnpack", "portable", "vulkan", "qnn")

    /**
     * The choices the bundle allows on Android, from its manifest alone: every ExecuTorch artifact
     * on the unit its delegate targets, and every .tflite on CPU, GPU and NPU (LiteRT falls back
     * to the CPU, with a message, when a unit is not available on the phone).
     */
    fun options(manifest: Manifest): List<RuntimeOption> = manifest.artifacts.flatMap { art ->
        when (art.target) {
            Target.EXECUTORCH ->
                if (art.delegate in EXECUTORCH_DELEGATES) listOf(RuntimeOption(art, art.computeUnits.firstOrNull() ?: ComputeUnit.CPU)) else emptyList()
            Target.TFLITE -> ComputeUnit.values().map { RuntimeOption(art, it) }
            Target.COREML -> emptyList()
        }
    }

    fun open(context: Context, bundle: Bundle, option: RuntimeOption): SegmentationRunner = when (option.artifact.target) {
        Target.EXECUTORCH -> ExecuTorchRunner(materializeArtifact(context, bundle, option.artifact).path, option, bundle.manifest)
        Target.TFLITE -> LiteRtRunner.open(context, verifiedAssetPath(bundle, option.artifact), option, bundle.manifest)
        Target.COREML -> throw IllegalArgumentException("Core ML artifacts run on Apple devices only")
    }
}

/** A .pte through ExecuTorch's Java API. The delegate was chosen at export time. */
class ExecuTorchRunner(path: String, private val option: RuntimeOption, private val manifest: Manifest) : SegmentationRunner {
    private val module: Module = Module.load(path)

    override val description: String = "ExecuTorch ${option.artifact.delegate} (${option.artifact.precision.key})"

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

/** A .tflite through LiteRT's CompiledModel API on the chosen accelerator, or the CPU when it is unavailable. */
class LiteRtRunner private constructor(
    private val env: Environment,
    private val model: CompiledModel,
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
        private fun accelerator(unit: ComputeUnit) = when (unit) {
            ComputeUnit.CPU -> Accelerator.CPU
            ComputeUnit.GPU -> Accelerator.GPU
            ComputeUnit.NPU -> Accelerator.NPU
        }

        fun open(context: Context, assetPath: String, option: RuntimeOption, manifest: Manifest): LiteRtRunner {
            val env = Environment.create()
            val wanted = accelerator(option.unit)
            val available = env.getAvailableAccelerators()
            var used = wanted
            var note = ""
            if (wanted != Accelerator.CPU && wanted !in available) {
                used = Accelerator.CPU
                note = " - ${option.unit.label} is not available on this phone " +
                    "(available: ${available.joinToString { it.name }}); running on the CPU"
            }
            val model = try {
                CompiledModel.create(context.assets, assetPath, CompiledModel.Options(used), env)
            } catch (e: LiteRtException) {
                if (used == Accelerator.CPU) {
                    env.close()
                    throw e
                }
                note = " - ${option.unit.label} could not compile this model (${e.message}); running on the CPU"
                used = Accelerator.CPU
                CompiledModel.create(context.assets, assetPath, CompiledModel.Options(Accelerator.CPU), env)
            }
            val name = if (used == Accelerator.CPU) "CPU" else option.unit.label
            return LiteRtRunner(env, model, model.createInputBuffers(), model.createOutputBuffers(), manifest,
                "LiteRT $name (${option.artifact.precision.key})$note")
        }
    }
}
