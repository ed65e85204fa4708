#if canImport(CoreML)
import CoreML
import SegmentationKit
import Foundation

/// The Core ML compute-unit choices the app offers, and what each allows.
public enum CoreMLComputeChoice: String, CaseIterable, Identifiable {
    case cpuOnly, cpuAndGPU, cpuAndNeuralEngine, all

    public var id: String { rawValue }

    public var label: String {
        switch self {
        case .cpuOnly: return "CPU"
        case .cpuAndGPU: return "CPU + GPU"
        case .cpuAndNeuralEngine: return "CPU + Neural Engine"
        case .all: return "All (CPU, GPU, Neural Engine)"
        }
    }

    public var units: MLComputeUnits {
        switch self {
        case .cpuOnly: return .cpuOnly
        case .cpuAndGPU: return .cpuAndGPU
        case .cpuAndNeuralEngine: return .cpuAndNeuralEngine
        case .all: return .all
        }
    }

    /// The shared compute units this choice needs beyond the CPU.
    public var needs: [ComputeUnit] {
        switch self {
        case .cpuOnly: return [.cpu]
        case .cpuAndGPU: return [.cpu, .gpu]
        case .cpuAndNeuralEngine: return [.cpu, .npu]
        case .all: return [.cpu, .gpu, .npu]
        }
    }
}

/// An .mlpackage (or compiled .mlmodelc) through Core ML on the chosen compute units. The input and output
/// names, shapes and the class count come from the manifest.
public final class CoreMLRunner: SegmentationRunner {
    private let model: MLModel
    private let manifest: Manifest
    public let description: String

    /// Compiles `url` if it is an .mlpackage (the compiled model is cached by the system per app run).
    public init(url: URL, manifest: Manifest, precision: Precision, choice: CoreMLComputeChoice) throws {
        let compiled = url.pathExtension == "mlmodelc" ? url : try MLModel.compileModel(at: url)
        let config = MLModelConfiguration()
        config.computeUnits = choice.units
        model = try MLModel(contentsOf: compiled, configuration: config)
        self.manifest = manifest
        var note = ""
        if choice.needs.contains(.npu) && !CoreMLRunner.hasNeuralEngine {
            note = " - this device has no Neural Engine; Core ML runs on the remaining units"
        }
        description = "Core ML \(choice.label) (\(precision.rawValue))\(note)"
    }

    /// Whether an Apple Neural Engine is present (iOS 17 / macOS 14 report the devices).
    public static var hasNeuralEngine: Bool {
        if #available(iOS 17.0, macOS 14.0, *) {
            return MLModel.availableComputeDevices.contains { if case .neuralEngine(_) = $0 { return true } else { return false } }
        }
        return true
    }

    public func run(_ input: ModelInput) throws -> ModelOutput {
        let spec = manifest.input
        let array = try MLMultiArray(shape: input.shape.map { NSNumber(value: $0) },
                                     dataType: spec.dtype == "uint8" ? .int32 : .float32)
        if let floats = input.floats {
            array.withUnsafeMutableBufferPointer(ofType: Float.self) { ptr, _ in
                for i in 0..<floats.count { ptr[i] = floats[i] }
            }
        } else if let bytes = input.bytes {
            array.withUnsafeMutableBufferPointer(ofType: Int32.self) { ptr, _ in
                for i in 0..<bytes.count { ptr[i] = Int32(bytes[i]) }
            }
        }
        let features = try MLDictionaryFeatureProvider(dictionary: [spec.name: MLFeatureValue(multiArray: array)])
        let result = try model.prediction(from: features)
        guard let out = result.featureValue(for: manifest.output.name)?.multiArrayValue else {
            throw BundleError("the Core ML model has no output named \(manifest.output.name)")
        }
        if manifest.output.isMask {
            return .mask(CoreMLRunner.contiguous(out).map { Int($0) })
        }
        return .logits(CoreMLRunner.contiguous(out))
    }

    /// The values of a multi-array in row-major order, whatever its strides and element type
    /// (GPU and Neural Engine outputs may be padded or float16).
    static func contiguous(_ a: MLMultiArray) -> [Float] {
        let shape = a.shape.map(\.intValue)
        let strides = a.strides.map(\.intValue)
        let count = shape.reduce(1, *)
        let type = a.dataType
        var out = [Float](repeating: 0, count: count)
        var index = [Int](repeating: 0, count: shape.count)
        a.withUnsafeBytes { raw in
            for flat in 0..<count {
                var rem = flat
                for d in stride(from: shape.count - 1, through: 0, by: -1) {
                    index[d] = rem % shape[d]
                    rem /= shape[d]
                }
                let offset = zip(index, strides).reduce(0) { $0 + $1.0 * $1.1 }
                switch type {
                case .float32: out[flat] = raw.load(fromByteOffset: 4 * offset, as: Float.self)
                case .double: out[flat] = Float(raw.load(fromByteOffset: 8 * offset, as: Double.self))
                case .int32: out[flat] = Float(raw.load(fromByteOffset: 4 * offset, as: Int32.self))
                case .float16: out[flat] = Half.toFloat(raw.load(fromByteOffset: 2 * offset, as: UInt16.self))
                default: out[flat] = .nan
                }
            }
        }
        return out
    }
}
#endif
