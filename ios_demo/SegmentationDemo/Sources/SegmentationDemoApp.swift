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
                NavigationStack { SegmentView() }.tabItem { Label("Segment", systemImage: "photo") }
                NavigationStack { AccuracyView() }.tabItem { Label("Accuracy check", systemImage: "checkmark.seal") }
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
                    ForEach(model.options) { option in Text(option.label).tag(Optional(option)) }
                }
                .disabled(model.busy)
                if let note = model.selected?.note { Text(note).font(.caption) }
            }
            if let running = model.runnerDescription { Text("Running on: \(running)").font(.caption) }
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
                Section("Result") {
                    Image(decorative: overlay, scale: 1).resizable().scaledToFit()
                    if let t = model.timings {
                        Text(String(format: "inference %.1f ms · preprocess %.1f ms · postprocess %.1f ms",
                                    t.inferenceMs, t.preprocessMs, t.postprocessMs)).font(.caption)
                    }
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
                    model.segment(image)
                }
            }
        }
        .sheet(isPresented: $showCamera) {
            CameraPicker { photo in
                showCamera = false
                if let photo, let image = try? ImageLoading.decode(photo) { model.segment(image) }
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
