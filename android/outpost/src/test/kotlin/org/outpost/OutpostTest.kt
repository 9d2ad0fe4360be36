// The Kotlin library end to end: the real native library and a real outpost-server.
//
// One test per bullet of the JVM list in the bindings issue, plus the StateFlow and the
// conflicts Flow. Everything runs through the public Kotlin API an app would use.
package org.outpost

import kotlin.time.Duration.Companion.seconds
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.async
import kotlinx.coroutines.cancelAndJoin
import kotlinx.coroutines.coroutineScope
import kotlinx.coroutines.delay
import kotlinx.coroutines.flow.filter
import kotlinx.coroutines.flow.first
import kotlinx.coroutines.launch
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertNotNull
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.assertThrows
import java.io.File
import java.util.Collections
import java.util.concurrent.CountDownLatch
import java.util.concurrent.TimeUnit
import java.util.concurrent.atomic.AtomicInteger
import org.outpost.ffi.ChangeEvent
import org.outpost.ffi.ChangeListener
import org.outpost.ffi.Filter
import org.outpost.ffi.OutpostException
import org.outpost.ffi.Query
import org.outpost.ffi.Record
import org.outpost.ffi.Resolution
import org.outpost.ffi.SyncActivity
import org.outpost.ffi.SyncOutcome
import org.outpost.ffi.SyncState
import org.outpost.ffi.SyncStatus
import org.outpost.ffi.WriteOp

class OutpostTest : ServerTest() {
    private suspend fun device(name: String, token: String = AMINA) = server.device(name, token).also { open += it }

    private fun ids(records: List<Record>) = records.map { it.id }

    @Test
    fun offlineWritesThenSync() =
        runBlocking<Unit> {
            val a = device("a")
            val b = device("b", BEN)
            a.setNetworkAvailable(false)
            repeat(5) { a.put("answers", "q$it", """{"q":$it,"a":"yes"}""") }
            val offline = a.syncNow(30.seconds)
            assertEquals(SyncOutcome.OFFLINE, offline.outcome)
            assertTrue(offline.shouldRetry)
            assertEquals(5uL, a.native.status().pending)
            // The flow follows change callbacks, which arrive on Rust threads a moment later.
            eventually(what = "status flow shows 5 pending") { a.syncStatus.value.pending == 5uL }
            assertEquals(SyncActivity.OFFLINE, a.syncStatus.value.activity)
            a.setNetworkAvailable(true)
            eventually(what = "network trusted") { a.native.isNetworkAvailable() }
            val report = a.syncNow(30.seconds)
            assertEquals(SyncOutcome.COMPLETED, report.outcome, report.toString())
            assertEquals(5uL, report.applied)
            // A status from mid-sync can already show nothing pending; the one after the
            // sync also has the time it completed.
            eventually(what = "status shows the completed sync") {
                a.syncStatus.value.let { it.pending == 0uL && it.lastSyncedAtMs != null }
            }
            assertEquals(SyncState.SYNCED, a.get("answers", "q2")?.syncState)
            assertEquals(SyncOutcome.COMPLETED, b.syncNow(30.seconds).outcome)
            assertEquals(5L, b.count("answers"))
            val q3 = b.query("answers", Query(filters = listOf(Filter("q", "3"))))
            assertEquals(listOf("q3"), ids(q3))
        }

    @Test
    fun observeEmitsAfterLocalAndRemoteChanges() =
        runBlocking<Unit> {
            val a = device("a")
            val b = device("b", BEN)
            val seen = mutableListOf<List<String>>()
            val collector =
                launch(Dispatchers.Default) {
                    b.observe("answers").collect { synchronized(seen) { seen += ids(it) } }
                }
            suspend fun waitFor(expected: List<String>) =
                eventually(what = "observe emits $expected") { synchronized(seen) { seen.lastOrNull() == expected } }
            waitFor(emptyList())
            b.put("answers", "local", "{}")
            waitFor(listOf("local"))
            a.put("answers", "remote", "{}")
            assertEquals(SyncOutcome.COMPLETED, a.syncNow(30.seconds).outcome)
            assertEquals(SyncOutcome.COMPLETED, b.syncNow(30.seconds).outcome)
            waitFor(listOf("local", "remote"))
            // A change to another collection does not re-run this query.
            val before = synchronized(seen) { seen.size }
            b.put("patients", "p1", "{}")
            delay(200)
            assertEquals(before, synchronized(seen) { seen.size })
            collector.cancelAndJoin()
        }

    @Test
    fun manualConflictResolvedFromKotlin() =
        runBlocking<Unit> {
            val a = device("a")
            val b = device("b", BEN)
            val raised = async(Dispatchers.Default) { withTimeout(20_000) { b.conflicts.first() } }
            a.put("reviews", "r1", """{"score":1,"note":"base"}""")
            assertEquals(SyncOutcome.COMPLETED, a.syncNow(30.seconds).outcome)
            assertEquals(SyncOutcome.COMPLETED, b.syncNow(30.seconds).outcome)
            a.patch("reviews", "r1", """{"score":2}""")
            b.patch("reviews", "r1", """{"score":3}""")
            assertEquals(SyncOutcome.COMPLETED, a.syncNow(30.seconds).outcome)
            val report = b.syncNow(30.seconds)
            assertEquals(1uL, report.conflicts, report.toString())
            val conflict = raised.await()
            assertEquals("r1", conflict.recordId)
            assertTrue(conflict.localJson!!.contains("\"score\":3"))
            assertTrue(conflict.remoteJson!!.contains("\"score\":2"))
            assertEquals(SyncState.CONFLICTED, b.get("reviews", "r1")?.syncState)
            eventually(what = "status counts the conflict") { b.syncStatus.value.conflicts == 1uL }
            assertEquals(listOf(conflict.id), b.openConflicts().map { it.id })
            b.resolve(conflict.id, Resolution.Merged("""{"score":5,"note":"agreed"}"""))
            assertTrue(b.openConflicts().isEmpty())
            assertEquals(SyncOutcome.COMPLETED, b.syncNow(30.seconds).outcome)
            assertEquals(SyncOutcome.COMPLETED, a.syncNow(30.seconds).outcome)
            assertEquals("""{"note":"agreed","score":5}""", a.get("reviews", "r1")?.dataJson)
        }

    @Test
    fun rejectedEditIsKeptUntilRetriedOrDiscarded() =
        runBlocking<Unit> {
            val a = device("a")
            val c = device("c", CHIOMA)
            a.put("answers", "north-1", """{"team":"north"}""")
            assertEquals(SyncOutcome.COMPLETED, a.syncNow(30.seconds).outcome)
            // The server refuses this for good: a counter past its cap of CRDT entries.
            val replicas = (0..10_000).joinToString(",") { "\"r$it\":1" }
            c.put("answers", "too-big", """{"n":{"${'$'}crdt":"gcounter","p":{$replicas}}}""")
            val report = c.syncNow(30.seconds)
            assertEquals(1uL, report.rejected, report.toString())
            val edit = c.failedEdits().single()
            assertEquals(listOf("too-big", "put", "invalid_request"), listOf(edit.recordId, edit.kind, edit.errorCode))
            assertEquals(SyncState.FAILED, c.get("answers", "too-big")?.syncState)
            eventually(what = "status counts the failure") { c.syncStatus.value.failed == 1uL }
            assertThrows<OutpostException.NotFound> { runBlocking { c.discardFailed(edit.entryId + 1000) } }
            c.discardFailed(edit.entryId)
            assertTrue(c.failedEdits().isEmpty())
            assertNull(c.get("answers", "too-big"))
            eventually(what = "status drops the failure") { c.syncStatus.value.failed == 0uL }
        }

    @Test
    fun invalidInputThrowsTypedExceptions() =
        runBlocking<Unit> {
            val a = device("a")
            assertThrows<OutpostException.InvalidData> { runBlocking { a.put("answers", "x", "{not json") } }
            assertThrows<OutpostException.InvalidData> { runBlocking { a.put("answers", "x", "[1]") } }
            val bad = assertThrows<OutpostException.InvalidCollection> { runBlocking { a.put("Answers", null, "{}") } }
            assertEquals("Answers", bad.name)
            assertThrows<OutpostException.UnknownCollection> { runBlocking { a.get("nope", "x") } }
            assertThrows<OutpostException.InvalidRecordId> { runBlocking { a.put("answers", "", "{}") } }
            assertThrows<OutpostException.NotFound> { runBlocking { a.patch("answers", "missing", "{}") } }
            assertThrows<OutpostException.InvalidData> {
                runBlocking<Unit> {
                    a.batch(
                        listOf(
                            WriteOp.Put("answers", "ok", "{}"),
                            WriteOp.SetRegister("answers", "ok", "f", "{"),
                        ),
                    )
                }
            }
            assertNull(a.get("answers", "ok"))
            assertEquals(0L, a.count("answers"))
            assertThrows<OutpostException.InvalidConfig> {
                runBlocking { Outpost.open(server.config("c").copy(serverUrl = "http://example.org/"), tokenProvider { AMINA }) }
            }
        }

    @Test
    fun throwingListenerIsSkippedNotFatal() =
        runBlocking<Unit> {
            val a = device("a")
            val calls = AtomicInteger()
            val handle =
                a.native.subscribe(
                    object : ChangeListener {
                        override fun onChange(event: ChangeEvent) {
                            calls.incrementAndGet()
                            throw IllegalStateException("a listener bug")
                        }
                    },
                )
            a.put("answers", "one", "{}")
            eventually(what = "first call") { calls.get() >= 1 }
            a.put("answers", "two", "{}")
            eventually(what = "called again after throwing") { calls.get() >= 2 }
            // The store is unharmed: writes, reads and sync go on.
            assertEquals(2L, a.count("answers"))
            assertEquals(SyncOutcome.COMPLETED, a.syncNow(30.seconds).outcome)
            handle.cancel()
        }

    @Test
    fun thousandConcurrentCoroutineWrites() =
        runBlocking<Unit> {
            val a = device("a")
            coroutineScope {
                repeat(1000) { i -> launch(Dispatchers.Default) { a.put("answers", "w$i", """{"i":$i}""") } }
            }
            assertEquals(1000L, a.count("answers"))
            assertEquals(1000uL, a.syncStatus.value.pending.coerceAtLeast(a.native.status().pending))
            val report = a.syncNow(60.seconds)
            assertEquals(SyncOutcome.COMPLETED, report.outcome, report.toString())
            assertEquals(1000uL, report.applied)
            val b = device("b", BEN)
            b.syncNow(60.seconds)
            assertEquals(1000L, b.count("answers"))
        }

    @Test
    fun useAfterCloseThrowsClosed() =
        runBlocking<Unit> {
            val a = server.device("a")
            a.put("answers", "kept", "{}")
            a.close()
            a.close()
            assertThrows<OutpostException.Closed> { runBlocking { a.get("answers", "kept") } }
            assertThrows<OutpostException.Closed> { runBlocking { a.put("answers", "x", "{}") } }
            assertThrows<OutpostException.Closed> { runBlocking { a.syncNow(5.seconds) } }
            // The data survived: reopening finds it.
            val again = device("a")
            assertNotNull(again.get("answers", "kept"))
        }

    @Test
    fun cancellingSyncNowFromACoroutine() =
        runBlocking<Unit> {
            val release = CountDownLatch(1)
            val slow = tokenProvider { release.await(10, TimeUnit.SECONDS); AMINA }
            val a = server.device("a", tokens = slow).also { open += it }
            a.put("answers", "c1", "{}")
            val sync = launch(Dispatchers.Default) { a.syncNow() }
            eventually(what = "sync running") { a.native.status().activity == SyncActivity.SYNCING }
            sync.cancelAndJoin()
            eventually(what = "sync stopped") { a.native.status().activity != SyncActivity.SYNCING }
            assertEquals(1uL, a.native.status().pending)
            assertEquals(SyncState.PENDING, a.get("answers", "c1")?.syncState)
            release.countDown()
            val report = a.syncNow(30.seconds)
            assertEquals(SyncOutcome.COMPLETED, report.outcome, report.toString())
            assertEquals(1uL, report.applied)
        }

    @Test
    fun deadlineStopsASync() =
        runBlocking<Unit> {
            val release = CountDownLatch(1)
            val a = server.device("a", tokens = tokenProvider { release.await(10, TimeUnit.SECONDS); AMINA }).also { open += it }
            a.put("answers", "d1", "{}")
            val report = a.syncNow(0.1.seconds)
            release.countDown()
            assertEquals(SyncOutcome.DEADLINE_EXCEEDED, report.outcome)
            assertTrue(report.shouldRetry)
        }

    @Test
    fun syncStatusFlowFollowsTheEngine() =
        runBlocking<Unit> {
            val a = device("a")
            a.put("answers", "s1", "{}")
            withTimeout(10_000) { a.syncStatus.filter { it.pending == 1uL }.first() }
            a.syncNow(30.seconds)
            val idle = withTimeout(10_000) { a.syncStatus.filter { it.pending == 0uL && it.lastSyncedAtMs != null }.first() }
            assertEquals(SyncActivity.IDLE, idle.activity)
        }

    @Test
    fun firstSyncProgressIsMonotonicAndAwaitFirstSyncReturns() =
        runBlocking<Unit> {
            val b = device("b", BEN)
            b.batch((0 until 600).map { WriteOp.Put("patients", "p$it", """{"name":"P$it","village":"Kole","age":$it}""") })
            assertEquals(SyncOutcome.COMPLETED, b.syncNow(30.seconds).outcome)
            val a = device("a")
            assertFalse(a.syncStatus.value.hasSynced)
            val first = async(Dispatchers.Default) { a.awaitFirstSync() }
            val seen = Collections.synchronizedList(mutableListOf<SyncStatus>())
            val watcher = launch(Dispatchers.Default) { a.syncStatus.collect { seen += it } }
            val report = a.syncNow(60.seconds)
            assertEquals(SyncOutcome.COMPLETED, report.outcome)
            assertTrue(withTimeout(10_000) { first.await() }.hasSynced)
            eventually(what = "the last status") { seen.lastOrNull()?.hasSynced == true }
            watcher.cancelAndJoin()
            val done = synchronized(seen) { seen.map { it.progress.download.changesDone } }
            assertTrue(done.zipWithNext().all { (x, y) -> x <= y }, "monotonic: $done")
            val last = seen.last().progress.download
            assertEquals(600uL, last.changesDone)
            assertEquals(last.changesTotal, last.changesDone)
            assertEquals(600uL, report.progress.download.changesDone)
            assertTrue(report.bytesReceived > 0uL && report.bytesSent > 0uL)
            val patients = report.progress.collections.single { it.collection == "patients" }
            assertEquals(600uL, patients.download.changesTotal)
        }

    @Test
    fun batchAndCrdtOperations() =
        runBlocking<Unit> {
            val a = device("a")
            val out =
                a.batch(
                    listOf(
                        WriteOp.Put("patients", "p1", """{"name":"Amina"}"""),
                        WriteOp.Increment("patients", "p1", "visits", 2),
                        WriteOp.SetAdd("patients", "p1", "tags", "fever"),
                    ),
                )
            assertEquals(3, out.size)
            a.increment("patients", "p1", "visits", -1)
            a.setRemove("patients", "p1", "tags", "fever")
            val r = a.setRegister("patients", "p1", "owner", "\"ben\"")
            assertTrue(r.dataJson.contains("pncounter") && r.dataJson.contains("orset"))
            assertEquals(SyncOutcome.COMPLETED, a.syncNow(30.seconds).outcome)
        }

    @Test
    fun attachmentsReachAnotherDeviceAsFiles() =
        runBlocking<Unit> {
            val a = device("a")
            val b = device("b", BEN)
            val photo = ByteArray(200_000) { (it * 7 % 251).toByte() }
            val src = File(server.dir, "photo.jpg").apply { writeBytes(photo) }
            val ref = a.attach(src, "image/jpeg")
            assertEquals(200_000uL, ref.size)
            assertEquals("photo.jpg", ref.name)
            val sig = a.attach("signature".toByteArray(), "image/png")
            a.put("answers", "a1", """{"photo":${ref.json},"signature":${sig.json}}""")
            // Here at once on the device that attached it.
            assertTrue(a.attachment(ref.sha256)!!.readBytes().contentEquals(photo))
            assertEquals(2uL, a.native.status().attachmentUploads)
            val sent = a.syncNow(30.seconds)
            assertEquals(2uL, sent.filesUploaded)
            assertEquals(0uL, a.native.status().attachmentUploads)

            b.syncNow(30.seconds)
            assertNull(b.attachment(ref.sha256), "pending until it has downloaded")
            assertEquals(1uL, b.native.status().attachmentDownloads)
            b.syncNow(30.seconds)
            val file = b.attachment(ref.sha256)
            assertNotNull(file)
            assertTrue(file!!.readBytes().contentEquals(photo))
            assertThrows<OutpostException.InvalidData> { a.attach(ByteArray(1), "not a type") }
            assertThrows<OutpostException.File> { a.attach(File(server.dir, "missing"), "image/jpeg") }
        }
}
