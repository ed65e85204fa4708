package org.espnetmobile.core

/**
 * An 8-bit RGB image: [pixels] holds R, G, B for each pixel, row by row.
 * Decoding a file (and applying its EXIF orientation) is the platform's job.
 */
class RgbImage(val width: Int, val height: Int, val pixels: ByteArray) {
    init {
        require(width > 0 && height > 0) { "image size must be positive, got ${width}x$height" }
        require(pixels.size == width * height * 3) { "expected ${width * height * 3} bytes for ${width}x$height RGB, got ${pixels.size}" }
    }

    /** Component [c] (0 = R, 1 = G, 2 = B) of pixel ([x], [y]), 0-255. */
    fun at(x: Int, y: Int, c: Int): Int = pixels[(y * width + x) * 3 + c].toInt() and 0xFF

    /** Packed 0xAARRGGBB pixels, opaque (what Android's Bitmap.setPixels takes). */
    fun toArgb(): IntArray = IntArray(width * height) { i ->
        val o = 3 * i
        (0xFF shl 24) or ((pixels[o].toInt() and 0xFF) shl 16) or ((pixels[o + 1].toInt() and 0xFF) shl 8) or (pixels[o + 2].toInt() and 0xFF)
    }

    companion object {
        /** From packed 0xAARRGGBB pixels (Android's Bitmap.getPixels); alpha is dropped, as Pillow's convert("RGB") does. */
        fun fromArgb(argb: IntArray, width: Int, height: Int): RgbImage {
            require(argb.size == width * height) { "expected ${width * height} pixels, got ${argb.size}" }
            val out = ByteArray(width * height * 3)
            for (i in argb.indices) {
                val p = argb[i]
                out[3 * i] = (p ushr 16).toByte()
                out[3 * i + 1] = (p ushr 8).toByte()
                out[3 * i + 2] = p.toByte()
            }
            return RgbImage(width, height, out)
        }
    }
}

/** What a runtime is fed: float32 or uint8 values in [layout] with [shape]. */
class ModelInput(val shape: List<Int>, val layout: Layout, val floats: FloatArray?, val bytes: ByteArray?) {
    init {
        require((floats == null) != (bytes == null)) { "a model input holds either floats or bytes" }
    }

    val shapeLong: LongArray get() = LongArray(shape.size) { shape[it].toLong() }
}

/**
 * Image -> model input, step for step as `espnet_mobile/preprocess.py`:
 * bilinear resize with half-pixel centres (source coordinate `(dst + 0.5) * in / out - 0.5`,
 * clamped to `[0, in - 1]`), rows first then columns, in double precision on the 0-255 values;
 * then divide by 255 and round once to float32. The same operations in the same order give
 * the same bits as NumPy.
 */
object Preprocess {
    /** For each output index along one axis: left source index, right source index, right weight. */
    class Axis(val left: IntArray, val right: IntArray, val weight: DoubleArray)

    fun bilinearAxis(nIn: Int, nOut: Int): Axis {
        require(nIn > 0 && nOut > 0) { "sizes must be positive, got $nIn -> $nOut" }
        val scale = nIn.toDouble() / nOut.toDouble()
        val left = IntArray(nOut)
        val right = IntArray(nOut)
        val weight = DoubleArray(nOut)
        val last = (nIn - 1).toDouble()
        for (i in 0 until nOut) {
            var src = (i.toDouble() + 0.5) * scale - 0.5
            if (src < 0.0) src = 0.0
            if (src > last) src = last
            val l = kotlin.math.floor(src).toInt()
            left[i] = l
            right[i] = minOf(l + 1, nIn - 1)
            weight[i] = src - l.toDouble()
        }
        return Axis(left, right, weight)
    }

    /** Resize to [outHeight] x [outWidth]; returns (outHeight, outWidth, 3) doubles on the 0-255 scale. */
    fun resizeBilinear(image: RgbImage, outHeight: Int, outWidth: Int): DoubleArray {
        val ys = bilinearAxis(image.height, outHeight)
        val xs = bilinearAxis(image.width, outWidth)
        val rowLen = image.width * 3
        val row = DoubleArray(rowLen)
        val out = DoubleArray(outHeight * outWidth * 3)
        val px = image.pixels
        for (i in 0 until outHeight) {
            val wy = ys.weight[i]
            val keep = 1.0 - wy
            val top = ys.left[i] * rowLen
            val bottom = ys.right[i] * rowLen
            for (k in 0 until rowLen) {
                val a = (px[top + k].toInt() and 0xFF).toDouble() * keep
                val b = (px[bottom + k].toInt() and 0xFF).toDouble() * wy
                row[k] = a + b
            }
            val base = i * outWidth * 3
            for (j in 0 until outWidth) {
                val wx = xs.weight[j]
                val keepX = 1.0 - wx
                val l = xs.left[j] * 3
                val r = xs.right[j] * 3
                for (c in 0 until 3) {
                    val a = row[l + c] * keepX
                    val b = row[r + c] * wx
                    out[base + j * 3 + c] = a + b
                }
            }
        }
        return out
    }

    /** The float32 NCHW input in [0, 1] the golden vectors hold: (1, 3, height, width). */
    fun toNchwFloat(image: RgbImage, height: Int, width: Int): FloatArray {
        val hwc = resizeBilinear(image, height, width)
        val plane = height * width
        val out = FloatArray(3 * plane)
        for (p in 0 until plane) for (c in 0 until 3) out[c * plane + p] = (hwc[p * 3 + c] / 255.0).toFloat()
        return out
    }

    /**
     * The input [spec] asks for, in [layout] (an artifact's own `input_layout` may differ from the
     * manifest's). float32 values are mapped onto `value_range` (for [0, 1]: divide by 255);
     * uint8 input needs value_range [0, 255] and takes the resized values rounded half up.
     */
    fun toModelInput(image: RgbImage, spec: InputSpec, layout: Layout = spec.layout): ModelInput {
        val h = spec.height
        val w = spec.width
        val hwc = resizeBilinear(image, h, w)
        val shape = if (layout == Layout.NCHW) listOf(1, 3, h, w) else listOf(1, h, w, 3)
        val plane = h * w
        fun index(p: Int, c: Int) = if (layout == Layout.NCHW) c * plane + p else p * 3 + c
        return when (spec.dtype) {
            "float32" -> {
                val lo = spec.valueMin
                val hi = spec.valueMax
                val out = FloatArray(3 * plane)
                for (p in 0 until plane) for (c in 0 until 3) {
                    val v = hwc[p * 3 + c]
                    val scaled = when {
                        lo == 0.0 && hi == 1.0 -> v / 255.0
                        lo == 0.0 && hi == 255.0 -> v
                        else -> lo + v / 255.0 * (hi - lo)
                    }
                    out[index(p, c)] = scaled.toFloat()
                }
                ModelInput(shape, layout, out, null)
            }
            "uint8" -> {
                require(spec.valueMin == 0.0 && spec.valueMax == 255.0) {
                    "uint8 input needs value_range [0, 255], the manifest says [${spec.valueMin}, ${spec.valueMax}]"
                }
                val out = ByteArray(3 * plane)
                for (p in 0 until plane) for (c in 0 until 3) {
                    out[index(p, c)] = kotlin.math.floor(hwc[p * 3 + c] + 0.5).toInt().coerceIn(0, 255).toByte()
                }
                ModelInput(shape, layout, null, out)
            }
            else -> throw IllegalArgumentException("unsupported input dtype ${spec.dtype}")
        }
    }
}
