// The pure Kotlin core: manifest (read with org.json, which Android ships), pre/post-processing,
// float16, parity metrics, latency statistics. No other Android APIs,
// so it is a plain JVM module the app depends on and the JVM tests run without a device.
// Without Gradle: ./run_tests.sh (kotlinc + JUnit 4), which is what CI uses.
import org.jetbrains.kotlin.gradle.dsl.JvmTarget

plugins {
    alias(libs.plugins.kotlin.jvm)
}

java {
    sourceCompatibility = JavaVersion.VERSION_17
    targetCompatibility = JavaVersion.VERSION_17
}

kotlin {
    compilerOptions { jvmTarget.set(JvmTarget.JVM_17) }
}

dependencies {
    // org.json is part of Android; the JVM module compiles and tests against the same implementation.
    compileOnly(libs.android.json)
    testImplementation(libs.android.json)
    testImplementation(libs.junit)
    testImplementation(libs.kotlin.test.junit)
}

tasks.test {
    // The golden-vector tests read a bundle folder from ESPNET_MOBILE_BUNDLE and skip without it.
    System.getenv("ESPNET_MOBILE_BUNDLE")?.let { environment("ESPNET_MOBILE_BUNDLE", it) }
    testLogging {
        events("passed", "skipped", "failed")
        showStandardStreams = true
    }
}
