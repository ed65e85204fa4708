package org.espnetmobile.demo

import android.content.Context
import android.content.res.AssetManager
import org.espnetmobile.core.Artifact
import org.espnetmobile.core.Bundle
import org.espnetmobile.core.BundleFiles
import java.io.File

/** The bundle shipped in the APK under assets/[dir]/ (manifest.json at its top). */
class AssetBundleFiles(private val assets: AssetManager, val dir: String = BUNDLE_DIR) : BundleFiles {
    override val description: String get() = "assets/$dir"

    override fun read(path: String): ByteArray = assets.open("$dir/$path").use { it.readBytes() }

    companion object {
        const val BUNDLE_DIR = "bundle"

        fun open(context: Context): Bundle = Bundle.open(AssetBundleFiles(context.assets))
    }
}

/**
 * An artifact as a file on disk (ExecuTorch loads from a path), checked against its sha256 once and
 * kept under files/artifacts/<sha256>/ so a new bundle never reuses an old copy.
 */
fun materializeArtifact(context: Context, bundle: Bundle, artifact: Artifact): File {
    val dir = File(context.filesDir, "artifacts/${artifact.sha256}")
    val file = File(dir, artifact.file)
    if (file.isFile && file.length() == artifact.bytes) return file
    val bytes = bundle.readVerified(artifact.file, artifact.sha256)
    dir.mkdirs()
    val tmp = File(dir, ".${artifact.file}.tmp")
    tmp.writeBytes(bytes)
    if (!tmp.renameTo(file)) throw IllegalStateException("cannot write ${file.path}")
    return file
}

/** The asset path of an artifact, after checking its bytes against the manifest's sha256. */
fun verifiedAssetPath(bundle: Bundle, artifact: Artifact): String {
    bundle.readVerified(artifact.file, artifact.sha256)
    return "${AssetBundleFiles.BUNDLE_DIR}/${artifact.file}"
}
