package org.espnetmobile.demo

import android.content.Context
import org.espnetmobile.core.AccuracyCheck
import org.espnetmobile.core.AccuracyReport
import org.espnetmobile.core.Bundle
import org.espnetmobile.core.DeviceRuntimes
import org.espnetmobile.core.ItemMetrics
import org.espnetmobile.core.LatencySummary
import org.espnetmobile.core.RgbImage
import org.espnetmobile.core.RuntimeOption
import org.espnetmobile.core.RuntimeOptions
import org.espnetmobile.core.Segmentation
import org.espnetmobile.core.SegmentationPipeline
import org.espnetmobile.core.SegmentationRunner

/**
 * Everything the screens do with the bundle and the runtimes, without UI: the bundle from the APK's
 * assets, what the phone offers, the runner for the chosen option (opened once, reused), and the
 * photo, camera-frame, benchmark and accuracy-check work. Not thread-safe: the view model calls it
 * from one worker thread.
 */
class DemoSession private constructor(private val context: Context, val bundle: Bundle, val device: DeviceRuntimes) : AutoCloseable {
    val options: List<RuntimeOption> = RuntimeOptions.build(bundle.manifest, device)

    private var runner: SegmentationRunner? = null
    private var runnerFor: RuntimeOption? = null

    /** The runner for [option], opened on first use and kept while the option stays selected. */
    fun runner(option: RuntimeOption): SegmentationRunner {
        runner?.let { if (runnerFor == option) return it }
        runner?.close()
        runner = null
        runnerFor = null
        val opened = Runtimes.open(context, bundle, option)
        runner = opened
        runnerFor = option
        return opened
    }

    fun pipeline(option: RuntimeOption) = SegmentationPipeline(bundle.manifest, option.artifact.inputLayout, runner(option))

    fun segment(image: RgbImage, option: RuntimeOption, overlay: Boolean = true): Segmentation = pipeline(option).segment(image, overlay)

    fun benchmark(image: RgbImage, option: RuntimeOption, warmup: Int, runs: Int): LatencySummary =
        pipeline(option).benchmark(image, warmup, runs)

    fun accuracyCheck(option: RuntimeOption, onItem: (Int, ItemMetrics) -> Unit): AccuracyReport =
        AccuracyCheck.run(bundle, option.artifact.precision, option.artifact.inputLayout, runner(option), onItem)

    /**
     * The photo shown on first launch: the bundle's first golden photo (the converter picks photos
     * of the model's domain), read and checked against its sha256 like every bundle file.
     */
    fun samplePhoto(): Pair<String, RgbImage>? {
        val item = bundle.manifest.golden.firstOrNull() ?: return null
        val bytes = bundle.readVerified(item.image.file, item.image.sha256)
        return item.name to Images.decodePngExact(bytes)
    }

    override fun close() {
        runner?.close()
        runner = null
        runnerFor = null
    }

    companion object {
        /** Opens the bundle in assets/bundle/ and probes the runtimes; throws BundleException with what to do. */
        fun open(context: Context): DemoSession {
            val bundle = AssetBundleFiles.open(context)
            return DemoSession(context.applicationContext, bundle, Runtimes.probe(context))
        }
    }
}
