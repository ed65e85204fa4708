import XCTest
import SegmentationKit
@testable import SegmentationDemo

/// The app's accuracy check on a device or simulator, for the bundle folder in the app's resources
/// (the twin of Android's AccuracyCheckInstrumentedTest): every option the app offers is run on the
/// golden inputs; Core ML on the CPU and ExecuTorch must pass the manifest's thresholds, other compute
/// units are reported (GPU and Neural Engine may compute in float16).
@MainActor
final class AccuracyCheckTests: XCTestCase {
    func testEveryOptionRunsAndCpuOptionsPass() throws {
        let model = DemoModel()
        let bundle = try XCTUnwrap(model.bundle, model.bundleError ?? "no bundle")
        if model.options.isEmpty || bundle.manifest.golden.isEmpty { throw XCTSkip("no artifact or golden item to check") }
        var failures: [String] = []
        for option in model.options where option.disabledReason != nil {
            print("\(option.label): not available - \(option.disabledReason ?? "")")
        }
        for option in model.options where option.disabledReason == nil {
            let art = try XCTUnwrap(option.artifact(in: bundle.manifest))
            let runner = try option.open(bundle)
            let report = try AccuracyCheck.run(bundle, precision: art.precision, inputLayout: art.inputLayout, runner: runner)
            print("\(option.label)\n\(report.summary())")
            let strict: Bool
            switch option.kind {
            case .coreML(let choice): strict = choice == .cpuOnly
            case .execuTorch: strict = true
            }
            if strict && !report.passed { failures.append(report.summary()) }
            XCTAssertEqual(report.metrics.items.count, bundle.manifest.golden.count)
        }
        XCTAssertTrue(failures.isEmpty, failures.joined(separator: "\n"))
    }
}
