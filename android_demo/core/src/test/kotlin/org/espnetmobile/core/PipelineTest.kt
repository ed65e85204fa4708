package org.espnetmobile.core

import org.espnetmobile.core.TestSupport.manifestJson
import org.junit.Test
import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import kotlin.test.assertNull
import kotlin.test.assertTrue

class PipelineTest {
    private val manifest = Manifest.parse(manifestJson(numClasses = 3, h = 8, w = 8))

    /** Logits where class [winner] wins at every pixel; counts its calls and checks what it is fed. */
    private class ConstantRunner(val winner: Int, val expectLayout: Layout) : SegmentationRunner {
        var calls = 0
        override val description = "fake runner"
        override fun run(input: ModelInput): ModelOutput {
            calls++
            assertEquals(expectLayout, input.layout)
            assertEquals(3 * 8 * 8, input.floats!!.size)
            return ModelOutput.logits(FloatArray(3 * 8 * 8) { if (it / 64 == winner) 1f else 0f })
        }
    }

    private val photo = RgbImage(12, 10, ByteArray(12 * 10 * 3) { 100 })

    @Test
    fun segmentsAtThePhotoSizeAndTimesEachStage() {
        var now = 0L
        val runner = ConstantRunner(winner = 2, expectLayout = Layout.NHWC)
        val result = SegmentationPipeline(manifest, Layout.NHWC, runner) { now.also { now += 2_000_000 } }.segment(photo)
        assertEquals(12, result.mask.width)
        assertEquals(10, result.mask.height)
        assertTrue(result.mask.classes.all { it == 2 })
        assertEquals(listOf("class2"), result.legend.map { it.label })
        assertEquals(1.0, result.legend.single().fraction)
        assertEquals(StageTimes(2.0, 2.0, 2.0), result.times)
        assertEquals("fake runner", result.runner)
        // The overlay blends the class colour into the photo: no longer the grey input.
        assertTrue(!result.overlay.pixels.contentEquals(photo.pixels))
    }

    @Test
    fun benchmarkWarmsUpThenTimesEveryRun() {
        val runner = ConstantRunner(winner = 0, expectLayout = Layout.NCHW)
        val summary = SegmentationPipeline(manifest, Layout.NCHW, runner).benchmark(photo, warmup = 2, runs = 7)
        assertEquals(9, runner.calls)
        assertEquals(7, summary.runs)
        assertTrue(summary.minTotalMs <= summary.medianTotalMs && summary.medianTotalMs <= summary.maxTotalMs)
    }

    @Test
    fun aRunnerThatReturnsNothingIsAnError() {
        val empty = object : SegmentationRunner {
            override val description = "broken"
            override fun run(input: ModelInput) = ModelOutput.mask(IntArray(0))
        }
        assertFailsWith<IllegalArgumentException> { SegmentationPipeline(manifest, Layout.NCHW, empty).segment(photo) }
    }
}

class RuntimeOptionsTest {
    private fun manifestWith(vararg artifacts: String): Manifest = Manifest.parse(manifestJson { root ->
        val arr = org.json.JSONArray()
        for (a in artifacts) arr.put(org.json.JSONObject(a))
        root.put("artifacts", arr)
    })

    private fun artifact(file: String, target: String, delegate: String, precision: String, units: String) =
        """{"file": "$file", "target": "$target", "delegate": "$delegate", "precision": "$precision", "compute_units": $units,
            "sha256": "${"0".repeat(64)}", "bytes": 10, "tool_versions": {}, "executable_here": true, "cache_key": "k",
            "input_layout": "NCHW"}"""

    private val manifest = manifestWith(
        artifact("m_executorch_fp32.pte", "executorch", "xnnpack", "fp32", "[\"cpu\"]"),
        artifact("m_executorch_qnn_int8.pte", "executorch", "qnn", "int8", "[\"npu\"]"),
        artifact("m_tflite_int8.tflite", "tflite", "xnnpack", "int8", "[\"cpu\", \"gpu\"]"),
        artifact("m_coreml_fp16.mlpackage", "coreml", "coreml", "fp16", "[\"ANE\"]"),
    )

    private val phone = DeviceRuntimes(
        executorchBackends = setOf("XnnpackBackend"),
        liteRtUnits = mapOf(ComputeUnit.CPU to null, ComputeUnit.GPU to null,
            ComputeUnit.NPU to "this build packages no LiteRT NPU runtime library"),
    )

    @Test
    fun everyChoiceIsEnabledOrSaysWhyNot() {
        val options = RuntimeOptions.build(manifest, phone)
        assertEquals(1 + 1 + 3, options.size, "Core ML has no Android choice; a .tflite is offered on CPU, GPU and NPU")
        val et = options.first { it.artifact.file == "m_executorch_fp32.pte" }
        assertNull(et.disabledReason)
        assertEquals(AndroidRuntime.EXECUTORCH, et.runtime)

        val qnn = options.first { it.artifact.delegate == "qnn" }
        assertEquals(ComputeUnit.NPU, qnn.unit)
        assertTrue(qnn.disabledReason!!.contains("no QnnBackend (it registers: XnnpackBackend)"), qnn.disabledReason)

        val npu = options.first { it.runtime == AndroidRuntime.LITERT && it.unit == ComputeUnit.NPU }
        assertEquals("this build packages no LiteRT NPU runtime library", npu.disabledReason)
        assertTrue(!npu.enabled && !npu.listedInBundle)
        assertTrue(options.filter { it.runtime == AndroidRuntime.LITERT && it.unit != ComputeUnit.NPU }.all { it.enabled })
        assertEquals(et, RuntimeOptions.default(options))
    }

    @Test
    fun aUnitLiteRtDidNotReportIsDisabledAndAFailedExecuTorchLoadDisablesItsChoices() {
        val device = DeviceRuntimes(executorchBackends = null, executorchError = "libexecutorch.so not found",
            liteRtUnits = mapOf(ComputeUnit.CPU to null))
        val options = RuntimeOptions.build(manifest, device)
        assertTrue(options.filter { it.runtime == AndroidRuntime.EXECUTORCH }.all { it.disabledReason!!.contains("libexecutorch.so not found") })
        val gpu = options.first { it.unit == ComputeUnit.GPU }
        assertEquals("LiteRT did not report GPU on this phone", gpu.disabledReason)
        assertEquals(ComputeUnit.CPU, RuntimeOptions.default(options)!!.unit)
    }

    @Test
    fun theNativeRunnerIsOfferedOnlyWhenBuiltIn() {
        assertTrue(RuntimeOptions.build(manifest, phone).none { it.runtime == AndroidRuntime.EXECUTORCH_NATIVE })
        val native = RuntimeOptions.build(manifest, phone.copy(nativeRunner = true)).filter { it.runtime == AndroidRuntime.EXECUTORCH_NATIVE }
        assertEquals(listOf("m_executorch_fp32.pte"), native.map { it.artifact.file })
    }
}
