package org.espnetmobile.core

/** One run of the pipeline split into its stages, in milliseconds. */
data class StageTimes(val preprocessMs: Double, val inferenceMs: Double, val postprocessMs: Double) {
    val totalMs: Double get() = preprocessMs + inferenceMs + postprocessMs

    companion object {
        /** Times from four System.nanoTime() readings: start, after preprocessing, after inference, end. */
        fun fromNanos(start: Long, preprocessed: Long, inferred: Long, end: Long) =
            StageTimes((preprocessed - start) / 1e6, (inferred - preprocessed) / 1e6, (end - inferred) / 1e6)
    }
}

/**
 * Latency as benchmarks report it: [warmup] runs discarded (first-run allocation, JIT and delegate
 * compilation, caches), then the median of [runs] timed runs, per stage and for the whole run.
 * The median total is the median of the runs' totals, not the sum of the stage medians.
 */
data class LatencySummary(
    val warmup: Int,
    val runs: Int,
    val median: StageTimes,
    val medianTotalMs: Double,
    val minTotalMs: Double,
    val maxTotalMs: Double,
) {
    /** "median of 20 runs after 3 warm-up: 41.2 ms (pre 3.1 · inference 35.0 · post 3.0), range 39.8-47.5". */
    val description: String
        get() = String.format(
            java.util.Locale.ROOT,
            "median of %d runs after %d warm-up: %.1f ms (pre %.1f · inference %.1f · post %.1f), range %.1f-%.1f ms",
            runs, warmup, medianTotalMs, median.preprocessMs, median.inferenceMs, median.postprocessMs, minTotalMs, maxTotalMs,
        )
}

object Latency {
    fun median(values: List<Double>): Double {
        require(values.isNotEmpty()) { "the median of no values" }
        val sorted = values.sorted()
        val mid = sorted.size / 2
        return if (sorted.size % 2 == 1) sorted[mid] else (sorted[mid - 1] + sorted[mid]) / 2
    }

    /** Calls [once] [warmup] + [runs] times and summarises the timed runs. */
    fun measure(warmup: Int, runs: Int, once: (index: Int) -> StageTimes): LatencySummary {
        require(warmup >= 0 && runs >= 1) { "need warmup >= 0 and runs >= 1, got $warmup and $runs" }
        repeat(warmup) { once(it) }
        val timed = (0 until runs).map { once(warmup + it) }
        return summarise(warmup, timed)
    }

    fun summarise(warmup: Int, timed: List<StageTimes>): LatencySummary {
        val totals = timed.map { it.totalMs }
        return LatencySummary(
            warmup = warmup,
            runs = timed.size,
            median = StageTimes(median(timed.map { it.preprocessMs }), median(timed.map { it.inferenceMs }), median(timed.map { it.postprocessMs })),
            medianTotalMs = median(totals),
            minTotalMs = totals.min(),
            maxTotalMs = totals.max(),
        )
    }
}

/**
 * Frames per second over the last [window] frames of a live stream; call [tick] once per frame
 * shown. The clock is injectable for tests.
 */
class FpsMeter(private val window: Int = 30, private val clockNanos: () -> Long = System::nanoTime) {
    private val stamps = ArrayDeque<Long>()

    init {
        require(window >= 2) { "window must hold at least 2 frames" }
    }

    /** Records a frame; returns the rate over the frames in the window, or null until there are two. */
    fun tick(): Double? {
        stamps.addLast(clockNanos())
        while (stamps.size > window) stamps.removeFirst()
        return fps
    }

    val fps: Double?
        get() {
            if (stamps.size < 2) return null
            val span = stamps.last() - stamps.first()
            return if (span <= 0) null else (stamps.size - 1) * 1e9 / span
        }

    fun reset() = stamps.clear()
}
