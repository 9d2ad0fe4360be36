// The WorkManager worker that runs one sync when the OS lets it. Deliberately thin: what
// to send, retries inside a run, backoff and conflicts are the core's job; this only
// tells the core when it may run and reports its answer to WorkManager.
package org.outpost.android

import android.app.Notification
import android.app.NotificationChannel
import android.app.NotificationManager
import android.content.Context
import android.content.pm.ServiceInfo
import android.os.Build
import android.util.Log
import androidx.core.app.NotificationCompat
import androidx.work.CoroutineWorker
import androidx.work.Data
import androidx.work.ForegroundInfo
import androidx.work.WorkerParameters
import kotlin.coroutines.cancellation.CancellationException
import kotlin.time.Duration
import kotlin.time.Duration.Companion.milliseconds
import kotlin.time.Duration.Companion.minutes
import org.outpost.ffi.OutpostException
import org.outpost.ffi.SyncReport

/**
 * Runs one sync. The store comes from the app's [OutpostProvider] (its Application), so
 * a worker that WorkManager starts in a cold process opens it itself. The sync is bounded
 * by the deadline the scheduler put in the input (9 minutes by default, under
 * WorkManager's 10-minute limit), which also covers the queued attachments the sync moves
 * after the records; when the OS stops the work earlier, the coroutine is
 * cancelled and so is the sync, and nothing is lost. A report that asks for a retry
 * becomes `Result.retry()`, so WorkManager's backoff takes over.
 */
class OutpostSyncWorker(context: Context, params: WorkerParameters) : CoroutineWorker(context, params) {
    override suspend fun doWork(): Result {
        val provider = applicationContext as? OutpostProvider
        if (provider == null) {
            // A setup mistake, not a network problem: retrying would never help.
            Log.e(TAG, "the Application does not implement org.outpost.android.OutpostProvider")
            return Result.failure()
        }
        return try {
            resultOf(provider.outpost().syncNow(deadline(inputData)))
        } catch (e: CancellationException) {
            throw e
        } catch (e: OutpostException) {
            // Closed or signed out under us, or the file could not be opened: try later.
            Log.w(TAG, "sync did not run: ${e::class.simpleName}")
            Result.retry()
        }
    }

    /**
     * Expedited work runs as a foreground service before Android 12, and WorkManager asks
     * for its notification; without one the work fails there.
     */
    override suspend fun getForegroundInfo(): ForegroundInfo = syncForegroundInfo(applicationContext)

    companion object {
        internal const val TAG = "OutpostSync"
        internal const val KEY_DEADLINE_MS = "org.outpost.deadline_ms"

        /** What a run gets when its input names no deadline: under the 10-minute limit. */
        val DEFAULT_DEADLINE: Duration = 9.minutes

        internal fun input(deadline: Duration): Data =
            Data.Builder().putLong(KEY_DEADLINE_MS, deadline.inWholeMilliseconds).build()

        internal fun deadline(input: Data): Duration =
            input.getLong(KEY_DEADLINE_MS, DEFAULT_DEADLINE.inWholeMilliseconds).milliseconds

        internal fun resultOf(report: SyncReport): Result =
            if (report.shouldRetry) Result.retry() else Result.success()
    }
}

internal const val SYNC_CHANNEL = "outpost-sync"
internal const val SYNC_NOTIFICATION_ID = 0x5c7c
private const val CHANNEL_NAME = "Sync"

/** A quiet, low-importance "Syncing…" notification for the foreground service. */
internal fun syncForegroundInfo(context: Context): ForegroundInfo {
    if (Build.VERSION.SDK_INT >= Build.VERSION_CODES.O) {
        val manager = context.getSystemService(NotificationManager::class.java)
        manager.createNotificationChannel(
            NotificationChannel(SYNC_CHANNEL, CHANNEL_NAME, NotificationManager.IMPORTANCE_LOW),
        )
    }
    val notification: Notification =
        NotificationCompat.Builder(context, SYNC_CHANNEL)
            .setSmallIcon(android.R.drawable.stat_notify_sync)
            .setContentTitle("Syncing")
            .setOngoing(true)
            .setSilent(true)
            .build()
    return if (Build.VERSION.SDK_INT >= Build.VERSION_CODES.Q) {
        ForegroundInfo(SYNC_NOTIFICATION_ID, notification, ServiceInfo.FOREGROUND_SERVICE_TYPE_DATA_SYNC)
    } else {
        ForegroundInfo(SYNC_NOTIFICATION_ID, notification)
    }
}
