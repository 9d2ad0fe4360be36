// The JVM adapter of the log sink: records of a real failure reach a Kotlin logger with
// no record data or token in them, a throwing logger keeps receiving, and clearing stops
// delivery. The sink is one per process, so this class installs and clears it per test.
package org.outpost

import java.util.concurrent.CopyOnWriteArrayList
import java.util.concurrent.atomic.AtomicInteger
import kotlinx.coroutines.runBlocking
import org.junit.jupiter.api.AfterEach
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.outpost.ffi.LogLevel
import org.outpost.ffi.SyncOutcome

class LoggingTest : ServerTest() {
    private data class Line(val level: LogLevel, val target: String, val message: String)

    private val lines = CopyOnWriteArrayList<Line>()

    @AfterEach
    fun clear() = Outpost.clearLogger()

    @Test
    fun aRefusedTokenLeavesATraceWithoutTheTokenOrTheData() =
        runBlocking<Unit> {
            Outpost.setLogger(LogLevel.TRACE) { level, target, message -> lines += Line(level, target, message) }
            val token = "tok-LEAKCHECK-kotlin-31"
            val data = "LEAKCHECK-record-data-77"
            val device = server.device("phone", token = token).also { open += it }
            device.put("answers", "a1", """{"note":"$data"}""")
            assertEquals(SyncOutcome.AUTH_FAILED, device.syncNow().outcome)
            eventually { lines.any { it.message.contains("outcome=AuthFailed") } }
            val ended = lines.first { it.message.contains("outcome=AuthFailed") }
            assertEquals(LogLevel.WARN, ended.level)
            assertTrue(ended.target.startsWith("outpost_core::sync"), ended.target)
            for (line in lines) {
                assertFalse(line.message.contains("LEAKCHECK"), line.toString())
            }
        }

    @Test
    fun aThrowingLoggerKeepsReceivingAndClearingStopsIt() =
        runBlocking<Unit> {
            val calls = AtomicInteger()
            Outpost.setLogger(LogLevel.INFO) { _, _, message ->
                lines += Line(LogLevel.INFO, "", message)
                calls.incrementAndGet()
                throw IllegalStateException("the app's logger is broken")
            }
            val device = server.device("phone", token = "wrong").also { open += it }
            device.put("answers", "a1", "{}")
            device.syncNow()
            device.syncNow()
            eventually { lines.count { it.message.contains("outcome=AuthFailed") } == 2 }
            Outpost.clearLogger()
            Thread.sleep(100)
            val before = calls.get()
            device.syncNow()
            Thread.sleep(300)
            assertEquals(before, calls.get())
        }
}
