package org.espnetmobile.core

import org.espnetmobile.core.TestSupport.ints
import org.espnetmobile.core.TestSupport.manifestJson
import org.espnetmobile.core.TestSupport.obj
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
        val cases: List<Pair<(JsonValue.Obj) -> Any?, List<String>>> = listOf(
            { r: JsonValue.Obj -> r.fields.remove("labels") } to listOf("(top level)", "\"labels\""),
            { r: JsonValue.Obj -> r.fields["schema_version"] = JsonValue.Num(2.0) } to listOf("schema_version", "is 2", "version 1"),
            { r: JsonValue.Obj -> r.fields["extra"] = JsonValue.Null } to listOf("unknown fields", "\"extra\""),
            { r: JsonValue.Obj -> obj(r, "input").fields["shape"] = ints(1, 3, 8) } to listOf("input/shape", "4 entries"),
            { r: JsonValue.Obj -> obj(r, "input").fields["shape"] = ints(1, 4, 8, 8) } to listOf("input/shape", "3 colour channels"),
            { r: JsonValue.Obj -> obj(r, "input").fields["layout"] = JsonValue.Str("CHW") } to listOf("input/layout", "NCHW, NHWC", "\"CHW\""),
            { r: JsonValue.Obj -> obj(r, "input").fields["color_order"] = JsonValue.Str("BGR") } to listOf("input/color_order", "RGB"),
            { r: JsonValue.Obj -> obj(r, "input").fields["normalization"] = JsonValue.Str("imagenet") } to listOf("input/normalization", "baked_in"),
            { r: JsonValue.Obj -> obj(r, "input").fields["value_range"] = JsonValue.Arr(listOf(JsonValue.Num(1.0), JsonValue.Num(0.0))) } to
                listOf("input/value_range", "low < high"),
            { r: JsonValue.Obj -> obj(r, "model").fields["num_classes"] = JsonValue.Num(2.5) } to listOf("model/num_classes", "integer"),
            { r: JsonValue.Obj -> obj(r, "model").fields["num_classes"] = JsonValue.Num(4.0) } to listOf("output/shape", "4"),
            { r: JsonValue.Obj -> obj(r, "output").fields["shape"] = ints(1, 3, 8, 8, 1) } to listOf("output/shape", "[1, classes, height, width]"),
            { r: JsonValue.Obj -> (r.fields["labels"] as JsonValue.Arr).let { r.fields["labels"] = JsonValue.Arr(it.items.dropLast(1)) } } to
                listOf("labels", "2 names", "num_classes is 3"),
            { r: JsonValue.Obj -> r.fields["palette"] = JsonValue.Arr(listOf(ints(0, 0, 0), ints(1, 1, 1), ints(300, 0, 0))) } to
                listOf("palette/2", "0-255"),
            { r: JsonValue.Obj -> obj(r, "artifacts/0").fields["sha256"] = JsonValue.Str("abc") } to listOf("artifacts/0/sha256", "sha256"),
            { r: JsonValue.Obj -> obj(r, "artifacts/0").fields["file"] = JsonValue.Str("../x.pte") } to listOf("artifacts/0/file", "bare file name"),
            { r: JsonValue.Obj -> obj(r, "artifacts/0").fields["target"] = JsonValue.Str("onnx") } to listOf("artifacts/0/target", "executorch, coreml, tflite"),
            { r: JsonValue.Obj -> obj(r, "artifacts/0").fields["precision"] = JsonValue.Str("int4") } to listOf("artifacts/0/precision", "fp32, fp16, int8"),
            { r: JsonValue.Obj -> obj(r, "artifacts/0").fields.remove("input_layout") } to listOf("artifacts/0", "\"input_layout\""),
            { r: JsonValue.Obj -> obj(r, "golden/items/0/input").fields["shape"] = ints(1, 3, 4, 4) } to listOf("golden/items/0/input/shape", "[1, 3, 8, 8]"),
            { r: JsonValue.Obj -> obj(r, "golden/items/0/logits").fields["dtype"] = JsonValue.Str("int8") } to listOf("golden/items/0/logits/dtype", "float16, float32"),
            { r: JsonValue.Obj -> obj(r, "golden/items/0/mask").fields["shape"] = ints(1, 8, 9) } to listOf("golden/items/0/mask/shape", "[1, 8, 8]"),
            { r: JsonValue.Obj -> obj(r, "golden/items/0/mask").fields["byte_order"] = JsonValue.Str("big") } to listOf("golden/items/0/mask/byte_order", "little"),
            { r: JsonValue.Obj -> obj(r, "golden/items/0").fields["image_size"] = ints(0, 5) } to listOf("golden/items/0/image_size/0", "at least 1"),
            { r: JsonValue.Obj -> obj(r, "thresholds/fp32").fields["min_pixel_agreement"] = JsonValue.Str("high") } to
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
        assertTrue(e.message!!.startsWith("m.json is not valid JSON (invalid JSON at line 1"), e.message)
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
        val m = Manifest.parse(manifestJson { r -> r.fields["output"] = Json.parse(
            """{"name": "mask", "shape": [1, 8, 8], "layout": "NCHW", "dtype": "int32", "meaning": "argmax"}""") })
        assertTrue(m.output.isMask)
        assertEquals(8, m.output.height)
    }
}
