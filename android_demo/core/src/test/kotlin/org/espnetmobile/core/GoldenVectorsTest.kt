package org.espnetmobile.core

import org.junit.Assume.assumeTrue
import org.junit.BeforeClass
import org.junit.Test
import java.util.Locale
import kotlin.test.assertContentEquals
import kotlin.test.assertEquals
import kotlin.test.assertFalse
import kotlin.test.assertTrue

/**
 * The core against a real bundle's golden vectors (ESPNET_MOBILE_BUNDLE): the Kotlin port must
 * produce the Python pipeline's bytes. Skipped (JUnit assumption) when the variable is unset.
 */
class GoldenVectorsTest {
    companion object {
        private var bundle: Bundle? = null

        @BeforeClass
        @JvmStatic
        fun openBundle() {
            val dir = TestSupport.bundleDir()
            if (dir != null) {
                bundle = Bundle.open(dir)
                val m = bundle!!.manifest
                println("golden bundle: ${dir.path} (${m.modelId}, ${m.numClasses} classes, input ${m.input.shape}, ${m.golden.size} items, source ${m.goldenSource})")
            }
        }

        private const val INPUT_TOLERANCE = 1e-5
    }

    private fun bundle(): Bundle {
        assumeTrue("set ${TestSupport.BUNDLE_ENV} to a bundle folder to run the golden-vector tests", bundle != null)
        return bundle!!
    }

    private fun f(v: Double) = ParityThresholds.fmt(v)

    @Test
    fun preprocessingReproducesTheGoldenInputs() {
        val b = bundle()
        val spec = b.manifest.input
        var worst = 0.0
        for (item in b.manifest.golden) {
            val png = TestSupport.decodePng(b.readVerified(item.image.file, item.image.sha256))
            val rgb = TestSupport.toRgb(png)
            assertEquals(item.imageWidth, rgb.width, "${item.name}: width")
            assertEquals(item.imageHeight, rgb.height, "${item.name}: height")
            val expected = b.goldenInput(item)
            val actual = Preprocess.toNchwFloat(rgb, spec.height, spec.width)
            val diff = TestSupport.maxAbsDiff(actual, expected)
            val exact = actual.indices.count { actual[it].toRawBits() == expected[it].toRawBits() }
            println(
                String.format(Locale.ROOT, "  %-14s input %dx%d -> %dx%d: max |diff| %.3e, bit-identical %d/%d",
                    item.name, rgb.width, rgb.height, spec.width, spec.height, diff, exact, actual.size),
            )
            assertTrue(diff <= INPUT_TOLERANCE, "${item.name}: max |diff| $diff > $INPUT_TOLERANCE")
            if (spec.layout == Layout.NCHW && spec.dtype == "float32" && spec.valueMin == 0.0 && spec.valueMax == 1.0) {
                assertContentEquals(actual, Preprocess.toModelInput(rgb, spec).floats, "manifest-driven path = golden path")
            }
            worst = maxOf(worst, diff)
        }
        println("preprocess: max |diff| over all golden inputs ${f(worst)} (tolerance $INPUT_TOLERANCE)")
    }

    @Test
    fun argmaxOfTheGoldenLogitsIsTheGoldenMask() {
        val b = bundle()
        val m = b.manifest
        for (item in m.golden) {
            val logits = b.goldenLogits(item)
            val h = item.logits.shape[2]
            val w = item.logits.shape[3]
            val mask = Postprocess.argmax(logits, m.numClasses, h, w)
            val expected = b.goldenMask(item)
            val mismatches = mask.classes.indices.count { mask.classes[it] != expected.classes[it] }
            println("  ${item.name}: argmax of ${item.logits.dtype} logits ${item.logits.shape} vs mask: $mismatches mismatches")
            assertEquals(0, mismatches, "${item.name}: argmax differs from the golden mask")
        }
    }

    @Test
    fun nearestResizeReproducesTheFullSizeMaskPng() {
        val b = bundle()
        val m = b.manifest
        var checked = 0
        for (item in m.golden) {
            val ref = item.fullMask ?: continue
            val (pngMask, cm) = TestSupport.paletteIndices(TestSupport.decodePng(b.readVerified(ref.file, ref.sha256)))
            val full = Postprocess.resizeNearest(b.goldenMask(item), item.imageHeight, item.imageWidth)
            assertEquals(pngMask.width, full.width, "${item.name}: width")
            assertEquals(pngMask.height, full.height, "${item.name}: height")
            val mismatches = full.classes.indices.count { full.classes[it] != pngMask.classes[it] }
            println("  ${item.name}: mask ${b.goldenMask(item).width}x${b.goldenMask(item).height} -> ${full.width}x${full.height}, $mismatches mismatches with ${ref.file}")
            assertEquals(0, mismatches, "${item.name}: resized mask differs from ${ref.file}")
            // The PNG's palette is the manifest's, for every class that appears.
            for (c in full.classes.distinct()) {
                assertEquals(m.palette[c], Rgb(cm.getRed(c), cm.getGreen(c), cm.getBlue(c)), "${item.name}: palette entry $c")
            }
            // The colourized mask and the overlay keep the image size.
            val colours = Postprocess.colorize(full, m.palette)
            assertEquals(item.imageWidth * item.imageHeight * 3, colours.pixels.size)
            checked++
        }
        assumeTrue("no golden item has a full_mask", checked > 0)
    }

    @Test
    fun parityOfTheGoldenLogitsWithThemselvesIsPerfect() {
        val b = bundle()
        val m = b.manifest
        val acc = ParityAccumulator(m.numClasses)
        for (item in m.golden) {
            val logits = b.goldenLogits(item)
            acc.addLogits(item.name, logits.copyOf(), logits, item.logits.shape[2], item.logits.shape[3], item.logits.dtype)
        }
        val metrics = acc.result()
        assertEquals(1.0, metrics.pixelAgreement)
        assertEquals(100.0, metrics.miou)
        assertEquals(0.0, metrics.maxAbsError)
        assertEquals(Double.POSITIVE_INFINITY, metrics.sqnrDb)
        for (precision in Precision.values()) {
            val limits = m.thresholdsFor(precision)
            if (limits.isEmpty()) continue
            val verdict = ParityThresholds.evaluate(metrics, limits, precision)
            assertTrue(verdict.passed, "$precision: $verdict")
        }
        println("self-parity: agreement ${f(metrics.pixelAgreement)}, mIoU ${f(metrics.miou)}, max abs ${f(metrics.maxAbsError)}, SQNR ${f(metrics.sqnrDb)} dB")
    }

    @Test
    fun aPerturbedCopyAgreesLess() {
        val b = bundle()
        val m = b.manifest
        val acc = ParityAccumulator(m.numClasses)
        var changed = 0
        var total = 0
        for (item in m.golden) {
            val h = item.logits.shape[2]
            val w = item.logits.shape[3]
            val plane = h * w
            val ref = b.goldenLogits(item)
            val mask = b.goldenMask(item)
            val cand = ref.copyOf()
            // Every 50th pixel: make the next class win by a margin of 1.
            for (p in 0 until plane step 50) {
                val other = (mask.classes[p] + 1) % m.numClasses
                cand[other * plane + p] = ref[mask.classes[p] * plane + p] + 1f
                changed++
            }
            total += plane
            acc.addLogits(item.name, cand, ref, h, w, item.logits.dtype)
        }
        val metrics = acc.result()
        val expected = 1.0 - changed.toDouble() / total
        println("perturbed (every 50th pixel flipped): agreement ${f(metrics.pixelAgreement)} (expected ~${f(expected)}), mIoU ${f(metrics.miou)}, max rel error ${f(metrics.maxRelAbsError)}, SQNR ${f(metrics.sqnrDb)} dB")
        assertTrue(metrics.pixelAgreement < 1.0)
        assertEquals(expected, metrics.pixelAgreement, 1e-3)
        assertTrue(metrics.miou < 100.0)
        val verdict = ParityThresholds.evaluate(metrics, m.thresholdsFor(Precision.FP32), Precision.FP32)
        assertFalse(verdict.passed, "a 2% disagreement must fail the fp32 thresholds")
    }

    /** The whole on-device check with a fake runtime that returns the reference logits plus fp32-sized noise. */
    @Test
    fun accuracyCheckEndToEndWithAFakeRuntime() {
        val b = bundle()
        val m = b.manifest
        if (m.output.isMask) return
        val byInput = m.golden.associateBy { b.goldenInput(it).contentHashCode() }
        val runner = object : SegmentationRunner {
            override val description = "fake runtime (reference logits + noise within fp16 rounding)"
            override fun run(input: ModelInput): ModelOutput {
                val floats = input.floats!!
                val nchw = if (input.layout == Layout.NCHW) floats else Layouts.nhwcToNchw(floats, 3, m.input.height, m.input.width)
                val item = byInput.getValue(nchw.contentHashCode())
                val ref = b.goldenLogits(item)
                val rnd = java.util.Random(7)
                return ModelOutput.logits(FloatArray(ref.size) { ref[it] + (rnd.nextFloat() - 0.5f) * 1.9f * Float16.halfUlp(ref[it]) })
            }
        }
        for (layout in Layout.values()) {
            val report = AccuracyCheck.run(b, Precision.FP32, layout, runner)
            println(report.summary().trimEnd())
            assertTrue(report.passed, report.summary())
            assertEquals(m.golden.size, report.latenciesMs.size)
        }
    }

    /** The accuracy section as the Python pipeline writes it, when the bundle has one (older bundles do not). */
    @Test
    fun theBundlesAccuracySectionReads() {
        val m = bundle().manifest
        val a = m.accuracy
        if (a == null) {
            println("accuracy section: none")
            return
        }
        assertTrue(a.results.isNotEmpty(), "an accuracy section with no results")
        for (r in a.results) assertTrue(r.classIou.keys.all { it in a.classes }, "${r.artifact}: class_iou names a class not scored")
        val ref = a.reference
        println(String.format(Locale.ROOT, "accuracy section: dataset=%s split=%s images=%d results=%d reference mIoU=%s",
            a.dataset, a.split, a.images, a.results.size, ref?.miou?.let { String.format(Locale.ROOT, "%.4f", it) } ?: "-"))
    }
}
