// API stub of Jetpack Compose runtime (androidx.compose.runtime, BOM 2024.12.01), for compile checks
// of DemoViewModel.kt only: the state holder and its property-delegate operators. Written from
//   repo   github.com/androidx/androidx
//   path   compose/runtime/runtime/src/commonMain/kotlin/androidx/compose/runtime/SnapshotState.kt
//   commit 39fe71dadf65c63e2448a087fb6751703f7d874a
// (mutableStateOf, State, MutableState, getValue/setValue have had these signatures since Compose 1.0.)
package androidx.compose.runtime

import kotlin.reflect.KProperty

private fun stub(): Nothing = throw UnsupportedOperationException("API stub for compile checks")

interface SnapshotMutationPolicy<T> {
    fun equivalent(a: T, b: T): Boolean
    fun merge(previous: T, current: T, applied: T): T? = null
}

fun <T> structuralEqualityPolicy(): SnapshotMutationPolicy<T> = stub()

fun <T> mutableStateOf(value: T, policy: SnapshotMutationPolicy<T> = structuralEqualityPolicy()): MutableState<T> = stub()

interface State<out T> {
    val value: T
}

@Suppress("NOTHING_TO_INLINE")
inline operator fun <T> State<T>.getValue(thisObj: Any?, property: KProperty<*>): T = value

interface MutableState<T> : State<T> {
    override var value: T
    operator fun component1(): T
    operator fun component2(): (T) -> Unit
}

@Suppress("NOTHING_TO_INLINE")
inline operator fun <T> MutableState<T>.setValue(thisObj: Any?, property: KProperty<*>, value: T) {
    this.value = value
}
