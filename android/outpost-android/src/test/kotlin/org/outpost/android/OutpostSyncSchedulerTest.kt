// Scheduling through the real WorkManager (its own database and executors, under
// Robolectric): on-save syncs on API 30 and 34, a save during a running sync, and the
// periodic schedule.
package org.outpost.android

import androidx.work.ExistingWorkPolicy
import androidx.work.WorkInfo
import androidx.work.WorkInfo.State
import androidx.work.WorkManager
import java.util.concurrent.CountDownLatch
import java.util.concurrent.TimeUnit
import kotlinx.coroutines.runBlocking
import org.junit.After
import org.junit.Assert.assertEquals
import org.junit.Assert.assertNull
import org.junit.Assert.assertTrue
import org.junit.Test
import org.junit.runner.RunWith
import org.outpost.AMINA
import org.outpost.TestServer
import org.outpost.ffi.SyncState
import org.outpost.tokenProvider
import org.robolectric.RobolectricTestRunner
import org.robolectric.annotation.Config

@RunWith(RobolectricTestRunner::class)
class OutpostSyncSchedulerTest {
    private val server: TestServer = serverFor("phone")
    private val work: WorkManager = initWorkManager(app())

    @After
    fun stop() {
        app().closeStore()
        server.close()
    }

    private fun soon(): List<WorkInfo> = work.getWorkInfosForUniqueWork(OutpostSyncScheduler.SOON).get()

    @Test
    @Config(sdk = [30, 34])
    fun aSaveIsSyncedByExpeditedWork() =
        runBlocking<Unit> {
            app().outpost().put("answers", "q1", "{}")
            OutpostSyncScheduler.syncSoon(app()).get(10, TimeUnit.SECONDS)
            val run = soon().single()
            assertEquals(State.SUCCEEDED, work.awaitWork(run.id).state)
            assertEquals(SyncState.SYNCED, app().outpost().get("answers", "q1")?.syncState)
        }

    @Test
    fun aSaveDuringARunningSyncGetsASyncOfItsOwn() =
        runBlocking<Unit> {
            val release = CountDownLatch(1)
            TestApp.tokens = tokenProvider { release.await(20, TimeUnit.SECONDS); AMINA }
            app().outpost().put("answers", "q1", "{}")
            OutpostSyncScheduler.syncSoon(app()).get(10, TimeUnit.SECONDS)
            val first = soon().single()
            work.awaitWork(first.id) { it == State.RUNNING }

            // Saved while the first sync is under way (it may be past its upload).
            app().outpost().put("answers", "q2", "{}")
            OutpostSyncScheduler.syncSoon(app()).get(10, TimeUnit.SECONDS)
            // A third save finds the second waiting, which will carry it too.
            OutpostSyncScheduler.syncSoon(app()).get(10, TimeUnit.SECONDS)
            val queued = soon().filter { it.id != first.id }
            assertEquals(1, queued.size)

            release.countDown()
            assertEquals(State.SUCCEEDED, work.awaitWork(first.id).state)
            assertEquals(State.SUCCEEDED, work.awaitWork(queued.single().id).state)
            assertEquals(SyncState.SYNCED, app().outpost().get("answers", "q2")?.syncState)
        }

    @Test
    fun thePeriodicSyncIsScheduledOnce() {
        OutpostSyncScheduler.schedulePeriodic(app())
        OutpostSyncScheduler.schedulePeriodic(app())
        val periodic = work.getWorkInfosForUniqueWork(OutpostSyncScheduler.PERIODIC).get()
        assertEquals(1, periodic.size)
        assertEquals(TimeUnit.MINUTES.toMillis(15), periodic.single().periodicityInfo?.repeatIntervalMillis)
        OutpostSyncScheduler.cancel(app())
        assertTrue(work.getWorkInfosForUniqueWork(OutpostSyncScheduler.PERIODIC).get().all { it.state == State.CANCELLED })
    }

    @Test
    fun onSavePolicyKeepsOneWaitingAndQueuesBehindARunningOne() {
        val policy = OutpostSyncScheduler::onSavePolicy
        assertNull(policy(listOf(State.ENQUEUED)))
        assertNull(policy(listOf(State.RUNNING, State.BLOCKED)))
        assertEquals(ExistingWorkPolicy.APPEND_OR_REPLACE, policy(listOf(State.RUNNING)))
        assertEquals(ExistingWorkPolicy.APPEND_OR_REPLACE, policy(listOf(State.SUCCEEDED, State.FAILED)))
        assertEquals(ExistingWorkPolicy.APPEND_OR_REPLACE, policy(emptyList()))
    }
}
