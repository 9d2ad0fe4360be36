// Android-only glue between the OS and Outpost: a WorkManager worker, its scheduling,
// and a ConnectivityManager bridge. Deliberately thin: what to send, retries, backoff
// and conflicts are the core's job; this only tells the core when it may run and
// reports its answer to the OS. Not compiled in this repository's CI (no Android SDK).
package org.outpost.android

import android.content.Context
import android.net.ConnectivityManager
import android.net.Network
import android.net.NetworkCapabilities
import androidx.work.BackoffPolicy
import androidx.work.Constraints
import androidx.work.CoroutineWorker
import androidx.work.ExistingPeriodicWorkPolicy
import androidx.work.ExistingWorkPolicy
import androidx.work.NetworkType
import androidx.work.OneTimeWorkRequestBuilder
import androidx.work.OutOfQuotaPolicy
import androidx.work.PeriodicWorkRequestBuilder
import androidx.work.WorkManager
import androidx.work.WorkerParameters
import java.util.concurrent.TimeUnit
import kotlin.time.Duration.Companion.seconds
import org.outpost.Outpost

/** Where the worker finds the app's open store; set it in `Application.onCreate`. */
object OutpostHolder {
    @Volatile
    var instance: Outpost? = null
}

/**
 * Runs one sync within WorkManager's execution window. The deadline stays under the
 * 10-minute limit for a worker (and about 30 s is what an expedited job can count on);
 * a report that asks for a retry becomes `Result.retry()`, so WorkManager's backoff
 * takes over.
 */
class OutpostSyncWorker(context: Context, params: WorkerParameters) : CoroutineWorker(context, params) {
    override suspend fun doWork(): Result {
        val outpost = OutpostHolder.instance ?: return Result.retry()
        // The sync moves queued attachments too, after records, within the same deadline.
        // Cancelling this coroutine (stopped work) cancels the sync; nothing is lost.
        val report = outpost.syncNow(deadline = 30.seconds)
        return if (report.shouldRetry) Result.retry() else Result.success()
    }
}

/** Schedules sync: periodic in the background, expedited right after local writes. */
object OutpostSyncScheduler {
    private const val PERIODIC = "outpost-sync-periodic"
    private const val NOW = "outpost-sync-now"

    private val online = Constraints.Builder().setRequiredNetworkType(NetworkType.CONNECTED).build()

    /** A sync every [intervalMinutes] (WorkManager's minimum is 15) while connected. */
    fun schedulePeriodic(context: Context, intervalMinutes: Long = 15) {
        val request =
            PeriodicWorkRequestBuilder<OutpostSyncWorker>(intervalMinutes, TimeUnit.MINUTES)
                .setConstraints(online)
                .setBackoffCriteria(BackoffPolicy.EXPONENTIAL, 30, TimeUnit.SECONDS)
                .build()
        WorkManager.getInstance(context)
            .enqueueUniquePeriodicWork(PERIODIC, ExistingPeriodicWorkPolicy.KEEP, request)
    }

    /** A sync as soon as the network allows, e.g. after the user saved a form. */
    fun syncSoon(context: Context) {
        val request =
            OneTimeWorkRequestBuilder<OutpostSyncWorker>()
                .setConstraints(online)
                .setExpedited(OutOfQuotaPolicy.RUN_AS_NON_EXPEDITED_WORK_REQUEST)
                .setBackoffCriteria(BackoffPolicy.EXPONENTIAL, 30, TimeUnit.SECONDS)
                .build()
        // REPLACE would cancel a running sync; KEEP joins it (the core joins too).
        WorkManager.getInstance(context).enqueueUniqueWork(NOW, ExistingWorkPolicy.KEEP, request)
    }
}

/**
 * Tells the core what the OS knows about the network. The core trusts "up" only after
 * its own debounce and health probe, so flapping callbacks are harmless.
 */
class OutpostNetworkBridge(context: Context, private val outpost: Outpost) : AutoCloseable {
    private val connectivity = context.getSystemService(ConnectivityManager::class.java)
    private val callback =
        object : ConnectivityManager.NetworkCallback() {
            override fun onCapabilitiesChanged(network: Network, caps: NetworkCapabilities) {
                outpost.setNetworkAvailable(caps.hasCapability(NetworkCapabilities.NET_CAPABILITY_VALIDATED))
            }

            override fun onLost(network: Network) {
                outpost.setNetworkAvailable(connectivity.activeNetwork != null)
            }
        }

    fun start() {
        val caps = connectivity.getNetworkCapabilities(connectivity.activeNetwork)
        outpost.setNetworkAvailable(caps?.hasCapability(NetworkCapabilities.NET_CAPABILITY_VALIDATED) == true)
        connectivity.registerDefaultNetworkCallback(callback)
    }

    override fun close() = connectivity.unregisterNetworkCallback(callback)
}
