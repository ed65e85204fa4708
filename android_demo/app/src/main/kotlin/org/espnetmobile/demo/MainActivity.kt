package org.espnetmobile.demo

import android.net.Uri
import android.os.Bundle
import androidx.activity.ComponentActivity
import androidx.activity.compose.rememberLauncherForActivityResult
import androidx.activity.compose.setContent
import androidx.activity.result.PickVisualMediaRequest
import androidx.activity.result.contract.ActivityResultContracts
import androidx.compose.foundation.Image
import androidx.compose.foundation.background
import androidx.compose.foundation.layout.Arrangement
import androidx.compose.foundation.layout.Box
import androidx.compose.foundation.layout.Column
import androidx.compose.foundation.layout.Row
import androidx.compose.foundation.layout.Spacer
import androidx.compose.foundation.layout.fillMaxSize
import androidx.compose.foundation.layout.fillMaxWidth
import androidx.compose.foundation.layout.padding
import androidx.compose.foundation.layout.size
import androidx.compose.foundation.layout.width
import androidx.compose.foundation.rememberScrollState
import androidx.compose.foundation.selection.selectable
import androidx.compose.foundation.verticalScroll
import androidx.compose.material3.Button
import androidx.compose.material3.LinearProgressIndicator
import androidx.compose.material3.MaterialTheme
import androidx.compose.material3.OutlinedButton
import androidx.compose.material3.RadioButton
import androidx.compose.material3.Surface
import androidx.compose.material3.Tab
import androidx.compose.material3.TabRow
import androidx.compose.material3.Text
import androidx.compose.runtime.Composable
import androidx.compose.runtime.getValue
import androidx.compose.runtime.mutableIntStateOf
import androidx.compose.runtime.mutableStateOf
import androidx.compose.runtime.remember
import androidx.compose.runtime.saveable.rememberSaveable
import androidx.compose.runtime.setValue
import androidx.compose.ui.Alignment
import androidx.compose.ui.Modifier
import androidx.compose.ui.graphics.Color
import androidx.compose.ui.graphics.asImageBitmap
import androidx.compose.ui.layout.ContentScale
import androidx.compose.ui.platform.LocalContext
import androidx.compose.ui.text.font.FontFamily
import androidx.compose.ui.text.font.FontWeight
import androidx.compose.ui.unit.dp
import androidx.core.content.FileProvider
import androidx.lifecycle.viewmodel.compose.viewModel
import org.espnetmobile.core.AccuracyReport
import org.espnetmobile.core.CheckStatus
import org.espnetmobile.core.LegendEntry
import org.espnetmobile.core.SegmentationPipeline
import org.espnetmobile.core.ParityThresholds
import org.espnetmobile.core.Rgb
import java.io.File
import java.util.Locale

class MainActivity : ComponentActivity() {
    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        setContent {
            MaterialTheme {
                Surface(Modifier.fillMaxSize()) { DemoApp() }
            }
        }
    }
}

@Composable
fun DemoApp(vm: DemoViewModel = viewModel()) {
    var tab by rememberSaveable { mutableIntStateOf(0) }
    Column(Modifier.fillMaxSize()) {
        val m = vm.session?.bundle?.manifest
        Text(
            m?.let { "${it.modelId} · ${it.numClasses} classes · input ${it.input.width}x${it.input.height}" }
                ?: if (vm.busy) "Opening the bundle…" else "No bundle",
            style = MaterialTheme.typography.titleMedium,
            modifier = Modifier.padding(16.dp),
        )
        val problem = vm.bundleError
        if (problem != null) {
            Text(problem, color = MaterialTheme.colorScheme.error, modifier = Modifier.padding(16.dp))
            return@Column
        }
        TabRow(selectedTabIndex = tab) {
            Tab(selected = tab == 0, onClick = { tab = 0 }, text = { Text("Photo") })
            Tab(selected = tab == 1, onClick = { tab = 1 }, text = { Text("Live") })
            Tab(selected = tab == 2, onClick = { tab = 2 }, text = { Text("Check") })
            Tab(selected = tab == 3, onClick = { tab = 3 }, text = { Text("About") })
        }
        Column(Modifier.verticalScroll(rememberScrollState()).padding(16.dp)) {
            if (tab != 3) RuntimePicker(vm)
            if (vm.busy) LinearProgressIndicator(Modifier.fillMaxWidth().padding(vertical = 8.dp))
            vm.error?.let { Text(it, color = MaterialTheme.colorScheme.error) }
            if (tab != 3) vm.runnerDescription?.let { Text("Ran on: $it", style = MaterialTheme.typography.bodySmall) }
            Spacer(Modifier.size(8.dp))
            when (tab) {
                0 -> SegmentScreen(vm)
                1 -> CameraScreen(vm)
                2 -> AccuracyScreen(vm)
                else -> AboutScreen(vm)
            }
        }
    }
}

@Composable
fun RuntimePicker(vm: DemoViewModel) {
    val options = vm.session?.options ?: return
    Text("Runtime and accelerator", style = MaterialTheme.typography.titleSmall)
    if (options.isEmpty()) {
        Text("This bundle has no ExecuTorch (.pte) or LiteRT (.tflite) artifact an Android phone can run.")
        return
    }
    for (option in options) {
        val enabled = option.enabled && !vm.busy
        Row(
            Modifier.fillMaxWidth().selectable(selected = option == vm.selected, enabled = enabled, onClick = { vm.select(option) }),
            verticalAlignment = Alignment.CenterVertically,
        ) {
            RadioButton(selected = option == vm.selected, onClick = null, enabled = enabled)
            Column(Modifier.padding(start = 8.dp)) {
                Text(option.label, color = if (option.enabled) Color.Unspecified else Color.Gray)
                option.disabledReason?.let { Text("Not available: $it", style = MaterialTheme.typography.bodySmall, color = Color.Gray) }
                if (option.enabled && !option.listedInBundle) {
                    Text("not listed for this artifact by the converter", style = MaterialTheme.typography.bodySmall)
                }
            }
        }
    }
}

@Composable
fun SegmentScreen(vm: DemoViewModel) {
    val context = LocalContext.current
    var cameraUri by remember { mutableStateOf<Uri?>(null) }
    val pickPhoto = rememberLauncherForActivityResult(ActivityResultContracts.PickVisualMedia()) { uri ->
        if (uri != null) vm.segment(uri)
    }
    val takePhoto = rememberLauncherForActivityResult(ActivityResultContracts.TakePicture()) { saved ->
        val uri = cameraUri
        if (saved && uri != null) vm.segment(uri)
    }
    val ready = !vm.busy && vm.selected != null
    Row(horizontalArrangement = Arrangement.spacedBy(8.dp)) {
        Button(enabled = ready, onClick = {
            pickPhoto.launch(PickVisualMediaRequest(ActivityResultContracts.PickVisualMedia.ImageOnly))
        }) { Text("Choose photo") }
        OutlinedButton(enabled = ready, onClick = {
            val file = File(context.cacheDir, "photos/capture.jpg").apply { parentFile?.mkdirs() }
            val uri = FileProvider.getUriForFile(context, "${context.packageName}.photos", file)
            cameraUri = uri
            takePhoto.launch(uri)
        }) { Text("Take photo") }
    }
    vm.photoName?.let { Text(it, style = MaterialTheme.typography.bodySmall, modifier = Modifier.padding(top = 8.dp)) }
    vm.overlay?.let { bitmap ->
        Spacer(Modifier.size(8.dp))
        Image(
            bitmap.asImageBitmap(),
            contentDescription = "photo with the segmentation overlay",
            modifier = Modifier.fillMaxWidth(),
            contentScale = ContentScale.FillWidth,
        )
    }
    vm.timings?.let { t ->
        Text(
            String.format(Locale.ROOT, "this run: %.1f ms (pre %.1f · inference %.1f · post %.1f)", t.totalMs, t.preprocessMs, t.inferenceMs, t.postprocessMs),
            style = MaterialTheme.typography.bodyMedium,
            modifier = Modifier.padding(top = 8.dp),
        )
        OutlinedButton(enabled = ready, onClick = { vm.measureLatency() }) {
            Text("Measure latency (median of ${SegmentationPipeline.DEFAULT_RUNS} runs)")
        }
    }
    vm.latency?.let { Text(it.description, style = MaterialTheme.typography.bodyMedium) }
    Legend(vm.legend)
}

@Composable
fun Legend(entries: List<LegendEntry>) {
    for (entry in entries) {
        Row(verticalAlignment = Alignment.CenterVertically, modifier = Modifier.padding(vertical = 2.dp)) {
            Box(Modifier.size(16.dp).background(entry.colour.toColor()))
            Spacer(Modifier.width(8.dp))
            Text(String.format(Locale.ROOT, "%s  %.1f%%", entry.label, 100 * entry.fraction))
        }
    }
}

@Composable
fun AccuracyScreen(vm: DemoViewModel) {
    val m = vm.session?.bundle?.manifest ?: return
    Text(
        "Runs the ${m.golden.size} golden inputs of the bundle through the chosen runtime and compares the logits with " +
            "the reference, against the bundle's thresholds for the artifact's precision.",
        style = MaterialTheme.typography.bodySmall,
    )
    Button(enabled = !vm.busy && vm.selected != null && m.golden.isNotEmpty(), onClick = { vm.runAccuracyCheck() }) {
        Text("Run accuracy check")
    }
    if (vm.busy && vm.accuracyProgress.isNotEmpty()) Text("golden item ${vm.accuracyProgress}")
    vm.accuracy?.let { AccuracyResult(it) }
}

@Composable
fun AccuracyResult(report: AccuracyReport) {
    val f = ParityThresholds::fmt
    val m = report.metrics
    Text(
        if (report.passed) "PASS" else "FAIL",
        color = if (report.passed) Color(0xFF1B7F3B) else MaterialTheme.colorScheme.error,
        style = MaterialTheme.typography.headlineMedium,
        fontWeight = FontWeight.Bold,
    )
    Text("${report.runner} · thresholds for ${report.precision.key}", style = MaterialTheme.typography.bodySmall)
    MetricRow("pixel agreement", f(m.pixelAgreement))
    MetricRow("mIoU vs reference", f(m.miou))
    MetricRow("max abs error", f(m.maxAbsError))
    MetricRow("mean abs error", f(m.meanAbsError))
    MetricRow("max rel error (raw / net of fp16)", "${f(m.maxRelAbsError)} / ${f(m.netMaxRelAbsError)}")
    MetricRow("SQNR dB", f(m.sqnrDb))
    Spacer(Modifier.size(8.dp))
    for (c in report.verdict.checks) {
        val colour = when (c.status) {
            CheckStatus.PASS -> Color(0xFF1B7F3B)
            CheckStatus.FAIL -> MaterialTheme.colorScheme.error
            CheckStatus.NOT_CHECKED -> Color.Gray
        }
        Text("${c.status} ${c.key}: ${f(c.value)} (limit ${f(c.limit)})", color = colour, fontFamily = FontFamily.Monospace)
        if (c.note.isNotEmpty()) Text(c.note, style = MaterialTheme.typography.bodySmall)
    }
    Spacer(Modifier.size(8.dp))
    for ((i, item) in m.items.withIndex()) {
        val ms = report.latenciesMs.getOrNull(i)?.let { String.format(Locale.ROOT, "%.1f ms", it) } ?: ""
        Text("${item.name}: agreement ${f(item.pixelAgreement)} · mIoU ${f(item.miou)} · $ms", style = MaterialTheme.typography.bodySmall)
    }
}

@Composable
internal fun MetricRow(name: String, value: String) {
    Row(Modifier.fillMaxWidth(), horizontalArrangement = Arrangement.SpaceBetween) {
        Text(name)
        Text(value, fontFamily = FontFamily.Monospace)
    }
}

internal fun Rgb.toColor() = Color(r, g, b)
