package org.espnetmobile.core

import org.espnetmobile.core.TestSupport.ints
import org.espnetmobile.core.TestSupport.manifestJson
import org.espnetmobile.core.TestSupport.obj
import org.json.JSONArray
import org.json.JSONObject
import org.junit.Test
import java.io.File
import java.nio.file.Files
import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import kotlin.test.assertNull
import kotlin.test.assertTrue

class ManifestTest {
    @Test
    fun readsAValidManifest() {
        val m = Manifest.parse(manifestJson(numClasses = 3, h = 8, w = 16))
        assertEquals("test_model", m.modelId)
        assertEquals(3, m.numClasses)
        assertEquals(8, m.input.height)
        assertEquals(16, m.input.width)
        assertEquals(Layout.NCHW, m.input.layout)
        assertEquals(listOf("class0", "class1", "class2"), m.labels)
        assertEquals(Rgb(20, 40, 60), m.palette[2])
        val art = m.artifacts.single()
        assertEquals(Target.TFLITE, art.target)
        assertEquals(Precision.FP32, art.precision)
        assertEquals(Layout.NHWC, art.inputLayout)
        assertEquals(listOf(ComputeUnit.CPU, ComputeUnit.GPU), art.computeUnits)
        assertNull(art.notExecutableReason)
        assertNull(m.accuracy, "no accuracy section in this manifest")
        val g = m.golden.single()
        assertEquals(10, g.imageHeight)
        assertEquals(12, g.imageWidth)
        assertEquals("float16", g.logits.dtype)
        assertNull(g.fullMask)
        assertEquals(mapOf("min_pixel_agreement" to 0.999, "max_rel_abs_error" to 0.0001), m.thresholdsFor(Precision.FP32))
        assertEquals(emptyMap(), m.thresholdsFor(Precision.INT8))
    }

    @Test
    fun computeUnitNamesFromEveryConverterAreUnified() {
        assertEquals(ComputeUnit.CPU, ComputeUnit.parse("CPU"))
        assertEquals(ComputeUnit.CPU, ComputeUnit.parse("cpu_reference"))
        assertEquals(ComputeUnit.GPU, ComputeUnit.parse("gpu"))
        assertEquals(ComputeUnit.NPU, ComputeUnit.parse("ANE"))
        assertEquals(ComputeUnit.NPU, ComputeUnit.parse("npu"))
        assertNull(ComputeUnit.parse("abacus"))
    }

    /** Each broken manifest must fail with a message that names the field and the problem. */
    @Test
    fun errorsNameTheFieldAndTheProblem() {
        val cases: List<Pair<(JSONObject) -> Any?, List<String>>> = listOf(
            { r: JSONObject -> r.remove("labels") } to listOf("(top level)", "\"labels\""),
            { r: JSONObject -> r.put("schema_version", 2) } to listOf("schema_version", "is 2", "version 1"),
            { r: JSONObject -> r.put("extra", JSONObject.NULL) } to listOf("unknown fields", "\"extra\""),
            { r: JSONObject -> obj(r, "input").put("shape", ints(1, 3, 8)) } to listOf("input/shape", "4 entries"),
            { r: JSONObject -> obj(r, "input").put("shape", ints(1, 4, 8, 8)) } to listOf("input/shape", "3 colour channels"),
            { r: JSONObject -> obj(r, "input").put("layout", "CHW") } to listOf("input/layout", "NCHW, NHWC", "\"CHW\""),
            { r: JSONObject -> obj(r, "input").put("color_order", "BGR") } to listOf("input/color_order", "RGB"),
            { r: JSONObject -> obj(r, "input").put("normalization", "imagenet") } to listOf("input/normalization", "baked_in"),
            { r: JSONObject -> obj(r, "input").put("value_range", JSONArray(listOf(1.0, 0.0))) } to
                listOf("input/value_range", "low < high"),
            { r: JSONObject -> obj(r, "model").put("num_classes", 2.5) } to listOf("model/num_classes", "integer"),
            { r: JSONObject -> obj(r, "model").put("num_classes", 4.0) } to listOf("output/shape", "4"),
            { r: JSONObject -> obj(r, "output").put("shape", ints(1, 3, 8, 8, 1)) } to listOf("output/shape", "[1, classes, height, width]"),
            { r: JSONObject -> r.getJSONArray("labels").remove(2) } to
                listOf("labels", "2 names", "num_classes is 3"),
            { r: JSONObject -> r.put("palette", JSONArray(listOf(ints(0, 0, 0), ints(1, 1, 1), ints(300, 0, 0)))) } to
                listOf("palette/2", "0-255"),
            { r: JSONObject -> obj(r, "artifacts/0").put("sha256", "abc") } to listOf("artifacts/0/sha256", "sha256"),
            { r: JSONObject -> obj(r, "artifacts/0").put("file", "../x.pte") } to listOf("artifacts/0/file", "bare file name"),
            { r: JSONObject -> obj(r, "artifacts/0").put("target", "onnx") } to listOf("artifacts/0/target", "executorch, coreml, tflite"),
            { r: JSONObject -> obj(r, "artifacts/0").put("precision", "int4") } to listOf("artifacts/0/precision", "fp32, fp16, int8"),
            { r: JSONObject -> obj(r, "artifacts/0").remove("input_layout") } to listOf("artifacts/0", "\"input_layout\""),
            { r: JSONObject -> obj(r, "golden/items/0/input").put("shape", ints(1, 3, 4, 4)) } to listOf("golden/items/0/input/shape", "[1, 3, 8, 8]"),
            { r: JSONObject -> obj(r, "golden/items/0/logits").put("dtype", "int8") } to listOf("golden/items/0/logits/dtype", "float16, float32"),
            { r: JSONObject -> obj(r, "golden/items/0/mask").put("shape", ints(1, 8, 9)) } to listOf("golden/items/0/mask/shape", "[1, 8, 8]"),
            { r: JSONObject -> obj(r, "golden/items/0/mask").put("byte_order", "big") } to listOf("golden/items/0/mask/byte_order", "little"),
            { r: JSONObject -> obj(r, "golden/items/0").put("image_size", ints(0, 5)) } to listOf("golden/items/0/image_size/0", "at least 1"),
            { r: JSONObject -> obj(r, "thresholds/fp32").put("min_pixel_agreement", "high") } to
                listOf("thresholds/fp32/min_pixel_agreement", "number"),
        )
        for ((i, case) in cases.withIndex()) {
            val (mutate, expected) = case
            val e = assertFailsWith<ManifestException>("case $i should fail") { Manifest.parse(manifestJson(mutate = { mutate(it) }), "bundle/manifest.json") }
            val msg = e.message!!
            assertTrue(msg.startsWith("bundle/manifest.json: "), msg)
            for (part in expected) assertTrue(msg.contains(part), "case $i: \"$msg\" should mention \"$part\"")
            println("manifest error $i: $msg")
        }
    }

    @Test
    fun invalidJsonIsReportedAsSuch() {
        val e = assertFailsWith<ManifestException> { Manifest.parse("{\"schema_version\": 1,", "m.json") }
        assertTrue(e.message!!.startsWith("m.json is not valid JSON ("), e.message)
        val trailing = assertFailsWith<ManifestException> { Manifest.parse(manifestJson() + " x", "m.json") }
        assertTrue(trailing.message!!.contains("continues after the end"), trailing.message)
        val notAnObject = assertFailsWith<ManifestException> { Manifest.parse("[1, 2]", "m.json") }
        assertTrue(notAnObject.message!!.contains("(top level) must be an object, got an array"), notAnObject.message)
    }

    @Test
    fun aMissingManifestOrAlteredFileIsAClearBundleError() {
        val dir = Files.createTempDirectory("bundle").toFile()
        try {
            val missing = assertFailsWith<BundleException> { Bundle.open(dir) }
            assertTrue(missing.message!!.contains("is not a bundle: no manifest.json"), missing.message)

            File(dir, "manifest.json").writeText(manifestJson())
            File(dir, "golden").mkdirs()
            File(dir, "golden/g0_mask.u8").writeBytes(ByteArray(64))
            val bundle = Bundle.open(dir)
            val altered = assertFailsWith<BundleException> { bundle.goldenMask(bundle.manifest.golden[0]) }
            assertTrue(altered.message!!.contains("golden/g0_mask.u8 was altered"), altered.message)
            val unreadable = assertFailsWith<BundleException> { bundle.goldenInput(bundle.manifest.golden[0]) }
            assertTrue(unreadable.message!!.contains("golden/g0_input.f32 is listed in the manifest but cannot be read"), unreadable.message)
        } finally {
            dir.deleteRecursively()
        }
    }

    @Test
    fun maskHeadOutputIsAccepted() {
        val m = Manifest.parse(manifestJson { r -> r.put("output", JSONObject(
            """{"name": "mask", "shape": [1, 8, 8], "layout": "NCHW", "dtype": "int32", "meaning": "argmax"}""")) })
        assertTrue(m.output.isMask)
        assertEquals(8, m.output.height)
    }
}
