package org.espnetmobile.core

import org.junit.Test
import kotlin.test.assertEquals
import kotlin.test.assertFalse
import kotlin.test.assertTrue

class ParityTest {
    private val fp32Limits = mapOf("min_pixel_agreement" to 0.999, "max_rel_abs_error" to 1e-4)

    /** Logits whose argmax is [classes], with margin 1 between the winner and the rest. */
    private fun logitsFor(classes: IntArray, numClasses: Int): FloatArray {
        val plane = classes.size
        val out = FloatArray(numClasses * plane)
        for (p in 0 until plane) for (c in 0 until numClasses) out[c * plane + p] = if (c == classes[p]) 2f else 1f - c * 0.01f
        return out
    }

    @Test
    fun identicalOutputIsPerfect() {
        val ref = logitsFor(intArrayOf(0, 1, 2, 2, 1, 0), 3)
        val acc = ParityAccumulator(3)
        acc.addLogits("a", ref.copyOf(), ref, 2, 3)
        val m = acc.result()
        assertEquals(1.0, m.pixelAgreement)
        assertEquals(100.0, m.miou, "mIoU is in percent, as in Python")
        assertEquals(0.0, m.maxAbsError)
        assertEquals(0.0, m.meanAbsError)
        assertEquals(0.0, m.maxRelAbsError)
        assertEquals(Double.POSITIVE_INFINITY, m.sqnrDb)
        val verdict = ParityThresholds.evaluate(m, fp32Limits, Precision.FP32)
        assertTrue(verdict.passed, verdict.toString())
    }

    @Test
    fun iouAndAgreementOnAKnownCase() {
        // reference: 0 0 1 1 ; candidate: 0 1 1 1 -> agreement 3/4
        // class 0: inter 1, union 2 -> 0.5 ; class 1: inter 2, union 3 -> 2/3 ; class 2 absent -> NaN
        val acc = ParityAccumulator(3)
        acc.addLogits("a", logitsFor(intArrayOf(0, 1, 1, 1), 3), logitsFor(intArrayOf(0, 0, 1, 1), 3), 1, 4)
        val m = acc.result()
        assertEquals(0.75, m.pixelAgreement)
        assertEquals(0.5, m.iou[0], 1e-12)
        assertEquals(2.0 / 3.0, m.iou[1], 1e-12)
        assertTrue(m.iou[2].isNaN())
        assertEquals((0.5 + 2.0 / 3.0) / 2 * 100, m.miou, 1e-9)
        // one pixel differs: class 0 logit 2 -> 1, class 1 logit 0.99 -> 2: max |diff| = 1.01, max |ref| = 2
        assertEquals(1.01, m.maxAbsError, 1e-6)
        assertEquals(1.01 / 2.0, m.maxRelAbsError, 1e-6)
        val verdict = ParityThresholds.evaluate(m, fp32Limits, Precision.FP32)
        assertFalse(verdict.passed)
        assertEquals(listOf(CheckStatus.FAIL, CheckStatus.FAIL), verdict.checks.map { it.status })
    }

    @Test
    fun itemsArePooledLikePythonParity() {
        val acc = ParityAccumulator(2)
        val ref = logitsFor(intArrayOf(0, 1, 0, 1), 2)
        acc.addLogits("same", ref.copyOf(), ref, 2, 2)
        val half = logitsFor(intArrayOf(1, 1, 1, 1), 2)
        val bigRef = FloatArray(ref.size) { ref[it] * 4 } // peak |ref| 8 instead of 2
        acc.addLogits("half", half, bigRef, 2, 2)
        val m = acc.result()
        assertEquals(0.75, m.pixelAgreement, "mean of per-item agreement (1 and 0.5)")
        assertEquals(listOf(1.0, 0.5), m.items.map { it.pixelAgreement })
        assertEquals(m.items.maxOf { it.maxAbsError }, m.maxAbsError, "largest error of all values")
        assertEquals(m.maxAbsError / 8.0, m.maxRelAbsError, 1e-12, "divided by the largest |reference| of all items")
        var sum = 0.0
        for (i in ref.indices) sum += kotlin.math.abs(half[i] - bigRef[i].toDouble())
        assertEquals(sum / (2 * ref.size), m.meanAbsError, 1e-9, "mean over every value of every item")
    }

    @Test
    fun float16StorageRoundingIsAllowedForButNothingMore() {
        // A reference stored as float16, and a candidate that differs from each stored value by
        // just under half an fp16 step: what a perfect fp32 runtime can show against rounded values.
        val stored = floatArrayOf(16.1875f, -3.5f, 0.25f, 1.0f, 9.0f, -16.0f)
        val candidate = FloatArray(stored.size) { stored[it] + 0.99f * Float16.halfUlp(stored[it]) * (if (it % 2 == 0) 1 else -1) }
        val acc = ParityAccumulator(2)
        acc.addLogits("rounded", candidate, stored, 1, 3, referenceDtype = "float16")
        val m = acc.result()
        println("fp16 storage: raw max rel error ${ParityThresholds.fmt(m.maxRelAbsError)}, net ${ParityThresholds.fmt(m.netMaxRelAbsError)}")
        assertTrue(m.maxRelAbsError > 1e-4, "the raw figure exceeds the fp32 limit: ${m.maxRelAbsError}")
        assertEquals(0.0, m.netMaxRelAbsError)
        assertTrue(ParityThresholds.evaluate(m, fp32Limits, Precision.FP32).passed)

        // The same difference against a float32 reference is a real error.
        val acc32 = ParityAccumulator(2)
        acc32.addLogits("exact", candidate, stored, 1, 3, referenceDtype = "float32")
        assertFalse(ParityThresholds.evaluate(acc32.result(), fp32Limits, Precision.FP32).passed)

        // Twice the allowance fails even for a float16 reference.
        val far = FloatArray(stored.size) { stored[it] + 3f * Float16.halfUlp(stored[it]) }
        val acc2 = ParityAccumulator(2)
        acc2.addLogits("far", far, stored, 1, 3, referenceDtype = "float16")
        assertFalse(ParityThresholds.evaluate(acc2.result(), fp32Limits, Precision.FP32).passed)
    }

    @Test
    fun nanOutputFailsEveryLogitCheck() {
        val ref = logitsFor(intArrayOf(0, 1), 2)
        val bad = ref.copyOf().also { it[1] = Float.NaN }
        val acc = ParityAccumulator(2)
        acc.addLogits("nan", bad, ref, 1, 2)
        val m = acc.result()
        assertTrue(m.maxAbsError.isNaN())
        val verdict = ParityThresholds.evaluate(m, fp32Limits, Precision.FP32)
        assertFalse(verdict.passed)
        assertEquals(CheckStatus.FAIL, verdict.checks.first { it.key == "max_rel_abs_error" }.status)
    }

    @Test
    fun maskOutputsAreComparedOnClassesOnly() {
        val acc = ParityAccumulator(3)
        acc.addMask("m", Mask(2, 1, intArrayOf(0, 2)), Mask(2, 1, intArrayOf(0, 2)))
        val m = acc.result()
        assertFalse(m.hasLogits)
        val verdict = ParityThresholds.evaluate(m, fp32Limits, Precision.FP32)
        assertEquals(CheckStatus.PASS, verdict.checks.first { it.key == "min_pixel_agreement" }.status)
        assertEquals(CheckStatus.NOT_CHECKED, verdict.checks.first { it.key == "max_rel_abs_error" }.status)
        assertTrue(verdict.passed)
    }

    @Test
    fun thresholdsNeedingLabelsOrUnknownAreReportedNotSilentlyPassed() {
        val ref = logitsFor(intArrayOf(0, 1), 2)
        val acc = ParityAccumulator(2)
        acc.addLogits("a", ref, ref, 1, 2)
        val verdict = ParityThresholds.evaluate(
            acc.result(), mapOf("min_pixel_agreement" to 0.97, "max_miou_drop_points" to 1.0, "max_banana" to 2.0), Precision.INT8,
        )
        assertEquals(listOf(CheckStatus.PASS, CheckStatus.NOT_CHECKED, CheckStatus.NOT_CHECKED), verdict.checks.map { it.status })
        assertTrue(verdict.checks[1].note.contains("labelled"), verdict.checks[1].note)
        assertTrue(verdict.passed)

        val none = ParityThresholds.evaluate(acc.result(), mapOf("max_miou_drop_points" to 1.0), Precision.INT8)
        assertFalse(none.passed, "nothing checked is not a pass")
    }

    @Test
    fun sqnrIsTheSignalToErrorPowerRatio() {
        val ref = floatArrayOf(3f, 4f) // power 25
        val cand = floatArrayOf(3f, 4.5f) // error power 0.25
        val acc = ParityAccumulator(1)
        acc.addLogits("a", cand, ref, 1, 2)
        assertEquals(20.0, acc.result().sqnrDb, 1e-9)
    }
}
