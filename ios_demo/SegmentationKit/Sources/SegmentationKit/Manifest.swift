import Foundation

/// The bundle manifest (schema version 1), parsed and checked. Mirrors android_demo/core Manifest.kt:
/// the same checks, in the same order, with the same messages (each names its field by JSON path).

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

public struct Manifest {
    public static let fileName = "manifest.json"
    public static let schemaVersion = 1
    static let topLevelKeys: [String] = [
        "schema_version", "model_id", "created_by", "model", "input", "output", "labels", "palette",
        "preprocessing", "postprocessing", "artifacts", "golden", "thresholds", "parity",
    ]

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
    /// precision -> threshold name -> limit, in manifest order.
    public let thresholds: [String: [(String, Double)]]

    public func thresholds(for precision: Precision) -> [(String, Double)] { thresholds[precision.rawValue] ?? [] }

    /// Parse and check a manifest; `where` names it in error messages.
    public static func parse(_ text: String, where location: String = Manifest.fileName) throws -> Manifest {
        let root: JsonValue
        do {
            root = try Json.parse(text)
        } catch let e as JsonParseError {
            throw BundleError("\(location) is not valid JSON (\(e.message)); rebuild the bundle", isManifest: true)
        }
        do {
            return try ManifestReader().read(Node(root, ""))
        } catch let e as ManifestError {
            throw BundleError("\(location): \(e.path) \(e.what); rebuild the bundle with python -m espnet_mobile.convert", isManifest: true)
        }
    }
}

struct ManifestError: Error {
    let path: String
    let what: String
}

/// A JSON value with its path, so that every check can say where it failed.
struct Node {
    let value: JsonValue
    let path: String

    init(_ value: JsonValue, _ path: String) { self.value = value; self.path = path }

    private var shownPath: String { path.isEmpty ? "(top level)" : path }

    func fail(_ what: String) -> ManifestError { ManifestError(path: shownPath, what: what) }

    func obj() throws -> JsonObject {
        guard case .object(let o) = value else { throw fail("must be an object, got \(value.typeName)") }
        return o
    }

    private func child(_ key: String) -> String { path.isEmpty ? key : "\(path)/\(key)" }

    func field(_ key: String) throws -> Node {
        guard let v = try obj()[key] else { throw ManifestError(path: shownPath, what: "is missing the required field \"\(key)\"") }
        return Node(v, child(key))
    }

    func optField(_ key: String) throws -> Node? {
        guard let v = try obj()[key] else { return nil }
        if case .null = v { return nil }
        return Node(v, child(key))
    }

    func items() throws -> [Node] {
        guard case .array(let a) = value else { throw fail("must be an array, got \(value.typeName)") }
        return a.enumerated().map { Node($0.element, "\(path)/\($0.offset)") }
    }

    func string() throws -> String {
        guard case .string(let s) = value else { throw fail("must be a string, got \(value.typeName)") }
        return s
    }

    func nonEmptyString() throws -> String {
        let s = try string()
        if s.isEmpty { throw fail("must not be empty") }
        return s
    }

    func bool() throws -> Bool {
        guard case .bool(let b) = value else { throw fail("must be true or false, got \(value.typeName)") }
        return b
    }

    func number() throws -> Double {
        guard case .number(let n) = value else { throw fail("must be a number, got \(value.typeName)") }
        return n
    }

    func int(min: Int? = nil) throws -> Int {
        guard case .number(let n) = value else { throw fail("must be an integer, got \(value.typeName)") }
        if n != n.rounded() || n > Double(Int32.max) || n < Double(Int32.min) { throw fail("must be an integer, got \(n)") }
        let v = Int(n)
        if let m = min, v < m { throw fail("must be at least \(m), got \(v)") }
        return v
    }

    func int64(min: Int64? = nil) throws -> Int64 {
        guard case .number(let n) = value else { throw fail("must be an integer, got \(value.typeName)") }
        if n != n.rounded() || abs(n) > 9.007199254740992e15 { throw fail("must be an integer, got \(n)") }
        let v = Int64(n)
        if let m = min, v < m { throw fail("must be at least \(m), got \(v)") }
        return v
    }

    func oneOf(_ allowed: [String]) throws -> String {
        let s = try string()
        if !allowed.contains(s) { throw fail("must be one of \(allowed.joined(separator: ", ")), got \"\(s)\"") }
        return s
    }

    func intList(minValue: Int? = nil, size: Int? = nil) throws -> [Int] {
        let list = try items().map { try $0.int(min: minValue) }
        if let n = size, list.count != n { throw fail("must have \(n) entries, got \(list.count)") }
        return list
    }

    func sha256() throws -> String {
        let s = try string()
        let hex = s.unicodeScalars.allSatisfy { ("0"..."9").contains(Character($0)) || ("a"..."f").contains(Character($0)) }
        if s.unicodeScalars.count != 64 || !hex { throw fail("must be 64 lowercase hex digits (a sha256), got \"\(s)\"") }
        return s
    }
}

/// Formats lists like Kotlin's List.toString(): [1, 3, 8].
func listText<T>(_ list: [T]) -> String { "[" + list.map { "\($0)" }.joined(separator: ", ") + "]" }

private struct ManifestReader {
    func read(_ root: Node) throws -> Manifest {
        let top = try root.obj()
        let version = try root.field("schema_version").int()
        if version != Manifest.schemaVersion {
            throw try root.field("schema_version").fail(
                "is \(version) but this app reads version \(Manifest.schemaVersion); use the app and bundle from the same release")
        }
        let unknown = top.keys.filter { !Manifest.topLevelKeys.contains($0) }
        if !unknown.isEmpty { throw root.fail("has unknown fields \(unknown.map { "\"\($0)\"" }.joined(separator: ", "))") }
        for key in Manifest.topLevelKeys where key != "parity" { _ = try root.field(key) }

        let model = try root.field("model")
        let numClasses = try model.field("num_classes").int(min: 1)
        let input = try readInput(root.field("input"))
        let output = try readOutput(root.field("output"), numClasses)

        let labelsNode = try root.field("labels")
        let labels = try labelsNode.items().map { try $0.string() }
        if labels.isEmpty { throw labelsNode.fail("must not be empty") }
        if labels.count != numClasses { throw labelsNode.fail("has \(labels.count) names but model/num_classes is \(numClasses)") }

        let paletteNode = try root.field("palette")
        let palette: [Rgb] = try paletteNode.items().map { node in
            let c = try node.intList(minValue: 0, size: 3)
            if c.contains(where: { $0 > 255 }) { throw node.fail("colour components must be 0-255, got \(listText(c))") }
            return Rgb(r: c[0], g: c[1], b: c[2])
        }
        if palette.count < numClasses { throw paletteNode.fail("has \(palette.count) colours but there are \(numClasses) classes") }

        _ = try root.field("preprocessing").obj()
        _ = try root.field("postprocessing").obj()

        let artifacts = try root.field("artifacts").items().map { try readArtifact($0) }
        let golden = try root.field("golden")
        let goldenSource = try golden.field("source").string()
        let items = try golden.field("items").items().map { try readGolden($0, input, output, numClasses) }
        var seen = Set<String>(), repeated: [String] = []
        for item in items { if !seen.insert(item.name).inserted, !repeated.contains(item.name) { repeated.append(item.name) } }
        if !repeated.isEmpty { throw try golden.field("items").fail("repeats the names \(repeated.joined(separator: ", "))") }

        return Manifest(
            schemaVersion: version,
            modelId: try root.field("model_id").nonEmptyString(),
            createdBy: try root.field("created_by").string(),
            arch: try model.field("arch").oneOf(["espnet", "espnet_c", "espnetv2"]),
            dataset: try model.field("dataset").string(),
            numClasses: numClasses,
            input: input,
            output: output,
            labels: labels,
            palette: palette,
            artifacts: artifacts,
            goldenSource: goldenSource,
            golden: items,
            thresholds: try readThresholds(root.field("thresholds"))
        )
    }

    func readInput(_ node: Node) throws -> InputSpec {
        let shapeNode = try node.field("shape")
        let shape = try shapeNode.intList(minValue: 1, size: 4)
        let layout = TensorLayout(rawValue: try node.field("layout").oneOf(["NCHW", "NHWC"]))!
        if shape[0] != 1 { throw shapeNode.fail("must have batch size 1, got \(shape[0])") }
        let channels = layout == .NCHW ? shape[1] : shape[3]
        if channels != 3 { throw shapeNode.fail("must have 3 colour channels for layout \(layout.rawValue), got \(listText(shape))") }
        let range = try node.field("value_range")
        let bounds = try range.items().map { try $0.number() }
        if bounds.count != 2 || bounds[0] >= bounds[1] { throw range.fail("must be [low, high] with low < high, got \(listText(bounds))") }
        _ = try node.field("normalization").oneOf(["baked_in"])
        return InputSpec(
            name: try node.field("name").string(),
            shape: shape,
            layout: layout,
            dtype: try node.field("dtype").oneOf(["float32", "uint8"]),
            colorOrder: try node.field("color_order").oneOf(["RGB"]),
            valueMin: bounds[0],
            valueMax: bounds[1]
        )
    }

    func readOutput(_ node: Node, _ numClasses: Int) throws -> OutputSpec {
        let dtype = try node.field("dtype").oneOf(["float32", "int32"])
        let shapeNode = try node.field("shape")
        let shape = try shapeNode.intList(minValue: 1)
        if dtype == "float32" {
            if shape.count != 4 || shape[0] != 1 { throw shapeNode.fail("must be [1, classes, height, width] for float32 logits, got \(listText(shape))") }
            if shape[1] != numClasses { throw shapeNode.fail("has \(shape[1]) channels but model/num_classes is \(numClasses)") }
        } else if shape.count != 3 || shape[0] != 1 {
            throw shapeNode.fail("must be [1, height, width] for an int32 mask, got \(listText(shape))")
        }
        _ = try node.field("meaning").string()
        return OutputSpec(
            name: try node.field("name").string(),
            shape: shape,
            layout: TensorLayout(rawValue: try node.field("layout").oneOf(["NCHW"]))!,
            dtype: dtype
        )
    }

    func readArtifact(_ node: Node) throws -> Artifact {
        let fileNode = try node.field("file")
        let file = try fileNode.nonEmptyString()
        if file.contains("/") || file.contains("\\") { throw fileNode.fail("must be a bare file name, got \"\(file)\"") }
        _ = try node.field("tool_versions").obj()
        _ = try node.field("cache_key").string()
        return Artifact(
            file: file,
            target: Target(rawValue: try node.field("target").oneOf(Target.allCases.map(\.rawValue)))!,
            delegate: try node.field("delegate").string(),
            precision: Precision(rawValue: try node.field("precision").oneOf(Precision.allCases.map(\.rawValue)))!,
            computeUnitNames: try node.field("compute_units").items().map { try $0.string() },
            sha256: try node.field("sha256").sha256(),
            bytes: try node.field("bytes").int64(min: 1),
            executableHere: try node.field("executable_here").bool(),
            notExecutableReason: try node.optField("not_executable_reason")?.string(),
            inputLayout: TensorLayout(rawValue: try node.field("input_layout").oneOf(["NCHW", "NHWC"]))!
        )
    }

    func readFile(_ node: Node) throws -> FileRef {
        FileRef(file: try node.field("file").nonEmptyString(), sha256: try node.field("sha256").sha256())
    }

    func readTensor(_ node: Node, _ dtypes: [String]) throws -> TensorRef {
        _ = try node.optField("byte_order")?.oneOf(["little"])
        return TensorRef(
            file: try node.field("file").nonEmptyString(),
            sha256: try node.field("sha256").sha256(),
            shape: try node.field("shape").intList(minValue: 1),
            dtype: try node.field("dtype").oneOf(dtypes)
        )
    }

    func readGolden(_ node: Node, _ input: InputSpec, _ output: OutputSpec, _ numClasses: Int) throws -> GoldenItem {
        let size = try node.field("image_size").intList(minValue: 1, size: 2)

        let inputNode = try node.field("input")
        let inputRef = try readTensor(inputNode, ["float32"])
        let wantInput = [1, 3, input.height, input.width]
        if inputRef.shape != wantInput {
            throw try inputNode.field("shape").fail("must be \(listText(wantInput)) (NCHW, like the model input), got \(listText(inputRef.shape))")
        }

        let logitsNode = try node.field("logits")
        let logits = try readTensor(logitsNode, ["float16", "float32"])
        if logits.shape.count != 4 || logits.shape[0] != 1 || logits.shape[1] != numClasses {
            throw try logitsNode.field("shape").fail("must be [1, \(numClasses), height, width], got \(listText(logits.shape))")
        }
        if !output.isMask && logits.shape != output.shape {
            throw try logitsNode.field("shape").fail("must equal output/shape \(listText(output.shape)), got \(listText(logits.shape))")
        }

        let maskNode = try node.field("mask")
        let mask = try readTensor(maskNode, ["uint8"])
        let wantMask = [1, logits.shape[2], logits.shape[3]]
        if mask.shape != wantMask {
            throw try maskNode.field("shape").fail("must be \(listText(wantMask)) (the logits' height and width), got \(listText(mask.shape))")
        }
        if numClasses > 256 { throw maskNode.fail("cannot hold \(numClasses) classes in uint8") }

        return GoldenItem(
            name: try node.field("name").nonEmptyString(),
            image: try readFile(node.field("image")),
            imageHeight: size[0],
            imageWidth: size[1],
            input: inputRef,
            logits: logits,
            mask: mask,
            fullMask: try node.optField("full_mask").map { try readFile($0) }
        )
    }

    func readThresholds(_ node: Node) throws -> [String: [(String, Double)]] {
        var out: [String: [(String, Double)]] = [:]
        let o = try node.obj()
        for key in o.keys {
            guard case .object(let limitsObj) = o[key]! else { continue } // e.g. a "description" string
            let child = Node(.object(limitsObj), "\(node.path)/\(key)")
            out[key] = try limitsObj.keys.map { ($0, try child.field($0).number()) }
        }
        return out
    }
}
