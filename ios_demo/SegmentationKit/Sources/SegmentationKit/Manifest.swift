import Foundation

/// The bundle manifest (schema version 1), decoded with JSONDecoder and checked. Mirrors
/// android_demo/core Manifest.kt: the same checks with the same messages, each naming its field by
/// JSON path (a type error from the decoder names the path of its coding keys).

/// A bundle that cannot be used, with a message that says what to do.
public struct BundleError: Error, CustomStringConvertible, LocalizedError {
    public let message: String
    /// True for a manifest problem (ManifestException in Kotlin).
    public let isManifest: Bool
    public init(_ message: String, isManifest: Bool = false) { self.message = message; self.isManifest = isManifest }
    public var description: String { message }
    public var errorDescription: String? { message }
}

public enum TensorLayout: String, CaseIterable { case NCHW, NHWC }

public enum Precision: String, CaseIterable { case fp32, fp16, int8 }

public enum Target: String, CaseIterable { case executorch, coreml, tflite }

/// Hardware a runtime may use. Converters spell these differently ("CPU", "gpu", "ANE"); `parse` unifies them.
public enum ComputeUnit: String, CaseIterable {
    case cpu, gpu, npu

    public var label: String {
        switch self {
        case .cpu: return "CPU"
        case .gpu: return "GPU"
        case .npu: return "NPU / Neural Engine"
        }
    }

    public static func parse(_ name: String) -> ComputeUnit? {
        switch name.trimmingCharacters(in: .whitespaces).lowercased() {
        case "cpu", "cpu_only", "cpu_reference": return .cpu
        case "gpu": return .gpu
        case "npu", "ane", "neural_engine", "neuralengine", "dsp", "htp": return .npu
        default: return nil
        }
    }
}

public struct Rgb: Equatable { public let r: Int, g: Int, b: Int }

public struct FileRef: Equatable { public let file: String, sha256: String }

public struct TensorRef: Equatable {
    public let file: String, sha256: String, shape: [Int], dtype: String
    public var count: Int { shape.reduce(1, *) }
}

public struct InputSpec: Equatable {
    public let name: String
    public let shape: [Int]
    public let layout: TensorLayout
    public let dtype: String
    public let colorOrder: String
    public let valueMin: Double
    public let valueMax: Double

    public var height: Int { layout == .NCHW ? shape[2] : shape[1] }
    public var width: Int { layout == .NCHW ? shape[3] : shape[2] }
    public var channels: Int { layout == .NCHW ? shape[1] : shape[3] }

    public func with(dtype: String? = nil, valueMin: Double? = nil, valueMax: Double? = nil) -> InputSpec {
        InputSpec(name: name, shape: shape, layout: layout, dtype: dtype ?? self.dtype, colorOrder: colorOrder,
                  valueMin: valueMin ?? self.valueMin, valueMax: valueMax ?? self.valueMax)
    }
}

/// The model's output: float32 logits (1, C, H, W) or an int32 mask (1, H, W) from an argmax head.
public struct OutputSpec: Equatable {
    public let name: String, shape: [Int], layout: TensorLayout, dtype: String
    public var isMask: Bool { dtype == "int32" }
    public var height: Int { shape[shape.count - 2] }
    public var width: Int { shape[shape.count - 1] }
}

public struct Artifact: Equatable {
    public let file: String
    public let target: Target
    public let delegate: String
    public let precision: Precision
    public let computeUnitNames: [String]
    public let sha256: String
    public let bytes: Int64
    public let executableHere: Bool
    public let notExecutableReason: String?
    public let inputLayout: TensorLayout

    /// The compute units the converter says the artifact can use, unified (unknown names dropped).
    public var computeUnits: [ComputeUnit] {
        var seen: [ComputeUnit] = []
        for name in computeUnitNames { if let u = ComputeUnit.parse(name), !seen.contains(u) { seen.append(u) } }
        return seen
    }

    public var label: String {
        target == .executorch ? "\(target.rawValue) · \(delegate) · \(precision.rawValue)" : "\(target.rawValue) · \(precision.rawValue)"
    }
}

public struct GoldenItem: Equatable {
    public let name: String
    public let image: FileRef
    public let imageHeight: Int
    public let imageWidth: Int
    public let input: TensorRef
    public let logits: TensorRef
    public let mask: TensorRef
    public let fullMask: FileRef?
}

/// One row of the manifest's `accuracy` section: the PyTorch reference (target nil) or one artifact on
/// one runtime, scored against the dataset's labels. Figures are percentages (0-100); a class IoU is
/// nil when the class is in neither the labels nor the predictions; mIoU and pixel accuracy are nil
/// when the run failed (`error` says why).
public struct AccuracyResult: Equatable {
    public let artifact: String
    public let sha256: String?
    public let target: String?
    public let precision: Precision
    public let runtime: String
    public let computeUnit: String?
    public let miou: Double?
    public let pixelAccuracy: Double?
    public let classIou: [String: Double?]
    public let agreementWithReference: Double?
    public let images: Int
    public let error: String?

    public var isReference: Bool { target == nil }
}

/// The manifest's `accuracy` section (written by python -m espnet_mobile.evaluate on the bundle).
public struct ManifestAccuracy: Equatable {
    public static let datasets = ["camvid", "cityscapes", "voc"]
    public static let referenceArtifact = "pytorch-reference"

    /// Dataset kind: camvid, cityscapes or voc.
    public let dataset: String
    public let datasetTitle: String?
    public let split: String
    public let images: Int
    public let ignoreLabel: Int?
    /// The classes scored, in logit order.
    public let classes: [String]
    public let date: String
    public let toolVersions: [String: String]
    public let results: [AccuracyResult]

    public var title: String { (datasetTitle?.isEmpty == false ? datasetTitle : nil) ?? dataset }

    /// The PyTorch reference's row, if the section has one.
    public var reference: AccuracyResult? { results.first { $0.isReference } }

    /// The rows measured for one artifact file (one per runtime it ran on).
    public func results(for artifactFile: String) -> [AccuracyResult] { results.filter { $0.artifact == artifactFile } }

    /// mIoU of `result` minus the reference's, in points; nil when either is unknown.
    public func miouDelta(_ result: AccuracyResult) -> Double? {
        guard let ref = reference?.miou, let value = result.miou else { return nil }
        return value - ref
    }
}

public struct Manifest {
    public static let fileName = "manifest.json"
    public static let schemaVersion = 1

    public let schemaVersion: Int
    public let modelId: String
    public let createdBy: String
    public let arch: String
    public let dataset: String
    public let numClasses: Int
    public let input: InputSpec
    public let output: OutputSpec
    public let labels: [String]
    public let palette: [Rgb]
    public let artifacts: [Artifact]
    public let goldenSource: String
    public let golden: [GoldenItem]
    /// precision -> threshold name -> limit, names sorted (JSONDecoder does not keep key order).
    public let thresholds: [String: [(String, Double)]]
    /// Accuracy measured against a labelled dataset when the bundle was made; nil in older bundles.
    public let accuracy: ManifestAccuracy?

    public func thresholds(for precision: Precision) -> [(String, Double)] { thresholds[precision.rawValue] ?? [] }

    /// Parse and check a manifest; `where` names it in error messages.
    public static func parse(_ text: String, where location: String = Manifest.fileName) throws -> Manifest {
        try parse(Data(text.utf8), where: location)
    }

    public static func parse(_ data: Data, where location: String = Manifest.fileName) throws -> Manifest {
        let wire: WireManifest
        do {
            wire = try JSONDecoder().decode(WireManifest.self, from: data)
        } catch let e as ManifestError {
            throw BundleError("\(location): \(e.path) \(e.what); rebuild the bundle with python -m espnet_mobile.convert", isManifest: true)
        } catch let e as DecodingError {
            if case .dataCorrupted(let context) = e, context.codingPath.isEmpty {
                let cause = context.underlyingError.map { "\($0)" } ?? context.debugDescription
                throw BundleError("\(location) is not valid JSON (\(cause)); rebuild the bundle", isManifest: true)
            }
            let problem = ManifestError(decoding: e)
            throw BundleError("\(location): \(problem.path) \(problem.what); rebuild the bundle with python -m espnet_mobile.convert", isManifest: true)
        }
        do {
            return try ManifestReader().read(wire)
        } catch let e as ManifestError {
            throw BundleError("\(location): \(e.path) \(e.what); rebuild the bundle with python -m espnet_mobile.convert", isManifest: true)
        }
    }
}

struct ManifestError: Error {
    let path: String
    let what: String

    init(path: String, what: String) {
        self.path = path.isEmpty ? "(top level)" : path
        self.what = what
    }

    /// A decoder error in the manifest's words: the JSON path of the coding keys and what was expected.
    init(decoding error: DecodingError) {
        func pathText(_ keys: [CodingKey]) -> String { keys.map { $0.intValue.map(String.init) ?? $0.stringValue }.joined(separator: "/") }
        switch error {
        case .keyNotFound(let key, let context):
            self.init(path: pathText(context.codingPath), what: "is missing the required field \"\(key.stringValue)\"")
        case .typeMismatch(let type, let context):
            self.init(path: pathText(context.codingPath), what: "must be \(ManifestError.kind(type)) (\(context.debugDescription))")
        case .valueNotFound(let type, let context):
            self.init(path: pathText(context.codingPath), what: "must be \(ManifestError.kind(type)), got null")
        case .dataCorrupted(let context):
            self.init(path: pathText(context.codingPath), what: "is not valid (\(context.debugDescription))")
        @unknown default:
            self.init(path: "", what: "cannot be decoded (\(error))")
        }
    }

    private static func kind(_ type: Any.Type) -> String {
        if type == String.self { return "a string" }
        if type == Double.self || type == Int.self { return "a number" }
        if type == Bool.self { return "true or false" }
        let name = "\(type)"
        if name.hasPrefix("Array") || name.hasPrefix("[") && !name.contains(":") { return "an array" }
        return "an object"
    }
}

/// Formats lists like Kotlin's List.toString(): [1, 3, 8].
func listText<T>(_ list: [T]) -> String { "[" + list.map { "\($0)" }.joined(separator: ", ") + "]" }

// MARK: - The manifest as JSON: Decodable types that mirror its fields. Numbers are decoded as Double
// and checked by ManifestReader, so that "must be an integer, got 2.5" reads as in Kotlin.

struct AnyKey: CodingKey {
    let stringValue: String
    let intValue: Int?
    init(stringValue: String) { self.stringValue = stringValue; intValue = nil }
    init?(intValue: Int) { stringValue = String(intValue); self.intValue = intValue }
}

/// A field that must be a JSON object; its contents are not read.
struct JSONObjectField: Decodable {
    init(from decoder: Decoder) throws { _ = try decoder.container(keyedBy: AnyKey.self) }
}

struct WireManifest: Decodable {
    enum CodingKeys: String, CodingKey, CaseIterable {
        case schemaVersion = "schema_version", modelId = "model_id", createdBy = "created_by", model, input, output
        case labels, palette, preprocessing, postprocessing, artifacts, golden, thresholds, parity, accuracy
    }

    let schemaVersion: Double
    let modelId: String
    let createdBy: String
    let model: WireModel
    let input: WireInput
    let output: WireOutput
    let labels: [String]
    let palette: [[Double]]
    let artifacts: [WireArtifact]
    let golden: WireGolden
    let thresholds: [String: [String: Double]]
    let accuracy: WireAccuracy?

    init(from decoder: Decoder) throws {
        let all = try decoder.container(keyedBy: AnyKey.self)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        // The version first: a newer bundle may differ anywhere else.
        schemaVersion = try c.decode(Double.self, forKey: .schemaVersion)
        if schemaVersion != Double(Manifest.schemaVersion) {
            throw ManifestError(path: "schema_version", what:
                "is \(ManifestReader.numberText(schemaVersion)) but this app reads version \(Manifest.schemaVersion); use the app and bundle from the same release")
        }
        let unknown = all.allKeys.map(\.stringValue).filter { CodingKeys(rawValue: $0) == nil }.sorted()
        if !unknown.isEmpty { throw ManifestError(path: "", what: "has unknown fields \(unknown.map { "\"\($0)\"" }.joined(separator: ", "))") }
        for key in CodingKeys.allCases where key != .parity && key != .accuracy && !c.contains(key) {
            throw ManifestError(path: "", what: "is missing the required field \"\(key.rawValue)\"")
        }
        modelId = try c.decode(String.self, forKey: .modelId)
        createdBy = try c.decode(String.self, forKey: .createdBy)
        model = try c.decode(WireModel.self, forKey: .model)
        input = try c.decode(WireInput.self, forKey: .input)
        output = try c.decode(WireOutput.self, forKey: .output)
        labels = try c.decode([String].self, forKey: .labels)
        palette = try c.decode([[Double]].self, forKey: .palette)
        _ = try c.decode(JSONObjectField.self, forKey: .preprocessing)
        _ = try c.decode(JSONObjectField.self, forKey: .postprocessing)
        artifacts = try c.decode([WireArtifact].self, forKey: .artifacts)
        golden = try c.decode(WireGolden.self, forKey: .golden)
        // thresholds: precision -> {name: limit}; other entries (e.g. a "description" string) are skipped.
        let t = try c.nestedContainer(keyedBy: AnyKey.self, forKey: .thresholds)
        var limits: [String: [String: Double]] = [:]
        for key in t.allKeys {
            if (try? t.decode(String.self, forKey: key)) != nil { continue }
            limits[key.stringValue] = try t.decode([String: Double].self, forKey: key)
        }
        thresholds = limits
        accuracy = try c.decodeIfPresent(WireAccuracy.self, forKey: .accuracy)
    }
}

struct WireModel: Decodable {
    let arch: String
    let dataset: String
    let numClasses: Double
    enum CodingKeys: String, CodingKey { case arch, dataset, numClasses = "num_classes" }
}

struct WireInput: Decodable {
    let name: String, shape: [Double], layout: String, dtype: String, colorOrder: String, valueRange: [Double], normalization: String
    enum CodingKeys: String, CodingKey {
        case name, shape, layout, dtype, normalization, colorOrder = "color_order", valueRange = "value_range"
    }
}

struct WireOutput: Decodable {
    let name: String, shape: [Double], layout: String, dtype: String, meaning: String
}

struct WireArtifact: Decodable {
    let file: String, target: String, delegate: String, precision: String, computeUnits: [String], sha256: String
    let bytes: Double, executableHere: Bool, notExecutableReason: String?, inputLayout: String, cacheKey: String
    enum CodingKeys: String, CodingKey {
        case file, target, delegate, precision, sha256, bytes, toolVersions = "tool_versions"
        case computeUnits = "compute_units", executableHere = "executable_here", notExecutableReason = "not_executable_reason"
        case inputLayout = "input_layout", cacheKey = "cache_key"
    }

    init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        file = try c.decode(String.self, forKey: .file)
        _ = try c.decode(JSONObjectField.self, forKey: .toolVersions)
        cacheKey = try c.decode(String.self, forKey: .cacheKey)
        target = try c.decode(String.self, forKey: .target)
        delegate = try c.decode(String.self, forKey: .delegate)
        precision = try c.decode(String.self, forKey: .precision)
        computeUnits = try c.decode([String].self, forKey: .computeUnits)
        sha256 = try c.decode(String.self, forKey: .sha256)
        bytes = try c.decode(Double.self, forKey: .bytes)
        executableHere = try c.decode(Bool.self, forKey: .executableHere)
        notExecutableReason = try c.decodeIfPresent(String.self, forKey: .notExecutableReason)
        inputLayout = try c.decode(String.self, forKey: .inputLayout)
    }
}

struct WireFile: Decodable { let file: String, sha256: String }

struct WireTensor: Decodable {
    let file: String, sha256: String, shape: [Double], dtype: String
    let byteOrder: String?
    enum CodingKeys: String, CodingKey { case file, sha256, shape, dtype, byteOrder = "byte_order" }
}

struct WireGoldenItem: Decodable {
    let name: String, image: WireFile, imageSize: [Double], input: WireTensor, logits: WireTensor, mask: WireTensor
    let fullMask: WireFile?
    enum CodingKeys: String, CodingKey { case name, image, input, logits, mask, imageSize = "image_size", fullMask = "full_mask" }
}

struct WireGolden: Decodable { let source: String, items: [WireGoldenItem] }

struct WireAccuracy: Decodable {
    let dataset: String, datasetTitle: String?, split: String, images: Double, ignoreLabel: Double?
    let classes: [String], date: String, toolVersions: [String: String], results: [WireAccuracyResult]
    enum CodingKeys: String, CodingKey {
        case dataset, split, images, classes, date, results
        case datasetTitle = "dataset_title", ignoreLabel = "ignore_label", toolVersions = "tool_versions"
    }
}

struct WireAccuracyResult: Decodable {
    let artifact: String, sha256: String?, target: String?, precision: String, runtime: String, computeUnit: String?
    let miou: Double?, pixelAccuracy: Double?, classIou: [String: Double?], agreementWithReference: Double?
    let images: Double, error: String?
    enum CodingKeys: String, CodingKey {
        case artifact, sha256, target, precision, runtime, miou, images, error
        case computeUnit = "compute_unit", pixelAccuracy = "pixel_accuracy", classIou = "class_iou"
        case agreementWithReference = "agreement_with_reference"
    }

    init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        artifact = try c.decode(String.self, forKey: .artifact)
        sha256 = try c.decodeIfPresent(String.self, forKey: .sha256)
        // Required but nullable: present as null for the reference row.
        target = try c.decodeNil(forKey: .target) ? nil : try c.decode(String.self, forKey: .target)
        precision = try c.decode(String.self, forKey: .precision)
        runtime = try c.decode(String.self, forKey: .runtime)
        computeUnit = try c.decodeIfPresent(String.self, forKey: .computeUnit)
        miou = try c.decodeNil(forKey: .miou) ? nil : try c.decode(Double.self, forKey: .miou)
        pixelAccuracy = try c.decodeNil(forKey: .pixelAccuracy) ? nil : try c.decode(Double.self, forKey: .pixelAccuracy)
        classIou = try c.decode([String: Double?].self, forKey: .classIou)
        agreementWithReference = try c.decodeIfPresent(Double.self, forKey: .agreementWithReference)
        images = try c.decode(Double.self, forKey: .images)
        error = try c.decodeIfPresent(String.self, forKey: .error)
    }
}

// MARK: - Checks beyond the types, in the order and words of Manifest.kt.

private func fail(_ path: String, _ what: String) -> ManifestError { ManifestError(path: path, what: what) }

private struct ManifestReader {
    static func numberText(_ n: Double) -> String {
        n == n.rounded() && abs(n) < 1e15 ? String(Int64(n)) : String(n)
    }

    func int(_ value: Double, _ path: String, min: Int? = nil) throws -> Int {
        if value != value.rounded() || value > Double(Int32.max) || value < Double(Int32.min) {
            throw fail(path, "must be an integer, got \(value)")
        }
        let v = Int(value)
        if let m = min, v < m { throw fail(path, "must be at least \(m), got \(v)") }
        return v
    }

    func intList(_ values: [Double], _ path: String, minValue: Int? = nil, size: Int? = nil) throws -> [Int] {
        let list = try values.enumerated().map { try int($0.element, "\(path)/\($0.offset)", min: minValue) }
        if let n = size, list.count != n { throw fail(path, "must have \(n) entries, got \(list.count)") }
        return list
    }

    func oneOf(_ value: String, _ allowed: [String], _ path: String) throws -> String {
        if !allowed.contains(value) { throw fail(path, "must be one of \(allowed.joined(separator: ", ")), got \"\(value)\"") }
        return value
    }

    func nonEmpty(_ value: String, _ path: String) throws -> String {
        if value.isEmpty { throw fail(path, "must not be empty") }
        return value
    }

    func sha256(_ s: String, _ path: String) throws -> String {
        let hex = s.unicodeScalars.allSatisfy { ("0"..."9").contains(Character($0)) || ("a"..."f").contains(Character($0)) }
        if s.unicodeScalars.count != 64 || !hex { throw fail(path, "must be 64 lowercase hex digits (a sha256), got \"\(s)\"") }
        return s
    }

    func percent(_ value: Double, _ path: String) throws -> Double {
        if !value.isFinite || value < 0 || value > 100 { throw fail(path, "must be between 0 and 100, got \(ManifestReader.numberText(value))") }
        return value
    }

    func read(_ w: WireManifest) throws -> Manifest {
        let numClasses = try int(w.model.numClasses, "model/num_classes", min: 1)
        let input = try readInput(w.input)
        let output = try readOutput(w.output, numClasses)

        if w.labels.isEmpty { throw fail("labels", "must not be empty") }
        if w.labels.count != numClasses { throw fail("labels", "has \(w.labels.count) names but model/num_classes is \(numClasses)") }

        let palette: [Rgb] = try w.palette.enumerated().map { i, colour in
            let c = try intList(colour, "palette/\(i)", minValue: 0, size: 3)
            if c.contains(where: { $0 > 255 }) { throw fail("palette/\(i)", "colour components must be 0-255, got \(listText(c))") }
            return Rgb(r: c[0], g: c[1], b: c[2])
        }
        if palette.count < numClasses { throw fail("palette", "has \(palette.count) colours but there are \(numClasses) classes") }

        let artifacts = try w.artifacts.enumerated().map { try readArtifact($0.element, "artifacts/\($0.offset)") }
        let items = try w.golden.items.enumerated().map { try readGolden($0.element, "golden/items/\($0.offset)", input, output, numClasses) }
        var seen = Set<String>(), repeated: [String] = []
        for item in items { if !seen.insert(item.name).inserted, !repeated.contains(item.name) { repeated.append(item.name) } }
        if !repeated.isEmpty { throw fail("golden/items", "repeats the names \(repeated.joined(separator: ", "))") }

        var thresholds: [String: [(String, Double)]] = [:]
        for (precision, limits) in w.thresholds { thresholds[precision] = limits.keys.sorted().map { ($0, limits[$0]!) } }

        return Manifest(
            schemaVersion: Manifest.schemaVersion,
            modelId: try nonEmpty(w.modelId, "model_id"),
            createdBy: w.createdBy,
            arch: try oneOf(w.model.arch, ["espnet", "espnet_c", "espnetv2"], "model/arch"),
            dataset: w.model.dataset,
            numClasses: numClasses,
            input: input,
            output: output,
            labels: w.labels,
            palette: palette,
            artifacts: artifacts,
            goldenSource: w.golden.source,
            golden: items,
            thresholds: thresholds,
            accuracy: try w.accuracy.map { try readAccuracy($0) }
        )
    }

    func readInput(_ w: WireInput) throws -> InputSpec {
        let shape = try intList(w.shape, "input/shape", minValue: 1, size: 4)
        let layout = TensorLayout(rawValue: try oneOf(w.layout, ["NCHW", "NHWC"], "input/layout"))!
        if shape[0] != 1 { throw fail("input/shape", "must have batch size 1, got \(shape[0])") }
        let channels = layout == .NCHW ? shape[1] : shape[3]
        if channels != 3 { throw fail("input/shape", "must have 3 colour channels for layout \(layout.rawValue), got \(listText(shape))") }
        let bounds = w.valueRange
        if bounds.count != 2 || bounds[0] >= bounds[1] { throw fail("input/value_range", "must be [low, high] with low < high, got \(listText(bounds))") }
        _ = try oneOf(w.normalization, ["baked_in"], "input/normalization")
        return InputSpec(
            name: w.name,
            shape: shape,
            layout: layout,
            dtype: try oneOf(w.dtype, ["float32", "uint8"], "input/dtype"),
            colorOrder: try oneOf(w.colorOrder, ["RGB"], "input/color_order"),
            valueMin: bounds[0],
            valueMax: bounds[1]
        )
    }

    func readOutput(_ w: WireOutput, _ numClasses: Int) throws -> OutputSpec {
        let dtype = try oneOf(w.dtype, ["float32", "int32"], "output/dtype")
        let shape = try intList(w.shape, "output/shape", minValue: 1)
        if dtype == "float32" {
            if shape.count != 4 || shape[0] != 1 { throw fail("output/shape", "must be [1, classes, height, width] for float32 logits, got \(listText(shape))") }
            if shape[1] != numClasses { throw fail("output/shape", "has \(shape[1]) channels but model/num_classes is \(numClasses)") }
        } else if shape.count != 3 || shape[0] != 1 {
            throw fail("output/shape", "must be [1, height, width] for an int32 mask, got \(listText(shape))")
        }
        return OutputSpec(name: w.name, shape: shape, layout: TensorLayout(rawValue: try oneOf(w.layout, ["NCHW"], "output/layout"))!, dtype: dtype)
    }

    func readArtifact(_ w: WireArtifact, _ path: String) throws -> Artifact {
        let file = try nonEmpty(w.file, "\(path)/file")
        if file.contains("/") || file.contains("\\") { throw fail("\(path)/file", "must be a bare file name, got \"\(file)\"") }
        let bytes = w.bytes
        if bytes != bytes.rounded() || abs(bytes) > 9.007199254740992e15 { throw fail("\(path)/bytes", "must be an integer, got \(bytes)") }
        if bytes < 1 { throw fail("\(path)/bytes", "must be at least 1, got \(Int64(bytes))") }
        return Artifact(
            file: file,
            target: Target(rawValue: try oneOf(w.target, Target.allCases.map(\.rawValue), "\(path)/target"))!,
            delegate: w.delegate,
            precision: Precision(rawValue: try oneOf(w.precision, Precision.allCases.map(\.rawValue), "\(path)/precision"))!,
            computeUnitNames: w.computeUnits,
            sha256: try sha256(w.sha256, "\(path)/sha256"),
            bytes: Int64(bytes),
            executableHere: w.executableHere,
            notExecutableReason: w.notExecutableReason,
            inputLayout: TensorLayout(rawValue: try oneOf(w.inputLayout, ["NCHW", "NHWC"], "\(path)/input_layout"))!
        )
    }

    func readFile(_ w: WireFile, _ path: String) throws -> FileRef {
        FileRef(file: try nonEmpty(w.file, "\(path)/file"), sha256: try sha256(w.sha256, "\(path)/sha256"))
    }

    func readTensor(_ w: WireTensor, _ path: String, _ dtypes: [String]) throws -> TensorRef {
        if let order = w.byteOrder { _ = try oneOf(order, ["little"], "\(path)/byte_order") }
        return TensorRef(
            file: try nonEmpty(w.file, "\(path)/file"),
            sha256: try sha256(w.sha256, "\(path)/sha256"),
            shape: try intList(w.shape, "\(path)/shape", minValue: 1),
            dtype: try oneOf(w.dtype, dtypes, "\(path)/dtype")
        )
    }

    func readGolden(_ w: WireGoldenItem, _ path: String, _ input: InputSpec, _ output: OutputSpec, _ numClasses: Int) throws -> GoldenItem {
        let size = try intList(w.imageSize, "\(path)/image_size", minValue: 1, size: 2)

        let inputRef = try readTensor(w.input, "\(path)/input", ["float32"])
        let wantInput = [1, 3, input.height, input.width]
        if inputRef.shape != wantInput {
            throw fail("\(path)/input/shape", "must be \(listText(wantInput)) (NCHW, like the model input), got \(listText(inputRef.shape))")
        }

        let logits = try readTensor(w.logits, "\(path)/logits", ["float16", "float32"])
        if logits.shape.count != 4 || logits.shape[0] != 1 || logits.shape[1] != numClasses {
            throw fail("\(path)/logits/shape", "must be [1, \(numClasses), height, width], got \(listText(logits.shape))")
        }
        if !output.isMask && logits.shape != output.shape {
            throw fail("\(path)/logits/shape", "must equal output/shape \(listText(output.shape)), got \(listText(logits.shape))")
        }

        let mask = try readTensor(w.mask, "\(path)/mask", ["uint8"])
        let wantMask = [1, logits.shape[2], logits.shape[3]]
        if mask.shape != wantMask {
            throw fail("\(path)/mask/shape", "must be \(listText(wantMask)) (the logits' height and width), got \(listText(mask.shape))")
        }
        if numClasses > 256 { throw fail("\(path)/mask", "cannot hold \(numClasses) classes in uint8") }

        return GoldenItem(
            name: try nonEmpty(w.name, "\(path)/name"),
            image: try readFile(w.image, "\(path)/image"),
            imageHeight: size[0],
            imageWidth: size[1],
            input: inputRef,
            logits: logits,
            mask: mask,
            fullMask: try w.fullMask.map { try readFile($0, "\(path)/full_mask") }
        )
    }

    func readAccuracy(_ w: WireAccuracy) throws -> ManifestAccuracy {
        let path = "accuracy"
        if w.classes.isEmpty { throw fail("\(path)/classes", "must not be empty") }
        for (i, name) in w.classes.enumerated() { _ = try nonEmpty(name, "\(path)/classes/\(i)") }
        var seen = Set<String>(), repeated: [String] = []
        for name in w.classes where !seen.insert(name).inserted && !repeated.contains(name) { repeated.append(name) }
        if !repeated.isEmpty { throw fail("\(path)/classes", "repeats \(repeated.joined(separator: ", "))") }
        let classes = Set(w.classes)
        let results = try w.results.enumerated().map { try readAccuracyResult($0.element, "\(path)/results/\($0.offset)", classes) }
        return ManifestAccuracy(
            dataset: try oneOf(w.dataset, ManifestAccuracy.datasets, "\(path)/dataset"),
            datasetTitle: w.datasetTitle,
            split: try nonEmpty(w.split, "\(path)/split"),
            images: try int(w.images, "\(path)/images", min: 1),
            ignoreLabel: try w.ignoreLabel.map { try int($0, "\(path)/ignore_label") },
            classes: w.classes,
            date: w.date,
            toolVersions: w.toolVersions,
            results: results
        )
    }

    func readAccuracyResult(_ w: WireAccuracyResult, _ path: String, _ classes: Set<String>) throws -> AccuracyResult {
        var classIou: [String: Double?] = [:]
        for name in w.classIou.keys.sorted() {
            if !classes.contains(name) { throw fail("\(path)/class_iou/\(name)", "is not one of the scored classes (accuracy/classes)") }
            let value: Double?? = w.classIou[name]
            if let v = value ?? nil {
                let checked = try percent(v, "\(path)/class_iou/\(name)")
                classIou[name] = .some(checked)
            } else {
                classIou[name] = .some(nil) // keeps the key: the class was in neither labels nor predictions
            }
        }
        let artifact = try nonEmpty(w.artifact, "\(path)/artifact")
        if let target = w.target { _ = try nonEmpty(target, "\(path)/target") }
        if w.target == nil && artifact != ManifestAccuracy.referenceArtifact {
            throw fail("\(path)/artifact", "has target null, which only the row \"\(ManifestAccuracy.referenceArtifact)\" may have")
        }
        return AccuracyResult(
            artifact: artifact,
            sha256: try w.sha256.map { try sha256($0, "\(path)/sha256") },
            target: w.target,
            precision: Precision(rawValue: try oneOf(w.precision, Precision.allCases.map(\.rawValue), "\(path)/precision"))!,
            runtime: try nonEmpty(w.runtime, "\(path)/runtime"),
            computeUnit: w.computeUnit,
            miou: try w.miou.map { try percent($0, "\(path)/miou") },
            pixelAccuracy: try w.pixelAccuracy.map { try percent($0, "\(path)/pixel_accuracy") },
            classIou: classIou,
            agreementWithReference: try w.agreementWithReference.map { try percent($0, "\(path)/agreement_with_reference") },
            images: try int(w.images, "\(path)/images", min: 0),
            error: w.error
        )
    }
}
