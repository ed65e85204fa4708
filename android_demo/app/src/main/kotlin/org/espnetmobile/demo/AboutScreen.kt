package org.espnetmobile.demo

import androidx.compose.foundation.layout.Spacer
import androidx.compose.foundation.layout.padding
import androidx.compose.foundation.layout.size
import androidx.compose.material3.MaterialTheme
import androidx.compose.material3.Text
import androidx.compose.runtime.Composable
import androidx.compose.ui.Modifier
import androidx.compose.ui.text.font.FontFamily
import androidx.compose.ui.text.font.FontWeight
import androidx.compose.ui.unit.dp
import org.espnetmobile.core.AccuracyResult
import org.espnetmobile.core.ManifestAccuracy
import java.util.Locale

/** The bundle: model, artifacts, what this phone can run, and the accuracy measured when the bundle was made. */
@Composable
fun AboutScreen(vm: DemoViewModel) {
    val session = vm.session ?: return
    val m = session.bundle.manifest
    Text("Model", style = MaterialTheme.typography.titleSmall)
    MetricRow("model", m.modelId)
    MetricRow("architecture", m.arch)
    MetricRow("trained on", m.dataset)
    MetricRow("classes", m.numClasses.toString())
    MetricRow("input", "${m.input.width}x${m.input.height} ${m.input.colorOrder} ${m.input.dtype}")
    MetricRow("made by", m.createdBy)

    Spacer(Modifier.size(12.dp))
    Text("Measured accuracy", style = MaterialTheme.typography.titleSmall)
    val accuracy = m.accuracy
    if (accuracy == null) {
        Text("This bundle carries no accuracy measured against labelled data (python -m espnet_mobile.evaluate on the bundle adds it).",
            style = MaterialTheme.typography.bodySmall)
    } else {
        AccuracyTable(accuracy, selectedFile = vm.selected?.artifact?.file)
    }

    Spacer(Modifier.size(12.dp))
    Text("Runtimes on this phone", style = MaterialTheme.typography.titleSmall)
    for (option in session.options) {
        Text("${option.label}: ${option.disabledReason?.let { "not available - $it" } ?: "available"}",
            style = MaterialTheme.typography.bodySmall, modifier = Modifier.padding(vertical = 2.dp))
    }
}

@Composable
private fun AccuracyTable(a: ManifestAccuracy, selectedFile: String?) {
    Text("${a.title}, ${a.split} split, ${a.images} images · ${a.classes.size} classes · measured ${a.date}",
        style = MaterialTheme.typography.bodySmall)
    Text("mIoU and pixel accuracy in %, against the dataset's labels; Δ is mIoU minus the PyTorch reference's.",
        style = MaterialTheme.typography.bodySmall)
    for (r in a.results) {
        val highlight = r.artifact == selectedFile
        Text(
            row(a, r),
            fontFamily = FontFamily.Monospace,
            fontWeight = if (highlight || r.isReference) FontWeight.Bold else FontWeight.Normal,
            style = MaterialTheme.typography.bodySmall,
            modifier = Modifier.padding(vertical = 2.dp),
        )
        r.error?.let { Text("  failed: $it", color = MaterialTheme.colorScheme.error, style = MaterialTheme.typography.bodySmall) }
    }
    val shown = a.resultsFor(selectedFile ?: "").firstOrNull() ?: a.reference
    if (shown != null && shown.classIou.isNotEmpty()) {
        Spacer(Modifier.size(8.dp))
        Text("IoU per class, ${shown.artifact} on ${shown.runtime}", style = MaterialTheme.typography.bodySmall)
        for (name in a.classes) {
            val iou = shown.classIou[name]
            MetricRow(name, iou?.let { String.format(Locale.ROOT, "%.1f", it) } ?: "- (not present)")
        }
    }
    Text("tools: " + a.toolVersions.entries.joinToString { "${it.key} ${it.value}" }, style = MaterialTheme.typography.bodySmall)
}

private fun row(a: ManifestAccuracy, r: AccuracyResult): String {
    val pct = { v: Double? -> v?.let { String.format(Locale.ROOT, "%5.1f", it) } ?: "    -" }
    val delta = a.miouDelta(r)?.takeIf { !r.isReference }?.let { String.format(Locale.ROOT, " (Δ %+.2f)", it) } ?: ""
    return "${r.artifact} · ${r.runtime} · ${r.precision.key}: mIoU ${pct(r.miou)}$delta · pixel ${pct(r.pixelAccuracy)}"
}
