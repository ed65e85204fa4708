import Foundation

/// A parsed manifest plus access to the files it lists, each checked against its sha256. Mirrors Bundle.kt.
/// On iOS the bundle is a folder resource of the app (`Bundle.main.url(forResource: "bundle", withExtension: nil)`).
public struct SegmentationBundle {
    public let manifest: Manifest
    public let root: URL

    public var description: String { root.path }

    /// Open the folder `root` (manifest.json at its top).
    public static func open(_ root: URL) throws -> SegmentationBundle {
        let url = root.appendingPathComponent(Manifest.fileName)
        guard let data = try? Data(contentsOf: url) else {
            throw BundleError("\(root.path) is not a bundle: no \(Manifest.fileName); " +
                "unzip the file made by python -m espnet_mobile.package <bundle> --zip there")
        }
        let text = String(decoding: data, as: UTF8.self)
        return SegmentationBundle(manifest: try Manifest.parse(text, where: "\(root.path)/\(Manifest.fileName)"), root: root)
    }

    public func url(_ file: String) -> URL { root.appendingPathComponent(file) }

    /// The bytes of `file`, after checking them against `sha256`.
    public func readVerified(_ file: String, sha256: String) throws -> Data {
        let data: Data
        do {
            data = try Data(contentsOf: url(file))
        } catch {
            throw BundleError("\(description): \(file) is listed in the manifest but cannot be read (\(error.localizedDescription)); copy the whole bundle again")
        }
        let actual = Sha256.hex(data)
        if actual != sha256 {
            throw BundleError("\(description): \(file) was altered (sha256 \(actual.prefix(12))..., manifest says \(sha256.prefix(12))...); copy the bundle again")
        }
        return data
    }

    /// An artifact's location after checking it (a folder for .mlpackage) against its sha256.
    public func verifiedArtifact(_ artifact: Artifact) throws -> URL {
        let location = url(artifact.file)
        let actual: String
        do {
            actual = try Sha256.hex(path: location)
        } catch {
            throw BundleError("\(description): artifact \(artifact.file) is listed in the manifest but missing; copy the whole bundle again")
        }
        if actual != artifact.sha256 {
            throw BundleError("\(description): artifact \(artifact.file) was altered (sha256 \(actual.prefix(12))..., manifest says \(artifact.sha256.prefix(12))...)")
        }
        return location
    }

    private func tensorData(_ ref: TensorRef) throws -> Data {
        let data = try readVerified(ref.file, sha256: ref.sha256)
        let expected = ref.count * RawTensors.itemSize(ref.dtype)
        if data.count != expected {
            throw BundleError("\(description): \(ref.file) has \(data.count) bytes, expected \(expected) for \(ref.dtype) \(listText(ref.shape))")
        }
        return data
    }

    /// The exact float32 (1, 3, H, W) input of a golden item.
    public func goldenInput(_ item: GoldenItem) throws -> [Float] { RawTensors.float32(try tensorData(item.input)) }

    /// The reference logits (1, C, H, W) of a golden item, widened to Float.
    public func goldenLogits(_ item: GoldenItem) throws -> [Float] {
        RawTensors.floats(try tensorData(item.logits), dtype: item.logits.dtype)
    }

    /// The reference argmax mask of a golden item.
    public func goldenMask(_ item: GoldenItem) throws -> Mask {
        Mask(width: item.mask.shape[2], height: item.mask.shape[1], classes: RawTensors.uint8(try tensorData(item.mask)))
    }
}
