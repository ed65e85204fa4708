package org.espnetmobile.core

/** A class-index map, row-major: [classes][y * width + x] is the class of pixel (x, y). */
class Mask(val width: Int, val height: Int, val classes: IntArray) {
    init {
        require(width > 0 && height > 0) { "mask size must be positive, got ${width}x$height" }
        require(classes.size == width * height) { "expected ${width * height} class indices, got ${classes.size}" }
    }

    operator fun get(x: Int, y: Int): Int = classes[y * width + x]
}

/** One legend row: a class present in a mask, its colour and its share of the pixels. */
data class LegendEntry(val classIndex: Int, val label: String, val colour: Rgb, val pixels: Int, val fraction: Double)

/**
 * Logits -> mask -> picture, step for step as `espnet_mobile/preprocess.py`:
 * argmax over classes (the lowest index wins ties), nearest-neighbour resize with half-pixel
 * centres (source index `floor((dst + 0.5) * in / out)`, at most `in - 1`), palette colours,
 * and the overlay `floor(image * (1 - a) + colour * a + 0.5)`.
 */
object Postprocess {
    const val OVERLAY_ALPHA = 0.5

    /**
     * Argmax of (1, C, H, W) logits in NCHW order. Ties go to the lowest class index; a NaN
     * counts as the largest value (the first NaN wins), as NumPy's argmax does.
     */
    fun argmax(logits: FloatArray, numClasses: Int, height: Int, width: Int): Mask {
        val plane = height * width
        require(logits.size == numClasses * plane) {
            "expected $numClasses x $height x $width = ${numClasses * plane} logits, got ${logits.size}"
        }
        val out = IntArray(plane)
        val best = FloatArray(plane)
        System.arraycopy(logits, 0, best, 0, plane)
        for (c in 1 until numClasses) {
            val base = c * plane
            for (p in 0 until plane) {
                val b = best[p]
                if (b.isNaN()) continue
                val v = logits[base + p]
                if (v > b || v.isNaN()) {
                    best[p] = v
                    out[p] = c
                }
            }
        }
        return Mask(width, height, out)
    }

    /** An int32 (1, H, W) mask from a model with an argmax head, checked against the class count. */
    fun maskFromIndices(indices: IntArray, numClasses: Int, height: Int, width: Int): Mask {
        require(indices.size == height * width) { "expected ${height * width} class indices, got ${indices.size}" }
        val bad = indices.firstOrNull { it < 0 || it >= numClasses }
        require(bad == null) { "class index $bad is outside 0..${numClasses - 1}" }
        return Mask(width, height, indices.copyOf())
    }

    /** Source index for each of [nOut] outputs: `min(floor((i + 0.5) * nIn / nOut), nIn - 1)`. */
    fun nearestAxis(nIn: Int, nOut: Int): IntArray = IntArray(nOut) { i ->
        val src = kotlin.math.floor((i.toDouble() + 0.5) * nIn.toDouble() / nOut.toDouble()).toInt()
        minOf(src, nIn - 1)
    }

    fun resizeNearest(mask: Mask, outHeight: Int, outWidth: Int): Mask {
        val ys = nearestAxis(mask.height, outHeight)
        val xs = nearestAxis(mask.width, outWidth)
        val out = IntArray(outHeight * outWidth)
        for (y in 0 until outHeight) {
            val row = ys[y] * mask.width
            for (x in 0 until outWidth) out[y * outWidth + x] = mask.classes[row + xs[x]]
        }
        return Mask(outWidth, outHeight, out)
    }

    fun colorize(mask: Mask, palette: List<Rgb>): RgbImage {
        val out = ByteArray(mask.classes.size * 3)
        for (i in mask.classes.indices) {
            val c = palette[mask.classes[i]]
            out[3 * i] = c.r.toByte()
            out[3 * i + 1] = c.g.toByte()
            out[3 * i + 2] = c.b.toByte()
        }
        return RgbImage(mask.width, mask.height, out)
    }

    /** Blend the palette colours of [mask] (same size as [image]) over it. */
    fun overlay(image: RgbImage, mask: Mask, palette: List<Rgb>, alpha: Double = OVERLAY_ALPHA): RgbImage {
        require(image.width == mask.width && image.height == mask.height) {
            "mask ${mask.width}x${mask.height} does not match image ${image.width}x${image.height}; resize it first"
        }
        val keep = 1.0 - alpha
        val out = ByteArray(image.pixels.size)
        for (i in mask.classes.indices) {
            val colour = palette[mask.classes[i]]
            for (c in 0 until 3) {
                val px = (image.pixels[3 * i + c].toInt() and 0xFF).toDouble()
                val pc = when (c) {
                    0 -> colour.r
                    1 -> colour.g
                    else -> colour.b
                }.toDouble()
                val blended = px * keep + pc * alpha
                out[3 * i + c] = kotlin.math.floor(blended + 0.5).toInt().toByte()
            }
        }
        return RgbImage(image.width, image.height, out)
    }

    /** The classes present in [mask], most pixels first. */
    fun legend(mask: Mask, labels: List<String>, palette: List<Rgb>): List<LegendEntry> {
        val counts = IntArray(labels.size)
        for (c in mask.classes) counts[c]++
        val total = mask.classes.size.toDouble()
        return counts.indices.filter { counts[it] > 0 }
            .sortedWith(compareByDescending<Int> { counts[it] }.thenBy { it })
            .map { LegendEntry(it, labels[it], palette[it], counts[it], counts[it] / total) }
    }
}
