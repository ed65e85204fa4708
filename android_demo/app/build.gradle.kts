// The sample app: a bundle from assets/bundle/, ExecuTorch and LiteRT runtimes, Compose UI.
import org.jetbrains.kotlin.gradle.dsl.JvmTarget

plugins {
    alias(libs.plugins.android.application)
    alias(libs.plugins.kotlin.android)
    alias(libs.plugins.kotlin.compose)
}

android {
    namespace = "org.espnetmobile.demo"
    compileSdk = 35

    defaultConfig {
        applicationId = "org.espnetmobile.demo"
        // 28: ImageDecoder (EXIF orientation applied when decoding, as the Python pipeline does).
        minSdk = 28
        targetSdk = 35
        versionCode = 1
        versionName = "0.1.0"
        testInstrumentationRunner = "androidx.test.runner.AndroidJUnitRunner"
    }

    buildTypes {
        release {
            isMinifyEnabled = false
        }
    }

    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }

    buildFeatures {
        compose = true
    }

    // Optional: ExecuTorch through the project's C++ runner (src/main/cpp) instead of the AAR.
    // ./gradlew assembleDebug -Pespnet.nativeRunner=true -Pexecutorch.root=/path/to/et-android-install
    if (providers.gradleProperty("espnet.nativeRunner").orNull == "true") {
        defaultConfig {
            ndk { abiFilters += listOf("arm64-v8a") }
            externalNativeBuild {
                cmake {
                    arguments += "-DEXECUTORCH_ROOT=" +
                        providers.gradleProperty("executorch.root").get()
                }
            }
        }
        externalNativeBuild {
            cmake {
                path = file("src/main/cpp/CMakeLists.txt")
                // CMakeLists.txt needs 3.24+; AGP's default CMake (3.22.1) would refuse it.
                version = libs.versions.cmake.get()
            }
        }
    }

    lint {
        // CI runs lint; an error fails the build, and so do these warnings about wrong API use.
        abortOnError = true
        checkDependencies = true
        warningsAsErrors = false
        error += listOf("NewApi", "MissingPermission")
    }

    androidResources {
        // Models are read in place (LiteRT maps .tflite assets); golden tensors are read whole.
        noCompress += listOf("tflite", "pte", "f32", "f16", "u8")
    }
}

kotlin {
    compilerOptions { jvmTarget.set(JvmTarget.JVM_17) }
}

dependencies {
    implementation(project(":core"))

    implementation(platform(libs.compose.bom))
    implementation(libs.compose.ui)
    implementation(libs.compose.foundation)
    implementation(libs.compose.material3)
    implementation(libs.compose.ui.tooling.preview)
    implementation(libs.activity.compose)
    implementation(libs.lifecycle.viewmodel.compose)
    implementation(libs.coroutines.android)

    implementation(libs.executorch.android)
    implementation(libs.litert)
    implementation(libs.litert.gpu)
    // LiteRT's NPU path needs the vendor's NPU runtime libraries (dispatch library + compiler plugin)
    // packaged with the app; they are not on Maven. See android_demo/README.md ("NPU"). Without them
    // the NPU choice is shown disabled with that reason.

    implementation(libs.camera.camera2)
    implementation(libs.camera.lifecycle)

    androidTestImplementation(libs.androidx.test.runner)
    androidTestImplementation(libs.androidx.test.ext.junit)
    androidTestImplementation(libs.junit)
}
