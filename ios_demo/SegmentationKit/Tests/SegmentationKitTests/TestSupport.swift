import CoreGraphics
import Foundation
import ImageIO
@testable import SegmentationKit

/// Helpers for the tests only (ImageIO stays out of the library). Mirrors TestSupport.kt.
enum TestSupport {
    static let bundleEnv = "ESPNET_MOBILE_BUNDLE"

    /// The bundle folder named by ESPNET_MOBILE_BUNDLE, or nil when unset.
    static func bundleDir() -> URL? {
        guard let path = ProcessInfo.processInfo.environment[bundleEnv], !path.isEmpty else { return nil }
        return URL(fileURLWithPath: path, isDirectory: true)
    }

    static func decodePng(_ data: Data) throws -> CGImage {
        guard let source = CGImageSourceCreateWithData(data as CFData, nil),
              let image = CGImageSourceCreateImageAtIndex(source, 0, nil) else {
            throw BundleError("ImageIO cannot decode these bytes")
        }
        return image
    }

    private static func rawBytes(_ image: CGImage) -> [UInt8] {
        guard let data = image.dataProvider?.data else { return [] }
        return [UInt8](data as Data)
    }

    /// 8-bit RGB straight from the decoded samples when they are plain 8-bit RGB(A) or indexed
    /// (no colour management, as Pillow reads a PNG); otherwise drawn into an sRGB context.
    static func toRgb(_ image: CGImage) -> RgbImage {
        let w = image.width, h = image.height
        let raw = rawBytes(image)
        let model = image.colorSpace?.model
        let alpha = image.alphaInfo
        let order = image.bitmapInfo.intersection(.byteOrderMask)
        let plainOrder = order.rawValue == 0 || order == .byteOrder32Big
        if model == .indexed, image.bitsPerPixel == 8, let table = colorTable(image) {
            var out = [UInt8](repeating: 0, count: w * h * 3)
            for y in 0..<h {
                for x in 0..<w {
                    let i = Int(raw[y * image.bytesPerRow + x])
                    for c in 0..<3 { out[(y * w + x) * 3 + c] = table[3 * i + c] }
                }
            }
            return RgbImage(width: w, height: h, pixels: out)
        }
        if model == .rgb, image.bitsPerComponent == 8, plainOrder,
           image.bitsPerPixel == 24 || (image.bitsPerPixel == 32 && [.last, .premultipliedLast, .noneSkipLast].contains(alpha)) {
            let step = image.bitsPerPixel / 8
            var out = [UInt8](repeating: 0, count: w * h * 3)
            for y in 0..<h {
                for x in 0..<w {
                    for c in 0..<3 { out[(y * w + x) * 3 + c] = raw[y * image.bytesPerRow + x * step + c] }
                }
            }
            return RgbImage(width: w, height: h, pixels: out)
        }
        var rgba = [UInt8](repeating: 0, count: w * h * 4)
        let space = CGColorSpace(name: CGColorSpace.sRGB)!
        rgba.withUnsafeMutableBytes { buf in
            let ctx = CGContext(data: buf.baseAddress, width: w, height: h, bitsPerComponent: 8, bytesPerRow: 4 * w, space: space,
                                bitmapInfo: CGImageAlphaInfo.noneSkipLast.rawValue)!
            ctx.draw(image, in: CGRect(x: 0, y: 0, width: w, height: h))
        }
        return RgbImage.fromRgba(rgba, width: w, height: h)
    }

    private static func colorTable(_ image: CGImage) -> [UInt8]? {
        guard let space = image.colorSpace, space.model == .indexed else { return nil }
        return space.colorTable // 3 bytes (RGB) per entry
    }

    /// The class indices of a palette PNG: its pixel values when ImageIO keeps the palette, else each
    /// colour looked up in the manifest's palette.
    static func paletteIndices(_ image: CGImage, palette: [Rgb]) -> Mask {
        let w = image.width, h = image.height
        if image.colorSpace?.model == .indexed, image.bitsPerPixel == 8 {
            let raw = rawBytes(image)
            return Mask(width: w, height: h, classes: (0..<(w * h)).map { Int(raw[($0 / w) * image.bytesPerRow + $0 % w]) })
        }
        let rgb = toRgb(image)
        var lookup: [Int: Int] = [:]
        for (i, c) in palette.enumerated().reversed() { lookup[(c.r << 16) | (c.g << 8) | c.b] = i }
        return Mask(width: w, height: h, classes: (0..<(w * h)).map { p in
            lookup[(Int(rgb.pixels[3 * p]) << 16) | (Int(rgb.pixels[3 * p + 1]) << 8) | Int(rgb.pixels[3 * p + 2])] ?? -1
        })
    }

    static func maxAbsDiff(_ a: [Float], _ b: [Float]) -> Double {
        precondition(a.count == b.count)
        var m = 0.0
        for i in 0..<a.count { m = max(m, abs(Double(a[i]) - Double(b[i]))) }
        return m
    }

    /// A small valid manifest (the same as TestSupport.kt's); tests change one field through `mutate`.
    static func manifestJson(numClasses: Int = 3, h: Int = 8, w: Int = 8, mutate: (inout JsonObject) -> Void = { _ in }) -> String {
        let sha = String(repeating: "0", count: 64)
        let labels = (0..<numClasses).map { "\"class\($0)\"" }.joined(separator: ",")
        let palette = (0..<numClasses).map { "[\($0 * 10),\($0 * 20),\($0 * 30)]" }.joined(separator: ",")
        let text = """
        {
          "schema_version": 1,
          "model_id": "test_model",
          "created_by": "tests",
          "model": {"arch": "espnetv2", "hparams": {"s": 0.5}, "dataset": "voc", "checkpoint": "x.pth",
                    "checkpoint_sha256": "\(sha)", "qat_checkpoint_sha256": null, "num_classes": \(numClasses)},
          "input": {"name": "image", "shape": [1, 3, \(h), \(w)], "layout": "NCHW", "dtype": "float32",
                    "color_order": "RGB", "value_range": [0.0, 1.0], "normalization": "baked_in"},
          "output": {"name": "logits", "shape": [1, \(numClasses), \(h), \(w)], "layout": "NCHW", "dtype": "float32",
                     "meaning": "scores"},
          "labels": [\(labels)],
          "palette": [\(palette)],
          "preprocessing": {}, "postprocessing": {},
          "artifacts": [{"file": "m_tflite_fp32.tflite", "target": "tflite", "delegate": "xnnpack", "precision": "fp32",
                         "compute_units": ["cpu", "gpu"], "sha256": "\(sha)", "bytes": 10, "tool_versions": {},
                         "executable_here": true, "cache_key": "k", "input_layout": "NHWC"}],
          "golden": {"source": "synthetic", "items": [{
              "name": "g0",
              "image": {"file": "golden/g0.png", "sha256": "\(sha)"},
              "image_size": [10, 12],
              "input": {"file": "golden/g0_input.f32", "sha256": "\(sha)", "shape": [1, 3, \(h), \(w)], "dtype": "float32", "byte_order": "little"},
              "logits": {"file": "golden/g0_logits.f16", "sha256": "\(sha)", "shape": [1, \(numClasses), \(h), \(w)], "dtype": "float16", "byte_order": "little"},
              "mask": {"file": "golden/g0_mask.u8", "sha256": "\(sha)", "shape": [1, \(h), \(w)], "dtype": "uint8", "byte_order": "little"}}]},
          "thresholds": {"fp32": {"min_pixel_agreement": 0.999, "max_rel_abs_error": 0.0001}, "fp16": {"min_pixel_agreement": 0.995}},
          "parity": null
        }
        """
        guard case .object(var root) = try! Json.parse(text) else { fatalError("not an object") }
        mutate(&root)
        return JsonValue.object(root).description
    }

    static func ints(_ v: Int...) -> JsonValue { .array(v.map { .number(Double($0)) }) }

    /// Set `key` of the object at `path` ("a/b/0") inside `root` to `value` (nil removes it).
    static func set(_ root: inout JsonObject, _ path: String, _ key: String, _ value: JsonValue?) {
        func update(_ v: JsonValue, _ parts: ArraySlice<Substring>) -> JsonValue {
            guard let head = parts.first else {
                guard case .object(var o) = v else { fatalError("not an object at \(path)") }
                o[key] = value
                return .object(o)
            }
            switch v {
            case .object(var o):
                o[String(head)] = update(o[String(head)]!, parts.dropFirst())
                return .object(o)
            case .array(var a):
                let i = Int(head)!
                a[i] = update(a[i], parts.dropFirst())
                return .array(a)
            default:
                fatalError("cannot descend into \(v)")
            }
        }
        guard case .object(let updated) = update(.object(root), ArraySlice(path.split(separator: "/"))) else { return }
        root = updated
    }
}
