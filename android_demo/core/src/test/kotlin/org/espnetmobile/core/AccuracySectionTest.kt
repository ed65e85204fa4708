package org.espnetmobile.core

import org.espnetmobile.core.TestSupport.accuracyJson
import org.espnetmobile.core.TestSupport.manifestJson
import org.espnetmobile.core.TestSupport.obj
import org.json.JSONObject
import org.junit.Test
import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import kotlin.test.assertNotNull
import kotlin.test.assertNull
import kotlin.test.assertTrue

/** The manifest's optional `accuracy` section (measured against a labelled dataset). */
class AccuracySectionTest {
    @Test
    fun olderBundlesWithoutTheSectionOrWithNullStillRead() {
        assertNull(Manifest.parse(manifestJson()).accuracy)
        assertNull(Manifest.parse(manifestJson { it.put("accuracy", JSONObject.NULL) }).accuracy)
    }

    @Test
    fun readsEveryFieldOfTheSection() {
        val a = assertNotNull(Manifest.parse(manifestJson { it.put("accuracy", accuracyJson()) }).accuracy)
        assertEquals("camvid", a.dataset)
        assertEquals("CamVid (SegNet split)", a.title)
        assertEquals("val", a.split)
        assertEquals(101, a.images)
        assertEquals(255, a.ignoreLabel)
        assertEquals(listOf("class0", "class1", "class2"), a.classes)
        assertEquals("2026-12-05T10:00:00Z", a.date)
        assertEquals("2.13.0", a.toolVersions["torch"])
        assertEquals(3, a.results.size)

        val ref = assertNotNull(a.reference)
        assertEquals("pytorch-reference", ref.artifact)
        assertNull(ref.target)
        assertEquals("pytorch", ref.runtime)
        assertEquals(70.12, ref.miou)
        assertTrue(ref.classIou.containsKey("class1") && ref.classIou["class1"] == null, "a null class IoU stays null")
        assertEquals(90.1, ref.classIou["class0"])

        val fp32 = a.resultsFor("m_tflite_fp32.tflite").single()
        assertEquals("tflite", fp32.target)
        assertEquals(Precision.FP32, fp32.precision)
        assertEquals("cpu", fp32.computeUnit)
        assertEquals(99.9, fp32.agreementWithReference)
        assertEquals("0".repeat(64), fp32.sha256)

        val int8 = a.resultsFor("m_tflite_int8.tflite").single()
        assertEquals(Precision.INT8, int8.precision)
        assertEquals("litert-cpu", int8.runtime)
        assertEquals(91.1, int8.pixelAccuracy)
        assertNull(int8.error)
        assertEquals(-0.82, a.miouDelta(int8)!!, 1e-9)
        assertEquals(emptyList(), a.resultsFor("not_in_the_bundle.pte"))
    }

    @Test
    fun aFailedRunHasNoFiguresButSaysWhy() {
        val m = Manifest.parse(manifestJson {
            val acc = accuracyJson()
            acc.getJSONArray("results").getJSONObject(2).put("miou", JSONObject.NULL).put("pixel_accuracy", JSONObject.NULL)
                .put("class_iou", JSONObject()).put("images", 0).put("error", "LiteRT: unsupported op")
            it.put("accuracy", acc)
        })
        val failed = m.accuracy!!.results[2]
        assertNull(failed.miou)
        assertNull(m.accuracy!!.miouDelta(failed))
        assertEquals("LiteRT: unsupported op", failed.error)
    }

    @Test
    fun errorsNameTheFieldAndTheProblem() {
        val cases: List<Pair<(JSONObject) -> Any?, List<String>>> = listOf(
            { a: JSONObject -> a.put("dataset", "kitti") } to listOf("accuracy/dataset", "camvid, cityscapes, voc", "\"kitti\""),
            { a: JSONObject -> a.remove("results") } to listOf("accuracy", "\"results\""),
            { a: JSONObject -> a.put("images", 0) } to listOf("accuracy/images", "at least 1"),
            { a: JSONObject -> a.put("classes", org.json.JSONArray()) } to listOf("accuracy/classes", "must not be empty"),
            { a: JSONObject -> obj(a, "results/1").put("miou", 101.0) } to listOf("accuracy/results/1/miou", "between 0 and 100", "101"),
            { a: JSONObject -> obj(a, "results/1").put("pixel_accuracy", "high") } to listOf("accuracy/results/1/pixel_accuracy", "number"),
            { a: JSONObject -> obj(a, "results/0/class_iou").put("road", 3.0) } to
                listOf("accuracy/results/0/class_iou/road", "not one of the scored classes"),
            { a: JSONObject -> obj(a, "results/2").put("target", JSONObject.NULL) } to
                listOf("accuracy/results/2/artifact", "only the row \"pytorch-reference\""),
            { a: JSONObject -> obj(a, "results/2").put("precision", "int4") } to listOf("accuracy/results/2/precision", "fp32, fp16, int8"),
            { a: JSONObject -> obj(a, "tool_versions").put("torch", 2) } to listOf("accuracy/tool_versions/torch", "string"),
        )
        for ((i, case) in cases.withIndex()) {
            val (mutate, expected) = case
            val text = manifestJson { root -> root.put("accuracy", accuracyJson().also { mutate(it) }) }
            val e = assertFailsWith<ManifestException>("case $i should fail") { Manifest.parse(text, "bundle/manifest.json") }
            for (part in expected) assertTrue(e.message!!.contains(part), "case $i: \"${e.message}\" should mention \"$part\"")
        }
    }
}
