package org.espnetmobile.core

import org.junit.Test
import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import kotlin.test.assertNull
import kotlin.test.assertTrue

class LatencyTest {
    @Test
    fun medianOfOddAndEvenCounts() {
        assertEquals(3.0, Latency.median(listOf(5.0, 1.0, 3.0)))
        assertEquals(2.5, Latency.median(listOf(4.0, 1.0, 3.0, 2.0)))
        assertFailsWith<IllegalArgumentException> { Latency.median(emptyList()) }
    }

    @Test
    fun warmUpRunsAreDiscardedAndStagesSummarisedSeparately() {
        val calls = mutableListOf<Int>()
        // Two slow warm-up runs (first-run compilation), then runs whose stages vary independently.
        val summary = Latency.measure(warmup = 2, runs = 5) { i ->
            calls += i
            if (i < 2) StageTimes(100.0, 1000.0, 100.0) else StageTimes(1.0 + i, 10.0 * i, 2.0)
        }
        assertEquals(listOf(0, 1, 2, 3, 4, 5, 6), calls)
        assertEquals(2, summary.warmup)
        assertEquals(5, summary.runs)
        assertEquals(StageTimes(5.0, 40.0, 2.0), summary.median) // i = 2..6: pre 3..7, inference 20..60
        assertEquals(47.0, summary.medianTotalMs)
        assertEquals(25.0, summary.minTotalMs)
        assertEquals(69.0, summary.maxTotalMs)
        assertTrue(summary.description.startsWith("median of 5 runs after 2 warm-up: 47.0 ms (pre 5.0 · inference 40.0 · post 2.0)"),
            summary.description)
    }

    @Test
    fun medianTotalIsTheMedianOfTotalsNotTheSumOfStageMedians() {
        val s = Latency.summarise(0, listOf(StageTimes(1.0, 10.0, 1.0), StageTimes(9.0, 1.0, 1.0), StageTimes(5.0, 5.0, 50.0)))
        assertEquals(12.0, s.medianTotalMs)
        assertEquals(5.0 + 5.0 + 1.0, s.median.totalMs)
    }

    @Test
    fun stageTimesFromNanoTimeReadings() {
        assertEquals(StageTimes(1.5, 20.0, 0.25), StageTimes.fromNanos(1_000_000, 2_500_000, 22_500_000, 22_750_000))
    }

    @Test
    fun fpsOverASlidingWindow() {
        var now = 0L
        val meter = FpsMeter(window = 4) { now }
        assertNull(meter.tick(), "one frame has no rate")
        now += 50_000_000
        assertEquals(20.0, meter.tick()!!, 1e-9)
        for (i in 0 until 5) { now += 100_000_000; meter.tick() } // the window now holds only 10 fps frames
        assertEquals(10.0, meter.fps!!, 1e-9)
        meter.reset()
        assertNull(meter.fps)
    }
}
