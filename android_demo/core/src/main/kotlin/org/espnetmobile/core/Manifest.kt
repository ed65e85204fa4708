package org.espnetmobile.core

import org.json.JSONArray
import org.json.JSONException
import org.json.JSONObject
import org.json.JSONTokener

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

/**
 * One row of the manifest's `accuracy` section: the PyTorch reference (target null) or one
 * artifact on one runtime, scored against the dataset's labels. Figures are percentages (0-100);
 * a class IoU is null when the class is in neither the labels nor the predictions, and mIoU and
 * pixel accuracy are null when the run failed ([error] says why).
 */
data class AccuracyResult(
    val artifact: String,
    val sha256: String?,
    val target: String?,
    val precision: Precision,
    val runtime: String,
    val computeUnit: String?,
    val miou: Double?,
    val pixelAccuracy: Double?,
    val classIou: Map<String, Double?>,
    val agreementWithReference: Double?,
    val images: Int,
    val error: String?,
) {
    val isReference: Boolean get() = target == null
}

/** The manifest's `accuracy` section (written by python -m espnet_mobile.evaluate on the bundle). */
data class ManifestAccuracy(
    /** Dataset kind: camvid, cityscapes or voc. */
    val dataset: String,
    val datasetTitle: String?,
    val split: String,
    val images: Int,
    val ignoreLabel: Int?,
    /** The classes scored, in logit order. */
    val classes: List<String>,
    val date: String,
    val toolVersions: Map<String, String>,
    val results: List<AccuracyResult>,
) {
    val title: String get() = datasetTitle?.takeIf { it.isNotBlank() } ?: dataset

    /** The PyTorch reference's row, if the section has one. */
    val reference: AccuracyResult? get() = results.firstOrNull { it.isReference }

    /** The rows measured for one artifact file (one per runtime it ran on). */
    fun resultsFor(artifactFile: String): List<AccuracyResult> = results.filter { it.artifact == artifactFile }

    /** mIoU of [result] minus the reference's, in points; null when either is unknown. */
    fun miouDelta(result: AccuracyResult): Double? {
        val ref = reference?.miou ?: return null
        return result.miou?.let { it - ref }
    }

    companion object {
        val DATASETS = listOf("camvid", "cityscapes", "voc")
        const val REFERENCE_ARTIFACT = "pytorch-reference"
    }
}

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
    /** Accuracy measured against a labelled dataset when the bundle was made; null in older bundles. */
    val accuracy: ManifestAccuracy? = null,
) {
    fun thresholdsFor(precision: Precision): Map<String, Double> = thresholds[precision.key] ?: emptyMap()

    companion object {
        const val FILE_NAME = "manifest.json"
        const val SCHEMA_VERSION = 1

        private val TOP_LEVEL = setOf(
            "schema_version", "model_id", "created_by", "model", "input", "output", "labels", "palette",
            "preprocessing", "postprocessing", "artifacts", "golden", "thresholds", "parity", "accuracy",
        )
        private val OPTIONAL_TOP_LEVEL = setOf("parity", "accuracy")
        private val SHA256 = Regex("^[0-9a-f]{64}$")

        /** Parse and check a manifest; [where] names it in error messages. */
        fun parse(text: String, where: String = FILE_NAME): Manifest {
            val root = try {
                val tokens = JSONTokener(text)
                tokens.nextValue().also {
                    if (tokens.nextClean() != '\u0000') throw JSONException("text continues after the end of the JSON value")
                }
            } catch (e: JSONException) {
                throw ManifestException("$where is not valid JSON (${e.message}); rebuild the bundle")
            }
            return ManifestReader(where).read(Node(root, ""))
        }

        internal fun isSha256(s: String) = SHA256.matches(s)
        internal val topLevelKeys get() = TOP_LEVEL
        internal val optionalTopLevelKeys get() = OPTIONAL_TOP_LEVEL
    }
}

/**
 * A value of the parsed JSON tree (org.json: JSONObject, JSONArray, String, Boolean, a Number or
 * JSONObject.NULL) with its path, so that every check can say where it failed.
 */
internal class Node(val value: Any?, val path: String) {
    fun fail(what: String): Nothing = throw ManifestError(path.ifEmpty { "(top level)" }, what)

    fun obj(): JSONObject = value as? JSONObject ?: fail("must be an object, got ${typeName(value)}")

    fun keys(): List<String> = obj().keys().asSequence().toList()

    fun has(key: String): Boolean = obj().has(key)

    fun field(key: String): Node {
        val o = obj()
        if (!o.has(key)) throw ManifestError(path.ifEmpty { "(top level)" }, "is missing the required field \"$key\"")
        return Node(o.opt(key), child(key))
    }

    /** The field, or null when it is absent or JSON null. */
    fun optField(key: String): Node? {
        val o = obj()
        if (!o.has(key) || o.isNull(key)) return null
        return Node(o.opt(key), child(key))
    }

    val isNull: Boolean get() = value == null || value == JSONObject.NULL

    private fun child(key: String) = if (path.isEmpty()) key else "$path/$key"

    fun items(): List<Node> {
        val arr = value as? JSONArray ?: fail("must be an array, got ${typeName(value)}")
        return (0 until arr.length()).map { Node(arr.opt(it), "$path/$it") }
    }

    fun string(): String = value as? String ?: fail("must be a string, got ${typeName(value)}")

    fun nonEmptyString(): String = string().also { if (it.isEmpty()) fail("must not be empty") }

    fun bool(): Boolean = value as? Boolean ?: fail("must be true or false, got ${typeName(value)}")

    fun number(): Double {
        val n = value as? Number ?: fail("must be a number, got ${typeName(value)}")
        val d = n.toDouble()
        if (d.isNaN() || d.isInfinite()) fail("must be a finite number, got $d")
        return d
    }

    /** A number in [[min], [max]] (inclusive). */
    fun number(min: Double, max: Double): Double =
        number().also { if (it < min || it > max) fail("must be between ${fmt(min)} and ${fmt(max)}, got ${fmt(it)}") }

    /** An integral number; JSON Schema counts 4.0 as an integer too. */
    private fun integral(): Double {
        val n = value as? Number ?: fail("must be an integer, got ${typeName(value)}")
        val d = n.toDouble()
        if (d != kotlin.math.floor(d) || d.isInfinite()) fail("must be an integer, got $n")
        return d
    }

    fun int(min: Int? = null): Int {
        val d = integral()
        if (d > Int.MAX_VALUE || d < Int.MIN_VALUE) fail("must be an integer, got $d")
        val v = d.toInt()
        if (min != null && v < min) fail("must be at least $min, got $v")
        return v
    }

    fun long(min: Long? = null): Long {
        val n = value
        val v = if (n is Int || n is Long) (n as Number).toLong() else {
            val d = integral()
            if (kotlin.math.abs(d) > 9.007199254740992E15) fail("must be an integer, got $d")
            d.toLong()
        }
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

    companion object {
        fun typeName(v: Any?): String = when (v) {
            null, JSONObject.NULL -> "null"
            is Boolean -> "true/false"
            is Number -> "a number"
            is String -> "a string"
            is JSONArray -> "an array"
            is JSONObject -> "an object"
            else -> v.javaClass.simpleName
        }

        private fun fmt(d: Double) = if (d == kotlin.math.floor(d) && kotlin.math.abs(d) < 1e15) d.toLong().toString() else d.toString()
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
        val version = root.field("schema_version").int()
        if (version != Manifest.SCHEMA_VERSION) {
            root.field("schema_version").fail(
                "is $version but this app reads version ${Manifest.SCHEMA_VERSION}; use the app and bundle from the same release",
            )
        }
        val unknown = root.keys().filter { it !in Manifest.topLevelKeys }
        if (unknown.isNotEmpty()) root.fail("has unknown fields ${unknown.joinToString(", ") { "\"$it\"" }}")
        for (key in Manifest.topLevelKeys - Manifest.optionalTopLevelKeys) root.field(key)

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
            accuracy = root.optField("accuracy")?.let { readAccuracy(it) },
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

    private fun readAccuracy(node: Node): ManifestAccuracy {
        val classesNode = node.field("classes")
        val classes = classesNode.items().map { it.nonEmptyString() }
        if (classes.isEmpty()) classesNode.fail("must not be empty")
        val repeated = classes.groupBy { it }.filter { it.value.size > 1 }.keys
        if (repeated.isNotEmpty()) classesNode.fail("repeats ${repeated.joinToString(", ")}")
        val versions = node.field("tool_versions")
        val results = node.field("results").items().map { readAccuracyResult(it, classes.toSet()) }
        return ManifestAccuracy(
            dataset = node.field("dataset").oneOf(ManifestAccuracy.DATASETS),
            datasetTitle = node.optField("dataset_title")?.string(),
            split = node.field("split").nonEmptyString(),
            images = node.field("images").int(min = 1),
            ignoreLabel = node.optField("ignore_label")?.int(),
            classes = classes,
            date = node.field("date").string(),
            toolVersions = versions.keys().associateWith { versions.field(it).string() },
            results = results,
        )
    }

    private fun readAccuracyResult(node: Node, classes: Set<String>): AccuracyResult {
        val iouNode = node.field("class_iou")
        val classIou = LinkedHashMap<String, Double?>()
        for (name in iouNode.keys()) {
            val value = iouNode.field(name)
            if (name !in classes) value.fail("is not one of the scored classes (accuracy/classes)")
            classIou[name] = if (value.isNull) null else value.number(0.0, 100.0)
        }
        val target = node.field("target").let { if (it.isNull) null else it.nonEmptyString() }
        val artifactNode = node.field("artifact")
        val artifact = artifactNode.nonEmptyString()
        if (target == null && artifact != ManifestAccuracy.REFERENCE_ARTIFACT) {
            artifactNode.fail("has target null, which only the row \"${ManifestAccuracy.REFERENCE_ARTIFACT}\" may have")
        }
        return AccuracyResult(
            artifact = artifact,
            sha256 = node.optField("sha256")?.sha256(),
            target = target,
            precision = Precision.of(node.field("precision").oneOf(Precision.values().map { it.key }))!!,
            runtime = node.field("runtime").nonEmptyString(),
            computeUnit = node.optField("compute_unit")?.string(),
            miou = node.field("miou").let { if (it.isNull) null else it.number(0.0, 100.0) },
            pixelAccuracy = node.field("pixel_accuracy").let { if (it.isNull) null else it.number(0.0, 100.0) },
            classIou = classIou,
            agreementWithReference = node.optField("agreement_with_reference")?.number(0.0, 100.0),
            images = node.field("images").int(min = 0),
            error = node.optField("error")?.string(),
        )
    }

    private fun readThresholds(node: Node): Map<String, Map<String, Double>> {
        val out = LinkedHashMap<String, Map<String, Double>>()
        for (key in node.keys()) {
            val child = node.field(key)
            if (child.value !is JSONObject) continue // e.g. a "description" string
            val limits = LinkedHashMap<String, Double>()
            for (name in child.keys()) limits[name] = child.field(name).number()
            out[key] = limits
        }
        return out
    }
}
