import CoreGraphics
import Foundation
import SegmentationKit
import SegmentationKitExecuTorch

/// One choice in the runtime picker: an artifact of the bundle and how to run it.
struct RuntimeOption: Identifiable, Hashable {
    enum Kind: Hashable {
        case coreML(CoreMLComputeChoice)
        case execuTorch
    }

    let artifactFile: String
    let kind: Kind
    let label: String
    /// Shown under the choice when the bundle did not list these compute units for the artifact.
    let note: String?

    var id: String { "\(artifactFile)|\(label)" }

    /// The choices the bundle allows on iOS, from its manifest alone: every Core ML artifact on each
    /// compute-unit setting, every ExecuTorch artifact whose delegate runs on Apple devices.
    static func options(_ manifest: Manifest) -> [RuntimeOption] {
        manifest.artifacts.flatMap { art -> [RuntimeOption] in
            switch art.target {
            case .coreml:
                return CoreMLComputeChoice.allCases.map { choice in
                    let missing = choice.needs.filter { !art.computeUnits.contains($0) }
                    return RuntimeOption(
                        artifactFile: art.file, kind: .coreML(choice),
                        label: "Core ML · \(art.precision.rawValue) · \(choice.label)",
                        note: missing.isEmpty ? nil : "the bundle lists \(art.computeUnitNames.joined(separator: ", ")) for this artifact; " +
                            "Core ML uses what is available")
                }
            case .executorch where ["xnnpack", "coreml", "mps", "portable"].contains(art.delegate):
                return [RuntimeOption(artifactFile: art.file, kind: .execuTorch,
                                      label: "ExecuTorch · \(art.precision.rawValue) · \(art.delegate)", note: nil)]
            default:
                return []
            }
        }
    }

    func open(_ bundle: SegmentationBundle) throws -> SegmentationRunner {
        guard let art = bundle.manifest.artifacts.first(where: { $0.file == artifactFile }) else {
            throw BundleError("no artifact \(artifactFile) in the bundle")
        }
        let url = try bundle.verifiedArtifact(art)
        switch kind {
        case .coreML(let choice):
            return try CoreMLRunner(url: url, manifest: bundle.manifest, precision: art.precision, choice: choice)
        case .execuTorch:
            return try ExecuTorchRunner(path: url.path, artifact: art, manifest: bundle.manifest)
        }
    }

    func artifact(in manifest: Manifest) -> Artifact? { manifest.artifacts.first { $0.file == artifactFile } }
}

struct Timings {
    let preprocessMs: Double
    let inferenceMs: Double
    let postprocessMs: Double
}

/// The bundle, the chosen runtime and the results. Model work runs on one serial queue.
@MainActor
final class DemoModel: ObservableObject {
    let bundle: SegmentationBundle?
    let bundleError: String?
    let options: [RuntimeOption]

    @Published var selected: RuntimeOption? {
        didSet { accuracy = nil; runnerDescription = nil }
    }
    @Published private(set) var busy = false
    @Published private(set) var error: String?
    @Published private(set) var runnerDescription: String?
    @Published private(set) var overlay: CGImage?
    @Published private(set) var legend: [LegendEntry] = []
    @Published private(set) var timings: Timings?
    @Published private(set) var accuracy: AccuracyReport?
    @Published private(set) var accuracyProgress = ""

    private let queue = DispatchQueue(label: "segmentation.work")
    private var runner: SegmentationRunner?
    private var runnerFor: RuntimeOption?

    init() {
        var opened: SegmentationBundle?
        var problem: String?
        if let url = Bundle.main.url(forResource: "bundle", withExtension: nil) {
            do { opened = try SegmentationBundle.open(url) } catch { problem = "\(error)" }
        } else {
            problem = "the app has no bundle folder; see ios_demo/README.md"
        }
        bundle = opened
        bundleError = problem
        options = opened.map { RuntimeOption.options($0.manifest) } ?? []
        selected = options.first
    }

    /// The runner for `option`, opened on first use (work queue only).
    nonisolated private func runner(for option: RuntimeOption, bundle: SegmentationBundle,
                                    cache: (SegmentationRunner?, RuntimeOption?)) throws -> SegmentationRunner {
        if let r = cache.0, cache.1 == option { return r }
        return try option.open(bundle)
    }

    private func work(_ body: @escaping (SegmentationBundle, RuntimeOption, SegmentationRunner) throws -> Void) {
        guard !busy, let bundle, let option = selected else { return }
        busy = true
        error = nil
        let cache = (runner, runnerFor)
        queue.async {
            do {
                let r = try self.runner(for: option, bundle: bundle, cache: cache)
                DispatchQueue.main.async {
                    self.runner = r
                    self.runnerFor = option
                    self.runnerDescription = r.description
                }
                try body(bundle, option, r)
            } catch {
                DispatchQueue.main.async { self.error = "\(error)" }
            }
            DispatchQueue.main.async { self.busy = false }
        }
    }

    /// Decode, preprocess, run, postprocess, all as the manifest says.
    func segment(_ image: RgbImage) {
        work { bundle, option, runner in
            let m = bundle.manifest
            let layout = option.artifact(in: m)?.inputLayout ?? m.input.layout
            let t0 = DispatchTime.now().uptimeNanoseconds
            let input = try Preprocess.toModelInput(image, spec: m.input, layout: layout)
            let t1 = DispatchTime.now().uptimeNanoseconds
            let out = try runner.run(input)
            let t2 = DispatchTime.now().uptimeNanoseconds
            let mask: Mask
            switch out {
            case .logits(let values):
                mask = Postprocess.argmax(values, numClasses: m.numClasses, height: m.output.height, width: m.output.width)
            case .mask(let indices):
                mask = try Postprocess.maskFromIndices(indices, numClasses: m.numClasses, height: m.output.height, width: m.output.width)
            }
            let full = Postprocess.resizeNearest(mask, outHeight: image.height, outWidth: image.width)
            let blended = Postprocess.overlay(image, mask: full, palette: m.palette)
            let entries = Postprocess.legend(full, labels: m.labels, palette: m.palette)
            let t3 = DispatchTime.now().uptimeNanoseconds
            let picture = ImageLoading.cgImage(blended)
            DispatchQueue.main.async {
                self.overlay = picture
                self.legend = entries
                self.timings = Timings(preprocessMs: Double(t1 - t0) / 1e6, inferenceMs: Double(t2 - t1) / 1e6,
                                       postprocessMs: Double(t3 - t2) / 1e6)
            }
        }
    }

    /// The golden inputs through the chosen runtime, against the manifest's thresholds.
    func runAccuracyCheck() {
        accuracy = nil
        work { bundle, option, runner in
            guard let art = option.artifact(in: bundle.manifest) else { return }
            let total = bundle.manifest.golden.count
            let report = try AccuracyCheck.run(bundle, precision: art.precision, inputLayout: art.inputLayout, runner: runner) { i, _ in
                DispatchQueue.main.async { self.accuracyProgress = "\(i + 1) / \(total)" }
            }
            DispatchQueue.main.async { self.accuracy = report }
        }
    }
}
