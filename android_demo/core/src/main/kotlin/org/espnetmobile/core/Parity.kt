package org.espnetmobile.core

import kotlin.math.abs
import kotlin.math.log10
import kotlin.math.max

/**
 * How far a runtime's output is from the reference, per golden item and over all of them.
 *
 * The definitions are those of `espnet_mobile/parity.py` and `espnet_mobile/metrics.py`: pixel
 * agreement is the share of pixels whose argmax equals the reference argmax, averaged over items;
 * the mIoU (in percent) is the mean IoU of the argmax against the reference argmax over the classes
 * that occur in either, from confusion counts pooled over items; max and mean absolute error and
 * SQNR are pooled over every value of every item; the relative error is the largest absolute error
 * divided by the largest |reference logit| of all items (the `max_rel_abs_error` threshold).
 *
 * The golden logits may be stored as float16 (Python compares with the float32 reference it has in
 * memory; the app has only the stored copy). Rounding to half precision alone moves a value by up to
 * half an fp16 step, about 5e-4 of the largest logit, more than the fp32 limit of 1e-4. So
 * [ParityMetrics.netMaxRelAbsError] subtracts that rounding bound from each difference before
 * dividing (a lower bound of the error against the unrounded reference), and `max_rel_abs_error`
 * is checked on it. [ParityMetrics.maxRelAbsError] is the raw figure.
 */
class ItemMetrics(
    val name: String,
    val pixels: Int,
    val agreeing: Int,
    /** Mean IoU over the classes present in either argmax, in percent. */
    val miou: Double,
    /** NaN for a mask-only output. */
    val maxAbsError: Double,
    val meanAbsError: Double,
    val maxAbsReference: Double,
    val maxRelAbsError: Double,
    val netMaxRelAbsError: Double,
    val sqnrDb: Double,
) {
    val pixelAgreement: Double get() = agreeing.toDouble() / pixels
}

class ParityMetrics(
    val items: List<ItemMetrics>,
    val numClasses: Int,
    /** Mean of the items' pixel agreement. */
    val pixelAgreement: Double,
    /** Per class IoU against the reference argmax, in [0, 1]; NaN where the class is in neither. */
    val iou: DoubleArray,
    /** Mean of [iou] over the classes present, in percent (as metrics.miou in Python). */
    val miou: Double,
    val maxAbsError: Double,
    val meanAbsError: Double,
    val maxRelAbsError: Double,
    val netMaxRelAbsError: Double,
    val sqnrDb: Double,
    /** False when the runtime returned masks (an argmax head): the logit metrics are NaN then. */
    val hasLogits: Boolean,
)

class ParityAccumulator(val numClasses: Int) {
    private val items = ArrayList<ItemMetrics>()
    private val intersection = LongArray(numClasses)
    private val predicted = LongArray(numClasses)
    private val expected = LongArray(numClasses)
    private var absSum = 0.0
    private var valueCount = 0L
    private var signal = 0.0
    private var noise = 0.0
    private var logitItems = 0
    private var peakReference = 0.0
    private var peakNet = 0.0
    private var sawNaN = false

    /**
     * Compare candidate logits with reference logits, both (1, C, H, W) NCHW.
     * [referenceDtype] is how the reference was stored ("float16" or "float32").
     */
    fun addLogits(
        name: String,
        candidate: FloatArray,
        reference: FloatArray,
        height: Int,
        width: Int,
        referenceDtype: String = "float32",
    ): ItemMetrics {
        val n = numClasses * height * width
        require(candidate.size == n) { "$name: runtime output has ${candidate.size} values, expected $n (1 x $numClasses x $height x $width)" }
        require(reference.size == n) { "$name: reference has ${reference.size} values, expected $n" }
        val halfStored = referenceDtype == "float16"
        var maxAbs = 0.0
        var maxNet = 0.0
        var maxRef = 0.0
        var sum = 0.0
        var sig = 0.0
        var err2 = 0.0
        for (i in 0 until n) {
            val r = reference[i].toDouble()
            val d = abs(candidate[i].toDouble() - r)
            if (d > maxAbs) maxAbs = d
            val net = if (halfStored) d - Float16.halfUlp(reference[i]).toDouble() else d
            if (net > maxNet) maxNet = net
            val ar = abs(r)
            if (ar > maxRef) maxRef = ar
            sum += d
            sig += r * r
            err2 += d * d
        }
        if (candidate.any { it.isNaN() }) { // NaN compares false above; make it visible
            maxAbs = Double.NaN
            maxNet = Double.NaN
            sawNaN = true
        }
        if (maxRef > peakReference) peakReference = maxRef
        if (maxNet > peakNet) peakNet = maxNet
        absSum += sum
        valueCount += n
        signal += sig
        noise += err2
        logitItems++
        val cand = Postprocess.argmax(candidate, numClasses, height, width)
        val ref = Postprocess.argmax(reference, numClasses, height, width)
        return record(name, cand, ref, maxAbs, sum / n, maxRef, maxNet, sqnr(sig, err2))
    }

    /** Compare a candidate mask (from a model with an argmax head) with the reference mask. */
    fun addMask(name: String, candidate: Mask, reference: Mask): ItemMetrics {
        require(candidate.width == reference.width && candidate.height == reference.height) {
            "$name: mask ${candidate.width}x${candidate.height} differs from reference ${reference.width}x${reference.height}"
        }
        return record(name, candidate, reference, Double.NaN, Double.NaN, Double.NaN, Double.NaN, Double.NaN)
    }

    private fun record(
        name: String, cand: Mask, ref: Mask, maxAbs: Double, meanAbs: Double, maxRef: Double, maxNet: Double, sqnrDb: Double,
    ): ItemMetrics {
        val inter = LongArray(numClasses)
        val pred = LongArray(numClasses)
        val exp = LongArray(numClasses)
        var agree = 0
        for (p in cand.classes.indices) {
            val a = cand.classes[p]
            val b = ref.classes[p]
            pred[a]++
            exp[b]++
            if (a == b) {
                agree++
                inter[a]++
            }
        }
        for (c in 0 until numClasses) {
            intersection[c] += inter[c]
            predicted[c] += pred[c]
            expected[c] += exp[c]
        }
        val item = ItemMetrics(
            name = name,
            pixels = cand.classes.size,
            agreeing = agree,
            miou = meanIou(iou(inter, pred, exp)),
            maxAbsError = maxAbs,
            meanAbsError = meanAbs,
            maxAbsReference = maxRef,
            maxRelAbsError = maxAbs / maxRef,
            netMaxRelAbsError = max(0.0, maxNet) / maxRef,
            sqnrDb = sqnrDb,
        )
        items.add(item)
        return item
    }

    fun result(): ParityMetrics {
        require(items.isNotEmpty()) { "no items were compared" }
        val iou = iou(intersection, predicted, expected)
        val logits = logitItems == items.size
        return ParityMetrics(
            items = items.toList(),
            numClasses = numClasses,
            pixelAgreement = items.sumOf { it.pixelAgreement } / items.size,
            iou = iou,
            miou = meanIou(iou),
            maxAbsError = if (logits) maxOrNaN(items.map { it.maxAbsError }) else Double.NaN,
            meanAbsError = if (logits) absSum / valueCount else Double.NaN,
            maxRelAbsError = if (!logits || sawNaN) Double.NaN else maxOrNaN(items.map { it.maxAbsError }) / peakReference,
            netMaxRelAbsError = if (!logits || sawNaN) Double.NaN else max(0.0, peakNet) / peakReference,
            sqnrDb = if (logits) sqnr(signal, noise) else Double.NaN,
            hasLogits = logits,
        )
    }

    companion object {
        fun iou(inter: LongArray, pred: LongArray, exp: LongArray): DoubleArray = DoubleArray(inter.size) { c ->
            val union = pred[c] + exp[c] - inter[c]
            if (union == 0L) Double.NaN else inter[c].toDouble() / union
        }

        /** Mean over the classes present, in percent. */
        fun meanIou(iou: DoubleArray): Double {
            val present = iou.filter { !it.isNaN() }
            return if (present.isEmpty()) Double.NaN else present.sum() / present.size * 100.0
        }

        fun sqnr(signal: Double, noise: Double): Double = when {
            noise.isNaN() || signal.isNaN() -> Double.NaN
            noise == 0.0 -> Double.POSITIVE_INFINITY
            else -> 10.0 * log10(signal / noise)
        }

        private fun maxOrNaN(values: List<Double>): Double =
            if (values.any { it.isNaN() }) Double.NaN else values.maxOrNull() ?: Double.NaN
    }
}

enum class CheckStatus { PASS, FAIL, NOT_CHECKED }

data class ThresholdCheck(
    val key: String,
    val value: Double,
    val limit: Double,
    val status: CheckStatus,
    val note: String,
)

data class ParityVerdict(val precision: Precision, val checks: List<ThresholdCheck>) {
    /** True when no threshold fails and at least one was checked. */
    val passed: Boolean get() = checks.none { it.status == CheckStatus.FAIL } && checks.any { it.status == CheckStatus.PASS }
}

/** Pass/fail of [ParityMetrics] against a manifest's thresholds for one precision. */
object ParityThresholds {
    fun evaluate(metrics: ParityMetrics, limits: Map<String, Double>, precision: Precision): ParityVerdict {
        val checks = limits.map { (key, limit) -> check(metrics, key, limit) }
        return ParityVerdict(precision, checks)
    }

    private fun atLeast(key: String, value: Double, limit: Double, note: String = "") =
        ThresholdCheck(key, value, limit, if (!value.isNaN() && value >= limit) CheckStatus.PASS else CheckStatus.FAIL, note)

    private fun atMost(key: String, value: Double, limit: Double, note: String = "") =
        ThresholdCheck(key, value, limit, if (!value.isNaN() && value <= limit) CheckStatus.PASS else CheckStatus.FAIL, note)

    private fun notChecked(key: String, limit: Double, note: String) =
        ThresholdCheck(key, Double.NaN, limit, CheckStatus.NOT_CHECKED, note)

    private fun check(m: ParityMetrics, key: String, limit: Double): ThresholdCheck = when (key) {
        "min_pixel_agreement" -> atLeast(key, m.pixelAgreement, limit)
        "min_miou_vs_reference" -> atLeast(key, m.miou, limit)
        "max_rel_abs_error" ->
            if (!m.hasLogits) {
                notChecked(key, limit, "the artifact returns a mask, not logits")
            } else {
                atMost(
                    key, m.netMaxRelAbsError, limit,
                    "raw ${fmt(m.maxRelAbsError)}; the reference's float16 rounding is allowed for",
                )
            }
        "max_abs_error" ->
            if (!m.hasLogits) notChecked(key, limit, "the artifact returns a mask, not logits") else atMost(key, m.maxAbsError, limit)
        "min_sqnr_db" ->
            if (!m.hasLogits) notChecked(key, limit, "the artifact returns a mask, not logits") else atLeast(key, m.sqnrDb, limit)
        "max_miou_drop_points" ->
            notChecked(key, limit, "needs labelled images; the Python parity run on the dataset checks it")
        else -> notChecked(key, limit, "unknown to this app version")
    }

    fun fmt(v: Double): String = when {
        v.isNaN() -> "n/a"
        v.isInfinite() -> if (v > 0) "inf" else "-inf"
        v != 0.0 && (abs(v) < 1e-3 || abs(v) >= 1e5) -> String.format(java.util.Locale.ROOT, "%.3e", v)
        else -> String.format(java.util.Locale.ROOT, "%.6f", v)
    }
}
