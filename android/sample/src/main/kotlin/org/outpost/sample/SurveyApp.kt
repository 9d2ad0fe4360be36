// The Application: it opens the one store of the process on first use (for the screens
// and for a sync worker that Android starts in a cold process alike), keeps the core
// told about the network, and schedules background sync.
package org.outpost.sample

import android.app.Application
import java.io.File
import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.SupervisorJob
import kotlinx.coroutines.launch
import org.outpost.Outpost
import org.outpost.android.LogcatLogger
import org.outpost.android.OutpostNetworkBridge
import org.outpost.android.OutpostProvider
import org.outpost.android.OutpostSyncScheduler
import org.outpost.android.SharedOutpost
import org.outpost.ffi.CollectionSpec
import org.outpost.ffi.ConflictStrategy
import org.outpost.ffi.Durability
import org.outpost.ffi.OutpostConfig
import org.outpost.tokenProvider

class SurveyApp : Application(), OutpostProvider {
    private val shared = SharedOutpost { Outpost.open(config(), tokenProvider { refresh -> Session.token(this, refresh) }) }

    /** Lives as long as the process: the network bridge and app-wide work. */
    val scope = CoroutineScope(SupervisorJob() + Dispatchers.Main.immediate)

    override suspend fun outpost(): Outpost = shared.get()

    override fun onCreate() {
        super.onCreate()
        // Failures in the field leave a trace in Logcat (never record data or tokens).
        LogcatLogger.install()
        // Every 15 minutes while connected; saves ask for one sooner (SurveyFormActivity).
        OutpostSyncScheduler.schedulePeriodic(this)
        scope.launch { OutpostNetworkBridge(this@SurveyApp, outpost()).start() }
    }

    private fun config() =
        OutpostConfig(
            // noBackupFilesDir: the store is synced data; a device backup restored on
            // another phone would replay its outbox a second time.
            path = File(noBackupFilesDir, "survey.db").path,
            serverUrl = SERVER_URL,
            collections =
                listOf(
                    CollectionSpec(
                        PATIENTS,
                        ConflictStrategy.FIELD_MERGE,
                        indexes = listOf(listOf("village", "name")),
                        search = listOf("name"),
                    ),
                    CollectionSpec(SURVEYS, ConflictStrategy.LAST_WRITE_WINS, indexes = listOf(listOf("patientId"))),
                ),
            // A saved form survives power loss once save returns.
            durability = Durability.FULL,
        )

    companion object {
        const val SERVER_URL = "https://sync.example.org/"
        const val PATIENTS = "patients"
        const val SURVEYS = "surveys"
    }
}
