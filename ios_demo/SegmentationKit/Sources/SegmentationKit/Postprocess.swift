import Foundation

/// A class-index map, row-major: classes[y * width + x] is the class of pixel (x, y). Mirrors Postprocess.kt.
public struct Mask: Equatable {
    public let width: Int
    public let height: Int
    public let classes: [Int]

    public init(width: Int, height: Int, classes: [Int]) {
        precondition(width > 0 && height > 0, "mask size must be positive, got \(width)x\(height)")
        precondition(classes.count == width * height, "expected \(width * height) class indices, got \(classes.count)")
        self.width = width
        self.height = height
        self.classes = classes
    }

    public subscript(x: Int, y: Int) -> Int { classes[y * width + x] }
}

/// One legend row: a class present in a mask, its colour and its share of the pixels.
public struct LegendEntry: Equatable {
    public let classIndex: Int
    public let label: String
    public let colour: Rgb
    public let pixels: Int
    public let fraction: Double
}

/// Logits -> mask -> picture, step for step as espnet_mobile/preprocess.py and Postprocess.kt.
public enum Postprocess {
    public static let overlayAlpha = 0.5

    /// Argmax of (1, C, H, W) NCHW logits; ties go to the lowest index; a NaN counts as the largest value.
    public static func argmax(_ logits: [Float], numClasses: Int, height: Int, width: Int) -> Mask {
        let plane = height * width
        precondition(logits.count == numClasses * plane,
                     "expected \(numClasses) x \(height) x \(width) = \(numClasses * plane) logits, got \(logits.count)")
        var out = [Int](repeating: 0, count: plane)
        var best = Array(logits[0..<plane])
        for c in 1..<max(numClasses, 1) {
            let base = c * plane
            for p in 0..<plane {
                let b = best[p]
                if b.isNaN { continue }
                let v = logits[base + p]
                if v > b || v.isNaN {
                    best[p] = v
                    out[p] = c
                }
            }
        }
        return Mask(width: width, height: height, classes: out)
    }

    /// An int32 (1, H, W) mask from a model with an argmax head, checked against the class count.
    public static func maskFromIndices(_ indices: [Int], numClasses: Int, height: Int, width: Int) throws -> Mask {
        guard indices.count == height * width else { throw BundleError("expected \(height * width) class indices, got \(indices.count)") }
        if let bad = indices.first(where: { $0 < 0 || $0 >= numClasses }) {
            throw BundleError("class index \(bad) is outside 0..\(numClasses - 1)")
        }
        return Mask(width: width, height: height, classes: indices)
    }

    /// Source index for each of nOut outputs: min(floor((i + 0.5) * nIn / nOut), nIn - 1).
    public static func nearestAxis(_ nIn: Int, _ nOut: Int) -> [Int] {
        (0..<nOut).map { i in min(Int(((Double(i) + 0.5) * Double(nIn) / Double(nOut)).rounded(.down)), nIn - 1) }
    }

    public static func resizeNearest(_ mask: Mask, outHeight: Int, outWidth: Int) -> Mask {
        let ys = nearestAxis(mask.height, outHeight)
        let xs = nearestAxis(mask.width, outWidth)
        var out = [Int](repeating: 0, count: outHeight * outWidth)
        for y in 0..<outHeight {
            let row = ys[y] * mask.width
            for x in 0..<outWidth { out[y * outWidth + x] = mask.classes[row + xs[x]] }
        }
        return Mask(width: outWidth, height: outHeight, classes: out)
    }

    public static func colorize(_ mask: Mask, palette: [Rgb]) -> RgbImage {
        var out = [UInt8](repeating: 0, count: mask.classes.count * 3)
        for (i, k) in mask.classes.enumerated() {
            let c = palette[k]
            out[3 * i] = UInt8(c.r)
            out[3 * i + 1] = UInt8(c.g)
            out[3 * i + 2] = UInt8(c.b)
        }
        return RgbImage(width: mask.width, height: mask.height, pixels: out)
    }

    /// Blend the palette colours of `mask` (same size as `image`) over it: floor(image * (1 - a) + colour * a + 0.5).
    public static func overlay(_ image: RgbImage, mask: Mask, palette: [Rgb], alpha: Double = overlayAlpha) -> RgbImage {
        precondition(image.width == mask.width && image.height == mask.height,
                     "mask \(mask.width)x\(mask.height) does not match image \(image.width)x\(image.height); resize it first")
        let keep = 1.0 - alpha
        var out = [UInt8](repeating: 0, count: image.pixels.count)
        for (i, k) in mask.classes.enumerated() {
            let colour = palette[k]
            let comps = [colour.r, colour.g, colour.b]
            for c in 0..<3 {
                let a = Double(image.pixels[3 * i + c]) * keep
                let b = Double(comps[c]) * alpha
                out[3 * i + c] = UInt8(Int((a + b + 0.5).rounded(.down)))
            }
        }
        return RgbImage(width: image.width, height: image.height, pixels: out)
    }

    /// The classes present in `mask`, most pixels first.
    public static func legend(_ mask: Mask, labels: [String], palette: [Rgb]) -> [LegendEntry] {
        var counts = [Int](repeating: 0, count: labels.count)
        for c in mask.classes { counts[c] += 1 }
        let total = Double(mask.classes.count)
        return counts.indices.filter { counts[$0] > 0 }
            .sorted { counts[$0] != counts[$1] ? counts[$0] > counts[$1] : $0 < $1 }
            .map { LegendEntry(classIndex: $0, label: labels[$0], colour: palette[$0], pixels: counts[$0], fraction: Double(counts[$0]) / total) }
    }
}
