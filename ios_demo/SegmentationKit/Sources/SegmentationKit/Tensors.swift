#if canImport(CryptoKit)
import CryptoKit
#endif
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
        var digest = Sha256Hasher()
        digest.update(data)
        return digest.finalizeHex()
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
        var digest = Sha256Hasher()
        for parts in files {
            let rel = parts.joined(separator: "/")
            digest.update(Data(rel.utf8))
            let fileHex = hex(try Data(contentsOf: url.appendingPathComponent(rel)))
            digest.update(Data(fileHex.utf8))
        }
        return digest.finalizeHex()
    }
}

/// SHA-256 through CryptoKit where it exists (Apple platforms), else through [PortableSHA256].
struct Sha256Hasher {
    #if canImport(CryptoKit)
    private var state = SHA256()
    mutating func update(_ data: Data) { state.update(data: data) }
    mutating func finalizeHex() -> String { hexText(Array(state.finalize())) }
    #else
    private var state = PortableSHA256()
    mutating func update(_ data: Data) { state.update(data) }
    mutating func finalizeHex() -> String { hexText(state.finalize()) }
    #endif
}

func hexText(_ bytes: [UInt8]) -> String {
    let digits = Array("0123456789abcdef")
    var out = ""
    out.reserveCapacity(bytes.count * 2)
    for b in bytes {
        out.append(digits[Int(b >> 4)])
        out.append(digits[Int(b & 0x0F)])
    }
    return out
}

/// SHA-256 (FIPS 180-4) in plain Swift, for platforms without CryptoKit (Linux). Compiled everywhere so
/// that the tests compare it with CryptoKit on Apple platforms and with known digests everywhere.
struct PortableSHA256 {
    private static let k: [UInt32] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
        0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
        0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
        0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
        0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
        0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
        0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
    ]

    private var h: [UInt32] = [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19]
    private var pending: [UInt8] = []
    private var length: UInt64 = 0

    mutating func update(_ data: Data) {
        length = length &+ UInt64(data.count)
        pending.append(contentsOf: data)
        var offset = 0
        while pending.count - offset >= 64 {
            compress(pending, at: offset)
            offset += 64
        }
        if offset > 0 { pending.removeFirst(offset) }
    }

    /// The digest; the hasher is spent afterwards.
    mutating func finalize() -> [UInt8] {
        var tail = pending
        tail.append(0x80)
        while tail.count % 64 != 56 { tail.append(0) }
        let bits = length &* 8
        for shift in stride(from: 56, through: 0, by: -8) { tail.append(UInt8(truncatingIfNeeded: bits >> UInt64(shift))) }
        var offset = 0
        while offset < tail.count {
            compress(tail, at: offset)
            offset += 64
        }
        pending = []
        var out: [UInt8] = []
        for word in h {
            out.append(UInt8(truncatingIfNeeded: word >> 24))
            out.append(UInt8(truncatingIfNeeded: word >> 16))
            out.append(UInt8(truncatingIfNeeded: word >> 8))
            out.append(UInt8(truncatingIfNeeded: word))
        }
        return out
    }

    private static func rotr(_ x: UInt32, _ n: UInt32) -> UInt32 { (x >> n) | (x << (32 - n)) }

    private mutating func compress(_ bytes: [UInt8], at offset: Int) {
        var w = [UInt32](repeating: 0, count: 64)
        for i in 0..<16 {
            let j = offset + 4 * i
            let b0 = UInt32(bytes[j]) << 24
            let b1 = UInt32(bytes[j + 1]) << 16
            let b2 = UInt32(bytes[j + 2]) << 8
            let b3 = UInt32(bytes[j + 3])
            w[i] = b0 | b1 | b2 | b3
        }
        for i in 16..<64 {
            let s0 = PortableSHA256.rotr(w[i - 15], 7) ^ PortableSHA256.rotr(w[i - 15], 18) ^ (w[i - 15] >> 3)
            let s1 = PortableSHA256.rotr(w[i - 2], 17) ^ PortableSHA256.rotr(w[i - 2], 19) ^ (w[i - 2] >> 10)
            w[i] = w[i - 16] &+ s0 &+ w[i - 7] &+ s1
        }
        var a = h[0], b = h[1], c = h[2], d = h[3]
        var e = h[4], f = h[5], g = h[6], hh = h[7]
        for i in 0..<64 {
            let bigS1 = PortableSHA256.rotr(e, 6) ^ PortableSHA256.rotr(e, 11) ^ PortableSHA256.rotr(e, 25)
            let choose = (e & f) ^ (~e & g)
            let t1 = hh &+ bigS1 &+ choose &+ PortableSHA256.k[i] &+ w[i]
            let bigS0 = PortableSHA256.rotr(a, 2) ^ PortableSHA256.rotr(a, 13) ^ PortableSHA256.rotr(a, 22)
            let majority = (a & b) ^ (a & c) ^ (b & c)
            let t2 = bigS0 &+ majority
            hh = g
            g = f
            f = e
            e = d &+ t1
            d = c
            c = b
            b = a
            a = t1 &+ t2
        }
        h[0] = h[0] &+ a
        h[1] = h[1] &+ b
        h[2] = h[2] &+ c
        h[3] = h[3] &+ d
        h[4] = h[4] &+ e
        h[5] = h[5] &+ f
        h[6] = h[6] &+ g
        h[7] = h[7] &+ hh
    }
}
