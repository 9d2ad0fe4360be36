// When WorkManager runs OutpostSyncWorker: a periodic sync in the background, and one as
// soon as the network allows after the user saved something.
package org.outpost.android

import android.content.Context
import androidx.work.BackoffPolicy
import androidx.work.Constraints
import androidx.work.ExistingPeriodicWorkPolicy
import androidx.work.ExistingWorkPolicy
import androidx.work.NetworkType
import androidx.work.OneTimeWorkRequest
import androidx.work.OneTimeWorkRequestBuilder
import androidx.work.OutOfQuotaPolicy
import androidx.work.PeriodicWorkRequest
import androidx.work.PeriodicWorkRequestBuilder
import androidx.work.WorkInfo
import androidx.work.WorkManager
import java.util.concurrent.ExecutorService
import java.util.concurrent.Executors
import java.util.concurrent.Future
import java.util.concurrent.TimeUnit
import kotlin.time.Duration

/** Schedules sync: periodic in the background, expedited right after local writes. */
object OutpostSyncScheduler {
    const val PERIODIC = "outpost-sync-periodic"
    const val SOON = "outpost-sync-soon"

    private val online = Constraints.Builder().setRequiredNetworkType(NetworkType.CONNECTED).build()

    // syncSoon reads WorkManager's state, then enqueues: one at a time, off the caller's
    // thread (a save handler on the main thread must not wait on WorkManager's database).
    private val serial: ExecutorService =
        Executors.newSingleThreadExecutor { r -> Thread(r, "outpost-schedule").apply { isDaemon = true } }

    /**
     * A sync every [intervalMinutes] (WorkManager's minimum is 15) while connected. Calling
     * it again with another interval or deadline updates the schedule.
     */
    fun schedulePeriodic(
        context: Context,
        intervalMinutes: Long = 15,
        deadline: Duration = OutpostSyncWorker.DEFAULT_DEADLINE,
    ) {
        WorkManager.getInstance(context)
            .enqueueUniquePeriodicWork(PERIODIC, ExistingPeriodicWorkPolicy.UPDATE, periodicRequest(intervalMinutes, deadline))
    }

    /**
     * A sync as soon as the network allows, e.g. after the user saved a form. A sync
     * already waiting to start will carry the new edit, so none is added then; behind a
     * running one (which may be past its upload) another is queued, so the edit does not
     * wait for the next periodic run. Returns once the request is enqueued.
     */
    fun syncSoon(
        context: Context,
        deadline: Duration = OutpostSyncWorker.DEFAULT_DEADLINE,
    ): Future<*> {
        val work = WorkManager.getInstance(context)
        return serial.submit {
            val states = work.getWorkInfosForUniqueWork(SOON).get().map { it.state }
            onSavePolicy(states)?.let { work.enqueueUniqueWork(SOON, it, soonRequest(deadline)).result.get() }
        }
    }

    /** Cancels both kinds of scheduled sync (a running one stops; nothing is lost). */
    fun cancel(context: Context) {
        val work = WorkManager.getInstance(context)
        work.cancelUniqueWork(PERIODIC)
        work.cancelUniqueWork(SOON)
    }

    /**
     * What to do with a new on-save sync, given the states of the ones already queued
     * under [SOON]: nothing when one has yet to start; otherwise run one after whatever
     * runs now (or at once when nothing does).
     */
    internal fun onSavePolicy(states: List<WorkInfo.State>): ExistingWorkPolicy? =
        if (states.any { it == WorkInfo.State.ENQUEUED || it == WorkInfo.State.BLOCKED }) {
            null
        } else {
            ExistingWorkPolicy.APPEND_OR_REPLACE
        }

    internal fun periodicRequest(intervalMinutes: Long, deadline: Duration): PeriodicWorkRequest =
        PeriodicWorkRequestBuilder<OutpostSyncWorker>(intervalMinutes, TimeUnit.MINUTES)
            .setConstraints(online)
            .setBackoffCriteria(BackoffPolicy.EXPONENTIAL, 30, TimeUnit.SECONDS)
            .setInputData(OutpostSyncWorker.input(deadline))
            .build()

    internal fun soonRequest(deadline: Duration): OneTimeWorkRequest =
        OneTimeWorkRequestBuilder<OutpostSyncWorker>()
            .setConstraints(online)
            .setExpedited(OutOfQuotaPolicy.RUN_AS_NON_EXPEDITED_WORK_REQUEST)
            .setBackoffCriteria(BackoffPolicy.EXPONENTIAL, 30, TimeUnit.SECONDS)
            .setInputData(OutpostSyncWorker.input(deadline))
            .build()
}
