import XCTest
@testable import SegmentationKit

/// The Swift port against a real bundle's golden vectors (ESPNET_MOBILE_BUNDLE), as GoldenVectorsTest.kt:
/// ImageIO decode + preprocess = the float32 inputs, argmax of the float16 logits = the masks, nearest
/// resize = the full-size mask PNGs, parity of the logits with themselves = perfect, a perturbed copy = less.
final class GoldenVectorsTests: XCTestCase {
    private func bundle() throws -> SegmentationBundle {
        guard let dir = TestSupport.bundleDir() else {
            throw XCTSkip("set \(TestSupport.bundleEnv) to a bundle folder to run the golden-vector tests")
        }
        return try SegmentationBundle.open(dir)
    }

    func testPreprocessingReproducesTheGoldenInputs() throws {
        let b = try bundle()
        let spec = b.manifest.input
        var worst = 0.0
        for item in b.manifest.golden {
            let image = TestSupport.toRgb(try TestSupport.decodePng(b.readVerified(item.image.file, sha256: item.image.sha256)))
            XCTAssertEqual(image.width, item.imageWidth)
            XCTAssertEqual(image.height, item.imageHeight)
            let actual = Preprocess.toNchwFloat(image, height: spec.height, width: spec.width)
            let expected = try b.goldenInput(item)
            let diff = TestSupport.maxAbsDiff(actual, expected)
            let exact = zip(actual, expected).filter { $0.0.bitPattern == $0.1.bitPattern }.count
            print("  \(item.name) input \(image.width)x\(image.height) -> \(spec.width)x\(spec.height): max |diff| \(ParityThresholds.fmt(diff)), bit-identical \(exact)/\(actual.count)")
            XCTAssertLessThanOrEqual(diff, 1e-5, item.name)
            worst = max(worst, diff)
        }
        print("preprocess: max |diff| over all golden inputs \(ParityThresholds.fmt(worst))")
    }

    func testArgmaxOfTheGoldenLogitsIsTheGoldenMask() throws {
        let b = try bundle()
        for item in b.manifest.golden {
            let mask = Postprocess.argmax(try b.goldenLogits(item), numClasses: b.manifest.numClasses,
                                          height: item.logits.shape[2], width: item.logits.shape[3])
            XCTAssertEqual(mask.classes, try b.goldenMask(item).classes, item.name)
        }
    }

    func testNearestResizeReproducesTheFullSizeMaskPng() throws {
        let b = try bundle()
        var checked = 0
        for item in b.manifest.golden {
            guard let ref = item.fullMask else { continue }
            let png = try TestSupport.decodePng(b.readVerified(ref.file, sha256: ref.sha256))
            let expected = TestSupport.paletteIndices(png, palette: b.manifest.palette)
            let full = Postprocess.resizeNearest(try b.goldenMask(item), outHeight: item.imageHeight, outWidth: item.imageWidth)
            XCTAssertEqual(full.width, expected.width)
            XCTAssertEqual(full.height, expected.height)
            let mismatches = zip(full.classes, expected.classes).filter { $0.0 != $0.1 }.count
            print("  \(item.name): mask -> \(full.width)x\(full.height), \(mismatches) mismatches with \(ref.file)")
            XCTAssertEqual(mismatches, 0, item.name)
            checked += 1
        }
        if checked == 0 { throw XCTSkip("no golden item has a full_mask") }
    }

    func testParityOfTheGoldenLogitsWithThemselvesIsPerfect() throws {
        let b = try bundle()
        let acc = ParityAccumulator(numClasses: b.manifest.numClasses)
        for item in b.manifest.golden {
            let logits = try b.goldenLogits(item)
            try acc.addLogits(item.name, candidate: logits, reference: logits, height: item.logits.shape[2], width: item.logits.shape[3],
                              referenceDtype: item.logits.dtype)
        }
        let m = try acc.result()
        XCTAssertEqual(m.pixelAgreement, 1)
        XCTAssertEqual(m.miou, 100)
        XCTAssertEqual(m.maxAbsError, 0)
        for precision in Precision.allCases where !b.manifest.thresholds(for: precision).isEmpty {
            XCTAssertTrue(ParityThresholds.evaluate(m, limits: b.manifest.thresholds(for: precision), precision: precision).passed)
        }
    }

    func testAPerturbedCopyAgreesLess() throws {
        let b = try bundle()
        let m = b.manifest
        let acc = ParityAccumulator(numClasses: m.numClasses)
        for item in m.golden {
            let h = item.logits.shape[2], w = item.logits.shape[3], plane = h * w
            let ref = try b.goldenLogits(item)
            let mask = try b.goldenMask(item)
            var cand = ref
            for p in stride(from: 0, to: plane, by: 50) {
                let other = (mask.classes[p] + 1) % m.numClasses
                cand[other * plane + p] = ref[mask.classes[p] * plane + p] + 1
            }
            try acc.addLogits(item.name, candidate: cand, reference: ref, height: h, width: w, referenceDtype: item.logits.dtype)
        }
        let metrics = try acc.result()
        XCTAssertLessThan(metrics.pixelAgreement, 1)
        XCTAssertFalse(ParityThresholds.evaluate(metrics, limits: m.thresholds(for: .fp32), precision: .fp32).passed)
    }

    /// The accuracy section as the Python pipeline writes it, when the bundle has one (older bundles do not).
    func testTheBundlesAccuracySectionReads() throws {
        let m = try bundle().manifest
        guard let a = m.accuracy else {
            print("accuracy section: none")
            return
        }
        XCTAssertFalse(a.results.isEmpty, "an accuracy section with no results")
        for r in a.results { XCTAssertTrue(r.classIou.keys.allSatisfy { a.classes.contains($0) }, r.artifact) }
        let miou = a.reference?.miou.map { String(format: "%.4f", $0) } ?? "-"
        print("accuracy section: dataset=\(a.dataset) split=\(a.split) images=\(a.images) results=\(a.results.count) reference mIoU=\(miou)")
    }
}
