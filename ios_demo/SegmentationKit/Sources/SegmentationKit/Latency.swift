import Foundation

/// One run of the pipeline split into its stages, in milliseconds. Mirrors Latency.kt.
public struct StageTimes: Equatable {
    public let preprocessMs: Double
    public let inferenceMs: Double
    public let postprocessMs: Double

    public init(preprocessMs: Double, inferenceMs: Double, postprocessMs: Double) {
        self.preprocessMs = preprocessMs
        self.inferenceMs = inferenceMs
        self.postprocessMs = postprocessMs
    }

    public var totalMs: Double { preprocessMs + inferenceMs + postprocessMs }

    /// Times from four monotonic nanosecond readings: start, after preprocessing, after inference, end.
    public static func fromNanos(_ start: UInt64, _ preprocessed: UInt64, _ inferred: UInt64, _ end: UInt64) -> StageTimes {
        StageTimes(preprocessMs: Double(preprocessed - start) / 1e6, inferenceMs: Double(inferred - preprocessed) / 1e6,
                   postprocessMs: Double(end - inferred) / 1e6)
    }
}

/// Latency as benchmarks report it: `warmup` runs discarded, then the median of `runs` timed runs, per
/// stage and for the whole run (the median of the totals, not the sum of the stage medians).
public struct LatencySummary: Equatable {
    public let warmup: Int
    public let runs: Int
    public let median: StageTimes
    public let medianTotalMs: Double
    public let minTotalMs: Double
    public let maxTotalMs: Double

    public var description: String {
        String(format: "median of %ld runs after %ld warm-up: %.1f ms (pre %.1f · inference %.1f · post %.1f), range %.1f-%.1f ms",
               runs, warmup, medianTotalMs, median.preprocessMs, median.inferenceMs, median.postprocessMs, minTotalMs, maxTotalMs)
    }
}

public enum Latency {
    public static func median(_ values: [Double]) -> Double {
        precondition(!values.isEmpty, "the median of no values")
        let sorted = values.sorted()
        let mid = sorted.count / 2
        return sorted.count % 2 == 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2
    }

    /// Calls `once` `warmup` + `runs` times and summarises the timed runs.
    public static func measure(warmup: Int, runs: Int, _ once: (Int) throws -> StageTimes) rethrows -> LatencySummary {
        precondition(warmup >= 0 && runs >= 1, "need warmup >= 0 and runs >= 1")
        for i in 0..<warmup { _ = try once(i) }
        var timed: [StageTimes] = []
        for i in 0..<runs { timed.append(try once(warmup + i)) }
        return summarise(warmup: warmup, timed)
    }

    public static func summarise(warmup: Int, _ timed: [StageTimes]) -> LatencySummary {
        let totals = timed.map(\.totalMs)
        return LatencySummary(
            warmup: warmup,
            runs: timed.count,
            median: StageTimes(preprocessMs: median(timed.map(\.preprocessMs)), inferenceMs: median(timed.map(\.inferenceMs)),
                               postprocessMs: median(timed.map(\.postprocessMs))),
            medianTotalMs: median(totals),
            minTotalMs: totals.min()!,
            maxTotalMs: totals.max()!
        )
    }
}

/// Frames per second over the last `window` frames of a live stream; call `tick` once per frame shown.
public final class FpsMeter {
    private let window: Int
    private let clockNanos: () -> UInt64
    private var stamps: [UInt64] = []

    public init(window: Int = 30, clockNanos: @escaping () -> UInt64 = { DispatchTime.now().uptimeNanoseconds }) {
        precondition(window >= 2, "window must hold at least 2 frames")
        self.window = window
        self.clockNanos = clockNanos
    }

    /// Records a frame; the rate over the frames in the window, or nil until there are two.
    @discardableResult
    public func tick() -> Double? {
        stamps.append(clockNanos())
        if stamps.count > window { stamps.removeFirst(stamps.count - window) }
        return fps
    }

    public var fps: Double? {
        guard stamps.count >= 2, let first = stamps.first, let last = stamps.last, last > first else { return nil }
        return Double(stamps.count - 1) * 1e9 / Double(last - first)
    }

    public func reset() { stamps.removeAll() }
}

/// One photo segmented: the mask at the photo's size, the overlay, the legend and the stage times.
public struct Segmentation {
    public let mask: Mask
    public let overlay: RgbImage
    public let legend: [LegendEntry]
    public let times: StageTimes
    /// What ran, as the runner reports it (runtime, compute units, fallback reason).
    public let runner: String
}

/// Photo -> preprocessing -> runner -> argmax, nearest resize, overlay and legend, each stage timed.
/// The same pipeline serves a photo, a camera frame and the latency benchmark. Mirrors Pipeline.kt.
public struct SegmentationPipeline {
    public static let defaultWarmup = 3
    public static let defaultRuns = 20

    let manifest: Manifest
    let inputLayout: TensorLayout
    let runner: SegmentationRunner
    let clockNanos: () -> UInt64

    public init(manifest: Manifest, inputLayout: TensorLayout, runner: SegmentationRunner,
                clockNanos: @escaping () -> UInt64 = { DispatchTime.now().uptimeNanoseconds }) {
        self.manifest = manifest
        self.inputLayout = inputLayout
        self.runner = runner
        self.clockNanos = clockNanos
    }

    public func segment(_ image: RgbImage, overlay: Bool = true) throws -> Segmentation {
        let m = manifest
        let t0 = clockNanos()
        let input = try Preprocess.toModelInput(image, spec: m.input, layout: inputLayout)
        let t1 = clockNanos()
        let out = try runner.run(input)
        let t2 = clockNanos()
        let small: Mask
        switch out {
        case .logits(let values):
            small = Postprocess.argmax(values, numClasses: m.numClasses, height: m.output.height, width: m.output.width)
        case .mask(let indices):
            small = try Postprocess.maskFromIndices(indices, numClasses: m.numClasses, height: m.output.height, width: m.output.width)
        }
        let full = Postprocess.resizeNearest(small, outHeight: image.height, outWidth: image.width)
        let blended = overlay ? Postprocess.overlay(image, mask: full, palette: m.palette) : image
        let legend = Postprocess.legend(full, labels: m.labels, palette: m.palette)
        let t3 = clockNanos()
        return Segmentation(mask: full, overlay: blended, legend: legend, times: .fromNanos(t0, t1, t2, t3), runner: runner.description)
    }

    /// Latency on `image`: `warmup` discarded runs, then the median of `runs`, split into stages.
    public func benchmark(_ image: RgbImage, warmup: Int = defaultWarmup, runs: Int = defaultRuns) throws -> LatencySummary {
        try Latency.measure(warmup: warmup, runs: runs) { _ in try segment(image).times }
    }
}
