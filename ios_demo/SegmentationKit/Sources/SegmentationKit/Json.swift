import Foundation

/// A small JSON reader (RFC 8259) for the bundle manifest; mirrors android_demo/core Json.kt.
/// Numbers are kept as Double; objects keep their key order; errors name the line and column.
public indirect enum JsonValue: Equatable, CustomStringConvertible {
    case null
    case bool(Bool)
    case number(Double)
    case string(String)
    case array([JsonValue])
    case object(JsonObject)

    /// Name of the JSON type, for error messages.
    public var typeName: String {
        switch self {
        case .null: return "null"
        case .bool: return "a boolean"
        case .number: return "a number"
        case .string: return "a string"
        case .array: return "an array"
        case .object: return "an object"
        }
    }

    public var description: String {
        switch self {
        case .null: return "null"
        case .bool(let b): return b ? "true" : "false"
        case .number(let n):
            if n == n.rounded() && abs(n) < 1e15 { return String(Int64(n)) }
            return "\(n)"
        case .string(let s): return Json.quote(s)
        case .array(let items): return "[" + items.map(\.description).joined(separator: ",") + "]"
        case .object(let o): return "{" + o.keys.map { "\(Json.quote($0)):\(o.values[$0]!)" }.joined(separator: ",") + "}"
        }
    }
}

/// A JSON object with its key order.
public struct JsonObject: Equatable {
    public private(set) var keys: [String] = []
    public private(set) var values: [String: JsonValue] = [:]

    public init() {}

    public subscript(key: String) -> JsonValue? {
        get { values[key] }
        set {
            if let v = newValue {
                if values[key] == nil { keys.append(key) }
                values[key] = v
            } else if values.removeValue(forKey: key) != nil {
                keys.removeAll { $0 == key }
            }
        }
    }
}

public struct JsonParseError: Error, CustomStringConvertible {
    public let message: String
    public var description: String { message }
}

public enum Json {
    private static let maxDepth = 64

    /// Parse one JSON document; anything but whitespace after it is an error.
    public static func parse(_ text: String) throws -> JsonValue {
        var reader = Reader(Array(text.unicodeScalars))
        reader.skipWhitespace()
        let value = try reader.readValue(depth: 0)
        reader.skipWhitespace()
        if !reader.atEnd { throw reader.fail("unexpected '\(reader.peek)' after the end of the document") }
        return value
    }

    /// `s` as a JSON string literal.
    public static func quote(_ s: String) -> String {
        var out = "\""
        for c in s.unicodeScalars {
            switch c {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            default:
                if c.value < 0x20 { out += String(format: "\\u%04x", c.value) } else { out.unicodeScalars.append(c) }
            }
        }
        return out + "\""
    }

    private struct Reader {
        let text: [Unicode.Scalar]
        var pos = 0

        init(_ text: [Unicode.Scalar]) { self.text = text }

        var atEnd: Bool { pos >= text.count }
        var peek: Unicode.Scalar { text[pos] }

        func fail(_ what: String) -> JsonParseError {
            var line = 1, col = 1
            for i in 0..<min(pos, text.count) {
                if text[i] == "\n" { line += 1; col = 1 } else { col += 1 }
            }
            return JsonParseError(message: "invalid JSON at line \(line), column \(col): \(what)")
        }

        mutating func skipWhitespace() {
            while pos < text.count, [" ", "\t", "\n", "\r"].contains(text[pos]) { pos += 1 }
        }

        mutating func expect(_ c: Unicode.Scalar) throws {
            if atEnd { throw fail("expected '\(c)' but the text ended") }
            if text[pos] != c { throw fail("expected '\(c)' but found '\(text[pos])'") }
            pos += 1
        }

        mutating func readValue(depth: Int) throws -> JsonValue {
            if depth > Json.maxDepth { throw fail("nesting deeper than \(Json.maxDepth) levels") }
            if atEnd { throw fail("expected a value but the text ended") }
            let c = text[pos]
            switch c {
            case "{": return try readObject(depth: depth)
            case "[": return try readArray(depth: depth)
            case "\"": return .string(try readString())
            case "t": return try readWord("true", .bool(true))
            case "f": return try readWord("false", .bool(false))
            case "n": return try readWord("null", .null)
            default:
                if c == "-" || isDigit(c) { return try readNumber() }
                throw fail("unexpected '\(c)'")
            }
        }

        mutating func readWord(_ word: String, _ value: JsonValue) throws -> JsonValue {
            let scalars = Array(word.unicodeScalars)
            if pos + scalars.count > text.count || Array(text[pos..<pos + scalars.count]) != scalars {
                throw fail("unexpected '\(text[pos])'")
            }
            pos += scalars.count
            return value
        }

        mutating func readObject(depth: Int) throws -> JsonValue {
            try expect("{")
            var fields = JsonObject()
            skipWhitespace()
            if !atEnd && text[pos] == "}" { pos += 1; return .object(fields) }
            while true {
                skipWhitespace()
                if atEnd || text[pos] != "\"" { throw fail("expected a quoted key") }
                let keyStart = pos
                let key = try readString()
                if fields[key] != nil { pos = keyStart; throw fail("duplicate key \"\(key)\"") }
                skipWhitespace()
                try expect(":")
                skipWhitespace()
                fields[key] = try readValue(depth: depth + 1)
                skipWhitespace()
                if atEnd { throw fail("expected ',' or '}' but the text ended") }
                switch text[pos] {
                case ",": pos += 1
                case "}": pos += 1; return .object(fields)
                default: throw fail("expected ',' or '}' but found '\(text[pos])'")
                }
            }
        }

        mutating func readArray(depth: Int) throws -> JsonValue {
            try expect("[")
            var items: [JsonValue] = []
            skipWhitespace()
            if !atEnd && text[pos] == "]" { pos += 1; return .array(items) }
            while true {
                skipWhitespace()
                items.append(try readValue(depth: depth + 1))
                skipWhitespace()
                if atEnd { throw fail("expected ',' or ']' but the text ended") }
                switch text[pos] {
                case ",": pos += 1
                case "]": pos += 1; return .array(items)
                default: throw fail("expected ',' or ']' but found '\(text[pos])'")
                }
            }
        }

        mutating func readHex4() throws -> UInt32 {
            if pos + 4 > text.count { throw fail("short \\u escape") }
            let hex = String(String.UnicodeScalarView(text[pos..<pos + 4]))
            guard let code = UInt32(hex, radix: 16) else { throw fail("bad \\u escape \"\(hex)\"") }
            pos += 4
            return code
        }

        mutating func readString() throws -> String {
            try expect("\"")
            var out = String.UnicodeScalarView()
            while true {
                if atEnd { throw fail("unterminated string") }
                let c = text[pos]
                pos += 1
                if c == "\"" { return String(out) }
                if c == "\\" {
                    if atEnd { throw fail("unterminated escape") }
                    let e = text[pos]
                    pos += 1
                    switch e {
                    case "\"": out.append("\"")
                    case "\\": out.append("\\")
                    case "/": out.append("/")
                    case "b": out.append(Unicode.Scalar(UInt8(8)))
                    case "f": out.append(Unicode.Scalar(UInt8(12)))
                    case "n": out.append("\n")
                    case "r": out.append("\r")
                    case "t": out.append("\t")
                    case "u":
                        var code = try readHex4()
                        // A surrogate pair arrives as two escapes.
                        if (0xD800...0xDBFF).contains(code), pos + 1 < text.count, text[pos] == "\\", text[pos + 1] == "u" {
                            pos += 2
                            let low = try readHex4()
                            code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                        }
                        out.append(Unicode.Scalar(code) ?? "\u{FFFD}")
                    default:
                        pos -= 1
                        throw fail("unknown escape '\\\(e)'")
                    }
                } else if c.value < 0x20 {
                    pos -= 1
                    throw fail("control character in a string")
                } else {
                    out.append(c)
                }
            }
        }

        func isDigit(_ c: Unicode.Scalar) -> Bool { c.value >= 0x30 && c.value <= 0x39 }

        mutating func skipDigits() {
            while !atEnd && isDigit(text[pos]) { pos += 1 }
        }

        mutating func readNumber() throws -> JsonValue {
            let start = pos
            if text[pos] == "-" { pos += 1 }
            if atEnd { throw fail("incomplete number") }
            if text[pos] == "0" {
                pos += 1
            } else if isDigit(text[pos]) && text[pos] != "0" {
                skipDigits()
            } else {
                throw fail("expected a digit")
            }
            if !atEnd && text[pos] == "." {
                pos += 1
                if atEnd || !isDigit(text[pos]) { throw fail("expected a digit after '.'") }
                skipDigits()
            }
            if !atEnd && (text[pos] == "e" || text[pos] == "E") {
                pos += 1
                if !atEnd && (text[pos] == "+" || text[pos] == "-") { pos += 1 }
                if atEnd || !isDigit(text[pos]) { throw fail("expected a digit in the exponent") }
                skipDigits()
            }
            let literal = String(String.UnicodeScalarView(text[start..<pos]))
            return .number(Double(literal)!)
        }
    }
}
