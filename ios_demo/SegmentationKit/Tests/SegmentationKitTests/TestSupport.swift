import Foundation
import XCTest
#if canImport(ImageIO) && canImport(CoreGraphics)
import CoreGraphics
import ImageIO
#endif
@testable import SegmentationKit

/// Helpers for the tests only (ImageIO stays out of the library). Mirrors TestSupport.kt.
enum TestSupport {
    static let bundleEnv = "ESPNET_MOBILE_BUNDLE"

    /// The bundle folder named by ESPNET_MOBILE_BUNDLE, or nil when unset.
    static func bundleDir() -> URL? {
        guard let path = ProcessInfo.processInfo.environment[bundleEnv], !path.isEmpty else { return nil }
        return URL(fileURLWithPath: path, isDirectory: true)
    }

#if canImport(ImageIO) && canImport(CoreGraphics)
    typealias DecodedImage = CGImage

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

#else
    /// No PNG decoder in Foundation off Apple platforms: the tests that read the golden PNGs skip there.
    struct DecodedImage {}

    static func decodePng(_ data: Data) throws -> DecodedImage {
        throw XCTSkip("no PNG decoder on this platform (ImageIO is Apple-only); the golden PNG checks run on macOS")
    }

    static func toRgb(_ image: DecodedImage) -> RgbImage { fatalError("unreachable: decodePng skips first") }

    static func paletteIndices(_ image: DecodedImage, palette: [Rgb]) -> Mask { fatalError("unreachable: decodePng skips first") }
#endif

    static func maxAbsDiff(_ a: [Float], _ b: [Float]) -> Double {
        precondition(a.count == b.count)
        var m = 0.0
        for i in 0..<a.count { m = max(m, abs(Double(a[i]) - Double(b[i]))) }
        return m
    }

    /// A small valid manifest (the same as TestSupport.kt's); tests change one field through `mutate`,
    /// on the JSON as Foundation's JSONSerialization reads it.
    static func manifestJson(numClasses: Int = 3, h: Int = 8, w: Int = 8, mutate: (inout [String: Any]) -> Void = { _ in }) -> String {
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
        var root = try! JSONSerialization.jsonObject(with: Data(text.utf8)) as! [String: Any]
        mutate(&root)
        return String(decoding: try! JSONSerialization.data(withJSONObject: root), as: UTF8.self)
    }

    /// An `accuracy` section shaped as python -m espnet_mobile.evaluate writes it (as AccuracySectionTest.kt's):
    /// the reference and two artifacts; one class IoU is null (the class is in neither labels nor predictions).
    static func accuracySection() -> [String: Any] {
        let text = """
        {
          "dataset": "camvid", "dataset_title": "CamVid (SegNet split)", "split": "val", "images": 101, "ignore_label": 255,
          "classes": ["class0", "class1", "class2"], "date": "2026-12-05T10:00:00Z",
          "tool_versions": {"espnet_mobile": "0.1.0", "torch": "2.13.0"},
          "results": [
            {"artifact": "pytorch-reference", "target": null, "precision": "fp32", "runtime": "pytorch",
             "miou": 70.12, "pixel_accuracy": 91.5, "class_iou": {"class0": 90.1, "class1": null, "class2": 50.0}, "images": 101},
            {"artifact": "m_tflite_fp32.tflite", "target": "tflite", "precision": "fp32", "runtime": "litert-cpu",
             "miou": 70.1, "pixel_accuracy": 91.49, "class_iou": {"class0": 90.0, "class1": null, "class2": 50.0}, "images": 101,
             "sha256": "\(String(repeating: "0", count: 64))", "compute_unit": "cpu", "agreement_with_reference": 99.9, "seconds": 12.5},
            {"artifact": "m_tflite_int8.tflite", "target": "tflite", "precision": "int8", "runtime": "litert-cpu",
             "miou": 69.3, "pixel_accuracy": 91.1, "class_iou": {"class0": 89.0, "class1": 12.5, "class2": 50.0}, "images": 101,
             "error": null}
          ]
        }
        """
        return try! JSONSerialization.jsonObject(with: Data(text.utf8)) as! [String: Any]
    }

    static func ints(_ v: Int...) -> [Int] { v }

    /// Set `key` of the object at `path` ("a/b/0") inside `root` to `value` (nil removes it).
    static func set(_ root: inout [String: Any], _ path: String, _ key: String, _ value: Any?) {
        func update(_ v: Any, _ parts: ArraySlice<Substring>) -> Any {
            guard let head = parts.first else {
                guard var o = v as? [String: Any] else { fatalError("not an object at \(path)") }
                o[key] = value
                return o
            }
            if var o = v as? [String: Any] {
                o[String(head)] = update(o[String(head)]!, parts.dropFirst())
                return o
            }
            if var a = v as? [Any] {
                let i = Int(head)!
                a[i] = update(a[i], parts.dropFirst())
                return a
            }
            fatalError("cannot descend into \(v)")
        }
        root = update(root, ArraySlice(path.split(separator: "/"))) as! [String: Any]
    }
}
