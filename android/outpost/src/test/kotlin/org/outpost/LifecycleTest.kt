// The Kotlin layer's lifecycle under load and misuse: bursts of change events, closing
// from a thread that must not wait, Flows after close, several callers of one sync, and
// an Outpost the app dropped without closing it. Each test failed before its fix.
package org.outpost

import java.io.File
import java.lang.ref.WeakReference
import java.util.concurrent.CountDownLatch
import java.util.concurrent.TimeUnit
import kotlin.time.Duration.Companion.seconds
import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.Deferred
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.async
import kotlinx.coroutines.cancelAndJoin
import kotlinx.coroutines.delay
import kotlinx.coroutines.flow.toList
import kotlinx.coroutines.launch
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertNotEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.assertThrows
import org.outpost.ffi.ChangeEvent
import org.outpost.ffi.ChangeListener
import org.outpost.ffi.OutpostException
import org.outpost.ffi.SyncActivity
import org.outpost.ffi.SyncOutcome
import org.outpost.ffi.SyncReport
import org.outpost.ffi.WriteOp

class LifecycleTest : ServerTest() {
    private suspend fun device(name: String) = server.device(name).also { open += it }

    @Test
    fun changesKeepEveryEventOfABurstForASlowCollector() =
        runBlocking<Unit> {
            val a = device("a")
            val go = CountDownLatch(1)
            val seen = mutableSetOf<String>()
            val collector =
                launch(Dispatchers.Default) {
                    a.changes().collect { event ->
                        go.await()
                        event.records.forEach { seen += it.id }
                    }
                }
            delay(200) // subscribed
            // One commit per record, as a first sync's pages arrive: far past any fixed buffer.
            repeat(400) { a.put("answers", "b$it", """{"i":$it}""") }
            go.countDown()
            eventually(what = "every record's event") { synchronized(seen) { seen.size == 400 } }
            collector.cancelAndJoin()
        }

    @Test
    fun closeReturnsWhileAListenerStillRunsAndFlowsThenComplete() =
        runBlocking<Unit> {
            val a = server.device("a")
            val path = server.config("a").path
            val entered = CountDownLatch(1)
            val release = CountDownLatch(1)
            val stuck =
                a.native.subscribe(
                    object : ChangeListener {
                        override fun onChange(event: ChangeEvent) {
                            entered.countDown()
                            release.await(30, TimeUnit.SECONDS)
                        }
                    },
                )
            val before = async(Dispatchers.Default) { a.changes().toList() }
            delay(200)
            a.put("answers", "x", "{}")
            assertTrue(entered.await(10, TimeUnit.SECONDS))

            // The caller may be the main thread: close must not wait for the listener.
            val closer = Thread { a.close() }.apply { start() }
            closer.join(5_000)
            assertFalse(closer.isAlive, "close() blocked on a running listener")
            assertThrows<OutpostException.Closed> { runBlocking { a.put("answers", "y", "{}") } }

            release.countDown()
            withTimeout(10_000) { before.await() }
            // Collected after close: completes at once, nothing to deliver.
            assertEquals(emptyList<ChangeEvent>(), withTimeout(5_000) { a.changes().toList() })
            assertEquals(0, withTimeout(5_000) { a.observe("answers").toList() }.size)
            stuck.destroy()
            // Deleting the file waits for the background close.
            Outpost.deleteDatabase(path)
            assertFalse(File(path).exists())
        }

    @Test
    fun cancellingOneSyncCallerLeavesTheSyncToTheOthers() =
        runBlocking<Unit> {
            val release = CountDownLatch(1)
            val a = syncingDevice(release)
            // The screen starts a sync; the WorkManager worker joins it.
            val (screen, worker) = twoCallers(a)
            delay(200)
            screen.cancelAndJoin() // the user left the screen
            delay(200)
            release.countDown()
            val report = withTimeout(30_000) { worker.await() }
            assertNotEquals(SyncOutcome.CANCELLED, report.outcome)
            assertEquals(SyncOutcome.COMPLETED, report.outcome, report.toString())
            assertEquals(1uL, report.applied)
        }

    @Test
    fun cancellingTheOnlyCallerStillStopsTheSync() =
        runBlocking<Unit> {
            val release = CountDownLatch(1)
            val a = syncingDevice(release)
            val (one, two) = twoCallers(a)
            one.cancelAndJoin()
            two.cancelAndJoin()
            eventually(what = "sync stopped") { a.native.status().activity != SyncActivity.SYNCING }
            release.countDown()
            assertEquals(1uL, a.native.status().pending)
        }

    @Test
    fun anOutpostDroppedWithoutCloseIsCleanedUp() =
        runBlocking<Unit> {
            val path = server.config("dropped").path
            val ref = openAndDrop()
            eventually(timeoutMs = 20_000, what = "dropped Outpost collected") {
                System.gc()
                ref.get() == null
            }
            // The cleaner closed the store, so the file can go.
            withTimeout(20_000) {
                while (runCatching { Outpost.deleteDatabase(path) }.isFailure) delay(50)
            }
            assertFalse(File(path).exists())
        }

    /** Two callers of one sync, once it runs. */
    private suspend fun CoroutineScope.twoCallers(a: Outpost): Pair<Deferred<SyncReport>, Deferred<SyncReport>> {
        val calls = List(2) { async(Dispatchers.Default) { a.syncNow(30.seconds) } }
        eventually(what = "sync running") { a.native.status().activity == SyncActivity.SYNCING }
        return calls[0] to calls[1]
    }

    /** A device with one pending edit whose syncs wait for a token until [release]. */
    private suspend fun syncingDevice(release: CountDownLatch): Outpost {
        val slow = tokenProvider { release.await(10, TimeUnit.SECONDS); AMINA }
        return server.device("a", tokens = slow).also {
            open += it
            it.put("answers", "s1", "{}")
        }
    }

    private suspend fun openAndDrop(): WeakReference<Outpost> {
        val a = server.device("dropped")
        a.batch(listOf(WriteOp.Put("answers", "kept", "{}")))
        return WeakReference(a)
    }
}
