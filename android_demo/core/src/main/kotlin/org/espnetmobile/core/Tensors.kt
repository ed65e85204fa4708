package org.espnetmobile.core

import java.security.MessageDigest

/** IEEE 754 half precision (binary16), decoded by hand: the JVM before 20 and older Android lack it. */
object Float16 {
    /** The float value of the 16 bits in the low half of [bits]. Exact: every half is a float. */
    fun toFloat(bits: Int): Float {
        val sign = (bits ushr 15) and 0x1
        val exponent = (bits ushr 10) and 0x1F
        val fraction = bits and 0x3FF
        val signBit = sign shl 31
        val out = when (exponent) {
            0 -> {
                if (fraction == 0) return Float.fromBits(signBit)
                // Subnormal: fraction * 2^-24, exact in float.
                val magnitude = fraction.toFloat() * SUBNORMAL_STEP
                return if (sign == 1) -magnitude else magnitude
            }
            0x1F -> signBit or 0x7F800000 or (fraction shl 13) // inf or NaN (payload kept)
            else -> signBit or ((exponent - 15 + 127) shl 23) or (fraction shl 13)
        }
        return Float.fromBits(out)
    }

    /**
     * Half the spacing between [value] (a half-precision number) and the next half away from zero:
     * the largest error storing a float in half precision can have made, when it produced [value].
     */
    fun halfUlp(value: Float): Float {
        val a = kotlin.math.abs(value)
        if (a.isNaN() || a.isInfinite()) return Float.POSITIVE_INFINITY
        if (a < MIN_NORMAL) return SUBNORMAL_STEP / 2f
        // A half in [2^e, 2^(e+1)) has 10 fraction bits: spacing 2^(e-10), half of it 2^(e-11).
        return Math.scalb(1.0f, Math.getExponent(a) - 11)
    }

    private const val SUBNORMAL_STEP = 5.9604645E-8f // 2^-24
    private const val MIN_NORMAL = 6.1035156E-5f // 2^-14
}

/** Raw little-endian tensors as the bundle stores them. */
object RawTensors {
    fun itemSize(dtype: String): Int = when (dtype) {
        "float32", "int32" -> 4
        "float16" -> 2
        "uint8" -> 1
        else -> throw IllegalArgumentException("unknown dtype $dtype")
    }

    fun float32(bytes: ByteArray): FloatArray {
        require(bytes.size % 4 == 0) { "float32 data must be a multiple of 4 bytes, got ${bytes.size}" }
        return FloatArray(bytes.size / 4) { i -> Float.fromBits(int32At(bytes, 4 * i)) }
    }

    fun float16(bytes: ByteArray): FloatArray {
        require(bytes.size % 2 == 0) { "float16 data must be a multiple of 2 bytes, got ${bytes.size}" }
        return FloatArray(bytes.size / 2) { i ->
            Float16.toFloat((bytes[2 * i].toInt() and 0xFF) or ((bytes[2 * i + 1].toInt() and 0xFF) shl 8))
        }
    }

    fun int32(bytes: ByteArray): IntArray {
        require(bytes.size % 4 == 0) { "int32 data must be a multiple of 4 bytes, got ${bytes.size}" }
        return IntArray(bytes.size / 4) { i -> int32At(bytes, 4 * i) }
    }

    fun uint8(bytes: ByteArray): IntArray = IntArray(bytes.size) { i -> bytes[i].toInt() and 0xFF }

    /** float32 or float16 data as floats. */
    fun floats(bytes: ByteArray, dtype: String): FloatArray = when (dtype) {
        "float32" -> float32(bytes)
        "float16" -> float16(bytes)
        else -> throw IllegalArgumentException("expected float32 or float16 data, got $dtype")
    }

    fun toBytes(values: FloatArray): ByteArray {
        val out = ByteArray(values.size * 4)
        for (i in values.indices) {
            val b = values[i].toRawBits()
            out[4 * i] = b.toByte()
            out[4 * i + 1] = (b ushr 8).toByte()
            out[4 * i + 2] = (b ushr 16).toByte()
            out[4 * i + 3] = (b ushr 24).toByte()
        }
        return out
    }

    private fun int32At(b: ByteArray, o: Int): Int =
        (b[o].toInt() and 0xFF) or ((b[o + 1].toInt() and 0xFF) shl 8) or
            ((b[o + 2].toInt() and 0xFF) shl 16) or ((b[o + 3].toInt() and 0xFF) shl 24)
}

/** Moving between NCHW and NHWC for a batch of one. */
object Layouts {
    fun nchwToNhwc(x: FloatArray, channels: Int, height: Int, width: Int): FloatArray {
        require(x.size == channels * height * width) { "expected ${channels * height * width} values, got ${x.size}" }
        val out = FloatArray(x.size)
        val plane = height * width
        for (c in 0 until channels) for (p in 0 until plane) out[p * channels + c] = x[c * plane + p]
        return out
    }

    fun nhwcToNchw(x: FloatArray, channels: Int, height: Int, width: Int): FloatArray {
        require(x.size == channels * height * width) { "expected ${channels * height * width} values, got ${x.size}" }
        val out = FloatArray(x.size)
        val plane = height * width
        for (p in 0 until plane) for (c in 0 until channels) out[c * plane + p] = x[p * channels + c]
        return out
    }
}

object Sha256 {
    fun hex(bytes: ByteArray): String =
        MessageDigest.getInstance("SHA-256").digest(bytes).joinToString("") { "%02x".format(it.toInt() and 0xFF) }
}
