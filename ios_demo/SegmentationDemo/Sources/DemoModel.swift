import CoreGraphics
import Foundation
import SegmentationCoreML
import SegmentationExecuTorch
import SegmentationKit

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
    /// Nil when this device can run the choice; otherwise it is shown disabled with this reason.
    var disabledReason: String? = nil

    var id: String { "\(artifactFile)|\(label)" }

    /// The choices the bundle allows on iOS, from its manifest alone: every Core ML artifact on each
    /// compute-unit setting, every ExecuTorch artifact whose delegate runs on Apple devices.
    static func options(_ manifest: Manifest) -> [RuntimeOption] {
        manifest.artifacts.flatMap { art -> [RuntimeOption] in
            switch art.target {
            case .coreml:
                return CoreMLComputeChoice.allCases.map { choice in
                    let missing = choice.needs.filter { !art.computeUnits.contains($0) }
                    // Without a Neural Engine, "CPU + Neural Engine" would only run the CPU: not offered.
                    let noEngine = choice == .cpuAndNeuralEngine && !CoreMLRunner.hasNeuralEngine
                    return RuntimeOption(
                        artifactFile: art.file, kind: .coreML(choice),
                        label: "Core ML · \(art.precision.rawValue) · \(choice.label)",
                        note: missing.isEmpty ? nil : "the bundle lists \(art.computeUnitNames.joined(separator: ", ")) for this artifact; " +
                            "Core ML uses what is available",
                        disabledReason: noEngine ? "this device has no Neural Engine" : nil)
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

    func inputLayout(_ manifest: Manifest) -> TensorLayout { artifact(in: manifest)?.inputLayout ?? manifest.input.layout }
}

/// The runner for the chosen option, opened once and reused. Touched only on the model's work queue.
final class RunnerCache: @unchecked Sendable {
    private var runner: SegmentationRunner?
    private var option: RuntimeOption?

    func runner(for option: RuntimeOption, bundle: SegmentationBundle) throws -> SegmentationRunner {
        if let r = runner, self.option == option { return r }
        runner = nil
        self.option = nil
        let opened = try option.open(bundle)
        runner = opened
        self.option = option
        return opened
    }
}

/// The bundle, the chosen runtime and the results. All model work, camera frames included, runs on one
/// serial queue (runners are not thread-safe); results are published on the main actor.
@MainActor
final class DemoModel: ObservableObject {
    let bundle: SegmentationBundle?
    let bundleError: String?
    let options: [RuntimeOption]
    let queue = DispatchQueue(label: "segmentation.work")

    @Published var selected: RuntimeOption? {
        didSet {
            accuracy = nil
            latency = nil
            runnerDescription = nil
            if oldValue != selected, let image = photo, let name = photoName { segment(image, name: name) }
        }
    }
    @Published private(set) var busy = false
    @Published private(set) var error: String?
    @Published private(set) var runnerDescription: String?
    @Published private(set) var photoName: String?
    @Published private(set) var overlay: CGImage?
    @Published private(set) var legend: [LegendEntry] = []
    @Published private(set) var timings: StageTimes?
    @Published private(set) var latency: LatencySummary?
    @Published private(set) var accuracy: AccuracyReport?
    @Published private(set) var accuracyProgress = ""
    @Published private(set) var liveFrame: CGImage?
    @Published private(set) var liveFps: Double?
    @Published private(set) var liveTimes: StageTimes?

    private let cache = RunnerCache()
    private var photo: RgbImage?

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
        selected = options.first { $0.disabledReason == nil }
        showSamplePhoto()
    }

    /// First launch shows a result: the bundle's first golden photo (the converter picks photos of the
    /// model's domain), checked against its sha256 like every bundle file.
    private func showSamplePhoto() {
        guard let bundle, let item = bundle.manifest.golden.first else { return }
        do {
            let data = try bundle.readVerified(item.image.file, sha256: item.image.sha256)
            segment(try ImageLoading.decode(data), name: "sample photo \(item.name) (from the bundle)")
        } catch {
            self.error = "\(error)"
        }
    }

    private func work(_ body: @escaping (SegmentationBundle, RuntimeOption, SegmentationRunner) throws -> Void) {
        guard !busy, let bundle, let option = selected, option.disabledReason == nil else { return }
        busy = true
        error = nil
        let cache = self.cache
        queue.async {
            do {
                let runner = try cache.runner(for: option, bundle: bundle)
                try body(bundle, option, runner)
            } catch {
                let message = "\(error)"
                Task { @MainActor in self.error = message }
            }
            Task { @MainActor in self.busy = false }
        }
    }

    /// Decode, preprocess, run, postprocess, all as the manifest says, each stage timed.
    func segment(_ image: RgbImage, name: String) {
        photo = image
        photoName = name
        work { bundle, option, runner in
            let pipeline = SegmentationPipeline(manifest: bundle.manifest, inputLayout: option.inputLayout(bundle.manifest), runner: runner)
            let result = try pipeline.segment(image)
            let picture = ImageLoading.cgImage(result.overlay)
            Task { @MainActor in
                self.overlay = picture
                self.legend = result.legend
                self.timings = result.times
                self.latency = nil
                self.runnerDescription = result.runner
            }
        }
    }

    /// Median latency on the current photo after warm-up, split into stages.
    func measureLatency() {
        guard let image = photo else { return }
        work { bundle, option, runner in
            let pipeline = SegmentationPipeline(manifest: bundle.manifest, inputLayout: option.inputLayout(bundle.manifest), runner: runner)
            let summary = try pipeline.benchmark(image)
            Task { @MainActor in self.latency = summary }
        }
    }

    /// The camera's frame handler for the chosen option: runs on the work queue, publishes each frame
    /// with its mask, the frame rate the whole pipeline sustains and the last frame's stage times.
    func frameHandler() -> ((CGImage) -> Void)? {
        guard let bundle, let option = selected, option.disabledReason == nil else { return nil }
        let cache = self.cache
        let meter = FpsMeter()
        return { frame in
            do {
                let runner = try cache.runner(for: option, bundle: bundle)
                let pipeline = SegmentationPipeline(manifest: bundle.manifest, inputLayout: option.inputLayout(bundle.manifest), runner: runner)
                let result = try pipeline.segment(ImageLoading.rgb(frame))
                let fps = meter.tick()
                let picture = ImageLoading.cgImage(result.overlay)
                Task { @MainActor in
                    self.liveFrame = picture
                    self.liveFps = fps
                    self.liveTimes = result.times
                    self.runnerDescription = result.runner
                }
            } catch {
                let message = "\(error)"
                Task { @MainActor in self.error = message }
            }
        }
    }

    func cameraStopped() {
        liveFps = nil
    }

    func report(_ error: Error) { self.error = "\(error)" }

    /// The golden inputs through the chosen runtime, against the manifest's thresholds.
    func runAccuracyCheck() {
        accuracy = nil
        work { bundle, option, runner in
            guard let art = option.artifact(in: bundle.manifest) else { return }
            let total = bundle.manifest.golden.count
            let report = try AccuracyCheck.run(bundle, precision: art.precision, inputLayout: art.inputLayout, runner: runner) { i, _ in
                Task { @MainActor in self.accuracyProgress = "\(i + 1) / \(total)" }
            }
            Task { @MainActor in
                self.accuracy = report
                self.runnerDescription = report.runner
            }
        }
    }
}
