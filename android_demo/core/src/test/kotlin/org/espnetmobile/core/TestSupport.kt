package org.espnetmobile.core

import java.awt.image.BufferedImage
import java.awt.image.IndexColorModel
import java.io.ByteArrayInputStream
import java.io.File
import javax.imageio.ImageIO
import org.json.JSONArray
import org.json.JSONObject

/** Helpers for the JVM tests only: javax.imageio stays out of the core. */
object TestSupport {
    const val BUNDLE_ENV = "ESPNET_MOBILE_BUNDLE"

    /** The bundle folder named by ESPNET_MOBILE_BUNDLE, or null when unset. */
    fun bundleDir(): File? {
        val path = System.getenv(BUNDLE_ENV)?.takeIf { it.isNotBlank() } ?: return null
        val dir = File(path)
        require(File(dir, Manifest.FILE_NAME).isFile) { "$BUNDLE_ENV=$path has no ${Manifest.FILE_NAME}" }
        return dir
    }

    fun decodePng(bytes: ByteArray): BufferedImage =
        ImageIO.read(ByteArrayInputStream(bytes)) ?: throw IllegalArgumentException("ImageIO cannot decode these bytes")

    /** 8-bit RGB from the decoded samples themselves (no colour management), as Pillow reads a PNG. */
    fun toRgb(img: BufferedImage): RgbImage {
        val w = img.width
        val h = img.height
        val raster = img.raster
        val out = ByteArray(w * h * 3)
        val cm = img.colorModel
        val bands = raster.numBands
        for (y in 0 until h) for (x in 0 until w) {
            val o = (y * w + x) * 3
            if (cm is IndexColorModel) {
                val i = raster.getSample(x, y, 0)
                out[o] = cm.getRed(i).toByte()
                out[o + 1] = cm.getGreen(i).toByte()
                out[o + 2] = cm.getBlue(i).toByte()
            } else if (bands >= 3) {
                for (c in 0 until 3) out[o + c] = raster.getSample(x, y, c).toByte()
            } else {
                val g = raster.getSample(x, y, 0).toByte()
                out[o] = g
                out[o + 1] = g
                out[o + 2] = g
            }
        }
        return RgbImage(w, h, out)
    }

    /** The class indices of a palette PNG (pixel value = index), and its palette. */
    fun paletteIndices(img: BufferedImage): Pair<Mask, IndexColorModel> {
        val cm = img.colorModel as? IndexColorModel ?: throw IllegalArgumentException("not a palette image: ${img.colorModel}")
        val w = img.width
        val h = img.height
        val raster = img.raster
        return Mask(w, h, IntArray(w * h) { raster.getSample(it % w, it / w, 0) }) to cm
    }

    fun maxAbsDiff(a: FloatArray, b: FloatArray): Double {
        require(a.size == b.size) { "sizes differ: ${a.size} vs ${b.size}" }
        var m = 0.0
        for (i in a.indices) m = maxOf(m, kotlin.math.abs(a[i].toDouble() - b[i].toDouble()))
        return m
    }

    /**
     * A small valid manifest: [numClasses] classes, input 1x3x[h]x[w], one golden item, one artifact.
     * Tests change one field at a time through [mutate].
     */
    fun manifestJson(numClasses: Int = 3, h: Int = 8, w: Int = 8, mutate: (JSONObject) -> Unit = {}): String {
        val sha = "0".repeat(64)
        val labels = (0 until numClasses).joinToString(",") { "\"class$it\"" }
        val palette = (0 until numClasses).joinToString(",") { "[${it * 10},${it * 20},${it * 30}]" }
        val text = """
        {
          "schema_version": 1,
          "model_id": "test_model",
          "created_by": "tests",
          "model": {"arch": "espnetv2", "hparams": {"s": 0.5}, "dataset": "voc", "checkpoint": "x.pth",
                    "checkpoint_sha256": "$sha", "qat_checkpoint_sha256": null, "num_classes": $numClasses},
          "input": {"name": "image", "shape": [1, 3, $h, $w], "layout": "NCHW", "dtype": "float32",
                    "color_order": "RGB", "value_range": [0.0, 1.0], "normalization": "baked_in"},
          "output": {"name": "logits", "shape": [1, $numClasses, $h, $w], "layout": "NCHW", "dtype": "float32",
                     "meaning": "scores"},
          "labels": [$labels],
          "palette": [$palette],
          "preprocessing": {}, "postprocessing": {},
          "artifacts": [{"file": "m_tflite_fp32.tflite", "target": "tflite", "delegate": "xnnpack", "precision": "fp32",
                         "compute_units": ["cpu", "gpu"], "sha256": "$sha", "bytes": 10, "tool_versions": {},
                         "executable_here": true, "cache_key": "k", "input_layout": "NHWC"}],
          "golden": {"source": "synthetic", "items": [{
              "name": "g0",
              "image": {"file": "golden/g0.png", "sha256": "$sha"},
              "image_size": [10, 12],
              "input": {"file": "golden/g0_input.f32", "sha256": "$sha", "shape": [1, 3, $h, $w], "dtype": "float32", "byte_order": "little"},
              "logits": {"file": "golden/g0_logits.f16", "sha256": "$sha", "shape": [1, $numClasses, $h, $w], "dtype": "float16", "byte_order": "little"},
              "mask": {"file": "golden/g0_mask.u8", "sha256": "$sha", "shape": [1, $h, $w], "dtype": "uint8", "byte_order": "little"}}]},
          "thresholds": {"fp32": {"min_pixel_agreement": 0.999, "max_rel_abs_error": 0.0001}, "fp16": {"min_pixel_agreement": 0.995}},
          "parity": null
        }
        """.trimIndent()
        val root = JSONObject(text)
        mutate(root)
        return root.toString()
    }

    /** Field [path] ("a/b/0/c") of a parsed manifest, as an object. */
    fun obj(root: JSONObject, path: String): JSONObject {
        var v: Any = root
        for (part in path.split('/').filter { it.isNotEmpty() }) {
            v = when (v) {
                is JSONObject -> v.get(part)
                is JSONArray -> v.get(part.toInt())
                else -> error("cannot descend into $v")
            }
        }
        return v as JSONObject
    }

    fun ints(vararg v: Int) = JSONArray().apply { v.forEach { put(it) } }

    /**
     * An `accuracy` section shaped as python -m espnet_mobile.evaluate writes it: the reference and
     * two artifacts on [classes] (one class_iou null: the class is in neither labels nor predictions).
     */
    fun accuracyJson(classes: List<String> = listOf("class0", "class1", "class2")): JSONObject {
        val iou = { a: Double, b: Double? -> JSONObject().apply {
            put(classes[0], a)
            put(classes[1], b ?: JSONObject.NULL)
            for (c in classes.drop(2)) put(c, 50.0)
        } }
        return JSONObject("""
        {
          "dataset": "camvid",
          "dataset_title": "CamVid (SegNet split)",
          "split": "val",
          "images": 101,
          "ignore_label": 255,
          "classes": ${JSONArray(classes)},
          "date": "2026-12-05T10:00:00Z",
          "tool_versions": {"espnet_mobile": "0.1.0", "torch": "2.13.0", "ai_edge_litert": "2.1.0"},
          "results": [
            {"artifact": "pytorch-reference", "target": null, "precision": "fp32", "runtime": "pytorch",
             "miou": 70.12, "pixel_accuracy": 91.5, "class_iou": ${iou(90.1, null)}, "images": 101},
            {"artifact": "m_tflite_fp32.tflite", "target": "tflite", "precision": "fp32", "runtime": "litert-cpu",
             "miou": 70.1, "pixel_accuracy": 91.49, "class_iou": ${iou(90.0, null)}, "images": 101,
             "sha256": "${"0".repeat(64)}", "compute_unit": "cpu", "agreement_with_reference": 99.9, "seconds": 12.5},
            {"artifact": "m_tflite_int8.tflite", "target": "tflite", "precision": "int8", "runtime": "litert-cpu",
             "miou": 69.3, "pixel_accuracy": 91.1, "class_iou": ${iou(89.0, 12.5)}, "images": 101, "error": null}
          ]
        }
        """.trimIndent())
    }
}
