import CryptoKit
import Foundation

/// IEEE 754 half precision decoded by hand (Swift's Float16 is missing on Intel Macs). Mirrors Tensors.kt.
public enum Half {
    private static let subnormalStep: Float = 5.9604645e-8 // 2^-24
    private static let minNormal: Float = 6.1035156e-5 // 2^-14

    /// The float value of 16 bits. Exact: every half is a float.
    public static func toFloat(_ bits: UInt16) -> Float {
        let sign = UInt32(bits >> 15) & 0x1
        let exponent = UInt32(bits >> 10) & 0x1F
        let fraction = UInt32(bits) & 0x3FF
        let signBit = sign << 31
        switch exponent {
        case 0:
            if fraction == 0 { return Float(bitPattern: signBit) }
            let magnitude = Float(fraction) * subnormalStep
            return sign == 1 ? -magnitude : magnitude
        case 0x1F:
            return Float(bitPattern: signBit | 0x7F80_0000 | (fraction << 13))
        default:
            return Float(bitPattern: signBit | ((exponent + 112) << 23) | (fraction << 13)) // rebias 15 -> 127
        }
    }

    /// Half the spacing between `value` (a half-precision number) and the next half away from zero.
    public static func halfUlp(_ value: Float) -> Float {
        let a = abs(value)
        if a.isNaN || a.isInfinite { return .infinity }
        if a < minNormal { return subnormalStep / 2 }
        // A half in [2^e, 2^(e+1)) has 10 fraction bits: spacing 2^(e-10), half of it 2^(e-11).
        return Float(sign: .plus, exponent: Int(a.exponent) - 11, significand: 1)
    }
}

/// Raw little-endian tensors as the bundle stores them.
public enum RawTensors {
    public static func itemSize(_ dtype: String) -> Int {
        switch dtype {
        case "float32", "int32": return 4
        case "float16": return 2
        case "uint8": return 1
        default: preconditionFailure("unknown dtype \(dtype)")
        }
    }

    private static func u32(_ b: [UInt8], _ o: Int) -> UInt32 {
        UInt32(b[o]) | (UInt32(b[o + 1]) << 8) | (UInt32(b[o + 2]) << 16) | (UInt32(b[o + 3]) << 24)
    }

    public static func float32(_ data: Data) -> [Float] {
        precondition(data.count % 4 == 0, "float32 data must be a multiple of 4 bytes, got \(data.count)")
        let b = [UInt8](data)
        return (0..<(b.count / 4)).map { Float(bitPattern: u32(b, 4 * $0)) }
    }

    public static func float16(_ data: Data) -> [Float] {
        precondition(data.count % 2 == 0, "float16 data must be a multiple of 2 bytes, got \(data.count)")
        let b = [UInt8](data)
        return (0..<(b.count / 2)).map { Half.toFloat(UInt16(b[2 * $0]) | (UInt16(b[2 * $0 + 1]) << 8)) }
    }

    public static func int32(_ data: Data) -> [Int] {
        precondition(data.count % 4 == 0, "int32 data must be a multiple of 4 bytes, got \(data.count)")
        let b = [UInt8](data)
        return (0..<(b.count / 4)).map { Int(Int32(bitPattern: u32(b, 4 * $0))) }
    }

    public static func uint8(_ data: Data) -> [Int] { data.map { Int($0) } }

    public static func floats(_ data: Data, dtype: String) -> [Float] {
        switch dtype {
        case "float32": return float32(data)
        case "float16": return float16(data)
        default: preconditionFailure("expected float32 or float16 data, got \(dtype)")
        }
    }
}

/// Moving between NCHW and NHWC for a batch of one.
public enum Layouts {
    public static func nchwToNhwc(_ x: [Float], channels: Int, height: Int, width: Int) -> [Float] {
        precondition(x.count == channels * height * width)
        var out = [Float](repeating: 0, count: x.count)
        let plane = height * width
        for c in 0..<channels { for p in 0..<plane { out[p * channels + c] = x[c * plane + p] } }
        return out
    }

    public static func nhwcToNchw(_ x: [Float], channels: Int, height: Int, width: Int) -> [Float] {
        precondition(x.count == channels * height * width)
        var out = [Float](repeating: 0, count: x.count)
        let plane = height * width
        for p in 0..<plane { for c in 0..<channels { out[c * plane + p] = x[p * channels + c] } }
        return out
    }
}

public enum Sha256 {
    public static func hex(_ data: Data) -> String {
        SHA256.hash(data: data).map { String(format: "%02x", $0) }.joined()
    }

    /// sha256 of a file, or of a folder (an .mlpackage) as `espnet_mobile.bundle.sha256_path` computes it:
    /// over the folder's files sorted by path components, each contributing its relative path and the
    /// hex sha256 of its bytes.
    public static func hex(path url: URL) throws -> String {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: url.path, isDirectory: &isDir) else {
            throw CocoaError(.fileNoSuchFile, userInfo: [NSFilePathErrorKey: url.path])
        }
        if !isDir.boolValue { return hex(try Data(contentsOf: url)) }
        let base = url.standardizedFileURL.pathComponents
        var files: [[String]] = []
        if let walker = FileManager.default.enumerator(at: url, includingPropertiesForKeys: [.isRegularFileKey]) {
            for case let file as URL in walker where (try? file.resourceValues(forKeys: [.isRegularFileKey]).isRegularFile) == true {
                files.append(Array(file.standardizedFileURL.pathComponents.dropFirst(base.count)))
            }
        }
        files.sort { $0.lexicographicallyPrecedes($1) }
        var digest = SHA256()
        for parts in files {
            let rel = parts.joined(separator: "/")
            digest.update(data: Data(rel.utf8))
            let fileHex = hex(try Data(contentsOf: url.appendingPathComponent(rel)))
            digest.update(data: Data(fileHex.utf8))
        }
        return digest.finalize().map { String(format: "%02x", $0) }.joined()
    }
}
