package org.espnetmobile.core

/** The Android runtimes the sample app can drive. */
enum class AndroidRuntime(val label: String) {
    EXECUTORCH("ExecuTorch"),
    EXECUTORCH_NATIVE("ExecuTorch (C++ runner)"),
    LITERT("LiteRT"),
}

/**
 * What the phone and this build offer, found out at start-up by asking the runtimes themselves
 * (the app fills it from ExecuTorchRuntime.getRegisteredBackends() and LiteRT's Environment).
 *
 * @property executorchBackends backend names registered in the ExecuTorch library, e.g. "XnnpackBackend";
 *   null when ExecuTorch could not be loaded (then [executorchError] says why).
 * @property liteRtUnits for each compute unit: null when LiteRT can use it, else why not.
 * @property nativeRunner whether the optional C++ ExecuTorch runner was built into the app.
 */
data class DeviceRuntimes(
    val executorchBackends: Set<String>?,
    val executorchError: String? = null,
    val liteRtUnits: Map<ComputeUnit, String?>,
    val nativeRunner: Boolean = false,
)

/**
 * One choice in the runtime picker: an artifact on a runtime and compute unit. [disabledReason]
 * is null when it can run on this phone; otherwise the choice is shown disabled with the reason,
 * so no choice is a label that silently runs somewhere else.
 */
data class RuntimeOption(
    val artifact: Artifact,
    val runtime: AndroidRuntime,
    val unit: ComputeUnit,
    val disabledReason: String? = null,
) {
    val enabled: Boolean get() = disabledReason == null

    /** Whether the converter listed this compute unit for the artifact. */
    val listedInBundle: Boolean get() = unit in artifact.computeUnits

    val label: String
        get() = "${runtime.label} · ${artifact.precision.key} · ${unit.label}" +
            if (artifact.target == Target.EXECUTORCH) " (${artifact.delegate})" else ""
}

object RuntimeOptions {
    /** ExecuTorch delegate name in the manifest -> the backend the runtime must have registered. */
    val EXECUTORCH_BACKENDS = mapOf(
        "xnnpack" to "XnnpackBackend",
        "vulkan" to "VulkanBackend",
        "qnn" to "QnnBackend",
        "mediatek" to "NeuropilotBackend",
        "portable" to null,
    )

    /** Every choice the bundle allows on Android, each enabled or disabled with the reason. */
    fun build(manifest: Manifest, device: DeviceRuntimes): List<RuntimeOption> = manifest.artifacts.flatMap { art ->
        when (art.target) {
            Target.EXECUTORCH -> executorch(art, device)
            Target.TFLITE -> ComputeUnit.values().map { unit ->
                RuntimeOption(art, AndroidRuntime.LITERT, unit, device.liteRtUnits[unit]
                    ?: if (unit in device.liteRtUnits) null else "LiteRT did not report ${unit.label} on this phone")
            }
            Target.COREML -> emptyList()
        }
    }

    private fun executorch(art: Artifact, device: DeviceRuntimes): List<RuntimeOption> {
        val unit = art.computeUnits.firstOrNull() ?: ComputeUnit.CPU
        if (art.delegate !in EXECUTORCH_BACKENDS) {
            return listOf(RuntimeOption(art, AndroidRuntime.EXECUTORCH, unit,
                "the ${art.delegate} delegate is not one this app knows how to run on Android"))
        }
        val needed = EXECUTORCH_BACKENDS[art.delegate]
        val registered = device.executorchBackends
        val reason = when {
            registered == null -> "ExecuTorch could not be loaded: ${device.executorchError ?: "unknown error"}"
            needed != null && needed !in registered ->
                "this build's ExecuTorch library has no $needed (it registers: ${registered.sorted().joinToString().ifEmpty { "none" }}); " +
                    "link an executorch-android AAR built with the ${art.delegate} backend"
            else -> null
        }
        val options = mutableListOf(RuntimeOption(art, AndroidRuntime.EXECUTORCH, unit, reason))
        if (device.nativeRunner && art.delegate == "xnnpack" && art.precision != Precision.FP16) {
            options += RuntimeOption(art, AndroidRuntime.EXECUTORCH_NATIVE, unit)
        }
        return options
    }

    /** The choice to start with: the first enabled one, preferring an fp32 artifact on the CPU (the reference's twin). */
    fun default(options: List<RuntimeOption>): RuntimeOption? =
        options.firstOrNull { it.enabled && it.artifact.precision == Precision.FP32 && it.unit == ComputeUnit.CPU }
            ?: options.firstOrNull { it.enabled }
}
