package org.espnetmobile.demo

import android.Manifest
import android.content.pm.PackageManager
import androidx.activity.compose.rememberLauncherForActivityResult
import androidx.activity.result.contract.ActivityResultContracts
import androidx.camera.core.CameraSelector
import androidx.camera.core.ImageAnalysis
import androidx.camera.lifecycle.ProcessCameraProvider
import androidx.compose.foundation.Image
import androidx.compose.foundation.layout.fillMaxWidth
import androidx.compose.foundation.layout.padding
import androidx.compose.material3.Button
import androidx.compose.material3.MaterialTheme
import androidx.compose.material3.Text
import androidx.compose.runtime.Composable
import androidx.compose.runtime.DisposableEffect
import androidx.compose.runtime.getValue
import androidx.compose.runtime.mutableStateOf
import androidx.compose.runtime.remember
import androidx.compose.runtime.setValue
import androidx.compose.ui.Modifier
import androidx.compose.ui.graphics.asImageBitmap
import androidx.compose.ui.layout.ContentScale
import androidx.compose.ui.platform.LocalContext
import androidx.compose.ui.platform.LocalLifecycleOwner
import androidx.compose.ui.unit.dp
import androidx.core.content.ContextCompat
import java.util.Locale

/**
 * Live camera: CameraX delivers frames (latest only, RGBA) on the view model's worker thread; each
 * is turned upright, segmented with the chosen runtime and shown with its mask, so mask and picture
 * always match. The frame rate is that of frames shown, i.e. what the whole pipeline sustains.
 */
@Composable
fun CameraScreen(vm: DemoViewModel) {
    val context = LocalContext.current
    val lifecycleOwner = LocalLifecycleOwner.current
    var granted by remember {
        mutableStateOf(ContextCompat.checkSelfPermission(context, Manifest.permission.CAMERA) == PackageManager.PERMISSION_GRANTED)
    }
    val askPermission = rememberLauncherForActivityResult(ActivityResultContracts.RequestPermission()) { granted = it }
    if (!granted) {
        Text("The live view needs the camera.", modifier = Modifier.padding(vertical = 8.dp))
        Button(onClick = { askPermission.launch(Manifest.permission.CAMERA) }) { Text("Allow the camera") }
        return
    }
    if (vm.selected?.enabled != true) {
        Text("Choose a runtime above first.")
        return
    }

    DisposableEffect(lifecycleOwner) {
        val providerFuture = ProcessCameraProvider.getInstance(context)
        val analysis = ImageAnalysis.Builder()
            .setBackpressureStrategy(ImageAnalysis.STRATEGY_KEEP_ONLY_LATEST)
            .setOutputImageFormat(ImageAnalysis.OUTPUT_IMAGE_FORMAT_RGBA_8888)
            .build()
        analysis.setAnalyzer(vm.worker) { proxy ->
            try {
                val bitmap = proxy.toBitmap()
                vm.analyzeFrame(bitmap, proxy.imageInfo.rotationDegrees)
            } finally {
                proxy.close()
            }
        }
        vm.cameraActive = true
        providerFuture.addListener({
            val provider = providerFuture.get()
            provider.unbindAll()
            provider.bindToLifecycle(lifecycleOwner, CameraSelector.DEFAULT_BACK_CAMERA, analysis)
        }, ContextCompat.getMainExecutor(context))
        onDispose {
            vm.cameraStopped()
            analysis.clearAnalyzer()
            if (providerFuture.isDone) providerFuture.get().unbindAll()
        }
    }

    val frame = vm.liveFrame
    if (frame == null) {
        Text("Waiting for the first frame…")
    } else {
        Image(frame.asImageBitmap(), contentDescription = "camera frame with the segmentation mask",
            modifier = Modifier.fillMaxWidth(), contentScale = ContentScale.FillWidth)
    }
    val fps = vm.liveFps?.let { String.format(Locale.ROOT, "%.1f fps", it) } ?: "- fps"
    val t = vm.liveTimes?.let {
        String.format(Locale.ROOT, " · last frame %.1f ms (pre %.1f · inference %.1f · post %.1f)", it.totalMs, it.preprocessMs, it.inferenceMs, it.postprocessMs)
    } ?: ""
    Text(fps + t, style = MaterialTheme.typography.bodyMedium, modifier = Modifier.padding(top = 8.dp))
}
