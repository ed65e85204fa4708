package org.espnetmobile.core

import org.junit.internal.TextListener
import org.junit.runner.Description
import org.junit.runner.JUnitCore
import org.junit.runner.notification.Failure
import org.junit.runner.notification.RunListener
import kotlin.system.exitProcess

/**
 * Runs the given test classes with JUnit 4's JUnitCore (used by run_tests.sh, which has no Gradle).
 * Prints JUnit's usual report, one line per test, and a last line a script can parse:
 * `SUMMARY tests=N passed=P failed=F skipped=S seconds=T`. Exit code 0 only when nothing failed.
 */
object CoreTestMain {
    @JvmStatic
    fun main(args: Array<String>) {
        val classes = args.map { Class.forName(it) }
        val core = JUnitCore()
        val failed = HashSet<Description>()
        val skipped = LinkedHashMap<Description, String>()
        val started = HashMap<Description, Long>()
        core.addListener(object : RunListener() {
            override fun testStarted(description: Description) {
                started[description] = System.nanoTime()
            }

            override fun testFailure(failure: Failure) {
                failed.add(failure.description)
            }

            override fun testAssumptionFailure(failure: Failure) {
                skipped[failure.description] = failure.message ?: "assumption failed"
            }

            override fun testFinished(description: Description) {
                val ms = (System.nanoTime() - (started[description] ?: System.nanoTime())) / 1e6
                val status = when (description) {
                    in failed -> "FAIL"
                    in skipped -> "SKIP"
                    else -> "PASS"
                }
                val why = skipped[description]?.let { " ($it)" } ?: ""
                println(String.format(java.util.Locale.ROOT, "TEST %s %s.%s %.0f ms%s", status,
                    description.testClass?.simpleName, description.methodName, ms, why))
            }
        })
        core.addListener(TextListener(System.out))
        val result = core.run(*classes.toTypedArray())
        val skippedCount = skipped.size + result.ignoreCount
        val passed = result.runCount - result.failureCount - skipped.size
        println(String.format(java.util.Locale.ROOT, "SUMMARY tests=%d passed=%d failed=%d skipped=%d seconds=%.2f",
            result.runCount, passed, result.failureCount, skippedCount, result.runTime / 1000.0))
        exitProcess(if (result.wasSuccessful()) 0 else 1)
    }
}
