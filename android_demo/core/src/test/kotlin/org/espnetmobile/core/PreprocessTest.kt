package org.espnetmobile.core

import org.junit.Test
import kotlin.test.assertContentEquals
import kotlin.test.assertEquals
import kotlin.test.assertFailsWith

class PreprocessTest {
    private fun image(w: Int, h: Int, value: (x: Int, y: Int, c: Int) -> Int): RgbImage {
        val px = ByteArray(w * h * 3)
        for (y in 0 until h) for (x in 0 until w) for (c in 0 until 3) px[(y * w + x) * 3 + c] = value(x, y, c).toByte()
        return RgbImage(w, h, px)
    }

    @Test
    fun sameSizeResizeIsTheIdentity() {
        val img = image(6, 4) { x, y, c -> x * 40 + y * 7 + c }
        val out = Preprocess.resizeBilinear(img, 4, 6)
        for (i in out.indices) assertEquals((img.pixels[i].toInt() and 0xFF).toDouble(), out[i])
    }

    @Test
    fun upsamplingUsesHalfPixelCentresAndClampsAtTheEdges() {
        // 2 px -> 4 px: source x = (i + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25 -> clamped 0, .25, .75, 1.
        val img = image(2, 1) { x, _, _ -> if (x == 0) 0 else 100 }
        val out = Preprocess.resizeBilinear(img, 1, 4)
        assertEquals(listOf(0.0, 25.0, 75.0, 100.0), (0 until 4).map { out[it * 3] })
    }

    @Test
    fun downsamplingByTwoAveragesPairs() {
        val img = image(4, 2) { x, y, _ -> x * 10 + y * 100 }
        val out = Preprocess.resizeBilinear(img, 1, 2)
        // row = average of rows 0 and 1 (+50), columns (0,1) and (2,3)
        assertEquals(listOf(55.0, 75.0), (0 until 2).map { out[it * 3] })
    }

    /** Expected values from espnet_mobile.preprocess.preprocess on the same 5x3 image, resized to 7x4. */
    @Test
    fun matchesPythonBitForBitOnAnOddScale() {
        val img = image(5, 3) { x, y, c -> (x * 37 + y * 91 + c * 53) % 256 }
        val expected = floatArrayOf(
            0f, 0.0829131678f, 0.186554626f, 0.290196091f, 0.393837541f, 0.497478992f, 0.580392182f, 0.22303921f, 0.30595237f,
            0.40959385f, 0.513235271f, 0.616876721f, 0.720518231f, 0.803431392f, 0.490686268f, 0.573599458f, 0.569677889f,
            0.404411763f, 0.508053243f, 0.611694694f, 0.694607854f, 0.713725507f, 0.796638668f, 0.613445401f, 0f, 0.103641458f,
            0.207282916f, 0.290196091f, 0.20784314f, 0.290756315f, 0.394397765f, 0.498039216f, 0.601680696f, 0.705322146f,
            0.788235307f, 0.430882365f, 0.513795495f, 0.617436945f, 0.721078455f, 0.824719906f, 0.659453809f, 0.383823544f,
            0.698529422f, 0.566316545f, 0.508613467f, 0.612254918f, 0.715896368f, 0.550630271f, 0.275000006f, 0.921568632f,
            0.430812329f, 0.104201682f, 0.20784314f, 0.311484605f, 0.415126055f, 0.498039216f, 0.41568628f, 0.49859944f,
            0.60224092f, 0.70588237f, 0.809523821f, 0.913165271f, 0.996078432f, 0.638725519f, 0.72163868f, 0.646008432f,
            0.301470578f, 0.405112058f, 0.508753479f, 0.591666639f, 0.529901981f, 0.612815142f, 0.537184894f, 0.192647055f,
            0.29628852f, 0.399929971f, 0.482843131f, 0.125490203f, 0.208403364f, 0.312044829f, 0.41568628f, 0.51932776f,
            0.62296921f, 0.70588237f,
        )
        val out = Preprocess.toNchwFloat(img, 4, 7)
        assertEquals(expected.size, out.size)
        for (i in expected.indices) assertEquals(expected[i].toRawBits(), out[i].toRawBits(), "value $i: ${out[i]} vs ${expected[i]}")
    }

    @Test
    fun modelInputFollowsTheManifest() {
        val img = image(5, 3) { x, y, c -> (x * 37 + y * 91 + c * 53) % 256 }
        val m = Manifest.parse(TestSupport.manifestJson(h = 4, w = 7))
        val nchw = Preprocess.toModelInput(img, m.input)
        assertEquals(listOf(1, 3, 4, 7), nchw.shape)
        assertContentEquals(Preprocess.toNchwFloat(img, 4, 7), nchw.floats)

        val nhwc = Preprocess.toModelInput(img, m.input, Layout.NHWC)
        assertEquals(listOf(1, 4, 7, 3), nhwc.shape)
        assertContentEquals(Layouts.nchwToNhwc(nchw.floats!!, 3, 4, 7), nhwc.floats)
        assertContentEquals(nchw.floats, Layouts.nhwcToNchw(nhwc.floats!!, 3, 4, 7))

        val byteSpec = m.input.copy(dtype = "uint8", valueMin = 0.0, valueMax = 255.0)
        val bytes = Preprocess.toModelInput(img, byteSpec).bytes!!
        val resized = Preprocess.resizeBilinear(img, 4, 7)
        for (p in 0 until 28) for (c in 0 until 3) {
            assertEquals(kotlin.math.floor(resized[p * 3 + c] + 0.5).toInt(), bytes[c * 28 + p].toInt() and 0xFF)
        }
        assertFailsWith<IllegalArgumentException> { Preprocess.toModelInput(img, byteSpec.copy(valueMax = 1.0)) }

        val wide = Preprocess.toModelInput(img, m.input.copy(valueMin = 0.0, valueMax = 255.0)).floats!!
        for (p in 0 until 28) assertEquals(resized[p * 3].toFloat(), wide[p])
    }

    @Test
    fun argbConversionDropsAlpha() {
        val argb = intArrayOf(0x80112233.toInt(), 0xFFFFFFFF.toInt(), 0x00000000, 0xFF0000FF.toInt())
        val img = RgbImage.fromArgb(argb, 2, 2)
        assertEquals(listOf(0x11, 0x22, 0x33), (0 until 3).map { img.at(0, 0, it) })
        assertEquals(listOf(0, 0, 255), (0 until 3).map { img.at(1, 1, it) })
        assertContentEquals(intArrayOf(0xFF112233.toInt(), 0xFFFFFFFF.toInt(), 0xFF000000.toInt(), 0xFF0000FF.toInt()), img.toArgb())
    }

    @Test
    fun badSizesAreRejected() {
        assertFailsWith<IllegalArgumentException> { RgbImage(2, 2, ByteArray(11)) }
        assertFailsWith<IllegalArgumentException> { RgbImage(0, 2, ByteArray(0)) }
    }
}
