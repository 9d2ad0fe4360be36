// Android-only glue: WorkManager sync, its scheduling, and the network bridge.
plugins {
    id("com.android.library")
    id("org.jetbrains.kotlin.android")
}

android {
    namespace = "org.outpost.android"
    compileSdk = 35
    defaultConfig {
        minSdk = 24
        // Shipped in the AAR as proguard.txt.
        consumerProguardFiles("consumer-rules.pro")
    }
    sourceSets["main"].java.srcDirs("src/main/kotlin")
    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
}

kotlin { jvmToolchain(17) }

dependencies {
    api(project(":outpost"))
    implementation("androidx.work:work-runtime-ktx:2.10.0")
}
