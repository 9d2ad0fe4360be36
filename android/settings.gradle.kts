// Gradle build for app developers (not built in this repository's CI: no Android SDK).
// The JVM part (`outpost`) is also built and tested by Maven through pom.xml.
pluginManagement {
    repositories {
        google()
        mavenCentral()
        gradlePluginPortal()
    }
}
dependencyResolutionManagement {
    repositories {
        google()
        mavenCentral()
    }
}
rootProject.name = "outpost-android"
include(":outpost", ":outpost-android", ":sample")
