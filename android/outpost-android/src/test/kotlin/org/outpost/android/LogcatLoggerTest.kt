// LogcatLogger with the real library: a sync to an unreachable server leaves a Logcat
// entry under the Outpost tag, at the level the core logged it, with no record data.
package org.outpost.android

import android.util.Log
import kotlinx.coroutines.runBlocking
import org.junit.After
import org.junit.Assert.assertEquals
import org.junit.Assert.assertFalse
import org.junit.Assert.assertTrue
import org.junit.Test
import org.junit.runner.RunWith
import org.outpost.Outpost
import org.outpost.TestServer
import org.outpost.clearLogger
import org.outpost.ffi.LogLevel
import org.robolectric.RobolectricTestRunner
import org.robolectric.RuntimeEnvironment
import org.robolectric.annotation.Config
import org.robolectric.shadows.ShadowLog

@RunWith(RobolectricTestRunner::class)
class LogcatLoggerTest {
    private val server: TestServer = serverFor("phone")

    @After
    fun stop() {
        Outpost.clearLogger()
        if (RuntimeEnvironment.getApplication() is TestApp) app().closeStore()
        server.close()
    }

    private fun entries() = ShadowLog.getLogsForTag(LogcatLogger.TAG).orEmpty()

    // Both platforms: android.util.Log is the platform's own class on each.
    @Test
    @Config(sdk = [30, 34])
    fun aFailedSyncLeavesALogcatEntryWithoutRecordData() =
        runBlocking<Unit> {
            ShadowLog.clear()
            LogcatLogger.install(LogLevel.DEBUG)
            TestApp.config = server.config("phone").copy(serverUrl = "http://127.0.0.1:9/")
            val secret = "LEAKCHECK-android-record-42"
            app().outpost().put("answers", "q1", """{"note":"$secret"}""")
            app().outpost().syncNow()
            val end = System.nanoTime() + 10_000_000_000L
            while (entries().none { it.msg.contains("sync ended") }) {
                assertTrue("no Logcat entry under ${LogcatLogger.TAG}", System.nanoTime() < end)
                Thread.sleep(20)
            }
            val ended = entries().first { it.msg.contains("sync ended") }
            assertEquals(Log.INFO, ended.type)
            assertTrue(ended.msg, ended.msg.startsWith("outpost_core::sync::run: sync ended"))
            assertTrue(ended.msg, ended.msg.contains("outcome=BackingOff"))
            for (entry in entries()) {
                assertFalse(entry.msg, entry.msg.contains("LEAKCHECK"))
            }
        }
}
