import Foundation

/// What a runtime returns: (1, C, H, W) NCHW logits, or an (H, W) class-index mask. Mirrors AccuracyCheck.kt.
public enum ModelOutput {
    case logits([Float])
    case mask([Int])
}

/// One loaded artifact on one compute unit (Core ML, ExecuTorch).
public protocol SegmentationRunner: AnyObject {
    /// What actually runs, e.g. "Core ML cpuAndNeuralEngine (fp16)".
    var description: String { get }
    func run(_ input: ModelInput) throws -> ModelOutput
}

public struct AccuracyReport {
    public let modelId: String
    public let runner: String
    public let precision: Precision
    public let metrics: ParityMetrics
    public let verdict: ParityVerdict
    /// Milliseconds per golden item, in order (the first includes any lazy initialisation).
    public let latenciesMs: [Double]

    public var passed: Bool { verdict.passed }

    /// A plain-text summary for logs and test output (same lines as Kotlin's AccuracyReport.summary()).
    public func summary() -> String {
        let f = ParityThresholds.fmt
        var lines = ["\(modelId) on \(runner) (\(precision.rawValue)): \(passed ? "PASS" : "FAIL")"]
        lines.append("  pixel agreement \(f(metrics.pixelAgreement)), mIoU vs reference \(f(metrics.miou)), " +
            "max abs error \(f(metrics.maxAbsError)), mean abs error \(f(metrics.meanAbsError)), " +
            "max rel error \(f(metrics.maxRelAbsError)) (net of fp16 rounding \(f(metrics.netMaxRelAbsError))), " +
            "SQNR \(f(metrics.sqnrDb)) dB")
        for c in verdict.checks {
            lines.append(trimEnd("  \(c.status.rawValue) \(c.key): \(f(c.value)) vs \(f(c.limit)) \(c.note)"))
        }
        for (i, item) in metrics.items.enumerated() {
            let ms = i < latenciesMs.count ? String(format: "%.1f ms", latenciesMs[i]) : ""
            lines.append(trimEnd("  \(item.name): agreement \(f(item.pixelAgreement)), mIoU \(f(item.miou)), max abs \(f(item.maxAbsError)) \(ms)"))
        }
        return lines.joined(separator: "\n")
    }
}

private func trimEnd(_ s: String) -> String {
    var out = s
    while out.last == " " { out.removeLast() }
    return out
}

/// The on-device accuracy check: every golden input through `runner`, compared with the reference logits
/// against the manifest's thresholds for `precision`.
public enum AccuracyCheck {
    public static func run(_ bundle: SegmentationBundle, precision: Precision, inputLayout: TensorLayout, runner: SegmentationRunner,
                           onItem: (Int, ItemMetrics) -> Void = { _, _ in }) throws -> AccuracyReport {
        let m = bundle.manifest
        guard !m.golden.isEmpty else { throw BundleError("\(bundle.description) has no golden items to check against") }
        let acc = ParityAccumulator(numClasses: m.numClasses)
        var latencies: [Double] = []
        for (index, item) in m.golden.enumerated() {
            let input = try goldenModelInput(bundle, item, layout: inputLayout)
            let start = DispatchTime.now().uptimeNanoseconds
            let out = try runner.run(input)
            latencies.append(Double(DispatchTime.now().uptimeNanoseconds - start) / 1e6)
            let h = item.logits.shape[2], w = item.logits.shape[3]
            let metrics: ItemMetrics
            switch out {
            case .logits(let values):
                metrics = try acc.addLogits(item.name, candidate: values, reference: bundle.goldenLogits(item), height: h, width: w,
                                            referenceDtype: item.logits.dtype)
            case .mask(let indices):
                metrics = try acc.addMask(item.name, candidate: Postprocess.maskFromIndices(indices, numClasses: m.numClasses, height: h, width: w),
                                          reference: bundle.goldenMask(item))
            }
            onItem(index, metrics)
        }
        let metrics = try acc.result()
        return AccuracyReport(modelId: m.modelId, runner: runner.description, precision: precision, metrics: metrics,
                              verdict: ParityThresholds.evaluate(metrics, limits: m.thresholds(for: precision), precision: precision),
                              latenciesMs: latencies)
    }

    /// The golden input (stored float32 NCHW in [0, 1]) in the layout, dtype and value range the artifact takes.
    public static func goldenModelInput(_ bundle: SegmentationBundle, _ item: GoldenItem, layout: TensorLayout) throws -> ModelInput {
        let spec = bundle.manifest.input
        let nchw = try bundle.goldenInput(item)
        let h = spec.height, w = spec.width
        let values = layout == .NCHW ? nchw : Layouts.nchwToNhwc(nchw, channels: 3, height: h, width: w)
        let shape = layout == .NCHW ? [1, 3, h, w] : [1, h, w, 3]
        switch spec.dtype {
        case "float32":
            let lo = spec.valueMin, hi = spec.valueMax
            let scaled = lo == 0 && hi == 1 ? values : values.map { Float(lo + Double($0) * (hi - lo)) }
            return ModelInput(shape: shape, layout: layout, floats: scaled, bytes: nil)
        case "uint8":
            let bytes = values.map { UInt8(min(max(Int((Double($0) * 255.0 + 0.5).rounded(.down)), 0), 255)) }
            return ModelInput(shape: shape, layout: layout, floats: nil, bytes: bytes)
        default:
            throw BundleError("unsupported input dtype \(spec.dtype)")
        }
    }
}
