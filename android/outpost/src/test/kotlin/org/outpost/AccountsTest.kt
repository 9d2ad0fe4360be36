// Accounts on a shared tablet from Kotlin: sign-out under each policy with edits pending,
// the next user on the same file, Flows completing at sign-out, delete, and a suspending
// token provider that says "signed out" (null) apart from "unreachable" (a throw).
package org.outpost

import java.io.File
import java.io.IOException
import java.util.concurrent.atomic.AtomicBoolean
import java.util.concurrent.atomic.AtomicInteger
import kotlin.time.Duration.Companion.seconds
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.async
import kotlinx.coroutines.delay
import kotlinx.coroutines.flow.onEach
import kotlinx.coroutines.flow.toList
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertNotNull
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.assertThrows
import org.outpost.ffi.OutpostException
import org.outpost.ffi.SignOutPolicy
import org.outpost.ffi.SyncActivity
import org.outpost.ffi.SyncOutcome
import org.outpost.ffi.SyncState

class AccountsTest : ServerTest() {
    private val tabletPath get() = server.config("tablet").path

    private suspend fun tablet(user: String, token: String) =
        Outpost.open(server.config("tablet").copy(userId = user), tokenProvider { token }).also { open += it }

    private val syncFirst = SignOutPolicy.SyncFirst(deadlineMs = 30_000uL)

    @Test
    fun syncFirstRefusesWhileEditsWaitThenSendsThemAndLeavesNothing() =
        runBlocking<Unit> {
            val a = tablet("amina", AMINA)
            a.setNetworkAvailable(false)
            a.put("answers", "q1", """{"a":1}""")
            a.put("answers", "q2", """{"a":2}""")
            val refused =
                assertThrows<OutpostException.UnsyncedEdits> {
                    runBlocking { a.signOut(SignOutPolicy.SyncFirst(deadlineMs = 2_000uL)) }
                }
            assertEquals(Triple(2uL, 0uL, 0uL), Triple(refused.pending, refused.failed, refused.conflicts))
            // Nothing changed: the app can ask the user.
            assertEquals(2L, a.count("answers"))
            a.setNetworkAvailable(true)
            eventually(what = "network trusted") { a.native.isNetworkAvailable() }
            a.signOut(syncFirst)
            assertThrows<OutpostException.Closed> { runBlocking { a.get("answers", "q1") } }

            val b = tablet("ben", BEN)
            assertEquals(0L, b.count("answers"), "none of her records on the tablet")
            assertEquals(SyncOutcome.COMPLETED, b.syncNow(30.seconds).outcome)
            assertEquals(2L, b.count("answers"), "what the server lets his team read")
        }

    @Test
    fun keptEditsAreHersAloneAndGoOutWhenSheIsBack() =
        runBlocking<Unit> {
            val a = tablet("amina", AMINA)
            a.setNetworkAvailable(false)
            a.put("answers", "mine", """{"note":"typed offline"}""")
            a.signOut(SignOutPolicy.KeepUnsynced)

            val b = tablet("ben", BEN)
            assertNull(b.get("answers", "mine"))
            assertEquals(0L, b.count("answers"))
            b.put("answers", "his", "{}")
            // While Ben holds the tablet, opening it for Amina is refused, naming him.
            val refused =
                assertThrows<OutpostException.WrongUser> { runBlocking { tablet("amina", AMINA) } }
            assertEquals("ben", refused.holder)
            assertThrows<OutpostException.StillOpen> { runBlocking { Outpost.deleteDatabase(tabletPath) } }
            b.signOut(syncFirst)

            val back = tablet("amina", AMINA)
            val mine = back.get("answers", "mine")
            assertNotNull(mine)
            assertEquals(SyncState.PENDING, mine!!.syncState)
            assertNull(back.get("answers", "his"), "his synced record left with him")
            val report = back.syncNow(30.seconds)
            assertEquals(SyncOutcome.COMPLETED, report.outcome, report.toString())
            assertEquals(1uL, report.applied)
            back.close()
            Outpost.deleteDatabase(tabletPath)
            assertFalse(File(tabletPath).exists())
        }

    @Test
    fun flowsCompleteAtSignOutWithTheirLastValues() =
        runBlocking<Unit> {
            val a = tablet("amina", AMINA)
            a.put("answers", "x", "{}")
            val (rows, records) = Pair(AtomicInteger(), AtomicInteger())
            val observed = async(Dispatchers.Default) { a.observe("answers").onEach { rows.incrementAndGet() }.toList() }
            val one = async(Dispatchers.Default) { a.observeOne("answers", "y").onEach { records.incrementAndGet() }.toList() }
            val changes = async(Dispatchers.Default) { a.changes().toList() }
            val statuses = async(Dispatchers.Default) { a.statusUpdates().toList() }
            eventually(what = "the flows are collecting") { rows.get() == 1 && records.get() == 1 }
            a.put("answers", "y", """{"v":1}""")
            eventually(what = "y observed") { rows.get() == 2 && records.get() == 2 }
            a.signOut(syncFirst)
            withTimeout(10_000) {
                val rows = observed.await()
                assertEquals(listOf("x", "y"), rows.last().map { it.id })
                assertEquals("y", one.await().last()?.id)
                changes.await()
                assertTrue(statuses.await().isNotEmpty())
            }
        }

    @Test
    fun aSuspendingProviderSaysSignedOutApartFromUnreachable() =
        runBlocking<Unit> {
            val signedIn = AtomicBoolean(false)
            val a =
                server.device(
                    "a",
                    tokens =
                        tokenProvider {
                            delay(10) // a suspending call to the identity provider
                            if (signedIn.get()) AMINA else null
                        },
                ).also { open += it }
            a.put("answers", "q", "{}")
            val out = a.syncNow(30.seconds)
            assertEquals(SyncOutcome.SIGNED_OUT, out.outcome, out.toString())
            assertFalse(out.shouldRetry)
            eventually(what = "status says signed out") { a.syncStatus.value.activity == SyncActivity.SIGNED_OUT }
            signedIn.set(true)
            assertEquals(SyncOutcome.COMPLETED, a.syncNow(30.seconds).outcome)

            val b =
                server.device("b", tokens = tokenProvider { throw IOException("identity provider unreachable") })
                    .also { open += it }
            b.put("answers", "r", "{}")
            val down = b.syncNow(30.seconds)
            assertEquals(SyncOutcome.BACKING_OFF, down.outcome, down.toString())
            assertTrue(down.shouldRetry)
            assertTrue(down.errors.single().contains("identity provider unreachable"), down.errors.toString())
            assertEquals(1uL, b.native.status().pending)
        }
}
