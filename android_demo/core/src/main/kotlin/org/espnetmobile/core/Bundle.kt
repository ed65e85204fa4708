package org.espnetmobile.core

import java.io.File
import java.io.IOException

/** A bundle that cannot be used, with a message that says what to do. */
open class BundleException(message: String) : Exception(message)

/** Where a bundle's files live: a folder here, the APK's assets on Android. Paths are bundle-relative with '/'. */
interface BundleFiles {
    /** Shown in error messages, e.g. "assets/bundle". */
    val description: String

    /** The whole file; throws [IOException] (or a subclass) when it is missing or unreadable. */
    fun read(path: String): ByteArray
}

class DirectoryBundleFiles(val root: File) : BundleFiles {
    override val description: String get() = root.path

    override fun read(path: String): ByteArray {
        val file = File(root, path)
        if (!file.isFile) throw java.io.FileNotFoundException("$path is not in $description")
        return file.readBytes()
    }
}

/** A parsed manifest plus access to the files it lists, each checked against its sha256. */
class Bundle(val manifest: Manifest, val files: BundleFiles) {
    /** The bytes of [file], after checking them against [sha256]. */
    fun readVerified(file: String, sha256: String): ByteArray {
        val bytes = try {
            files.read(file)
        } catch (e: IOException) {
            throw BundleException("${files.description}: $file is listed in the manifest but cannot be read (${e.message}); copy the whole bundle again")
        }
        val actual = Sha256.hex(bytes)
        if (actual != sha256) {
            throw BundleException(
                "${files.description}: $file was altered (sha256 ${actual.take(12)}..., manifest says ${sha256.take(12)}...); copy the bundle again",
            )
        }
        return bytes
    }

    private fun tensorBytes(ref: TensorRef): ByteArray {
        val bytes = readVerified(ref.file, ref.sha256)
        val expected = ref.count.toLong() * RawTensors.itemSize(ref.dtype)
        if (bytes.size.toLong() != expected) {
            throw BundleException("${files.description}: ${ref.file} has ${bytes.size} bytes, expected $expected for ${ref.dtype} ${ref.shape}")
        }
        return bytes
    }

    /** The exact float32 (1, 3, H, W) input of a golden item. */
    fun goldenInput(item: GoldenItem): FloatArray = RawTensors.float32(tensorBytes(item.input))

    /** The reference logits (1, C, H, W) of a golden item, widened to float. */
    fun goldenLogits(item: GoldenItem): FloatArray = RawTensors.floats(tensorBytes(item.logits), item.logits.dtype)

    /** The reference argmax mask of a golden item. */
    fun goldenMask(item: GoldenItem): Mask {
        val classes = RawTensors.uint8(tensorBytes(item.mask))
        return Mask(item.mask.shape[2], item.mask.shape[1], classes)
    }

    fun artifact(file: String): Artifact =
        manifest.artifacts.firstOrNull { it.file == file } ?: throw BundleException("no artifact $file in ${files.description}")

    companion object {
        fun open(files: BundleFiles): Bundle {
            val bytes = try {
                files.read(Manifest.FILE_NAME)
            } catch (e: IOException) {
                throw BundleException(
                    "${files.description} is not a bundle: no ${Manifest.FILE_NAME} (${e.message}); " +
                        "unzip the file made by python -m espnet_mobile.package <bundle> --zip there",
                )
            }
            return Bundle(Manifest.parse(bytes.toString(Charsets.UTF_8), "${files.description}/${Manifest.FILE_NAME}"), files)
        }

        fun open(directory: File): Bundle = open(DirectoryBundleFiles(directory))
    }
}
