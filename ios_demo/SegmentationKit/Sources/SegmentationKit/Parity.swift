import Foundation

/// How far a runtime's output is from the reference. Mirrors Parity.kt one-to-one (see there): the
/// definitions of espnet_mobile/parity.py and metrics.py - pixel agreement averaged over items, mIoU in
/// percent from confusion counts pooled over items, max/mean abs error and SQNR pooled over all values,
/// relative error = max abs error / largest |reference logit| of all items; with float16 reference logits,
/// `netMaxRelAbsError` subtracts the reference's own rounding bound and is what `max_rel_abs_error` is
/// checked on.
public struct ItemMetrics {
    public let name: String
    public let pixels: Int
    public let agreeing: Int
    public let miou: Double
    public let maxAbsError: Double
    public let meanAbsError: Double
    public let maxAbsReference: Double
    public let maxRelAbsError: Double
    public let netMaxRelAbsError: Double
    public let sqnrDb: Double
    public var pixelAgreement: Double { Double(agreeing) / Double(pixels) }
}

public struct ParityMetrics {
    public let items: [ItemMetrics]
    public let numClasses: Int
    public let pixelAgreement: Double
    public let iou: [Double]
    public let miou: Double
    public let maxAbsError: Double
    public let meanAbsError: Double
    public let maxRelAbsError: Double
    public let netMaxRelAbsError: Double
    public let sqnrDb: Double
    public let hasLogits: Bool
}

public final class ParityAccumulator {
    public let numClasses: Int
    private var items: [ItemMetrics] = []
    private var intersection: [Int64]
    private var predicted: [Int64]
    private var expected: [Int64]
    private var absSum = 0.0
    private var valueCount: Int64 = 0
    private var signal = 0.0
    private var noise = 0.0
    private var logitItems = 0
    private var peakReference = 0.0
    private var peakNet = 0.0
    private var sawNaN = false

    public init(numClasses: Int) {
        self.numClasses = numClasses
        intersection = [Int64](repeating: 0, count: numClasses)
        predicted = intersection
        expected = intersection
    }

    /// Compare candidate logits with reference logits, both (1, C, H, W) NCHW.
    @discardableResult
    public func addLogits(_ name: String, candidate: [Float], reference: [Float], height: Int, width: Int,
                          referenceDtype: String = "float32") throws -> ItemMetrics {
        let n = numClasses * height * width
        guard candidate.count == n else {
            throw BundleError("\(name): runtime output has \(candidate.count) values, expected \(n) (1 x \(numClasses) x \(height) x \(width))")
        }
        guard reference.count == n else { throw BundleError("\(name): reference has \(reference.count) values, expected \(n)") }
        let halfStored = referenceDtype == "float16"
        var maxAbs = 0.0, maxNet = 0.0, maxRef = 0.0, sum = 0.0, sig = 0.0, err2 = 0.0
        for i in 0..<n {
            let r = Double(reference[i])
            let d = abs(Double(candidate[i]) - r)
            if d > maxAbs { maxAbs = d }
            let net = halfStored ? d - Double(Half.halfUlp(reference[i])) : d
            if net > maxNet { maxNet = net }
            if abs(r) > maxRef { maxRef = abs(r) }
            sum += d
            sig += r * r
            err2 += d * d
        }
        if candidate.contains(where: { $0.isNaN }) { // NaN compares false above; make it visible
            maxAbs = .nan
            maxNet = .nan
            sawNaN = true
        }
        if maxRef > peakReference { peakReference = maxRef }
        if maxNet > peakNet { peakNet = maxNet }
        absSum += sum
        valueCount += Int64(n)
        signal += sig
        noise += err2
        logitItems += 1
        let cand = Postprocess.argmax(candidate, numClasses: numClasses, height: height, width: width)
        let ref = Postprocess.argmax(reference, numClasses: numClasses, height: height, width: width)
        return record(name, cand, ref, maxAbs, sum / Double(n), maxRef, maxNet, Self.sqnr(sig, err2))
    }

    /// Compare a candidate mask (from a model with an argmax head) with the reference mask.
    @discardableResult
    public func addMask(_ name: String, candidate: Mask, reference: Mask) throws -> ItemMetrics {
        guard candidate.width == reference.width && candidate.height == reference.height else {
            throw BundleError("\(name): mask \(candidate.width)x\(candidate.height) differs from reference \(reference.width)x\(reference.height)")
        }
        return record(name, candidate, reference, .nan, .nan, .nan, .nan, .nan)
    }

    private func record(_ name: String, _ cand: Mask, _ ref: Mask, _ maxAbs: Double, _ meanAbs: Double,
                        _ maxRef: Double, _ maxNet: Double, _ sqnrDb: Double) -> ItemMetrics {
        var inter = [Int64](repeating: 0, count: numClasses)
        var pred = inter, exp = inter
        var agree = 0
        for p in 0..<cand.classes.count {
            let a = cand.classes[p], b = ref.classes[p]
            pred[a] += 1
            exp[b] += 1
            if a == b { agree += 1; inter[a] += 1 }
        }
        for c in 0..<numClasses {
            intersection[c] += inter[c]
            predicted[c] += pred[c]
            expected[c] += exp[c]
        }
        let item = ItemMetrics(
            name: name, pixels: cand.classes.count, agreeing: agree,
            miou: Self.meanIou(Self.iou(inter, pred, exp)),
            maxAbsError: maxAbs, meanAbsError: meanAbs, maxAbsReference: maxRef,
            maxRelAbsError: maxAbs / maxRef, netMaxRelAbsError: max(0.0, maxNet) / maxRef, sqnrDb: sqnrDb)
        items.append(item)
        return item
    }

    public func result() throws -> ParityMetrics {
        guard !items.isEmpty else { throw BundleError("no items were compared") }
        let iou = Self.iou(intersection, predicted, expected)
        let logits = logitItems == items.count
        func maxOrNaN(_ values: [Double]) -> Double { values.contains { $0.isNaN } ? .nan : (values.max() ?? .nan) }
        return ParityMetrics(
            items: items,
            numClasses: numClasses,
            pixelAgreement: items.map(\.pixelAgreement).reduce(0, +) / Double(items.count),
            iou: iou,
            miou: Self.meanIou(iou),
            maxAbsError: logits ? maxOrNaN(items.map(\.maxAbsError)) : .nan,
            meanAbsError: logits ? absSum / Double(valueCount) : .nan,
            maxRelAbsError: !logits || sawNaN ? .nan : maxOrNaN(items.map(\.maxAbsError)) / peakReference,
            netMaxRelAbsError: !logits || sawNaN ? .nan : max(0.0, peakNet) / peakReference,
            sqnrDb: logits ? Self.sqnr(signal, noise) : .nan,
            hasLogits: logits)
    }

    public static func iou(_ inter: [Int64], _ pred: [Int64], _ exp: [Int64]) -> [Double] {
        (0..<inter.count).map { c in
            let union = pred[c] + exp[c] - inter[c]
            return union == 0 ? .nan : Double(inter[c]) / Double(union)
        }
    }

    /// Mean over the classes present, in percent.
    public static func meanIou(_ iou: [Double]) -> Double {
        let present = iou.filter { !$0.isNaN }
        return present.isEmpty ? .nan : present.reduce(0, +) / Double(present.count) * 100
    }

    public static func sqnr(_ signal: Double, _ noise: Double) -> Double {
        if noise.isNaN || signal.isNaN { return .nan }
        if noise == 0 { return .infinity }
        return 10 * log10(signal / noise)
    }
}

public enum CheckStatus: String { case PASS, FAIL, NOT_CHECKED }

public struct ThresholdCheck {
    public let key: String
    public let value: Double
    public let limit: Double
    public let status: CheckStatus
    public let note: String
}

public struct ParityVerdict {
    public let precision: Precision
    public let checks: [ThresholdCheck]
    /// True when no threshold fails and at least one was checked.
    public var passed: Bool { !checks.contains { $0.status == .FAIL } && checks.contains { $0.status == .PASS } }
}

/// Pass/fail of ParityMetrics against a manifest's thresholds for one precision.
public enum ParityThresholds {
    public static func evaluate(_ m: ParityMetrics, limits: [(String, Double)], precision: Precision) -> ParityVerdict {
        ParityVerdict(precision: precision, checks: limits.map { check(m, $0.0, $0.1) })
    }

    private static func atLeast(_ key: String, _ value: Double, _ limit: Double, _ note: String = "") -> ThresholdCheck {
        ThresholdCheck(key: key, value: value, limit: limit, status: !value.isNaN && value >= limit ? .PASS : .FAIL, note: note)
    }

    private static func atMost(_ key: String, _ value: Double, _ limit: Double, _ note: String = "") -> ThresholdCheck {
        ThresholdCheck(key: key, value: value, limit: limit, status: !value.isNaN && value <= limit ? .PASS : .FAIL, note: note)
    }

    private static func notChecked(_ key: String, _ limit: Double, _ note: String) -> ThresholdCheck {
        ThresholdCheck(key: key, value: .nan, limit: limit, status: .NOT_CHECKED, note: note)
    }

    private static let maskOnly = "the artifact returns a mask, not logits"

    private static func check(_ m: ParityMetrics, _ key: String, _ limit: Double) -> ThresholdCheck {
        switch key {
        case "min_pixel_agreement": return atLeast(key, m.pixelAgreement, limit)
        case "min_miou_vs_reference": return atLeast(key, m.miou, limit)
        case "max_rel_abs_error":
            return m.hasLogits
                ? atMost(key, m.netMaxRelAbsError, limit, "raw \(fmt(m.maxRelAbsError)); the reference's float16 rounding is allowed for")
                : notChecked(key, limit, maskOnly)
        case "max_abs_error": return m.hasLogits ? atMost(key, m.maxAbsError, limit) : notChecked(key, limit, maskOnly)
        case "min_sqnr_db": return m.hasLogits ? atLeast(key, m.sqnrDb, limit) : notChecked(key, limit, maskOnly)
        case "max_miou_drop_points":
            return notChecked(key, limit, "needs labelled images; the Python parity run on the dataset checks it")
        default: return notChecked(key, limit, "unknown to this app version")
        }
    }

    /// The same text as Kotlin's ParityThresholds.fmt.
    public static func fmt(_ v: Double) -> String {
        if v.isNaN { return "n/a" }
        if v.isInfinite { return v > 0 ? "inf" : "-inf" }
        if v != 0 && (abs(v) < 1e-3 || abs(v) >= 1e5) {
            // Java's %.3e writes a two-digit exponent with its sign (4.578e-04), as does C's.
            return String(format: "%.3e", v)
        }
        return String(format: "%.6f", v)
    }
}
