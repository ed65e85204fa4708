package org.espnetmobile.core

import org.junit.Test
import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import kotlin.test.assertTrue

class JsonTest {
    @Test
    fun parsesEveryKindOfValue() {
        val v = Json.parse("""{"a": [1, -2.5, 3e2, true, false, null], "b": {"c": "x\"y\u00e9\n"}, "d": []}""") as JsonValue.Obj
        val a = (v["a"] as JsonValue.Arr).items
        assertEquals(JsonValue.Num(1.0), a[0])
        assertEquals(JsonValue.Num(-2.5), a[1])
        assertEquals(JsonValue.Num(300.0), a[2])
        assertEquals(JsonValue.Bool(true), a[3])
        assertEquals(JsonValue.Bool(false), a[4])
        assertEquals(JsonValue.Null, a[5])
        assertEquals("x\"y\u00e9\n", ((v["b"] as JsonValue.Obj)["c"] as JsonValue.Str).value)
        assertEquals(emptyList(), (v["d"] as JsonValue.Arr).items)
        assertEquals(listOf("a", "b", "d"), v.fields.keys.toList(), "key order is kept")
    }

    @Test
    fun roundTripsThroughToString() {
        val text = """{"k":"a\"b\\c\u0001","n":[0,1.5,-3],"o":{"t":true,"z":null}}"""
        val v = Json.parse(text)
        assertEquals(v, Json.parse(v.toString()))
    }

    @Test
    fun integersAreRecognised() {
        assertTrue((Json.parse("4") as JsonValue.Num).isInteger)
        assertTrue((Json.parse("4.0") as JsonValue.Num).isInteger, "JSON Schema counts 4.0 as an integer")
        assertTrue(!(Json.parse("4.5") as JsonValue.Num).isInteger)
    }

    @Test
    fun errorsNameLineAndColumn() {
        val cases = mapOf(
            "{\n  \"a\": 1,\n  \"b\" 2\n}" to "line 3, column 7",
            "[1, 2" to "text ended",
            "{\"a\": 01}" to "expected ',' or '}'",
            "{\"a\": 1} x" to "after the end",
            "{\"a\": 1, \"a\": 2}" to "duplicate key",
            "\"abc" to "unterminated string",
            "[tru]" to "unexpected 't'",
            "" to "text ended",
            "{'a': 1}" to "quoted key",
        )
        for ((text, expected) in cases) {
            val e = assertFailsWith<JsonParseException>(text) { Json.parse(text) }
            assertTrue(e.message!!.contains(expected), "for ${Json.quote(text)}: got \"${e.message}\", wanted \"$expected\"")
            assertTrue(e.message!!.startsWith("invalid JSON at line "), e.message)
        }
    }

    @Test
    fun deepNestingIsRefused() {
        val text = "[".repeat(100) + "]".repeat(100)
        val e = assertFailsWith<JsonParseException> { Json.parse(text) }
        assertTrue(e.message!!.contains("nesting"), e.message)
    }
}
