package org.espnetmobile.core

/**
 * The bundle manifest (`manifest.json`, schema version 1), parsed and checked.
 *
 * The checks mirror `espnet_mobile/schemas/manifest.schema.json` for every
 * field an app reads, plus the cross-field rules an app relies on (label and
 * palette counts equal to the class count, golden tensors shaped like the
 * model's input and output). Every error names the field by its JSON path.
 */
class ManifestException(message: String) : BundleException(message)

enum class Layout { NCHW, NHWC }

enum class Precision(val key: String) {
    FP32("fp32"), FP16("fp16"), INT8("int8");

    companion object {
        fun of(key: String): Precision? = values().firstOrNull { it.key == key }
    }
}

enum class Target(val key: String) {
    EXECUTORCH("executorch"), COREML("coreml"), TFLITE("tflite");

    companion object {
        fun of(key: String): Target? = values().firstOrNull { it.key == key }
    }
}

/** Hardware a runtime may use. Converters spell these differently ("CPU", "gpu", "ANE"); [parse] unifies them. */
enum class ComputeUnit(val label: String) {
    CPU("CPU"), GPU("GPU"), NPU("NPU / Neural Engine");

    companion object {
        fun parse(name: String): ComputeUnit? = when (name.trim().lowercase()) {
            "cpu", "cpu_only", "cpu_reference" -> CPU
            "gpu" -> GPU
            "npu", "ane", "neural_engine", "neuralengine", "dsp", "htp" -> NPU
            else -> null
        }
    }
}

data class Rgb(val r: Int, val g: Int, val b: Int)

data class FileRef(val file: String, val sha256: String)

data class TensorRef(val file: String, val sha256: String, val shape: List<Int>, val dtype: String) {
    val count: Int get() = shape.fold(1) { a, b -> a * b }
}

data class InputSpec(
    val name: String,
    val shape: List<Int>,
    val layout: Layout,
    val dtype: String,
    val colorOrder: String,
    val valueMin: Double,
    val valueMax: Double,
) {
    val height: Int get() = if (layout == Layout.NCHW) shape[2] else shape[1]
    val width: Int get() = if (layout == Layout.NCHW) shape[3] else shape[2]
    val channels: Int get() = if (layout == Layout.NCHW) shape[1] else shape[3]
}

/** The model's output: float32 logits (1, C, H, W) or an int32 mask (1, H, W) from an argmax head. */
data class OutputSpec(val name: String, val shape: List<Int>, val layout: Layout, val dtype: String) {
    val isMask: Boolean get() = dtype == "int32"
    val height: Int get() = shape[shape.size - 2]
    val width: Int get() = shape[shape.size - 1]
}

data class Artifact(
    val file: String,
    val target: Target,
    val delegate: String,
    val precision: Precision,
    val computeUnitNames: List<String>,
    val sha256: String,
    val bytes: Long,
    val executableHere: Boolean,
    val notExecutableReason: String?,
    val inputLayout: Layout,
) {
    /** The compute units the converter says the artifact can use, unified (unknown names dropped). */
    val computeUnits: List<ComputeUnit> get() = computeUnitNames.mapNotNull { ComputeUnit.parse(it) }.distinct()

    /** "tflite · fp16" or "executorch · xnnpack · int8". */
    val label: String
        get() = if (target == Target.EXECUTORCH) "${target.key} · $delegate · ${precision.key}" else "${target.key} · ${precision.key}"
}

data class GoldenItem(
    val name: String,
    val image: FileRef,
    val imageHeight: Int,
    val imageWidth: Int,
    val input: TensorRef,
    val logits: TensorRef,
    val mask: TensorRef,
    val fullMask: FileRef?,
)

data class Manifest(
    val schemaVersion: Int,
    val modelId: String,
    val createdBy: String,
    val arch: String,
    val dataset: String,
    val numClasses: Int,
    val input: InputSpec,
    val output: OutputSpec,
    val labels: List<String>,
    val palette: List<Rgb>,
    val artifacts: List<Artifact>,
    val goldenSource: String,
    val golden: List<GoldenItem>,
    /** precision -> threshold name -> limit, e.g. "fp32" -> {"min_pixel_agreement": 0.999}. */
    val thresholds: Map<String, Map<String, Double>>,
) {
    fun thresholdsFor(precision: Precision): Map<String, Double> = thresholds[precision.key] ?: emptyMap()

    companion object {
        const val FILE_NAME = "manifest.json"
        const val SCHEMA_VERSION = 1

        private val TOP_LEVEL = setOf(
            "schema_version", "model_id", "created_by", "model", "input", "output", "labels", "palette",
            "preprocessing", "postprocessing", "artifacts", "golden", "thresholds", "parity",
        )
        private val SHA256 = Regex("^[0-9a-f]{64}$")

        /** Parse and check a manifest; [where] names it in error messages. */
        fun parse(text: String, where: String = FILE_NAME): Manifest {
            val root = try {
                Json.parse(text)
            } catch (e: JsonParseException) {
                throw ManifestException("$where is not valid JSON (${e.message}); rebuild the bundle")
            }
            return ManifestReader(where).read(Node(root, ""))
        }

        internal fun isSha256(s: String) = SHA256.matches(s)
        internal val topLevelKeys get() = TOP_LEVEL
    }
}

/** A JSON value with its path, so that every check can say where it failed. */
internal class Node(val value: JsonValue, val path: String) {
    fun fail(what: String): Nothing = throw ManifestError(path.ifEmpty { "(top level)" }, what)

    fun obj(): JsonValue.Obj = value as? JsonValue.Obj ?: fail("must be an object, got ${value.typeName}")

    fun has(key: String): Boolean = obj().fields.containsKey(key)

    fun field(key: String): Node {
        val v = obj()[key] ?: throw ManifestError(path.ifEmpty { "(top level)" }, "is missing the required field \"$key\"")
        return Node(v, child(key))
    }

    fun optField(key: String): Node? {
        val v = obj()[key] ?: return null
        return if (v is JsonValue.Null) null else Node(v, child(key))
    }

    private fun child(key: String) = if (path.isEmpty()) key else "$path/$key"

    fun items(): List<Node> {
        val arr = value as? JsonValue.Arr ?: fail("must be an array, got ${value.typeName}")
        return arr.items.mapIndexed { i, v -> Node(v, "$path/$i") }
    }

    fun string(): String = (value as? JsonValue.Str)?.value ?: fail("must be a string, got ${value.typeName}")

    fun nonEmptyString(): String = string().also { if (it.isEmpty()) fail("must not be empty") }

    fun bool(): Boolean = (value as? JsonValue.Bool)?.value ?: fail("must be true or false, got ${value.typeName}")

    fun number(): Double = (value as? JsonValue.Num)?.value ?: fail("must be a number, got ${value.typeName}")

    fun int(min: Int? = null): Int {
        val n = value as? JsonValue.Num ?: fail("must be an integer, got ${value.typeName}")
        if (!n.isInteger || n.value > Int.MAX_VALUE || n.value < Int.MIN_VALUE) fail("must be an integer, got ${n.value}")
        val v = n.value.toInt()
        if (min != null && v < min) fail("must be at least $min, got $v")
        return v
    }

    fun long(min: Long? = null): Long {
        val n = value as? JsonValue.Num ?: fail("must be an integer, got ${value.typeName}")
        if (!n.isInteger || kotlin.math.abs(n.value) > 9.007199254740992E15) fail("must be an integer, got ${n.value}")
        val v = n.value.toLong()
        if (min != null && v < min) fail("must be at least $min, got $v")
        return v
    }

    fun oneOf(allowed: Collection<String>): String {
        val s = string()
        if (s !in allowed) fail("must be one of ${allowed.joinToString(", ")}, got \"$s\"")
        return s
    }

    fun intList(minValue: Int? = null, size: Int? = null): List<Int> {
        val list = items().map { it.int(minValue) }
        if (size != null && list.size != size) fail("must have $size entries, got ${list.size}")
        return list
    }

    fun sha256(): String {
        val s = string()
        if (!Manifest.isSha256(s)) fail("must be 64 lowercase hex digits (a sha256), got \"$s\"")
        return s
    }
}

internal class ManifestError(val path: String, val what: String) : Exception("$path $what")

private class ManifestReader(val where: String) {
    fun read(root: Node): Manifest = try {
        readChecked(root)
    } catch (e: ManifestError) {
        throw ManifestException("$where: ${e.path} ${e.what}; rebuild the bundle with python -m espnet_mobile.convert")
    }

    private fun readChecked(root: Node): Manifest {
        val top = root.obj()
        val version = root.field("schema_version").int()
        if (version != Manifest.SCHEMA_VERSION) {
            root.field("schema_version").fail(
                "is $version but this app reads version ${Manifest.SCHEMA_VERSION}; use the app and bundle from the same release",
            )
        }
        val unknown = top.fields.keys.filter { it !in Manifest.topLevelKeys }
        if (unknown.isNotEmpty()) root.fail("has unknown fields ${unknown.joinToString(", ") { "\"$it\"" }}")
        for (key in Manifest.topLevelKeys - setOf("parity")) root.field(key)

        val model = root.field("model")
        val numClasses = model.field("num_classes").int(min = 1)
        val input = readInput(root.field("input"))
        val output = readOutput(root.field("output"), numClasses)

        val labelsNode = root.field("labels")
        val labels = labelsNode.items().map { it.string() }
        if (labels.isEmpty()) labelsNode.fail("must not be empty")
        if (labels.size != numClasses) labelsNode.fail("has ${labels.size} names but model/num_classes is $numClasses")

        val paletteNode = root.field("palette")
        val palette = paletteNode.items().map { node ->
            val c = node.intList(minValue = 0, size = 3)
            if (c.any { it > 255 }) node.fail("colour components must be 0-255, got $c")
            Rgb(c[0], c[1], c[2])
        }
        if (palette.size < numClasses) paletteNode.fail("has ${palette.size} colours but there are $numClasses classes")

        root.field("preprocessing").obj()
        root.field("postprocessing").obj()

        val artifacts = root.field("artifacts").items().map { readArtifact(it) }
        val golden = root.field("golden")
        val goldenSource = golden.field("source").string()
        val items = golden.field("items").items().map { readGolden(it, input, output, numClasses) }
        val names = items.groupBy { it.name }.filter { it.value.size > 1 }.keys
        if (names.isNotEmpty()) golden.field("items").fail("repeats the names ${names.joinToString(", ")}")

        return Manifest(
            schemaVersion = version,
            modelId = root.field("model_id").nonEmptyString(),
            createdBy = root.field("created_by").string(),
            arch = model.field("arch").oneOf(listOf("espnet", "espnet_c", "espnetv2")),
            dataset = model.field("dataset").string(),
            numClasses = numClasses,
            input = input,
            output = output,
            labels = labels,
            palette = palette,
            artifacts = artifacts,
            goldenSource = goldenSource,
            golden = items,
            thresholds = readThresholds(root.field("thresholds")),
        )
    }

    private fun readInput(node: Node): InputSpec {
        val shapeNode = node.field("shape")
        val shape = shapeNode.intList(minValue = 1, size = 4)
        val layout = Layout.valueOf(node.field("layout").oneOf(listOf("NCHW", "NHWC")))
        if (shape[0] != 1) shapeNode.fail("must have batch size 1, got ${shape[0]}")
        val channels = if (layout == Layout.NCHW) shape[1] else shape[3]
        if (channels != 3) shapeNode.fail("must have 3 colour channels for layout $layout, got $shape")
        val range = node.field("value_range")
        val bounds = range.items().map { it.number() }
        if (bounds.size != 2 || bounds[0] >= bounds[1]) range.fail("must be [low, high] with low < high, got $bounds")
        node.field("normalization").oneOf(listOf("baked_in"))
        return InputSpec(
            name = node.field("name").string(),
            shape = shape,
            layout = layout,
            dtype = node.field("dtype").oneOf(listOf("float32", "uint8")),
            colorOrder = node.field("color_order").oneOf(listOf("RGB")),
            valueMin = bounds[0],
            valueMax = bounds[1],
        )
    }

    private fun readOutput(node: Node, numClasses: Int): OutputSpec {
        val dtype = node.field("dtype").oneOf(listOf("float32", "int32"))
        val shapeNode = node.field("shape")
        val shape = shapeNode.intList(minValue = 1)
        if (dtype == "float32") {
            if (shape.size != 4 || shape[0] != 1) shapeNode.fail("must be [1, classes, height, width] for float32 logits, got $shape")
            if (shape[1] != numClasses) shapeNode.fail("has ${shape[1]} channels but model/num_classes is $numClasses")
        } else if (shape.size != 3 || shape[0] != 1) {
            shapeNode.fail("must be [1, height, width] for an int32 mask, got $shape")
        }
        node.field("meaning").string()
        return OutputSpec(
            name = node.field("name").string(),
            shape = shape,
            layout = Layout.valueOf(node.field("layout").oneOf(listOf("NCHW"))),
            dtype = dtype,
        )
    }

    private fun readArtifact(node: Node): Artifact {
        val fileNode = node.field("file")
        val file = fileNode.nonEmptyString()
        if ('/' in file || '\\' in file) fileNode.fail("must be a bare file name, got \"$file\"")
        for (key in listOf("tool_versions")) node.field(key).obj()
        node.field("cache_key").string()
        return Artifact(
            file = file,
            target = Target.of(node.field("target").oneOf(Target.values().map { it.key }))!!,
            delegate = node.field("delegate").string(),
            precision = Precision.of(node.field("precision").oneOf(Precision.values().map { it.key }))!!,
            computeUnitNames = node.field("compute_units").items().map { it.string() },
            sha256 = node.field("sha256").sha256(),
            bytes = node.field("bytes").long(min = 1),
            executableHere = node.field("executable_here").bool(),
            notExecutableReason = node.optField("not_executable_reason")?.string(),
            inputLayout = Layout.valueOf(node.field("input_layout").oneOf(listOf("NCHW", "NHWC"))),
        )
    }

    private fun readFile(node: Node) = FileRef(node.field("file").nonEmptyString(), node.field("sha256").sha256())

    private fun readTensor(node: Node, dtypes: List<String>): TensorRef {
        node.optField("byte_order")?.oneOf(listOf("little"))
        return TensorRef(
            file = node.field("file").nonEmptyString(),
            sha256 = node.field("sha256").sha256(),
            shape = node.field("shape").intList(minValue = 1),
            dtype = node.field("dtype").oneOf(dtypes),
        )
    }

    private fun readGolden(node: Node, input: InputSpec, output: OutputSpec, numClasses: Int): GoldenItem {
        val sizeNode = node.field("image_size")
        val size = sizeNode.intList(minValue = 1, size = 2)

        val inputNode = node.field("input")
        val inputRef = readTensor(inputNode, listOf("float32"))
        val wantInput = listOf(1, 3, input.height, input.width)
        if (inputRef.shape != wantInput) inputNode.field("shape").fail("must be $wantInput (NCHW, like the model input), got ${inputRef.shape}")

        val logitsNode = node.field("logits")
        val logits = readTensor(logitsNode, listOf("float16", "float32"))
        if (logits.shape.size != 4 || logits.shape[0] != 1 || logits.shape[1] != numClasses) {
            logitsNode.field("shape").fail("must be [1, $numClasses, height, width], got ${logits.shape}")
        }
        if (!output.isMask && logits.shape != output.shape) {
            logitsNode.field("shape").fail("must equal output/shape ${output.shape}, got ${logits.shape}")
        }

        val maskNode = node.field("mask")
        val mask = readTensor(maskNode, listOf("uint8"))
        val wantMask = listOf(1, logits.shape[2], logits.shape[3])
        if (mask.shape != wantMask) maskNode.field("shape").fail("must be $wantMask (the logits' height and width), got ${mask.shape}")
        if (numClasses > 256) maskNode.fail("cannot hold $numClasses classes in uint8")

        return GoldenItem(
            name = node.field("name").nonEmptyString(),
            image = readFile(node.field("image")),
            imageHeight = size[0],
            imageWidth = size[1],
            input = inputRef,
            logits = logits,
            mask = mask,
            fullMask = node.optField("full_mask")?.let { readFile(it) },
        )
    }

    private fun readThresholds(node: Node): Map<String, Map<String, Double>> {
        val out = LinkedHashMap<String, Map<String, Double>>()
        for ((key, value) in node.obj().fields) {
            if (value !is JsonValue.Obj) continue // e.g. a "description" string
            val limits = LinkedHashMap<String, Double>()
            val child = Node(value, "${node.path}/$key")
            for (name in value.fields.keys) limits[name] = child.field(name).number()
            out[key] = limits
        }
        return out
    }
}
