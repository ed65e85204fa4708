package org.espnetmobile.core

/** What a runtime returns: (1, C, H, W) logits in NCHW order, or an (H, W) class-index mask. */
class ModelOutput private constructor(val logits: FloatArray?, val mask: IntArray?) {
    companion object {
        fun logits(values: FloatArray) = ModelOutput(values, null)
        fun mask(indices: IntArray) = ModelOutput(null, indices)
    }
}

/** One loaded artifact on one compute unit. Implementations live in the apps (ExecuTorch, LiteRT, Core ML). */
interface SegmentationRunner : AutoCloseable {
    /** What actually runs, e.g. "LiteRT GPU" or "LiteRT CPU (GPU unavailable: ...)". */
    val description: String

    fun run(input: ModelInput): ModelOutput

    override fun close() {}
}

class AccuracyReport(
    val modelId: String,
    val runner: String,
    val precision: Precision,
    val metrics: ParityMetrics,
    val verdict: ParityVerdict,
    /** Milliseconds per golden item, in order (the first includes any lazy initialisation). */
    val latenciesMs: List<Double>,
) {
    val passed: Boolean get() = verdict.passed

    /** A plain-text summary for logs and test output. */
    fun summary(): String = buildString {
        val f = ParityThresholds::fmt
        appendLine("$modelId on $runner (${precision.key}): ${if (passed) "PASS" else "FAIL"}")
        appendLine(
            "  pixel agreement ${f(metrics.pixelAgreement)}, mIoU vs reference ${f(metrics.miou)}, " +
                "max abs error ${f(metrics.maxAbsError)}, mean abs error ${f(metrics.meanAbsError)}, " +
                "max rel error ${f(metrics.maxRelAbsError)} (net of fp16 rounding ${f(metrics.netMaxRelAbsError)}), " +
                "SQNR ${f(metrics.sqnrDb)} dB",
        )
        for (c in verdict.checks) appendLine("  ${c.status} ${c.key}: ${f(c.value)} vs ${f(c.limit)} ${c.note}".trimEnd())
        for ((i, item) in metrics.items.withIndex()) {
            val ms = latenciesMs.getOrNull(i)?.let { String.format(java.util.Locale.ROOT, "%.1f ms", it) } ?: ""
            appendLine("  ${item.name}: agreement ${f(item.pixelAgreement)}, mIoU ${f(item.miou)}, max abs ${f(item.maxAbsError)} $ms".trimEnd())
        }
    }
}

/**
 * The on-device accuracy check: run every golden input of the bundle through [runner] and
 * compare with the reference logits, against the manifest's thresholds for [precision].
 */
object AccuracyCheck {
    fun run(
        bundle: Bundle,
        precision: Precision,
        inputLayout: Layout,
        runner: SegmentationRunner,
        onItem: (index: Int, item: ItemMetrics) -> Unit = { _, _ -> },
    ): AccuracyReport {
        val m = bundle.manifest
        if (m.golden.isEmpty()) throw BundleException("${bundle.files.description} has no golden items to check against")
        val acc = ParityAccumulator(m.numClasses)
        val latencies = ArrayList<Double>()
        for ((index, item) in m.golden.withIndex()) {
            val input = goldenModelInput(bundle, item, inputLayout)
            val start = System.nanoTime()
            val out = runner.run(input)
            latencies.add((System.nanoTime() - start) / 1e6)
            val h = item.logits.shape[2]
            val w = item.logits.shape[3]
            val metrics = when {
                out.logits != null -> acc.addLogits(item.name, out.logits, bundle.goldenLogits(item), h, w, item.logits.dtype)
                out.mask != null -> acc.addMask(item.name, Postprocess.maskFromIndices(out.mask, m.numClasses, h, w), bundle.goldenMask(item))
                else -> throw IllegalStateException("runner returned nothing")
            }
            onItem(index, metrics)
        }
        val metrics = acc.result()
        return AccuracyReport(m.modelId, runner.description, precision, metrics,
            ParityThresholds.evaluate(metrics, m.thresholdsFor(precision), precision), latencies)
    }

    /** The golden input (stored float32 NCHW in [0, 1]) in the layout, dtype and value range the artifact takes. */
    fun goldenModelInput(bundle: Bundle, item: GoldenItem, layout: Layout): ModelInput {
        val spec = bundle.manifest.input
        val nchw = bundle.goldenInput(item)
        val h = spec.height
        val w = spec.width
        val values = if (layout == Layout.NCHW) nchw else Layouts.nchwToNhwc(nchw, 3, h, w)
        val shape = if (layout == Layout.NCHW) listOf(1, 3, h, w) else listOf(1, h, w, 3)
        return when (spec.dtype) {
            "float32" -> {
                val lo = spec.valueMin
                val hi = spec.valueMax
                val scaled = if (lo == 0.0 && hi == 1.0) values else FloatArray(values.size) { (lo + values[it] * (hi - lo)).toFloat() }
                ModelInput(shape, layout, scaled, null)
            }
            "uint8" -> ModelInput(shape, layout, null, ByteArray(values.size) {
                kotlin.math.floor(values[it].toDouble() * 255.0 + 0.5).toInt().coerceIn(0, 255).toByte()
            })
            else -> throw IllegalArgumentException("unsupported input dtype ${spec.dtype}")
        }
    }
}
