// espnet-mobile Android sample: the app and the pure Kotlin core it shares with the JVM tests.
pluginManagement {
    repositories {
        google()
        mavenCentral()
        gradlePluginPortal()
    }
}

dependencyResolutionManagement {
    repositoriesMode.set(RepositoriesMode.FAIL_ON_PROJECT_REPOS)
    repositories {
        google()
        mavenCentral()
    }
}

rootProject.name = "espnet-mobile-android"
include(":core", ":app")
