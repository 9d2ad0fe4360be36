// The Kotlin library and the generated bindings, packaged as an Android library with
// the native libraries. Before building:
//   ../scripts/bindings-test.sh            (or just the `generate kotlin` step) -> generated/uniffi
//   cargo ndk -t arm64-v8a -t armeabi-v7a -t x86_64 -o android/outpost/src/main/jniLibs \
//       build --release -p outpost-ffi --features encryption
plugins {
    id("com.android.library")
    id("org.jetbrains.kotlin.android")
    id("org.jetbrains.kotlin.plugin.serialization")
}

android {
    namespace = "org.outpost"
    compileSdk = 35
    defaultConfig {
        minSdk = 24
        // Shipped in the AAR as proguard.txt, so apps that run R8 keep what JNA needs.
        consumerProguardFiles("src/main/resources/META-INF/proguard/outpost.pro")
    }
    sourceSets["main"].java.srcDirs("src/main/kotlin", "../generated/uniffi")
    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
}

kotlin { jvmToolchain(17) }

dependencies {
    // The AAR carries JNA's own native dispatch library for each ABI.
    implementation("net.java.dev.jna:jna:5.19.1@aar")
    api("org.jetbrains.kotlinx:kotlinx-coroutines-core:1.11.0")
    // Typed collections (Typed.kt) take and return the app's @Serializable classes.
    api("org.jetbrains.kotlinx:kotlinx-serialization-json:1.13.0")
}
