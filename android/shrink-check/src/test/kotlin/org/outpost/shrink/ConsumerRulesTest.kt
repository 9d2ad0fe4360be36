// The library's consumer rules, used as an app's release build uses them: the app and
// its libraries shrunk and obfuscated together, then run with the real native library.
package org.outpost.shrink

import java.io.File
import java.nio.file.Files
import java.util.concurrent.TimeUnit
import java.util.zip.ZipFile
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertNotEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import proguard.Configuration
import proguard.ConfigurationParser
import proguard.ProGuard

class ConsumerRulesTest {
    private val injars = System.getProperty("shrink.injars").split(File.pathSeparator).map(::File)
    private val work: File = Files.createTempDirectory("outpost-shrink").toFile()

    /** The rules each input ships (META-INF/proguard/ in a jar or classes folder), as R8 reads them. */
    private fun shippedRules(skip: (String) -> Boolean = { false }): List<String> =
        injars.flatMap { input ->
            if (input.isDirectory) {
                File(input, "META-INF/proguard").listFiles().orEmpty().filter { it.name.endsWith(".pro") }
                    .filterNot { skip(it.path) }.map { it.readText() }
            } else {
                ZipFile(input).use { zip ->
                    zip.entries().toList()
                        .filter { it.name.startsWith("META-INF/proguard/") && it.name.endsWith(".pro") }
                        .filterNot { skip(it.name) }
                        .map { e -> zip.getInputStream(e).use { it.readBytes().decodeToString() } }
                }
            }
        }

    private fun ours(path: String) = path.endsWith("outpost.pro")

    /** Shrinks and obfuscates the app with [rules]; returns the output jar. */
    private fun shrink(rules: List<String>): File {
        val out = File(work, "app-${System.nanoTime()}.jar")
        val jmods = File(System.getProperty("java.home"), "jmods")
        val text =
            buildString {
                // Multi-release parts and module descriptors are not what an Android build
                // dexes either.
                injars.forEach { appendLine("-injars '${it.path}'(!META-INF/versions/**,!module-info.class)") }
                appendLine("-outjars '${out.path}'")
                listOf("java.base", "java.logging", "java.desktop").forEach {
                    appendLine("-libraryjars '${File(jmods, "$it.jmod").path}'(!**.jar;!module-info.class)")
                }
                // The platform class coroutines' debug agent names; an Android app has it.
                appendLine("-dontwarn android.annotation.**")
                appendLine("-keep class org.outpost.shrink.ShrinkAppKt { public static void main(java.lang.String[]); }")
                // Shrinking and renaming are what break reflection and JNA; optimisation
                // is left out to keep the check fast.
                appendLine("-dontoptimize")
                appendLine("-dontnote")
                rules.forEach { appendLine(it) }
            }
        val config = Configuration()
        ConfigurationParser(text, "shrink-check", work, System.getProperties()).use { it.parse(config) }
        ProGuard(config).execute()
        return out
    }

    private class Run(val exit: Int, val output: String)

    private fun run(jar: File): Run {
        val java = File(System.getProperty("java.home"), "bin/java").path
        val process =
            ProcessBuilder(
                java,
                "-Djna.library.path=${System.getProperty("jna.library.path")}",
                "-cp",
                jar.path,
                "org.outpost.shrink.ShrinkAppKt",
                Files.createTempDirectory(work.toPath(), "db").toString(),
            ).redirectErrorStream(true).start()
        val output = process.inputStream.bufferedReader().readText()
        check(process.waitFor(60, TimeUnit.SECONDS)) { "the shrunk app did not finish: $output" }
        return Run(process.exitValue(), output)
    }

    @Test
    fun aShrunkAndObfuscatedAppRunsWithTheShippedRules() {
        val jar = shrink(shippedRules())
        val run = run(jar)
        assertEquals(0, run.exit, run.output)
        assertEquals("ok", run.output.trim().lines().last(), run.output)
        // It really was obfuscated: the library's own classes got short names.
        val names = ZipFile(jar).use { zip -> zip.entries().toList().map { it.name } }
        assertTrue(names.none { it.startsWith("org/outpost/Outpost.class") }, "org.outpost.Outpost kept its name")
        assertTrue(names.contains("org/outpost/ffi/UniffiLib.class") || names.any { it.startsWith("org/outpost/ffi/") })
    }

    @Test
    fun withoutOurRulesTheSameAppCrashes() {
        // The control: the check above fails when the rules it checks are missing.
        val run = run(shrink(shippedRules(skip = ::ours)))
        assertNotEquals(0, run.exit, run.output)
        // JNA's native half cannot find the renamed classes and methods.
        assertTrue(run.output.contains("UnsatisfiedLinkError"), run.output)
    }

    @Test
    fun theRulesShipInTheJarAndTheAar() {
        val kotlin = injars.first { File(it, "META-INF/proguard/outpost.pro").isFile }
        val rules = File(kotlin, "META-INF/proguard/outpost.pro").readText()
        assertTrue(rules.contains("-keep class org.outpost.ffi.** { *; }"))
        assertTrue(rules.contains("-keep class com.sun.jna.** { *; }"))
        // The Gradle builds put them in the AARs (proguard.txt) too.
        val android = File("..").canonicalFile
        assertTrue(
            File(android, "outpost/build.gradle.kts").readText()
                .contains("consumerProguardFiles(\"src/main/resources/META-INF/proguard/outpost.pro\")"),
        )
        val worker = File(android, "outpost-android/consumer-rules.pro")
        assertTrue(worker.readText().contains("org.outpost.android.OutpostSyncWorker"))
        assertTrue(File(android, "outpost-android/build.gradle.kts").readText().contains("consumerProguardFiles(\"consumer-rules.pro\")"))
    }
}
