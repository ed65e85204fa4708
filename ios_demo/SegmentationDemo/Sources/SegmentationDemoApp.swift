import PhotosUI
import SegmentationKit
import SwiftUI
import UIKit

@main
struct SegmentationDemoApp: App {
    @StateObject private var model = DemoModel()

    var body: some Scene {
        WindowGroup {
            ContentView().environmentObject(model)
        }
    }
}

struct ContentView: View {
    @EnvironmentObject var model: DemoModel

    var body: some View {
        if let problem = model.bundleError {
            Text(problem).foregroundStyle(.red).padding()
        } else {
            TabView {
                NavigationStack { SegmentView() }.tabItem { Label("Photo", systemImage: "photo") }
                NavigationStack { LiveView() }.tabItem { Label("Live", systemImage: "camera") }
                NavigationStack { AccuracyView() }.tabItem { Label("Check", systemImage: "checkmark.seal") }
                NavigationStack { AboutView() }.tabItem { Label("About", systemImage: "info.circle") }
            }
        }
    }
}

/// Runtime and compute-unit picker, shared by both tabs.
struct RuntimePicker: View {
    @EnvironmentObject var model: DemoModel

    var body: some View {
        Section("Runtime and compute units") {
            if model.options.isEmpty {
                Text("This bundle has no Core ML or ExecuTorch artifact an iPhone can run.")
            } else {
                Picker("Runtime", selection: $model.selected) {
                    ForEach(model.options.filter { $0.disabledReason == nil }) { option in Text(option.label).tag(Optional(option)) }
                }
                .disabled(model.busy)
                if let note = model.selected?.note { Text(note).font(.caption) }
                ForEach(model.options.filter { $0.disabledReason != nil }) { option in
                    Text("\(option.label): not available - \(option.disabledReason ?? "")").font(.caption).foregroundStyle(.secondary)
                }
            }
            if let running = model.runnerDescription { Text("Ran on: \(running)").font(.caption) }
            if let error = model.error { Text(error).foregroundStyle(.red).font(.caption) }
        }
    }
}

struct SegmentView: View {
    @EnvironmentObject var model: DemoModel
    @State private var item: PhotosPickerItem?
    @State private var showCamera = false

    var body: some View {
        Form {
            RuntimePicker()
            Section {
                PhotosPicker("Choose photo", selection: $item, matching: .images)
                if UIImagePickerController.isSourceTypeAvailable(.camera) {
                    Button("Take photo") { showCamera = true }
                }
                if model.busy { ProgressView() }
            }
            if let overlay = model.overlay {
                Section(model.photoName ?? "Result") {
                    Image(decorative: overlay, scale: 1).resizable().scaledToFit()
                    if let t = model.timings {
                        Text(String(format: "this run: %.1f ms (pre %.1f · inference %.1f · post %.1f)",
                                    t.totalMs, t.preprocessMs, t.inferenceMs, t.postprocessMs)).font(.caption)
                        Button("Measure latency (median of \(SegmentationPipeline.defaultRuns) runs)") { model.measureLatency() }
                            .disabled(model.busy)
                    }
                    if let latency = model.latency { Text(latency.description).font(.caption) }
                    ForEach(model.legend, id: \.classIndex) { entry in
                        HStack {
                            Rectangle()
                                .fill(Color(red: Double(entry.colour.r) / 255, green: Double(entry.colour.g) / 255, blue: Double(entry.colour.b) / 255))
                                .frame(width: 16, height: 16)
                            Text(entry.label)
                            Spacer()
                            Text(String(format: "%.1f%%", 100 * entry.fraction)).monospacedDigit()
                        }
                    }
                }
            }
        }
        .navigationTitle(model.bundle?.manifest.modelId ?? "Segment")
        .onChange(of: item) { _, newItem in
            guard let newItem else { return }
            Task { @MainActor in
                if let data = try? await newItem.loadTransferable(type: Data.self), let image = try? ImageLoading.decode(data) {
                    model.segment(image, name: "photo from the library")
                }
            }
        }
        .sheet(isPresented: $showCamera) {
            CameraPicker { photo in
                showCamera = false
                if let photo, let image = try? ImageLoading.decode(photo) { model.segment(image, name: "camera photo") }
            }
        }
    }
}

struct AccuracyView: View {
    @EnvironmentObject var model: DemoModel

    var body: some View {
        Form {
            RuntimePicker()
            Section {
                Text("Runs the \(model.bundle?.manifest.golden.count ?? 0) golden inputs of the bundle through the chosen runtime and " +
                     "compares the logits with the reference, against the bundle's thresholds for the artifact's precision.")
                    .font(.caption)
                Button("Run accuracy check") { model.runAccuracyCheck() }.disabled(model.busy || model.selected == nil)
                if model.busy && !model.accuracyProgress.isEmpty { Text("golden item \(model.accuracyProgress)") }
            }
            if let report = model.accuracy { AccuracyResultView(report: report) }
        }
        .navigationTitle("Accuracy check")
    }
}

struct AccuracyResultView: View {
    let report: AccuracyReport

    var body: some View {
        let f = ParityThresholds.fmt
        let m = report.metrics
        Section(report.passed ? "PASS" : "FAIL") {
            Text("\(report.runner) · thresholds for \(report.precision.rawValue)").font(.caption)
            LabeledContent("pixel agreement", value: f(m.pixelAgreement))
            LabeledContent("mIoU vs reference", value: f(m.miou))
            LabeledContent("max abs error", value: f(m.maxAbsError))
            LabeledContent("mean abs error", value: f(m.meanAbsError))
            LabeledContent("max rel error (raw / net of fp16)", value: "\(f(m.maxRelAbsError)) / \(f(m.netMaxRelAbsError))")
            LabeledContent("SQNR dB", value: f(m.sqnrDb))
        }
        .foregroundStyle(report.passed ? Color.primary : Color.red)
        Section("Thresholds") {
            ForEach(Array(report.verdict.checks.enumerated()), id: \.offset) { _, c in
                VStack(alignment: .leading) {
                    Text("\(c.status.rawValue) \(c.key): \(f(c.value)) (limit \(f(c.limit)))")
                        .font(.system(.body, design: .monospaced))
                        .foregroundStyle(c.status == .FAIL ? .red : c.status == .PASS ? .green : .gray)
                    if !c.note.isEmpty { Text(c.note).font(.caption) }
                }
            }
        }
        Section("Golden items") {
            ForEach(Array(m.items.enumerated()), id: \.offset) { i, item in
                Text("\(item.name): agreement \(f(item.pixelAgreement)) · mIoU \(f(item.miou))" +
                     (i < report.latenciesMs.count ? String(format: " · %.1f ms", report.latenciesMs[i]) : ""))
                    .font(.caption)
            }
        }
    }
}

/// The bundle: model, what this device can run, and the accuracy measured when the bundle was made.
struct AboutView: View {
    @EnvironmentObject var model: DemoModel

    var body: some View {
        Form {
            if let m = model.bundle?.manifest {
                Section("Model") {
                    LabeledContent("model", value: m.modelId)
                    LabeledContent("architecture", value: m.arch)
                    LabeledContent("trained on", value: m.dataset)
                    LabeledContent("classes", value: "\(m.numClasses)")
                    LabeledContent("input", value: "\(m.input.width)x\(m.input.height) \(m.input.colorOrder) \(m.input.dtype)")
                }
                if let a = m.accuracy {
                    AccuracySectionView(accuracy: a, selectedFile: model.selected?.artifactFile)
                } else {
                    Section("Measured accuracy") {
                        Text("This bundle carries no accuracy measured against labelled data " +
                             "(python -m espnet_mobile.evaluate on the bundle adds it).").font(.caption)
                    }
                }
                Section("Runtimes on this device") {
                    ForEach(model.options) { option in
                        Text("\(option.label): \(option.disabledReason.map { "not available - \($0)" } ?? "available")").font(.caption)
                    }
                }
            }
        }
        .navigationTitle("About")
    }
}

struct AccuracySectionView: View {
    let accuracy: ManifestAccuracy
    let selectedFile: String?

    var body: some View {
        let a = accuracy
        Section("Measured accuracy: \(a.title), \(a.split), \(a.images) images") {
            Text("mIoU and pixel accuracy in %, against the dataset's labels; Δ is mIoU minus the PyTorch reference's. " +
                 "Measured \(a.date).").font(.caption)
            ForEach(Array(a.results.enumerated()), id: \.offset) { _, r in
                VStack(alignment: .leading) {
                    Text("\(r.artifact) · \(r.runtime) · \(r.precision.rawValue)").font(.caption)
                        .fontWeight(r.artifact == selectedFile || r.isReference ? .bold : .regular)
                    Text(figures(r)).font(.system(.caption, design: .monospaced))
                    if let problem = r.error { Text("failed: \(problem)").font(.caption).foregroundStyle(.red) }
                }
            }
        }
        if let shown = a.results(for: selectedFile ?? "").first ?? a.reference, !shown.classIou.isEmpty {
            Section("IoU per class, \(shown.artifact) on \(shown.runtime)") {
                ForEach(a.classes, id: \.self) { name in
                    let iou: Double?? = shown.classIou[name]
                    LabeledContent(name, value: (iou ?? nil).map { String(format: "%.1f", $0) } ?? "- (not present)")
                }
            }
        }
        Section("Tools") {
            Text(a.toolVersions.keys.sorted().map { "\($0) \(a.toolVersions[$0] ?? "")" }.joined(separator: ", ")).font(.caption)
        }
    }

    private func figures(_ r: AccuracyResult) -> String {
        let pct: (Double?) -> String = { v in v.map { String(format: "%5.1f", $0) } ?? "    -" }
        let delta = r.isReference ? "" : (accuracy.miouDelta(r).map { String(format: " (Δ %+.2f)", $0) } ?? "")
        return "mIoU \(pct(r.miou))\(delta) · pixel \(pct(r.pixelAccuracy))"
    }
}

/// The system camera, for one photo.
struct CameraPicker: UIViewControllerRepresentable {
    let done: (UIImage?) -> Void

    func makeUIViewController(context: Context) -> UIImagePickerController {
        let picker = UIImagePickerController()
        picker.sourceType = .camera
        picker.delegate = context.coordinator
        return picker
    }

    func updateUIViewController(_ controller: UIImagePickerController, context: Context) {}

    func makeCoordinator() -> Coordinator { Coordinator(done: done) }

    final class Coordinator: NSObject, UIImagePickerControllerDelegate, UINavigationControllerDelegate {
        let done: (UIImage?) -> Void
        init(done: @escaping (UIImage?) -> Void) { self.done = done }

        func imagePickerController(_ picker: UIImagePickerController, didFinishPickingMediaWithInfo info: [UIImagePickerController.InfoKey: Any]) {
            done(info[.originalImage] as? UIImage)
        }

        func imagePickerControllerDidCancel(_ picker: UIImagePickerController) { done(nil) }
    }
}
