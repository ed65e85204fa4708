package org.espnetmobile.core

/** One photo segmented: the mask at the photo's size, the overlay, the legend and how long each stage took. */
class Segmentation(
    val mask: Mask,
    val overlay: RgbImage,
    val legend: List<LegendEntry>,
    val times: StageTimes,
    /** What ran, as the runner reports it (runtime, delegate or accelerator, fallback reason). */
    val runner: String,
)

/**
 * Photo -> preprocessing -> [runner] -> argmax, nearest resize to the photo, overlay and legend,
 * exactly as the manifest says, with each stage timed. The same pipeline serves a photo, a camera
 * frame and the latency benchmark. [clockNanos] is injectable for tests.
 */
class SegmentationPipeline(
    private val manifest: Manifest,
    private val inputLayout: Layout,
    private val runner: SegmentationRunner,
    private val clockNanos: () -> Long = System::nanoTime,
) {
    fun segment(image: RgbImage, overlay: Boolean = true): Segmentation {
        val m = manifest
        val t0 = clockNanos()
        val input = Preprocess.toModelInput(image, m.input, inputLayout)
        val t1 = clockNanos()
        val out = runner.run(input)
        val t2 = clockNanos()
        val small = out.logits?.let { Postprocess.argmax(it, m.numClasses, m.output.height, m.output.width) }
            ?: Postprocess.maskFromIndices(out.mask ?: throw IllegalStateException("${runner.description} returned nothing"),
                m.numClasses, m.output.height, m.output.width)
        val full = Postprocess.resizeNearest(small, image.height, image.width)
        val blended = if (overlay) Postprocess.overlay(image, full, m.palette) else image
        val legend = Postprocess.legend(full, m.labels, m.palette)
        val t3 = clockNanos()
        return Segmentation(full, blended, legend, StageTimes.fromNanos(t0, t1, t2, t3), runner.description)
    }

    /** Latency on [image]: [warmup] discarded runs, then the median of [runs], split into stages. */
    fun benchmark(image: RgbImage, warmup: Int = DEFAULT_WARMUP, runs: Int = DEFAULT_RUNS): LatencySummary =
        Latency.measure(warmup, runs) { segment(image).times }

    companion object {
        const val DEFAULT_WARMUP = 3
        const val DEFAULT_RUNS = 20
    }
}
