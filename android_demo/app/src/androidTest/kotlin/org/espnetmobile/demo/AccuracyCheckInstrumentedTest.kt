package org.espnetmobile.demo

import android.util.Log
import androidx.test.ext.junit.runners.AndroidJUnit4
import androidx.test.platform.app.InstrumentationRegistry
import org.espnetmobile.core.AccuracyCheck
import org.espnetmobile.core.Bundle
import org.espnetmobile.core.ComputeUnit
import org.espnetmobile.core.Postprocess
import org.espnetmobile.core.Preprocess
import org.espnetmobile.core.RuntimeOptions
import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Assume.assumeTrue
import org.junit.Test
import org.junit.runner.RunWith

/**
 * The accuracy check of the app, on a device, for the bundle in assets/bundle/:
 * Android's PNG decoder + the core reproduce the golden inputs, and every artifact the app offers
 * passes the manifest's thresholds on the CPU. Other compute units the phone offers are run and
 * logged (GPU and NPU kernels may legitimately compute in lower precision than the artifact's
 * thresholds assume); those it does not offer are logged with the reason.
 *
 *   ./gradlew :app:connectedAndroidTest     # logcat tag: EspnetAccuracy
 */
@RunWith(AndroidJUnit4::class)
class AccuracyCheckInstrumentedTest {
    private val context = InstrumentationRegistry.getInstrumentation().targetContext
    private val bundle: Bundle = AssetBundleFiles.open(context)
    private val device = Runtimes.probe(context)

    @Test
    fun decodingAndPreprocessingReproduceTheGoldenInputs() {
        val m = bundle.manifest
        assumeTrue("the bundle has no golden items", m.golden.isNotEmpty())
        for (item in m.golden) {
            val image = Images.decodePngExact(bundle.readVerified(item.image.file, item.image.sha256))
            assertEquals("${item.name} width", item.imageWidth, image.width)
            assertEquals("${item.name} height", item.imageHeight, image.height)
            val actual = Preprocess.toNchwFloat(image, m.input.height, m.input.width)
            val expected = bundle.goldenInput(item)
            var worst = 0.0
            for (i in actual.indices) worst = maxOf(worst, Math.abs(actual[i].toDouble() - expected[i].toDouble()))
            Log.i(TAG, "${item.name}: preprocessing max |diff| $worst")
            assertTrue("${item.name}: max |diff| $worst > 1e-5", worst <= 1e-5)

            val mask = Postprocess.argmax(bundle.goldenLogits(item), m.numClasses, item.logits.shape[2], item.logits.shape[3])
            assertTrue("${item.name}: argmax differs from the golden mask", mask.classes.contentEquals(bundle.goldenMask(item).classes))
        }
    }

    @Test
    fun everyArtifactPassesOnTheCpu() {
        val m = bundle.manifest
        val options = RuntimeOptions.build(m, device).filter { it.unit == ComputeUnit.CPU && it.enabled }
        assumeTrue("the bundle has no artifact this app runs on the CPU", options.isNotEmpty() && m.golden.isNotEmpty())
        val failures = ArrayList<String>()
        for (option in options) {
            Runtimes.open(context, bundle, option).use { runner ->
                val report = AccuracyCheck.run(bundle, option.artifact.precision, option.artifact.inputLayout, runner)
                Log.i(TAG, "${option.label}\n${report.summary()}")
                if (!report.passed) failures.add(report.summary())
            }
        }
        assertTrue("accuracy check failed:\n${failures.joinToString("\n")}", failures.isEmpty())
    }

    @Test
    fun otherComputeUnitsRunWhereThePhoneOffersThem() {
        val m = bundle.manifest
        val all = RuntimeOptions.build(m, device).filter { it.unit != ComputeUnit.CPU }
        for (option in all.filter { !it.enabled }) Log.i(TAG, "${option.label}: not available - ${option.disabledReason}")
        val options = all.filter { it.enabled }
        assumeTrue("no GPU/NPU choice is available on this phone", options.isNotEmpty() && m.golden.isNotEmpty())
        for (option in options) {
            Runtimes.open(context, bundle, option).use { runner ->
                val report = AccuracyCheck.run(bundle, option.artifact.precision, option.artifact.inputLayout, runner)
                Log.i(TAG, "${option.label}\n${report.summary()}")
                assertEquals(m.golden.size, report.metrics.items.size)
            }
        }
    }

    companion object {
        const val TAG = "EspnetAccuracy"
    }
}
