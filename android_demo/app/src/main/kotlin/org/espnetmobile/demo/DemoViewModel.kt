package org.espnetmobile.demo

import android.app.Application
import android.graphics.Bitmap
import android.net.Uri
import androidx.compose.runtime.getValue
import androidx.compose.runtime.mutableStateOf
import androidx.compose.runtime.setValue
import androidx.lifecycle.AndroidViewModel
import androidx.lifecycle.viewModelScope
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.asCoroutineDispatcher
import kotlinx.coroutines.launch
import kotlinx.coroutines.withContext
import org.espnetmobile.core.AccuracyCheck
import org.espnetmobile.core.AccuracyReport
import org.espnetmobile.core.Bundle
import org.espnetmobile.core.LegendEntry
import org.espnetmobile.core.Postprocess
import org.espnetmobile.core.Preprocess
import org.espnetmobile.core.SegmentationRunner
import java.util.concurrent.Executors

/** Latency of one photo, in milliseconds. */
data class Timings(val preprocessMs: Double, val inferenceMs: Double, val postprocessMs: Double)

/**
 * Holds the bundle, the chosen runtime and the results. All model work runs on one background
 * thread (runtimes are not thread-safe); Compose reads the state.
 */
class DemoViewModel(app: Application) : AndroidViewModel(app) {
    private val worker = Executors.newSingleThreadExecutor().asCoroutineDispatcher()

    val bundle: Bundle?
    val bundleError: String?
    val options: List<RuntimeOption>

    init {
        var b: Bundle? = null
        var error: String? = null
        try {
            b = AssetBundleFiles.open(app)
        } catch (e: Exception) {
            error = e.message ?: e.toString()
        }
        bundle = b
        bundleError = error
        options = b?.let { Runtimes.options(it.manifest) } ?: emptyList()
    }

    var selected by mutableStateOf(options.firstOrNull())
        private set
    var runnerDescription by mutableStateOf<String?>(null)
        private set
    var busy by mutableStateOf(false)
        private set
    var error by mutableStateOf<String?>(null)
        private set

    var overlay by mutableStateOf<Bitmap?>(null)
        private set
    var legend by mutableStateOf<List<LegendEntry>>(emptyList())
        private set
    var timings by mutableStateOf<Timings?>(null)
        private set

    var accuracy by mutableStateOf<AccuracyReport?>(null)
        private set
    var accuracyProgress by mutableStateOf("")
        private set

    private var runner: SegmentationRunner? = null
    private var runnerFor: RuntimeOption? = null

    fun select(option: RuntimeOption) {
        selected = option
        accuracy = null
        runnerDescription = null
    }

    /** The runner for the selected option, opened on first use (worker thread only). */
    private fun currentRunner(): SegmentationRunner {
        val option = selected ?: throw IllegalStateException("the bundle has no artifact this app can run")
        runner?.let { if (runnerFor == option) return it }
        runner?.close()
        runner = null
        val opened = Runtimes.open(getApplication<Application>(), bundle!!, option)
        runner = opened
        runnerFor = option
        return opened
    }

    private fun launchWork(block: suspend () -> Unit) {
        if (busy) return
        busy = true
        error = null
        viewModelScope.launch {
            try {
                withContext(worker) { block() }
            } catch (e: Exception) {
                error = e.message ?: e.toString()
            } finally {
                busy = false
            }
        }
    }

    /** Decode, preprocess, run, postprocess, all as the manifest says. */
    fun segment(uri: Uri) = launchWork {
        val b = bundle ?: return@launchWork
        val m = b.manifest
        val image = Images.decode(getApplication<Application>(), uri)
        val r = currentRunner()
        val option = selected!!
        val t0 = System.nanoTime()
        val input = Preprocess.toModelInput(image, m.input, option.artifact.inputLayout)
        val t1 = System.nanoTime()
        val out = r.run(input)
        val t2 = System.nanoTime()
        val mask = out.logits?.let { Postprocess.argmax(it, m.numClasses, m.output.height, m.output.width) }
            ?: Postprocess.maskFromIndices(out.mask!!, m.numClasses, m.output.height, m.output.width)
        val full = Postprocess.resizeNearest(mask, image.height, image.width)
        val blended = Postprocess.overlay(image, full, m.palette)
        val entries = Postprocess.legend(full, m.labels, m.palette)
        val t3 = System.nanoTime()
        val bitmap = Images.toBitmap(blended)
        withContext(Dispatchers.Main) {
            overlay = bitmap
            legend = entries
            timings = Timings((t1 - t0) / 1e6, (t2 - t1) / 1e6, (t3 - t2) / 1e6)
            runnerDescription = r.description
        }
    }

    /** The golden inputs through the chosen runtime, against the manifest's thresholds. */
    fun runAccuracyCheck() = launchWork {
        val b = bundle ?: return@launchWork
        val option = selected ?: return@launchWork
        val r = currentRunner()
        val total = b.manifest.golden.size
        withContext(Dispatchers.Main) {
            accuracy = null
            runnerDescription = r.description
            accuracyProgress = "0 / $total"
        }
        val report = AccuracyCheck.run(b, option.artifact.precision, option.artifact.inputLayout, r) { i, _ ->
            accuracyProgress = "${i + 1} / $total"
        }
        withContext(Dispatchers.Main) { accuracy = report }
    }

    override fun onCleared() {
        runner?.close()
        worker.close()
    }
}
