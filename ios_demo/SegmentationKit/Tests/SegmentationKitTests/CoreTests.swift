import XCTest
@testable import SegmentationKit

/// The same cases as ManifestTest.kt, AccuracySectionTest.kt, PreprocessTest.kt, PostprocessTest.kt and ParityTest.kt,
/// with the same expected values (several of them computed by the Python pipeline).
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
        XCTAssertEqual(art.bytes, 10)
        let g = try XCTUnwrap(m.golden.first)
        XCTAssertEqual(g.imageHeight, 10)
        XCTAssertEqual(g.imageWidth, 12)
        XCTAssertNil(g.fullMask)
        // JSONDecoder does not keep key order: the limits come sorted by name.
        XCTAssertEqual(m.thresholds(for: .fp32).map(\.0), ["max_rel_abs_error", "min_pixel_agreement"])
        XCTAssertEqual(m.thresholds(for: .fp32).map(\.1), [0.0001, 0.999])
        XCTAssertTrue(m.thresholds(for: .int8).isEmpty)
        XCTAssertNil(m.accuracy)
    }

    func testErrorsNameTheFieldAndTheProblem() {
        typealias S = TestSupport
        let cases: [((inout [String: Any]) -> Void, [String])] = [
            ({ $0["labels"] = nil }, ["(top level)", "\"labels\""]),
            ({ $0["schema_version"] = 2 }, ["schema_version", "is 2", "version 1"]),
            ({ $0["extra"] = NSNull() }, ["unknown fields", "\"extra\""]),
            ({ S.set(&$0, "input", "shape", S.ints(1, 3, 8)) }, ["input/shape", "4 entries"]),
            ({ S.set(&$0, "input", "shape", S.ints(1, 4, 8, 8)) }, ["input/shape", "3 colour channels"]),
            ({ S.set(&$0, "input", "layout", "CHW") }, ["input/layout", "NCHW, NHWC", "\"CHW\""]),
            ({ S.set(&$0, "input", "color_order", "BGR") }, ["input/color_order", "RGB"]),
            ({ S.set(&$0, "input", "name", 5) }, ["input/name", "must be a string"]),
            ({ S.set(&$0, "model", "num_classes", 2.5) }, ["model/num_classes", "integer"]),
            ({ S.set(&$0, "model", "num_classes", 4) }, ["output/shape", "4"]),
            ({ S.set(&$0, "", "palette", [S.ints(0, 0, 0), S.ints(1, 1, 1), S.ints(300, 0, 0)]) }, ["palette/2", "0-255"]),
            ({ S.set(&$0, "artifacts/0", "sha256", "abc") }, ["artifacts/0/sha256", "sha256"]),
            ({ S.set(&$0, "artifacts/0", "file", "../x.pte") }, ["artifacts/0/file", "bare file name"]),
            ({ S.set(&$0, "artifacts/0", "target", "onnx") }, ["artifacts/0/target", "executorch, coreml, tflite"]),
            ({ S.set(&$0, "artifacts/0", "input_layout", nil) }, ["artifacts/0", "\"input_layout\""]),
            ({ S.set(&$0, "golden/items/0/input", "shape", S.ints(1, 3, 4, 4)) }, ["golden/items/0/input/shape", "[1, 3, 8, 8]"]),
            ({ S.set(&$0, "golden/items/0/mask", "shape", S.ints(1, 8, 9)) }, ["golden/items/0/mask/shape", "[1, 8, 8]"]),
            ({ S.set(&$0, "golden/items/0/mask", "byte_order", "big") }, ["golden/items/0/mask/byte_order", "little"]),
            ({ S.set(&$0, "thresholds/fp32", "min_pixel_agreement", "high") }, ["thresholds/fp32/min_pixel_agreement", "number"]),
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
            let message = (error as? BundleError)?.message ?? ""
            XCTAssertTrue(message.hasPrefix("m.json is not valid JSON ("), message)
        }
        XCTAssertThrowsError(try Manifest.parse("[1, 2]", where: "m.json")) { error in
            let message = (error as? BundleError)?.message ?? ""
            XCTAssertTrue(message.contains("(top level) must be an object"), message)
        }
    }
}

/// The manifest's optional `accuracy` section; the same cases as AccuracySectionTest.kt.
final class AccuracySectionTests: XCTestCase {
    private func manifest(_ accuracy: Any?) throws -> Manifest {
        try Manifest.parse(TestSupport.manifestJson { root in if let a = accuracy { root["accuracy"] = a } })
    }

    func testOlderBundlesWithoutTheSectionOrWithNullStillRead() throws {
        XCTAssertNil(try manifest(nil).accuracy)
        XCTAssertNil(try manifest(NSNull()).accuracy)
    }

    func testReadsEveryFieldOfTheSection() throws {
        let a = try XCTUnwrap(try manifest(TestSupport.accuracySection()).accuracy)
        XCTAssertEqual(a.dataset, "camvid")
        XCTAssertEqual(a.title, "CamVid (SegNet split)")
        XCTAssertEqual(a.split, "val")
        XCTAssertEqual(a.images, 101)
        XCTAssertEqual(a.ignoreLabel, 255)
        XCTAssertEqual(a.classes, ["class0", "class1", "class2"])
        XCTAssertEqual(a.toolVersions["torch"], "2.13.0")
        XCTAssertEqual(a.results.count, 3)

        let ref = try XCTUnwrap(a.reference)
        XCTAssertEqual(ref.artifact, "pytorch-reference")
        XCTAssertNil(ref.target)
        XCTAssertEqual(ref.miou, 70.12)
        XCTAssertTrue(ref.classIou.keys.contains("class1"), "a null class IoU is kept, as null")
        XCTAssertEqual(ref.classIou["class1"], .some(nil))
        XCTAssertEqual(ref.classIou["class0"], .some(90.1))

        let fp32 = try XCTUnwrap(a.results(for: "m_tflite_fp32.tflite").first)
        XCTAssertEqual(fp32.target, "tflite")
        XCTAssertEqual(fp32.computeUnit, "cpu")
        XCTAssertEqual(fp32.agreementWithReference, 99.9)

        let int8 = try XCTUnwrap(a.results(for: "m_tflite_int8.tflite").first)
        XCTAssertEqual(int8.precision, .int8)
        XCTAssertEqual(int8.pixelAccuracy, 91.1)
        XCTAssertNil(int8.error)
        XCTAssertEqual(try XCTUnwrap(a.miouDelta(int8)), -0.82, accuracy: 1e-9)
        XCTAssertTrue(a.results(for: "not_in_the_bundle.pte").isEmpty)
    }

    func testErrorsNameTheFieldAndTheProblem() {
        typealias S = TestSupport
        let cases: [((inout [String: Any]) -> Void, [String])] = [
            ({ $0["dataset"] = "kitti" }, ["accuracy/dataset", "camvid, cityscapes, voc", "\"kitti\""]),
            ({ $0["results"] = nil }, ["accuracy", "\"results\""]),
            ({ $0["images"] = 0 }, ["accuracy/images", "at least 1"]),
            ({ $0["classes"] = [String]() }, ["accuracy/classes", "must not be empty"]),
            ({ S.set(&$0, "results/1", "miou", 101.0) }, ["accuracy/results/1/miou", "between 0 and 100", "101"]),
            ({ S.set(&$0, "results/0/class_iou", "road", 3.0) }, ["accuracy/results/0/class_iou/road", "not one of the scored classes"]),
            ({ S.set(&$0, "results/2", "target", NSNull()) }, ["accuracy/results/2/artifact", "only the row \"pytorch-reference\""]),
            ({ S.set(&$0, "results/2", "precision", "int4") }, ["accuracy/results/2/precision", "fp32, fp16, int8"]),
            ({ S.set(&$0, "tool_versions", "torch", 2) }, ["accuracy/tool_versions/torch", "string"]),
        ]
        for (i, (mutate, expected)) in cases.enumerated() {
            var section = TestSupport.accuracySection()
            mutate(&section)
            XCTAssertThrowsError(try manifest(section), "case \(i)") { error in
                let message = (error as? BundleError)?.message ?? ""
                for part in expected { XCTAssertTrue(message.contains(part), "case \(i): \"\(message)\" should mention \"\(part)\"") }
            }
        }
    }
}

final class Sha256Tests: XCTestCase {
    func testPortableDigestMatchesKnownVectors() {
        func portable(_ parts: [Data]) -> String {
            var h = PortableSHA256()
            for p in parts { h.update(p) }
            return hexText(h.finalize())
        }
        XCTAssertEqual(portable([Data()]), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        XCTAssertEqual(portable([Data("abc".utf8)]), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        let long = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"
        XCTAssertEqual(portable([Data(long.utf8)]), "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
        // Split across blocks at odd places: the same digest.
        let bytes = Data((0..<1000).map { UInt8($0 % 251) })
        XCTAssertEqual(portable([bytes.prefix(3), bytes.dropFirst(3).prefix(130), bytes.dropFirst(133)]), portable([bytes]))
        XCTAssertEqual(Sha256.hex(bytes), portable([bytes]), "CryptoKit (where present) and the portable digest agree")
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
