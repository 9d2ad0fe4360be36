// Test support for the Robolectric suite: an Application that provides the store the way
// an app does, WorkManager initialised without its test artefact, and waiting for work.
package org.outpost.android

import android.app.Application
import android.content.Context
import android.net.ConnectivityManager
import android.net.Network
import android.net.NetworkCapabilities
import android.os.Looper
import android.util.Log
import androidx.work.Configuration
import androidx.work.Data
import androidx.work.DefaultWorkerFactory
import androidx.work.WorkerParameters
import androidx.work.impl.WorkDatabase
import androidx.work.impl.WorkManagerImpl
import androidx.work.impl.utils.futures.SettableFuture
import androidx.work.impl.utils.taskexecutor.WorkManagerTaskExecutor
import androidx.work.WorkInfo
import androidx.work.WorkManager
import java.util.UUID
import java.util.concurrent.Executors
import java.util.concurrent.TimeUnit
import java.util.concurrent.atomic.AtomicInteger
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.runBlocking
import org.outpost.AMINA
import org.outpost.Outpost
import org.outpost.TestServer
import org.outpost.ffi.OutpostConfig
import org.outpost.ffi.TokenProvider
import org.outpost.tokenProvider
import org.robolectric.RuntimeEnvironment
import org.robolectric.Shadows.shadowOf
import org.robolectric.shadows.ShadowNetwork
import org.robolectric.shadows.ShadowNetworkCapabilities

/**
 * The app's Application as the README tells apps to write it: it opens the store on first
 * use. Tests set [config] (the server and file) before anything asks for the store.
 */
class TestApp : Application(), OutpostProvider {
    val opens = AtomicInteger()
    private val shared =
        SharedOutpost {
            opens.incrementAndGet()
            Outpost.open(checkNotNull(config) { "TestApp.config not set" }, tokens)
        }

    override suspend fun outpost(): Outpost = shared.get()

    /** Closes the store this process opened, if any, and waits until it is closed. */
    fun closeStore() = runBlocking { shared.peek()?.closeAndWait() }

    companion object {
        @Volatile
        var config: OutpostConfig? = null

        @Volatile
        var tokens: TokenProvider = tokenProvider { AMINA }
    }
}

fun app(): TestApp = RuntimeEnvironment.getApplication() as TestApp

/**
 * WorkManager as the app's startup would set it up, with its own background threads,
 * but with an in-memory database: its usual set-up reads a flag from the AAR's resources,
 * which a build without the Android SDK cannot compile. The rest is the real thing:
 * the greedy in-process scheduler, JobScheduler (Robolectric's), Room on SQLite.
 */
fun initWorkManager(context: Context): WorkManager {
    val config =
        Configuration.Builder()
            .setMinimumLoggingLevel(Log.DEBUG)
            .setExecutor(Executors.newFixedThreadPool(2))
            .build()
    val tasks = WorkManagerTaskExecutor(config.taskExecutor)
    val database = WorkDatabase.create(context, tasks.serialTaskExecutor, config.clock, true)
    // The factory function of work-runtime (createWorkManager in Java), not the constructor.
    WorkManagerImpl.setDelegate(WorkManagerImpl(context, config, tasks, database))
    return WorkManager.getInstance(context)
}

/**
 * Runs the main looper (WorkManager starts workers there) until [id] reaches a state
 * [done] accepts. Meanwhile it tells every network callback about a connected network:
 * Robolectric's ConnectivityManager records callbacks but never calls them, and
 * WorkManager waits for one before running work that needs the network.
 */
fun WorkManager.awaitWork(id: UUID, timeoutMs: Long = 20_000, done: (WorkInfo.State) -> Boolean = { it.isFinished }): WorkInfo {
    val end = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(timeoutMs)
    while (true) {
        announceNetwork()
        shadowOf(Looper.getMainLooper()).idle()
        val info = getWorkInfoById(id).get()
        if (info != null && done(info.state)) return info
        check(System.nanoTime() < end) { "work $id still ${info?.state} after $timeoutMs ms" }
        Thread.sleep(20)
    }
}

private val wifi: Network by lazy { ShadowNetwork.newInstance(100) }

private val connected: NetworkCapabilities by lazy {
    ShadowNetworkCapabilities.newInstance().also { caps ->
        val shadow = shadowOf(caps)
        shadow.addTransportType(NetworkCapabilities.TRANSPORT_WIFI)
        listOf(
            NetworkCapabilities.NET_CAPABILITY_INTERNET,
            NetworkCapabilities.NET_CAPABILITY_VALIDATED,
            NetworkCapabilities.NET_CAPABILITY_NOT_RESTRICTED,
            NetworkCapabilities.NET_CAPABILITY_TRUSTED,
            NetworkCapabilities.NET_CAPABILITY_NOT_VPN,
            NetworkCapabilities.NET_CAPABILITY_NOT_SUSPENDED,
            NetworkCapabilities.NET_CAPABILITY_NOT_ROAMING,
            NetworkCapabilities.NET_CAPABILITY_NOT_METERED,
        ).forEach { shadow.addCapability(it) }
    }
}

private fun announceNetwork() {
    val connectivity = RuntimeEnvironment.getApplication().getSystemService(ConnectivityManager::class.java)
    for (callback in shadowOf(connectivity).networkCallbacks.toList()) {
        callback.onAvailable(wifi)
        callback.onCapabilitiesChanged(wifi, connected)
    }
}

/** A fresh server per test, and the app's store pointed at it with Amina's token. */
fun serverFor(name: String): TestServer =
    TestServer().also {
        TestApp.config = it.config(name)
        TestApp.tokens = tokenProvider { AMINA }
    }

/** A worker as WorkManager would construct it for one run, outside WorkManager. */
fun worker(input: Data = Data.EMPTY): OutpostSyncWorker {
    val executor = Executors.newSingleThreadExecutor()
    val done = { SettableFuture.create<Void>().apply { set(null) } }
    val params =
        WorkerParameters(
            UUID.randomUUID(),
            input,
            emptyList(),
            WorkerParameters.RuntimeExtras(),
            0,
            0,
            executor,
            Dispatchers.Default,
            WorkManagerTaskExecutor(executor),
            DefaultWorkerFactory,
            { _, _, _ -> done() },
            { _, _, _ -> done() },
        )
    return OutpostSyncWorker(RuntimeEnvironment.getApplication(), params)
}
