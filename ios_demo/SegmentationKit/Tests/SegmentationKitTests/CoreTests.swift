import XCTest
@testable import SegmentationKit

/// The same cases as JsonTest.kt, ManifestTest.kt, PreprocessTest.kt, PostprocessTest.kt and ParityTest.kt,
/// with the same expected values (several of them computed by the Python pipeline).
final class JsonTests: XCTestCase {
    func testParsesEveryKindOfValue() throws {
        let v = try Json.parse(#"{"a": [1, -2.5, 3e2, true, false, null], "b": {"c": "x\"y\u00e9\n"}, "d": []}"#)
        guard case .object(let o) = v, case .array(let a)? = o["a"], case .object(let b)? = o["b"] else { return XCTFail("shape") }
        XCTAssertEqual(a, [.number(1), .number(-2.5), .number(300), .bool(true), .bool(false), .null])
        XCTAssertEqual(b["c"], .string("x\"y\u{e9}\n"))
        XCTAssertEqual(o.keys, ["a", "b", "d"])
    }

    func testRoundTripsThroughDescription() throws {
        let v = try Json.parse(#"{"k":"a\"b\\c\u0001","n":[0,1.5,-3],"o":{"t":true,"z":null}}"#)
        XCTAssertEqual(v, try Json.parse(v.description))
    }

    func testErrorsNameLineAndColumn() {
        let cases: [(String, String)] = [
            ("{\n  \"a\": 1,\n  \"b\" 2\n}", "line 3, column 7"),
            ("[1, 2", "text ended"),
            ("{\"a\": 01}", "expected ',' or '}'"),
            ("{\"a\": 1} x", "after the end"),
            ("{\"a\": 1, \"a\": 2}", "duplicate key"),
            ("\"abc", "unterminated string"),
            ("[tru]", "unexpected 't'"),
            ("", "text ended"),
            ("{'a': 1}", "quoted key"),
        ]
        for (text, expected) in cases {
            XCTAssertThrowsError(try Json.parse(text)) { error in
                let message = (error as? JsonParseError)?.message ?? ""
                XCTAssertTrue(message.contains(expected), "for \(text): \(message)")
                XCTAssertTrue(message.hasPrefix("invalid JSON at line "), message)
            }
        }
    }
}

final class ManifestTests: XCTestCase {
    func testReadsAValidManifest() throws {
        let m = try Manifest.parse(TestSupport.manifestJson(numClasses: 3, h: 8, w: 16))
        XCTAssertEqual(m.modelId, "test_model")
        XCTAssertEqual(m.numClasses, 3)
        XCTAssertEqual(m.input.height, 8)
        XCTAssertEqual(m.input.width, 16)
        XCTAssertEqual(m.labels, ["class0", "class1", "class2"])
        XCTAssertEqual(m.palette[2], Rgb(r: 20, g: 40, b: 60))
        let art = try XCTUnwrap(m.artifacts.first)
        XCTAssertEqual(art.target, .tflite)
        XCTAssertEqual(art.precision, .fp32)
        XCTAssertEqual(art.inputLayout, .NHWC)
        XCTAssertEqual(art.computeUnits, [.cpu, .gpu])
        let g = try XCTUnwrap(m.golden.first)
        XCTAssertEqual(g.imageHeight, 10)
        XCTAssertEqual(g.imageWidth, 12)
        XCTAssertNil(g.fullMask)
        XCTAssertEqual(m.thresholds(for: .fp32).map(\.0), ["min_pixel_agreement", "max_rel_abs_error"])
        XCTAssertTrue(m.thresholds(for: .int8).isEmpty)
    }

    func testErrorsNameTheFieldAndTheProblem() {
        typealias S = TestSupport
        let cases: [((inout JsonObject) -> Void, [String])] = [
            ({ $0["labels"] = nil }, ["(top level)", "\"labels\""]),
            ({ $0["schema_version"] = .number(2) }, ["schema_version", "is 2", "version 1"]),
            ({ $0["extra"] = .null }, ["unknown fields", "\"extra\""]),
            ({ S.set(&$0, "input", "shape", S.ints(1, 3, 8)) }, ["input/shape", "4 entries"]),
            ({ S.set(&$0, "input", "shape", S.ints(1, 4, 8, 8)) }, ["input/shape", "3 colour channels"]),
            ({ S.set(&$0, "input", "layout", .string("CHW")) }, ["input/layout", "NCHW, NHWC", "\"CHW\""]),
            ({ S.set(&$0, "input", "color_order", .string("BGR")) }, ["input/color_order", "RGB"]),
            ({ S.set(&$0, "model", "num_classes", .number(2.5)) }, ["model/num_classes", "integer"]),
            ({ S.set(&$0, "model", "num_classes", .number(4)) }, ["output/shape", "4"]),
            ({ S.set(&$0, "", "palette", .array([S.ints(0, 0, 0), S.ints(1, 1, 1), S.ints(300, 0, 0)])) }, ["palette/2", "0-255"]),
            ({ S.set(&$0, "artifacts/0", "sha256", .string("abc")) }, ["artifacts/0/sha256", "sha256"]),
            ({ S.set(&$0, "artifacts/0", "file", .string("../x.pte")) }, ["artifacts/0/file", "bare file name"]),
            ({ S.set(&$0, "artifacts/0", "input_layout", nil) }, ["artifacts/0", "\"input_layout\""]),
            ({ S.set(&$0, "golden/items/0/input", "shape", S.ints(1, 3, 4, 4)) }, ["golden/items/0/input/shape", "[1, 3, 8, 8]"]),
            ({ S.set(&$0, "golden/items/0/mask", "shape", S.ints(1, 8, 9)) }, ["golden/items/0/mask/shape", "[1, 8, 8]"]),
            ({ S.set(&$0, "thresholds/fp32", "min_pixel_agreement", .string("high")) }, ["thresholds/fp32/min_pixel_agreement", "number"]),
        ]
        for (i, (mutate, expected)) in cases.enumerated() {
            XCTAssertThrowsError(try Manifest.parse(TestSupport.manifestJson(mutate: mutate), where: "bundle/manifest.json"), "case \(i)") { error in
                let message = (error as? BundleError)?.message ?? ""
                XCTAssertTrue(message.hasPrefix("bundle/manifest.json: "), message)
                for part in expected { XCTAssertTrue(message.contains(part), "case \(i): \"\(message)\" should mention \"\(part)\"") }
            }
        }
    }

    func testInvalidJsonIsReportedAsSuch() {
        XCTAssertThrowsError(try Manifest.parse("{\"schema_version\": 1,", where: "m.json")) { error in
            XCTAssertTrue((error as? BundleError)?.message.hasPrefix("m.json is not valid JSON (invalid JSON at line 1") ?? false)
        }
    }
}

final class PreprocessTests: XCTestCase {
    private func image(_ w: Int, _ h: Int, _ value: (Int, Int, Int) -> Int) -> RgbImage {
        var px = [UInt8](repeating: 0, count: w * h * 3)
        for y in 0..<h { for x in 0..<w { for c in 0..<3 { px[(y * w + x) * 3 + c] = UInt8(value(x, y, c) & 0xFF) } } }
        return RgbImage(width: w, height: h, pixels: px)
    }

    func testUpsamplingUsesHalfPixelCentresAndClamps() {
        let out = Preprocess.resizeBilinear(image(2, 1) { x, _, _ in x == 0 ? 0 : 100 }, outHeight: 1, outWidth: 4)
        XCTAssertEqual((0..<4).map { out[$0 * 3] }, [0, 25, 75, 100])
    }

    /// Expected values from espnet_mobile.preprocess.preprocess on the same 5x3 image, resized to 7x4.
    func testMatchesPythonBitForBitOnAnOddScale() {
        let img = image(5, 3) { x, y, c in (x * 37 + y * 91 + c * 53) % 256 }
        let expected: [Float] = [
            0, 0.0829131678, 0.186554626, 0.290196091, 0.393837541, 0.497478992, 0.580392182, 0.22303921, 0.30595237,
            0.40959385, 0.513235271, 0.616876721, 0.720518231, 0.803431392, 0.490686268, 0.573599458, 0.569677889,
            0.404411763, 0.508053243, 0.611694694, 0.694607854, 0.713725507, 0.796638668, 0.613445401, 0, 0.103641458,
            0.207282916, 0.290196091, 0.20784314, 0.290756315, 0.394397765, 0.498039216, 0.601680696, 0.705322146,
            0.788235307, 0.430882365, 0.513795495, 0.617436945, 0.721078455, 0.824719906, 0.659453809, 0.383823544,
            0.698529422, 0.566316545, 0.508613467, 0.612254918, 0.715896368, 0.550630271, 0.275000006, 0.921568632,
            0.430812329, 0.104201682, 0.20784314, 0.311484605, 0.415126055, 0.498039216, 0.41568628, 0.49859944,
            0.60224092, 0.70588237, 0.809523821, 0.913165271, 0.996078432, 0.638725519, 0.72163868, 0.646008432,
            0.301470578, 0.405112058, 0.508753479, 0.591666639, 0.529901981, 0.612815142, 0.537184894, 0.192647055,
            0.29628852, 0.399929971, 0.482843131, 0.125490203, 0.208403364, 0.312044829, 0.41568628, 0.51932776,
            0.62296921, 0.70588237,
        ]
        let out = Preprocess.toNchwFloat(img, height: 4, width: 7)
        XCTAssertEqual(out.map(\.bitPattern), expected.map(\.bitPattern))
    }

    func testModelInputFollowsTheManifest() throws {
        let img = image(5, 3) { x, y, c in (x * 37 + y * 91 + c * 53) % 256 }
        let m = try Manifest.parse(TestSupport.manifestJson(h: 4, w: 7))
        let nchw = try Preprocess.toModelInput(img, spec: m.input)
        XCTAssertEqual(nchw.shape, [1, 3, 4, 7])
        XCTAssertEqual(nchw.floats, Preprocess.toNchwFloat(img, height: 4, width: 7))
        let nhwc = try Preprocess.toModelInput(img, spec: m.input, layout: .NHWC)
        XCTAssertEqual(nhwc.shape, [1, 4, 7, 3])
        XCTAssertEqual(nhwc.floats, Layouts.nchwToNhwc(nchw.floats!, channels: 3, height: 4, width: 7))
        XCTAssertThrowsError(try Preprocess.toModelInput(img, spec: m.input.with(dtype: "uint8")))
    }
}

final class PostprocessTests: XCTestCase {
    func testArgmaxTakesTheLowestIndexOnTies() {
        let logits: [Float] = [1, 0, 5, 2, 1, 3, 5, 2, 0, 3, 4, 9]
        XCTAssertEqual(Postprocess.argmax(logits, numClasses: 3, height: 1, width: 4).classes, [0, 1, 0, 2])
    }

    func testArgmaxTreatsNaNAsTheMaximumLikeNumPy() {
        let n = Float.nan
        XCTAssertEqual(Postprocess.argmax([0, n, 1, n, 5, 2, n, 9, n], numClasses: 3, height: 1, width: 3).classes, [1, 0, 2])
    }

    /// Expected indices from espnet_mobile.preprocess.resize_mask_nearest([[0,1,2],[3,4,5]], 5, 7).
    func testNearestResizeMatchesPython() {
        let out = Postprocess.resizeNearest(Mask(width: 3, height: 2, classes: [0, 1, 2, 3, 4, 5]), outHeight: 5, outWidth: 7)
        XCTAssertEqual(out.classes, [0, 0, 1, 1, 1, 2, 2, 0, 0, 1, 1, 1, 2, 2, 3, 3, 4, 4, 4, 5, 5, 3, 3, 4, 4, 4, 5, 5, 3, 3, 4, 4, 4, 5, 5])
        XCTAssertEqual(Postprocess.nearestAxis(5, 2), [1, 3])
    }

    func testOverlayRoundsHalfUp() {
        let img = RgbImage(width: 2, height: 1, pixels: [0, 1, 2, 255, 100, 7])
        let palette = [Rgb(r: 0, g: 0, b: 0), Rgb(r: 128, g: 0, b: 255)]
        let out = Postprocess.overlay(img, mask: Mask(width: 2, height: 1, classes: [1, 0]), palette: palette)
        XCTAssertEqual(out.pixels, [64, 1, 129, 128, 50, 4])
    }

    func testFloat16MatchesTheDefinitionForEveryFiniteHalf() {
        for bits in 0..<0x10000 {
            let e = (bits >> 10) & 0x1F, f = bits & 0x3FF
            if e == 0x1F { continue }
            let sign: Double = bits & 0x8000 != 0 ? -1 : 1
            let expected = sign * (e == 0 ? Double(f) * pow(2.0, -24) : (1 + Double(f) / 1024) * pow(2.0, Double(e - 15)))
            XCTAssertEqual(Double(Half.toFloat(UInt16(bits))), expected, "bits \(bits)")
        }
        XCTAssertTrue(Half.toFloat(0x7E00).isNaN)
        XCTAssertEqual(Half.toFloat(0x7C00), .infinity)
        XCTAssertEqual(Half.halfUlp(16.1875), 1.0 / 128)
        XCTAssertEqual(Half.halfUlp(1.0), 1.0 / 2048)
    }
}

final class ParityTests: XCTestCase {
    private let fp32Limits: [(String, Double)] = [("min_pixel_agreement", 0.999), ("max_rel_abs_error", 1e-4)]

    private func logitsFor(_ classes: [Int], _ numClasses: Int) -> [Float] {
        let plane = classes.count
        var out = [Float](repeating: 0, count: numClasses * plane)
        for p in 0..<plane { for c in 0..<numClasses { out[c * plane + p] = c == classes[p] ? 2 : 1 - Float(c) * 0.01 } }
        return out
    }

    func testIdenticalOutputIsPerfect() throws {
        let ref = logitsFor([0, 1, 2, 2, 1, 0], 3)
        let acc = ParityAccumulator(numClasses: 3)
        try acc.addLogits("a", candidate: ref, reference: ref, height: 2, width: 3)
        let m = try acc.result()
        XCTAssertEqual(m.pixelAgreement, 1)
        XCTAssertEqual(m.miou, 100) // percent, as in Python
        XCTAssertEqual(m.maxAbsError, 0)
        XCTAssertEqual(m.sqnrDb, .infinity)
        XCTAssertTrue(ParityThresholds.evaluate(m, limits: fp32Limits, precision: .fp32).passed)
    }

    func testIouAndAgreementOnAKnownCase() throws {
        let acc = ParityAccumulator(numClasses: 3)
        try acc.addLogits("a", candidate: logitsFor([0, 1, 1, 1], 3), reference: logitsFor([0, 0, 1, 1], 3), height: 1, width: 4)
        let m = try acc.result()
        XCTAssertEqual(m.pixelAgreement, 0.75)
        XCTAssertEqual(m.iou[0], 0.5, accuracy: 1e-12)
        XCTAssertEqual(m.iou[1], 2.0 / 3.0, accuracy: 1e-12)
        XCTAssertTrue(m.iou[2].isNaN)
        XCTAssertEqual(m.miou, (0.5 + 2.0 / 3.0) / 2 * 100, accuracy: 1e-9)
        XCTAssertEqual(m.maxAbsError, 1.01, accuracy: 1e-6)
        XCTAssertFalse(ParityThresholds.evaluate(m, limits: fp32Limits, precision: .fp32).passed)
    }

    func testFloat16StorageRoundingIsAllowedForButNothingMore() throws {
        let stored: [Float] = [16.1875, -3.5, 0.25, 1.0, 9.0, -16.0]
        let candidate = stored.enumerated().map { $0.element + 0.99 * Half.halfUlp($0.element) * ($0.offset % 2 == 0 ? 1 : -1) }
        let acc = ParityAccumulator(numClasses: 2)
        try acc.addLogits("rounded", candidate: candidate, reference: stored, height: 1, width: 3, referenceDtype: "float16")
        let m = try acc.result()
        XCTAssertGreaterThan(m.maxRelAbsError, 1e-4)
        XCTAssertEqual(m.netMaxRelAbsError, 0)
        XCTAssertTrue(ParityThresholds.evaluate(m, limits: fp32Limits, precision: .fp32).passed)
        let acc32 = ParityAccumulator(numClasses: 2)
        try acc32.addLogits("exact", candidate: candidate, reference: stored, height: 1, width: 3, referenceDtype: "float32")
        XCTAssertFalse(ParityThresholds.evaluate(try acc32.result(), limits: fp32Limits, precision: .fp32).passed)
    }

    func testThresholdsNeedingLabelsOrUnknownAreReportedNotSilentlyPassed() throws {
        let ref = logitsFor([0, 1], 2)
        let acc = ParityAccumulator(numClasses: 2)
        try acc.addLogits("a", candidate: ref, reference: ref, height: 1, width: 2)
        let m = try acc.result()
        let verdict = ParityThresholds.evaluate(m, limits: [("min_pixel_agreement", 0.97), ("max_miou_drop_points", 1), ("max_banana", 2)],
                                                precision: .int8)
        XCTAssertEqual(verdict.checks.map(\.status), [.PASS, .NOT_CHECKED, .NOT_CHECKED])
        XCTAssertTrue(verdict.passed)
        XCTAssertFalse(ParityThresholds.evaluate(m, limits: [("max_miou_drop_points", 1)], precision: .int8).passed)
    }

    func testFormattingMatchesKotlin() {
        XCTAssertEqual(ParityThresholds.fmt(4.578e-4), "4.578e-04")
        XCTAssertEqual(ParityThresholds.fmt(0.999943), "0.999943")
        XCTAssertEqual(ParityThresholds.fmt(.infinity), "inf")
        XCTAssertEqual(ParityThresholds.fmt(.nan), "n/a")
    }
}
