import ExecuTorch
import Foundation
import SegmentationKit

/// A .pte through ExecuTorch's Swift API (package github.com/pytorch/executorch, branch swiftpm-<version>,
/// pinned in ../../Package.swift).
/// The delegate (XNNPACK on the CPU, Core ML on CPU/GPU/Neural Engine) was chosen when the .pte was
/// exported; the app links the backends in Package.swift and needs the `-all_load` linker flag so that
/// they register. The Swift API is marked experimental by ExecuTorch: check it when bumping the version.
public final class ExecuTorchRunner: SegmentationRunner {
    private let module: Module
    private let isMask: Bool
    public let description: String

    public init(path: String, artifact: Artifact, manifest: Manifest) throws {
        module = Module(filePath: path)
        do {
            try module.load("forward")
        } catch {
            throw BundleError("ExecuTorch could not load \(artifact.file) (\(error)); the app's ExecuTorch package may be older " +
                "than the exporter that wrote it (see SegmentationRuntimes/Package.swift)")
        }
        isMask = manifest.output.isMask
        // What the program really delegates to, as the runtime reports it (e.g. XnnpackBackend, CoreMLBackend).
        let backends = (try? module.methodMetadata("forward").backendNames) ?? []
        let delegates = backends.isEmpty ? "portable CPU kernels (no delegate)" : backends.joined(separator: " + ")
        description = "ExecuTorch · \(delegates) · \(artifact.precision.rawValue) · \(artifact.file)"
    }

    public func run(_ input: ModelInput) throws -> ModelOutput {
        let outputs: [Value]
        if let floats = input.floats {
            outputs = try module.forward(Tensor<Float>(floats, shape: input.shape))
        } else if let bytes = input.bytes {
            outputs = try module.forward(Tensor<UInt8>(bytes, shape: input.shape))
        } else {
            throw BundleError("empty model input")
        }
        guard let first = outputs.first else { throw BundleError("the .pte returned no output") }
        if isMask {
            guard let mask: Tensor<Int32> = first.tensor() else { throw BundleError("the .pte did not return an int32 mask") }
            return .mask(mask.scalars().map { Int($0) })
        }
        guard let logits: Tensor<Float> = first.tensor() else { throw BundleError("the .pte did not return float32 logits") }
        return .logits(logits.scalars())
    }
}
