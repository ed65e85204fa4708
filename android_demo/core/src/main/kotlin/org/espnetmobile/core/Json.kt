package org.espnetmobile.core

/**
 * A small JSON reader (RFC 8259) for the bundle manifest, so the core needs no library.
 *
 * Numbers are kept as [Double] (every number in a manifest fits one exactly);
 * objects keep their key order. Errors name the line and column.
 */
sealed class JsonValue {
    object Null : JsonValue() {
        override fun toString() = "null"
    }

    data class Bool(val value: Boolean) : JsonValue() {
        override fun toString() = value.toString()
    }

    data class Num(val value: Double) : JsonValue() {
        val isInteger: Boolean get() = value == Math.rint(value) && !value.isInfinite()
        override fun toString() = if (isInteger && kotlin.math.abs(value) < 1e15) value.toLong().toString() else value.toString()
    }

    data class Str(val value: String) : JsonValue() {
        override fun toString() = Json.quote(value)
    }

    data class Arr(val items: List<JsonValue>) : JsonValue() {
        override fun toString() = items.joinToString(",", "[", "]")
    }

    data class Obj(val fields: LinkedHashMap<String, JsonValue>) : JsonValue() {
        operator fun get(key: String): JsonValue? = fields[key]
        override fun toString() = fields.entries.joinToString(",", "{", "}") { "${Json.quote(it.key)}:${it.value}" }
    }

    /** Name of the JSON type, for error messages. */
    val typeName: String
        get() = when (this) {
            is Null -> "null"
            is Bool -> "a boolean"
            is Num -> "a number"
            is Str -> "a string"
            is Arr -> "an array"
            is Obj -> "an object"
        }
}

class JsonParseException(message: String) : Exception(message)

object Json {
    /** Parse one JSON document; anything but whitespace after it is an error. */
    fun parse(text: String): JsonValue {
        val reader = Reader(text)
        reader.skipWhitespace()
        val value = reader.readValue(depth = 0)
        reader.skipWhitespace()
        if (!reader.atEnd()) reader.fail("unexpected '${reader.peek()}' after the end of the document")
        return value
    }

    /** [s] as a JSON string literal; toString() of any [JsonValue] is valid JSON. */
    fun quote(s: String): String = buildString {
        append('"')
        for (c in s) {
            when {
                c == '"' -> append("\\\"")
                c == '\\' -> append("\\\\")
                c < ' ' -> append(String.format(java.util.Locale.ROOT, "\\u%04x", c.code))
                else -> append(c)
            }
        }
        append('"')
    }

    private const val MAX_DEPTH = 64

    private class Reader(val text: String) {
        var pos = 0

        fun atEnd() = pos >= text.length
        fun peek(): Char = text[pos]

        fun fail(what: String): Nothing {
            var line = 1
            var col = 1
            for (i in 0 until minOf(pos, text.length)) {
                if (text[i] == '\n') {
                    line++
                    col = 1
                } else {
                    col++
                }
            }
            throw JsonParseException("invalid JSON at line $line, column $col: $what")
        }

        fun skipWhitespace() {
            while (pos < text.length && (text[pos] == ' ' || text[pos] == '\t' || text[pos] == '\n' || text[pos] == '\r')) pos++
        }

        fun expect(c: Char) {
            if (atEnd()) fail("expected '$c' but the text ended")
            if (text[pos] != c) fail("expected '$c' but found '${text[pos]}'")
            pos++
        }

        fun readValue(depth: Int): JsonValue {
            if (depth > MAX_DEPTH) fail("nesting deeper than $MAX_DEPTH levels")
            if (atEnd()) fail("expected a value but the text ended")
            return when (val c = text[pos]) {
                '{' -> readObject(depth)
                '[' -> readArray(depth)
                '"' -> JsonValue.Str(readString())
                't' -> readWord("true", JsonValue.Bool(true))
                'f' -> readWord("false", JsonValue.Bool(false))
                'n' -> readWord("null", JsonValue.Null)
                else -> if (c == '-' || c in '0'..'9') readNumber() else fail("unexpected '$c'")
            }
        }

        fun readWord(word: String, value: JsonValue): JsonValue {
            if (!text.startsWith(word, pos)) fail("unexpected '${text[pos]}'")
            pos += word.length
            return value
        }

        fun readObject(depth: Int): JsonValue {
            expect('{')
            val fields = LinkedHashMap<String, JsonValue>()
            skipWhitespace()
            if (!atEnd() && text[pos] == '}') {
                pos++
                return JsonValue.Obj(fields)
            }
            while (true) {
                skipWhitespace()
                if (atEnd() || text[pos] != '"') fail("expected a quoted key")
                val keyStart = pos
                val key = readString()
                if (fields.containsKey(key)) {
                    pos = keyStart
                    fail("duplicate key \"$key\"")
                }
                skipWhitespace()
                expect(':')
                skipWhitespace()
                fields[key] = readValue(depth + 1)
                skipWhitespace()
                if (atEnd()) fail("expected ',' or '}' but the text ended")
                when (text[pos]) {
                    ',' -> pos++
                    '}' -> {
                        pos++
                        return JsonValue.Obj(fields)
                    }
                    else -> fail("expected ',' or '}' but found '${text[pos]}'")
                }
            }
        }

        fun readArray(depth: Int): JsonValue {
            expect('[')
            val items = ArrayList<JsonValue>()
            skipWhitespace()
            if (!atEnd() && text[pos] == ']') {
                pos++
                return JsonValue.Arr(items)
            }
            while (true) {
                skipWhitespace()
                items.add(readValue(depth + 1))
                skipWhitespace()
                if (atEnd()) fail("expected ',' or ']' but the text ended")
                when (text[pos]) {
                    ',' -> pos++
                    ']' -> {
                        pos++
                        return JsonValue.Arr(items)
                    }
                    else -> fail("expected ',' or ']' but found '${text[pos]}'")
                }
            }
        }

        fun readString(): String {
            expect('"')
            val out = StringBuilder()
            while (true) {
                if (atEnd()) fail("unterminated string")
                val c = text[pos++]
                when {
                    c == '"' -> return out.toString()
                    c == '\\' -> {
                        if (atEnd()) fail("unterminated escape")
                        when (val e = text[pos++]) {
                            '"' -> out.append('"')
                            '\\' -> out.append('\\')
                            '/' -> out.append('/')
                            'b' -> out.append('\b')
                            'f' -> out.append('\u000C')
                            'n' -> out.append('\n')
                            'r' -> out.append('\r')
                            't' -> out.append('\t')
                            'u' -> {
                                if (pos + 4 > text.length) fail("short \\u escape")
                                val hex = text.substring(pos, pos + 4)
                                val code = hex.toIntOrNull(16) ?: fail("bad \\u escape \"$hex\"")
                                out.append(code.toChar())
                                pos += 4
                            }
                            else -> {
                                pos--
                                fail("unknown escape '\\$e'")
                            }
                        }
                    }
                    c < ' ' -> {
                        pos--
                        fail("control character in a string")
                    }
                    else -> out.append(c)
                }
            }
        }

        fun readNumber(): JsonValue {
            val start = pos
            if (text[pos] == '-') pos++
            if (atEnd()) fail("incomplete number")
            if (text[pos] == '0') {
                pos++
            } else if (text[pos] in '1'..'9') {
                while (!atEnd() && text[pos] in '0'..'9') pos++
            } else {
                fail("expected a digit")
            }
            if (!atEnd() && text[pos] == '.') {
                pos++
                if (atEnd() || text[pos] !in '0'..'9') fail("expected a digit after '.'")
                while (!atEnd() && text[pos] in '0'..'9') pos++
            }
            if (!atEnd() && (text[pos] == 'e' || text[pos] == 'E')) {
                pos++
                if (!atEnd() && (text[pos] == '+' || text[pos] == '-')) pos++
                if (atEnd() || text[pos] !in '0'..'9') fail("expected a digit in the exponent")
                while (!atEnd() && text[pos] in '0'..'9') pos++
            }
            return JsonValue.Num(text.substring(start, pos).toDouble())
        }
    }
}
