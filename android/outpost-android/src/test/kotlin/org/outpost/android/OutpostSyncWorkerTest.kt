// The worker on success, retry, deadline and cold start, and its notification for
// expedited work before Android 12, with the real library and server.
package org.outpost.android

import android.app.Application
import android.app.NotificationManager
import android.os.Build
import androidx.work.ListenableWorker.Result
import java.util.concurrent.CountDownLatch
import java.util.concurrent.TimeUnit
import kotlin.time.Duration.Companion.milliseconds
import kotlin.time.Duration.Companion.minutes
import kotlinx.coroutines.runBlocking
import org.junit.After
import org.junit.Assert.assertEquals
import org.junit.Assert.assertNotNull
import org.junit.Assert.assertTrue
import org.junit.Test
import org.junit.runner.RunWith
import org.outpost.AMINA
import org.outpost.Outpost
import org.outpost.TestServer
import org.outpost.ffi.SyncState
import org.outpost.tokenProvider
import org.robolectric.RobolectricTestRunner
import org.robolectric.RuntimeEnvironment
import org.robolectric.annotation.Config

@RunWith(RobolectricTestRunner::class)
class OutpostSyncWorkerTest {
    private val server: TestServer = serverFor("phone")

    @After
    fun stop() {
        if (RuntimeEnvironment.getApplication() is TestApp) app().closeStore()
        server.close()
    }

    @Test
    fun aRunSendsThePendingEditsAndSucceeds() =
        runBlocking<Unit> {
            val store = app().outpost()
            store.put("answers", "q1", """{"a":"yes"}""")
            assertEquals(Result.success(), worker().doWork())
            assertEquals(SyncState.SYNCED, store.get("answers", "q1")?.syncState)
        }

    @Test
    fun aColdStartOpensTheStoreThroughTheApp() =
        runBlocking<Unit> {
            // The form was saved by an earlier process, which is gone.
            Outpost.open(server.config("phone"), tokenProvider { AMINA }).apply {
                put("answers", "q1", """{"a":"saved before the process died"}""")
                closeAndWait()
            }
            assertEquals(0, app().opens.get())
            assertEquals(Result.success(), worker().doWork())
            assertEquals(1, app().opens.get())
            assertEquals(SyncState.SYNCED, app().outpost().get("answers", "q1")?.syncState)
        }

    @Test
    fun aStoreClosedSinceIsOpenedAgainNotRetriedForever() =
        runBlocking<Unit> {
            // Closed (or signed out) by the app; the periodic work still runs later.
            app().outpost().apply {
                put("answers", "q1", "{}")
                closeAndWait()
            }
            assertEquals(Result.success(), worker().doWork())
            assertEquals(2, app().opens.get())
            assertEquals(SyncState.SYNCED, app().outpost().get("answers", "q1")?.syncState)
        }

    @Test
    fun anUnreachableServerAsksForARetry() =
        runBlocking<Unit> {
            TestApp.config = server.config("phone").copy(serverUrl = "http://127.0.0.1:9/")
            app().outpost().put("answers", "q1", "{}")
            assertEquals(Result.retry(), worker().doWork())
            assertEquals(SyncState.PENDING, app().outpost().get("answers", "q1")?.syncState)
        }

    @Test
    fun theDeadlineComesFromTheRequestAndEndsInARetry() =
        runBlocking<Unit> {
            val release = CountDownLatch(1)
            TestApp.tokens = tokenProvider { release.await(20, TimeUnit.SECONDS); AMINA }
            app().outpost().put("answers", "q1", "{}")
            val started = System.nanoTime()
            val result = worker(OutpostSyncWorker.input(300.milliseconds)).doWork()
            val took = (System.nanoTime() - started) / 1_000_000
            release.countDown()
            assertEquals(Result.retry(), result)
            assertTrue("took $took ms", took in 250..10_000)
        }

    @Test
    fun periodicAndOnSaveRunsGetNineMinutesNotThirtySeconds() {
        // WorkManager stops a worker at 10 minutes; a first sync on a slow link needs them.
        assertEquals(9.minutes, OutpostSyncWorker.deadline(androidx.work.Data.EMPTY))
        val periodic = OutpostSyncScheduler.periodicRequest(15, OutpostSyncWorker.DEFAULT_DEADLINE)
        assertEquals(9.minutes, OutpostSyncWorker.deadline(periodic.workSpec.input))
        val soon = OutpostSyncScheduler.soonRequest(OutpostSyncWorker.DEFAULT_DEADLINE)
        assertEquals(9.minutes, OutpostSyncWorker.deadline(soon.workSpec.input))
    }

    @Test
    @Config(application = Application::class)
    fun anAppWithoutAProviderFailsInsteadOfRetryingForever() =
        runBlocking<Unit> {
            assertEquals(Result.failure(), worker().doWork())
        }

    @Test
    @Config(sdk = [30, 34])
    fun expeditedWorkHasItsNotification() =
        runBlocking<Unit> {
            val info = worker().getForegroundInfo()
            assertNotNull(info.notification)
            val channel =
                RuntimeEnvironment.getApplication().getSystemService(NotificationManager::class.java)
                    .getNotificationChannel(info.notification.channelId)
            assertNotNull("channel ${info.notification.channelId} on API ${Build.VERSION.SDK_INT}", channel)
            assertEquals(android.content.pm.ServiceInfo.FOREGROUND_SERVICE_TYPE_DATA_SYNC, info.foregroundServiceType)
        }

    @Test
    fun theManifestDeclaresTheForegroundServiceTheNotificationNeeds() {
        // API 29+ rejects a dataSync ForegroundInfo for a service not declared as such.
        val manifest = java.io.File("src/main/AndroidManifest.xml").readText()
        val service = Regex("""<service\s[^>]*SystemForegroundService[^>]*>""").find(manifest)?.value
        assertNotNull("SystemForegroundService is not declared", service)
        assertTrue(service!!, service.contains("android:foregroundServiceType=\"dataSync\""))
        assertTrue(manifest.contains("android.permission.FOREGROUND_SERVICE_DATA_SYNC"))
    }
}
