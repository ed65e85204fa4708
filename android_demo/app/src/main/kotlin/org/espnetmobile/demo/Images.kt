package org.espnetmobile.demo

import android.content.Context
import android.graphics.Bitmap
import android.graphics.BitmapFactory
import android.graphics.ColorSpace
import android.graphics.ImageDecoder
import android.graphics.Matrix
import android.net.Uri
import org.espnetmobile.core.RgbImage

/** Decoding is the platform's part of preprocessing step 1: 8-bit RGB, upright. */
object Images {
    /** Photos larger than this (longest side) are decoded downscaled, to keep memory in check. */
    const val MAX_SIDE = 2048

    /**
     * A photo from the picker or the camera as 8-bit sRGB. ImageDecoder applies the EXIF
     * orientation, as the Python pipeline does. Unlike Pillow it also converts embedded colour
     * profiles to sRGB, and photos above [MAX_SIDE] px are downscaled first: for such photos the
     * model input can differ slightly from `python -m espnet_mobile.predict` on the same file.
     */
    fun decode(context: Context, uri: Uri): RgbImage {
        val source = ImageDecoder.createSource(context.contentResolver, uri)
        val bitmap = ImageDecoder.decodeBitmap(source) { decoder, info, _ ->
            decoder.allocator = ImageDecoder.ALLOCATOR_SOFTWARE
            decoder.setTargetColorSpace(ColorSpace.get(ColorSpace.Named.SRGB))
            val w = info.size.width
            val h = info.size.height
            val longest = maxOf(w, h)
            if (longest > MAX_SIDE) {
                decoder.setTargetSize(maxOf(1, w * MAX_SIDE / longest), maxOf(1, h * MAX_SIDE / longest))
            }
        }
        return toRgb(bitmap)
    }

    /** A PNG exactly as stored (no scaling, no premultiplication): how the golden images are read. */
    fun decodePngExact(bytes: ByteArray): RgbImage {
        val options = BitmapFactory.Options().apply {
            inPreferredConfig = Bitmap.Config.ARGB_8888
            inScaled = false
            inPremultiplied = false
        }
        val bitmap = BitmapFactory.decodeByteArray(bytes, 0, bytes.size, options)
            ?: throw IllegalArgumentException("not a decodable image")
        return toRgb(bitmap)
    }

    /** getPixels returns non-premultiplied ARGB; alpha is dropped, as Pillow's convert("RGB") does. */
    fun toRgb(bitmap: Bitmap): RgbImage {
        val argb = IntArray(bitmap.width * bitmap.height)
        bitmap.getPixels(argb, 0, bitmap.width, 0, 0, bitmap.width, bitmap.height)
        return RgbImage.fromArgb(argb, bitmap.width, bitmap.height)
    }

    /** A camera frame turned upright: CameraX reports how far the sensor image is rotated from the display. */
    fun rotate(bitmap: Bitmap, degrees: Int): Bitmap {
        if (degrees % 360 == 0) return bitmap
        val matrix = Matrix().apply { postRotate(degrees.toFloat()) }
        return Bitmap.createBitmap(bitmap, 0, 0, bitmap.width, bitmap.height, matrix, true)
    }

    fun toBitmap(image: RgbImage): Bitmap =
        Bitmap.createBitmap(image.toArgb(), image.width, image.height, Bitmap.Config.ARGB_8888)
}
