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
import org.espnetmobile.core.AccuracyReport
import org.espnetmobile.core.FpsMeter
import org.espnetmobile.core.LatencySummary
import org.espnetmobile.core.LegendEntry
import org.espnetmobile.core.RgbImage
import org.espnetmobile.core.RuntimeOption
import org.espnetmobile.core.RuntimeOptions
import org.espnetmobile.core.SegmentationPipeline
import org.espnetmobile.core.StageTimes
import java.util.concurrent.ExecutorService
import java.util.concurrent.Executors

/**
 * UI state only. The bundle and the runtimes are behind [DemoSession]; all its work runs on one
 * worker thread (runtimes are not thread-safe), camera frames included. Compose reads the state.
 */
class DemoViewModel(app: Application) : AndroidViewModel(app) {
    /** The one thread that touches the session; CameraX delivers frames on it too. */
    val worker: ExecutorService = Executors.newSingleThreadExecutor()
    private val dispatcher = worker.asCoroutineDispatcher()

    var session by mutableStateOf<DemoSession?>(null)
        private set
    var bundleError by mutableStateOf<String?>(null)
        private set
    var selected by mutableStateOf<RuntimeOption?>(null)
        private set
    var runnerDescription by mutableStateOf<String?>(null)
        private set
    var busy by mutableStateOf(true)
        private set
    var error by mutableStateOf<String?>(null)
        private set

    var photoName by mutableStateOf<String?>(null)
        private set
    var overlay by mutableStateOf<Bitmap?>(null)
        private set
    var legend by mutableStateOf<List<LegendEntry>>(emptyList())
        private set
    var timings by mutableStateOf<StageTimes?>(null)
        private set
    var latency by mutableStateOf<LatencySummary?>(null)
        private set

    var liveFrame by mutableStateOf<Bitmap?>(null)
        private set
    var liveFps by mutableStateOf<Double?>(null)
        private set
    var liveTimes by mutableStateOf<StageTimes?>(null)
        private set
    @Volatile var cameraActive = false
    private val fpsMeter = FpsMeter()

    var accuracy by mutableStateOf<AccuracyReport?>(null)
        private set
    var accuracyProgress by mutableStateOf("")
        private set

    private var photo: RgbImage? = null

    init {
        // Open the bundle, probe the runtimes, then segment the bundled sample photo so the first
        // screen already shows a result.
        viewModelScope.launch {
            try {
                val opened = withContext(dispatcher) { DemoSession.open(getApplication()) }
                session = opened
                selected = RuntimeOptions.default(opened.options)
                withContext(dispatcher) {
                    val sample = opened.samplePhoto() ?: return@withContext
                    photo = sample.second
                    withContext(Dispatchers.Main) { photoName = "sample photo ${sample.first} (from the bundle)" }
                    if (selected != null) segmentPhoto(sample.second)
                }
            } catch (e: Exception) {
                if (session == null) bundleError = e.message ?: e.toString() else error = e.message ?: e.toString()
            } finally {
                busy = false
            }
        }
    }

    fun select(option: RuntimeOption) {
        if (!option.enabled) return
        selected = option
        accuracy = null
        latency = null
        runnerDescription = null
        fpsMeter.reset()
        if (photo != null) segmentCurrent()
    }

    private fun launchWork(block: suspend () -> Unit) {
        if (busy) return
        busy = true
        error = null
        viewModelScope.launch {
            try {
                withContext(dispatcher) { block() }
            } catch (e: Exception) {
                error = e.message ?: e.toString()
            } finally {
                busy = false
            }
        }
    }

    /** A photo from the picker or the camera app. */
    fun segment(uri: Uri) = launchWork {
        val image = Images.decode(getApplication<Application>(), uri)
        photo = image
        withContext(Dispatchers.Main) { photoName = uri.lastPathSegment ?: "photo" }
        segmentPhoto(image)
    }

    private fun segmentCurrent() = launchWork { photo?.let { segmentPhoto(it) } }

    private suspend fun segmentPhoto(image: RgbImage) {
        val s = session ?: return
        val option = selected ?: return
        val result = s.segment(image, option)
        val bitmap = Images.toBitmap(result.overlay)
        withContext(Dispatchers.Main) {
            overlay = bitmap
            legend = result.legend
            timings = result.times
            latency = null
            runnerDescription = result.runner
        }
    }

    /** Median latency on the current photo after warm-up, split into stages. */
    fun measureLatency(warmup: Int = SegmentationPipeline.DEFAULT_WARMUP, runs: Int = SegmentationPipeline.DEFAULT_RUNS) = launchWork {
        val s = session ?: return@launchWork
        val option = selected ?: return@launchWork
        val image = photo ?: return@launchWork
        val summary = s.benchmark(image, option, warmup, runs)
        withContext(Dispatchers.Main) { latency = summary }
    }

    /** One camera frame (on the worker thread, from CameraX's analyzer): segment it and show it with the mask. */
    fun analyzeFrame(frame: Bitmap, rotationDegrees: Int) {
        val s = session ?: return
        val option = selected ?: return
        if (!cameraActive || busy || !option.enabled) return
        try {
            val upright = Images.rotate(frame, rotationDegrees)
            val result = s.segment(Images.toRgb(upright), option)
            val bitmap = Images.toBitmap(result.overlay)
            val fps = fpsMeter.tick()
            viewModelScope.launch(Dispatchers.Main) {
                liveFrame = bitmap
                liveFps = fps
                liveTimes = result.times
                runnerDescription = result.runner
            }
        } catch (e: Exception) {
            viewModelScope.launch(Dispatchers.Main) { error = e.message ?: e.toString() }
        }
    }

    fun cameraStopped() {
        cameraActive = false
        fpsMeter.reset()
    }

    /** The golden inputs through the chosen runtime, against the manifest's thresholds. */
    fun runAccuracyCheck() = launchWork {
        val s = session ?: return@launchWork
        val option = selected ?: return@launchWork
        val total = s.bundle.manifest.golden.size
        withContext(Dispatchers.Main) {
            accuracy = null
            accuracyProgress = "0 / $total"
        }
        val report = s.accuracyCheck(option) { i, _ ->
            viewModelScope.launch(Dispatchers.Main) { accuracyProgress = "${i + 1} / $total" }
        }
        withContext(Dispatchers.Main) {
            accuracy = report
            runnerDescription = report.runner
        }
    }

    override fun onCleared() {
        cameraActive = false
        worker.execute { session?.close() }
        worker.shutdown()
    }
}
