import Foundation

/// An 8-bit RGB image: `pixels` holds R, G, B for each pixel, row by row. Mirrors RgbImage in Preprocess.kt.
/// Decoding a file (and applying its EXIF orientation) is the platform's job.
public struct RgbImage {
    public let width: Int
    public let height: Int
    public let pixels: [UInt8]

    public init(width: Int, height: Int, pixels: [UInt8]) {
        precondition(width > 0 && height > 0, "image size must be positive, got \(width)x\(height)")
        precondition(pixels.count == width * height * 3, "expected \(width * height * 3) bytes for \(width)x\(height) RGB, got \(pixels.count)")
        self.width = width
        self.height = height
        self.pixels = pixels
    }

    /// Component `c` (0 = R, 1 = G, 2 = B) of pixel (x, y), 0-255.
    public func at(_ x: Int, _ y: Int, _ c: Int) -> Int { Int(pixels[(y * width + x) * 3 + c]) }

    /// From interleaved RGBA bytes (a CGContext's buffer); alpha is dropped, as Pillow's convert("RGB") does.
    public static func fromRgba(_ rgba: [UInt8], width: Int, height: Int) -> RgbImage {
        precondition(rgba.count == width * height * 4)
        var out = [UInt8](repeating: 0, count: width * height * 3)
        for i in 0..<(width * height) {
            out[3 * i] = rgba[4 * i]
            out[3 * i + 1] = rgba[4 * i + 1]
            out[3 * i + 2] = rgba[4 * i + 2]
        }
        return RgbImage(width: width, height: height, pixels: out)
    }

    /// Opaque RGBA bytes, for building a CGImage.
    public func toRgba() -> [UInt8] {
        var out = [UInt8](repeating: 255, count: width * height * 4)
        for i in 0..<(width * height) {
            out[4 * i] = pixels[3 * i]
            out[4 * i + 1] = pixels[3 * i + 1]
            out[4 * i + 2] = pixels[3 * i + 2]
        }
        return out
    }
}

/// What a runtime is fed: float32 or uint8 values in `layout` with `shape`.
public struct ModelInput {
    public let shape: [Int]
    public let layout: TensorLayout
    public let floats: [Float]?
    public let bytes: [UInt8]?
}

/// Image -> model input, step for step as espnet_mobile/preprocess.py and Preprocess.kt: bilinear
/// resize with half-pixel centres, rows first then columns, in Double on the 0-255 values, then /255
/// rounded once to Float. Every product and sum is a separate IEEE operation (Swift does not fuse
/// them into FMAs), so the bits equal NumPy's.
public enum Preprocess {
    public struct Axis {
        public let left: [Int]
        public let right: [Int]
        public let weight: [Double]
    }

    public static func bilinearAxis(_ nIn: Int, _ nOut: Int) -> Axis {
        precondition(nIn > 0 && nOut > 0, "sizes must be positive, got \(nIn) -> \(nOut)")
        let scale = Double(nIn) / Double(nOut)
        let last = Double(nIn - 1)
        var left = [Int](repeating: 0, count: nOut)
        var right = [Int](repeating: 0, count: nOut)
        var weight = [Double](repeating: 0, count: nOut)
        for i in 0..<nOut {
            var src = (Double(i) + 0.5) * scale - 0.5
            if src < 0 { src = 0 }
            if src > last { src = last }
            let l = Int(src.rounded(.down))
            left[i] = l
            right[i] = min(l + 1, nIn - 1)
            weight[i] = src - Double(l)
        }
        return Axis(left: left, right: right, weight: weight)
    }

    /// Resize to outHeight x outWidth; returns (outHeight, outWidth, 3) doubles on the 0-255 scale.
    public static func resizeBilinear(_ image: RgbImage, outHeight: Int, outWidth: Int) -> [Double] {
        let ys = bilinearAxis(image.height, outHeight)
        let xs = bilinearAxis(image.width, outWidth)
        let rowLen = image.width * 3
        var row = [Double](repeating: 0, count: rowLen)
        var out = [Double](repeating: 0, count: outHeight * outWidth * 3)
        let px = image.pixels
        for i in 0..<outHeight {
            let wy = ys.weight[i]
            let keep = 1.0 - wy
            let top = ys.left[i] * rowLen
            let bottom = ys.right[i] * rowLen
            for k in 0..<rowLen {
                let a = Double(px[top + k]) * keep
                let b = Double(px[bottom + k]) * wy
                row[k] = a + b
            }
            let base = i * outWidth * 3
            for j in 0..<outWidth {
                let wx = xs.weight[j]
                let keepX = 1.0 - wx
                let l = xs.left[j] * 3
                let r = xs.right[j] * 3
                for c in 0..<3 {
                    let a = row[l + c] * keepX
                    let b = row[r + c] * wx
                    out[base + j * 3 + c] = a + b
                }
            }
        }
        return out
    }

    /// The float32 NCHW input in [0, 1] the golden vectors hold: (1, 3, height, width).
    public static func toNchwFloat(_ image: RgbImage, height: Int, width: Int) -> [Float] {
        let hwc = resizeBilinear(image, outHeight: height, outWidth: width)
        let plane = height * width
        var out = [Float](repeating: 0, count: 3 * plane)
        for p in 0..<plane { for c in 0..<3 { out[c * plane + p] = Float(hwc[p * 3 + c] / 255.0) } }
        return out
    }

    /// The input `spec` asks for, in `layout` (an artifact's own input_layout may differ from the manifest's).
    public static func toModelInput(_ image: RgbImage, spec: InputSpec, layout: TensorLayout? = nil) throws -> ModelInput {
        let chosen = layout ?? spec.layout
        let h = spec.height, w = spec.width
        let hwc = resizeBilinear(image, outHeight: h, outWidth: w)
        let shape = chosen == .NCHW ? [1, 3, h, w] : [1, h, w, 3]
        let plane = h * w
        func index(_ p: Int, _ c: Int) -> Int { chosen == .NCHW ? c * plane + p : p * 3 + c }
        switch spec.dtype {
        case "float32":
            let lo = spec.valueMin, hi = spec.valueMax
            var out = [Float](repeating: 0, count: 3 * plane)
            for p in 0..<plane {
                for c in 0..<3 {
                    let v = hwc[p * 3 + c]
                    let scaled: Double
                    if lo == 0 && hi == 1 { scaled = v / 255.0 } else if lo == 0 && hi == 255 { scaled = v } else { scaled = lo + v / 255.0 * (hi - lo) }
                    out[index(p, c)] = Float(scaled)
                }
            }
            return ModelInput(shape: shape, layout: chosen, floats: out, bytes: nil)
        case "uint8":
            guard spec.valueMin == 0 && spec.valueMax == 255 else {
                throw BundleError("uint8 input needs value_range [0, 255], the manifest says [\(spec.valueMin), \(spec.valueMax)]")
            }
            var out = [UInt8](repeating: 0, count: 3 * plane)
            for p in 0..<plane {
                for c in 0..<3 { out[index(p, c)] = UInt8(min(max(Int((hwc[p * 3 + c] + 0.5).rounded(.down)), 0), 255)) }
            }
            return ModelInput(shape: shape, layout: chosen, floats: nil, bytes: out)
        default:
            throw BundleError("unsupported input dtype \(spec.dtype)")
        }
    }
}
