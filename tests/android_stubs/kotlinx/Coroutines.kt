// API stub of kotlinx.coroutines 1.9.0 (kotlinx-coroutines-core/-android), for compile checks of
// DemoViewModel.kt only. Written from
//   repo   github.com/Kotlin/kotlinx.coroutines
//   commit d8d6f8f37978b8e202d93b34f23f101df9c5724d (tag 1.9.0)
//   files  common/src/Builders.common.kt (launch, withContext), CoroutineScope.kt, CoroutineDispatcher.kt,
//          MainCoroutineDispatcher.kt, jvm/src/Dispatchers.kt, jvm/src/Executors.kt
// Kinds kept: launch is an extension of CoroutineScope with default context and start; withContext is
// a suspend function; asCoroutineDispatcher is an extension returning ExecutorCoroutineDispatcher.
package kotlinx.coroutines

import java.io.Closeable
import java.util.concurrent.Executor
import java.util.concurrent.ExecutorService
import kotlin.coroutines.AbstractCoroutineContextElement
import kotlin.coroutines.Continuation
import kotlin.coroutines.ContinuationInterceptor
import kotlin.coroutines.CoroutineContext
import kotlin.coroutines.EmptyCoroutineContext

private fun stub(): Nothing = throw UnsupportedOperationException("API stub for compile checks")

interface CoroutineScope {
    val coroutineContext: CoroutineContext
}

interface Job : CoroutineContext.Element {
    companion object Key : CoroutineContext.Key<Job>

    val isActive: Boolean
}

enum class CoroutineStart { DEFAULT, LAZY, ATOMIC, UNDISPATCHED }

abstract class CoroutineDispatcher : AbstractCoroutineContextElement(ContinuationInterceptor), ContinuationInterceptor {
    abstract fun dispatch(context: CoroutineContext, block: Runnable)
    final override fun <T> interceptContinuation(continuation: Continuation<T>): Continuation<T> = stub()
}

abstract class MainCoroutineDispatcher : CoroutineDispatcher() {
    abstract val immediate: MainCoroutineDispatcher
}

abstract class ExecutorCoroutineDispatcher : CoroutineDispatcher(), Closeable, AutoCloseable {
    abstract val executor: Executor
    abstract override fun close()
}

object Dispatchers {
    @JvmStatic val Default: CoroutineDispatcher get() = stub()
    @JvmStatic val Main: MainCoroutineDispatcher get() = stub()
    @JvmStatic val IO: CoroutineDispatcher get() = stub()
    @JvmStatic val Unconfined: CoroutineDispatcher get() = stub()
}

@JvmName("from")
fun ExecutorService.asCoroutineDispatcher(): ExecutorCoroutineDispatcher = stub()

fun CoroutineScope.launch(
    context: CoroutineContext = EmptyCoroutineContext,
    start: CoroutineStart = CoroutineStart.DEFAULT,
    block: suspend CoroutineScope.() -> Unit,
): Job = stub()

suspend fun <T> withContext(context: CoroutineContext, block: suspend CoroutineScope.() -> T): T = stub()
