package org.espnetmobile.core

import org.junit.Test
import kotlin.test.assertContentEquals
import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import kotlin.test.assertTrue

class PostprocessTest {
    @Test
    fun argmaxTakesTheLowestIndexOnTies() {
        // 3 classes, 1x4 pixels (NCHW planes of 4 values)
        val logits = floatArrayOf(
            1f, 0f, 5f, 2f, // class 0
            1f, 3f, 5f, 2f, // class 1
            0f, 3f, 4f, 9f, // class 2
        )
        val mask = Postprocess.argmax(logits, 3, 1, 4)
        assertContentEquals(intArrayOf(0, 1, 0, 2), mask.classes)
    }

    @Test
    fun argmaxTreatsNaNAsTheMaximumLikeNumPy() {
        val nan = Float.NaN
        val logits = floatArrayOf(
            0f, nan, 1f,
            nan, 5f, 2f,
            nan, 9f, nan,
        )
        assertContentEquals(intArrayOf(1, 0, 2), Postprocess.argmax(logits, 3, 1, 3).classes)
    }

    @Test
    fun argmaxChecksTheSize() {
        val e = assertFailsWith<IllegalArgumentException> { Postprocess.argmax(FloatArray(10), 3, 2, 2) }
        assertTrue(e.message!!.contains("expected 3 x 2 x 2 = 12 logits, got 10"), e.message)
    }

    /** Expected indices from espnet_mobile.preprocess.resize_mask_nearest([[0,1,2],[3,4,5]], 5, 7). */
    @Test
    fun nearestResizeMatchesPython() {
        val mask = Mask(3, 2, intArrayOf(0, 1, 2, 3, 4, 5))
        val out = Postprocess.resizeNearest(mask, 5, 7)
        val expected = intArrayOf(
            0, 0, 1, 1, 1, 2, 2, 0, 0, 1, 1, 1, 2, 2, 3, 3, 4, 4, 4, 5, 5, 3, 3, 4, 4, 4, 5, 5, 3, 3, 4, 4, 4, 5, 5,
        )
        assertEquals(7, out.width)
        assertEquals(5, out.height)
        assertContentEquals(expected, out.classes)
    }

    @Test
    fun nearestDownsampleClampsToTheLastIndex() {
        // floor((i + 0.5) * 5 / 2) = 1, 3
        assertContentEquals(intArrayOf(1, 3), Postprocess.nearestAxis(5, 2))
        assertContentEquals(intArrayOf(0, 0, 0), Postprocess.nearestAxis(1, 3))
    }

    @Test
    fun overlayRoundsHalfUp() {
        val img = RgbImage(2, 1, byteArrayOf(0, 1, 2, 255.toByte(), 100, 7))
        val palette = listOf(Rgb(0, 0, 0), Rgb(128, 0, 255))
        val out = Postprocess.overlay(img, Mask(2, 1, intArrayOf(1, 0)), palette)
        // (0+128)/2 = 64, (1+0)/2 = 0.5 -> 1, (2+255)/2 = 128.5 -> 129; (255+0)/2 = 127.5 -> 128, 50, 3.5 -> 4
        assertEquals(listOf(64, 1, 129, 128, 50, 4), (0 until 6).map { out.pixels[it].toInt() and 0xFF })
        val colours = Postprocess.colorize(Mask(2, 1, intArrayOf(1, 0)), palette)
        assertEquals(listOf(128, 0, 255, 0, 0, 0), (0 until 6).map { colours.pixels[it].toInt() and 0xFF })
    }

    @Test
    fun overlayRefusesAMaskOfAnotherSize() {
        val e = assertFailsWith<IllegalArgumentException> {
            Postprocess.overlay(RgbImage(2, 1, ByteArray(6)), Mask(1, 1, intArrayOf(0)), listOf(Rgb(0, 0, 0)))
        }
        assertTrue(e.message!!.contains("resize it first"), e.message)
    }

    @Test
    fun legendListsPresentClassesByShare() {
        val mask = Mask(4, 1, intArrayOf(2, 0, 2, 2))
        val legend = Postprocess.legend(mask, listOf("a", "b", "c"), listOf(Rgb(0, 0, 0), Rgb(1, 1, 1), Rgb(2, 2, 2)))
        assertEquals(listOf("c", "a"), legend.map { it.label })
        assertEquals(0.75, legend[0].fraction)
        assertEquals(Rgb(2, 2, 2), legend[0].colour)
    }

    @Test
    fun maskHeadIndicesAreChecked() {
        assertContentEquals(intArrayOf(0, 2), Postprocess.maskFromIndices(intArrayOf(0, 2), 3, 1, 2).classes)
        assertFailsWith<IllegalArgumentException> { Postprocess.maskFromIndices(intArrayOf(0, 3), 3, 1, 2) }
    }

    @Test
    fun float16DecodesEveryKindOfValue() {
        val cases = mapOf(
            0x0000 to 0.0f, 0x3C00 to 1.0f, 0xC000 to -2.0f, 0x3555 to 0.33325195f, 0x7BFF to 65504f,
            0x0400 to 6.1035156e-5f, 0x0001 to 5.9604645e-8f, 0x03FF to 1023f * 5.9604645e-8f, 0x8001 to -5.9604645e-8f,
            0x7C00 to Float.POSITIVE_INFINITY, 0xFC00 to Float.NEGATIVE_INFINITY,
        )
        for ((bits, value) in cases) assertEquals(value, Float16.toFloat(bits), "bits 0x%04x".format(bits))
        assertEquals((-0.0f).toRawBits(), Float16.toFloat(0x8000).toRawBits())
        assertTrue(Float16.toFloat(0x7E00).isNaN())
        assertTrue(Float16.toFloat(0x7C01).isNaN())
    }

    @Test
    fun float16MatchesTheDefinitionForEveryFiniteHalf() {
        for (bits in 0 until 0x10000) {
            val sign = if (bits and 0x8000 != 0) -1.0 else 1.0
            val e = (bits ushr 10) and 0x1F
            val f = bits and 0x3FF
            if (e == 0x1F) continue
            val expected = sign * if (e == 0) Math.scalb(f.toDouble(), -24) else Math.scalb(1.0 + f / 1024.0, e - 15)
            assertEquals(expected, Float16.toFloat(bits).toDouble(), "bits 0x%04x".format(bits))
        }
    }

    @Test
    fun halfUlpIsHalfTheFloat16Spacing() {
        assertEquals(1f / 2048f, Float16.halfUlp(1.0f)) // spacing 2^-10 at 1
        assertEquals(1f / 2048f, Float16.halfUlp(-1.999f))
        assertEquals(1f / 128f, Float16.halfUlp(16.1875f)) // spacing 2^-6 in [16, 32)
        assertEquals(2.9802322e-8f, Float16.halfUlp(1e-6f)) // subnormal: spacing 2^-24
    }

    @Test
    fun rawTensorsAreLittleEndian() {
        assertContentEquals(floatArrayOf(1.0f, -2.0f), RawTensors.float32(byteArrayOf(0, 0, 0x80.toByte(), 0x3F, 0, 0, 0, 0xC0.toByte())))
        assertContentEquals(floatArrayOf(1.0f, -2.0f), RawTensors.float16(byteArrayOf(0, 0x3C, 0, 0xC0.toByte())))
        assertContentEquals(intArrayOf(1, -1), RawTensors.int32(byteArrayOf(1, 0, 0, 0, -1, -1, -1, -1)))
        assertContentEquals(intArrayOf(0, 255), RawTensors.uint8(byteArrayOf(0, -1)))
        val values = floatArrayOf(0.1f, -3e7f, Float.MIN_VALUE)
        assertContentEquals(values, RawTensors.float32(RawTensors.toBytes(values)))
        assertFailsWith<IllegalArgumentException> { RawTensors.float16(ByteArray(3)) }
    }
}
