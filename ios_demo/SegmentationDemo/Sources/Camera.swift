import AVFoundation
import CoreImage
import SegmentationKit
import SwiftUI

/// Frames from the back camera (AVFoundation capture, 640x480 BGRA, late frames dropped), turned
/// upright and handed to `onFrame` on the model's work queue, where the segmentation runs too.
final class CameraFeed: NSObject, AVCaptureVideoDataOutputSampleBufferDelegate {
    private let session = AVCaptureSession()
    private let queue: DispatchQueue
    private let onFrame: (CGImage) -> Void
    private let context = CIContext()

    init(queue: DispatchQueue, onFrame: @escaping (CGImage) -> Void) {
        self.queue = queue
        self.onFrame = onFrame
    }

    func start() throws {
        guard let device = AVCaptureDevice.default(.builtInWideAngleCamera, for: .video, position: .back) else {
            throw BundleError("this device has no back camera")
        }
        let input = try AVCaptureDeviceInput(device: device)
        let output = AVCaptureVideoDataOutput()
        output.alwaysDiscardsLateVideoFrames = true
        output.videoSettings = [kCVPixelBufferPixelFormatTypeKey as String: kCVPixelFormatType_32BGRA]
        output.setSampleBufferDelegate(self, queue: queue)
        session.beginConfiguration()
        session.sessionPreset = .vga640x480
        guard session.canAddInput(input), session.canAddOutput(output) else {
            session.commitConfiguration()
            throw BundleError("the camera cannot be configured for video frames")
        }
        session.addInput(input)
        session.addOutput(output)
        if let connection = output.connection(with: .video), connection.isVideoRotationAngleSupported(90) {
            connection.videoRotationAngle = 90 // portrait, as the app is held
        }
        session.commitConfiguration()
        let session = self.session
        queue.async { session.startRunning() }
    }

    func stop() {
        let session = self.session
        queue.async { session.stopRunning() }
    }

    func captureOutput(_ output: AVCaptureOutput, didOutput sampleBuffer: CMSampleBuffer, from connection: AVCaptureConnection) {
        guard let pixels = CMSampleBufferGetImageBuffer(sampleBuffer) else { return }
        let image = CIImage(cvPixelBuffer: pixels)
        guard let frame = context.createCGImage(image, from: image.extent) else { return }
        onFrame(frame)
    }
}

/// Live camera with the mask over each frame, the frame rate and the last frame's stage times.
struct LiveView: View {
    @EnvironmentObject var model: DemoModel
    @State private var feed: CameraFeed?
    @State private var denied = false

    var body: some View {
        Form {
            RuntimePicker()
            Section("Live camera") {
                if denied {
                    Text("Camera access is off for this app (Settings › Privacy & Security › Camera).")
                } else if let frame = model.liveFrame {
                    Image(decorative: frame, scale: 1).resizable().scaledToFit()
                } else {
                    Text("Waiting for the camera…")
                }
                Text(status).font(.caption).monospacedDigit()
            }
        }
        .navigationTitle("Live")
        .task { await start() }
        .onChange(of: model.selected) { _, _ in Task { await restart() } }
        .onDisappear { stop() }
    }

    private var status: String {
        let fps = model.liveFps.map { String(format: "%.1f fps", $0) } ?? "- fps"
        guard let t = model.liveTimes else { return fps }
        return fps + String(format: " · last frame %.1f ms (pre %.1f · inference %.1f · post %.1f)",
                            t.totalMs, t.preprocessMs, t.inferenceMs, t.postprocessMs)
    }

    @MainActor private func start() async {
        guard feed == nil else { return }
        guard await AVCaptureDevice.requestAccess(for: .video) else {
            denied = true
            return
        }
        guard let handler = model.frameHandler() else { return }
        let camera = CameraFeed(queue: model.queue, onFrame: handler)
        do {
            try camera.start()
            feed = camera
        } catch {
            model.report(error)
        }
    }

    @MainActor private func restart() async {
        stop()
        await start()
    }

    private func stop() {
        feed?.stop()
        feed = nil
        model.cameraStopped()
    }
}
