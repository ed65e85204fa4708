// API stub of AndroidX Lifecycle 2.8.7 (lifecycle-viewmodel), for compile checks of DemoViewModel.kt only.
// Written from
//   repo   github.com/androidx/androidx
//   paths  lifecycle/lifecycle-viewmodel/src/androidMain/kotlin/androidx/lifecycle/AndroidViewModel.android.kt
//          (commit 1d4f50b332261250ae293e251ad77f37f3091273), .../commonMain/.../ViewModel.kt
//          (commit 42930bf5e811fc381f1b43e1fb0e0492e7992b02) and viewModelScope in
//          lifecycle-viewmodel's ViewModel extensions (an extension property, not a member).
package androidx.lifecycle

import android.app.Application
import kotlinx.coroutines.CoroutineScope

private fun stub(): Nothing = throw UnsupportedOperationException("API stub for compile checks")

abstract class ViewModel {
    protected open fun onCleared() {}
}

open class AndroidViewModel(private val application: Application) : ViewModel() {
    open fun <T : Application> getApplication(): T = stub()
}

val ViewModel.viewModelScope: CoroutineScope get() = stub()
