// Outpost.transaction { } from Kotlin, on the real native library: what commits, what
// rolls back, and which exception comes out.
package org.outpost

import kotlinx.coroutines.delay
import kotlinx.coroutines.runBlocking
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Assertions.assertSame
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.assertThrows
import org.outpost.ffi.ChangeEvent
import org.outpost.ffi.ChangeListener
import org.outpost.ffi.OutpostException
import org.outpost.ffi.Record

class TransactionTest : ServerTest() {
    private suspend fun device(name: String) = server.device(name).also { open += it }

    private fun Record.n(): Int = Regex("\"n\":(\\d+)").find(dataJson)!!.groupValues[1].toInt()

    private class OutOfStock : RuntimeException("out of stock")

    @Test
    fun aReadModifyWriteCommitsAndReturnsTheBlockValue() =
        runBlocking<Unit> {
            val db = device("a")
            db.put("answers", "stock", """{"n":3}""")
            val events = mutableListOf<ChangeEvent>()
            // Registered before it returns, so the commit below cannot be missed.
            val handle =
                db.native.subscribe(
                    object : ChangeListener {
                        override fun onChange(event: ChangeEvent) {
                            synchronized(events) { events += event }
                        }
                    },
                )
            val left =
                db.transaction {
                    val n = get("answers", "stock")!!.n()
                    put("answers", "stock", """{"n":${n - 1}}""")
                    put("answers", "log", """{"n":$n}""")
                    n - 1
                }
            assertEquals(2, left)
            assertEquals(2, db.get("answers", "stock")!!.n())
            assertEquals(3, db.get("answers", "log")!!.n())
            eventually(what = "the commit's event") { synchronized(events) { events.isNotEmpty() } }
            delay(200)
            val ids = synchronized(events) { events.map { e -> e.records.map { it.id }.toSet() } }
            assertEquals(listOf(setOf("stock", "log")), ids)
            handle.cancel()
        }

    @Test
    fun anExceptionInTheBlockRollsBackAndIsRethrownAsItself() =
        runBlocking<Unit> {
            val db = device("a")
            db.put("answers", "stock", """{"n":0}""")
            val thrown = OutOfStock()
            val caught =
                assertThrows<OutOfStock> {
                    runBlocking {
                        db.transaction {
                            put("answers", "stock", """{"n":99}""")
                            put("answers", "other", "{}")
                            throw thrown
                        }
                    }
                }
            assertSame(thrown, caught)
            assertEquals(0, db.get("answers", "stock")!!.n())
            assertNull(db.get("answers", "other"))
            // An Error (a failed assertion) rolls back just the same.
            assertThrows<AssertionError> {
                runBlocking {
                    db.transaction {
                        put("answers", "other", "{}")
                        throw AssertionError("no")
                    }
                }
            }
            assertNull(db.get("answers", "other"))
            // So does an OutpostException the block does not catch, with its own type.
            assertThrows<OutpostException.NotFound> {
                runBlocking {
                    db.transaction {
                        put("answers", "other", "{}")
                        patch("answers", "missing", "{}")
                    }
                }
            }
            assertNull(db.get("answers", "other"))
            assertEquals(1L, db.count("answers"))
        }

    @Test
    fun readsInTheBlockSeeItsOwnWrites() =
        runBlocking<Unit> {
            val db = device("a")
            db.put("patients", "p1", """{"name":"Amina","village":"v1","age":30}""")
            val inV1 = query { where { "village" eq "v1" } }
            val seen =
                db.transaction {
                    put("patients", "p2", """{"name":"Ben","village":"v1","age":40}""")
                    patch("patients", "p1", """{"age":31}""")
                    increment("patients", "p1", "visits")
                    delete("patients", "p2")
                    put("patients", "p3", """{"name":"Chioma","village":"v1","age":50}""")
                    listOf(
                        get("patients", "p1")!!.dataJson.contains("\"age\":31"),
                        get("patients", "p2") == null,
                        query("patients", inV1).map { it.id } == listOf("p1", "p3"),
                        count("patients") == 2L,
                        countWhere("patients", where { "age" gt 40 }) == 1L,
                    )
                }
            assertEquals(listOf(true, true, true, true, true), seen)
            assertEquals(2L, db.count("patients"))
        }

    @Test
    fun theStoreItselfAndALeakedReceiverAreRefusedWithTypedErrors() =
        runBlocking<Unit> {
            val db = device("a")
            var leaked: Transaction? = null
            db.transaction {
                leaked = this
                put("answers", "a", "{}")
                assertThrows<OutpostException.InTransaction> { db.native.put("answers", "b", "{}") }
            }
            assertThrows<OutpostException.TransactionEnded> { leaked!!.put("answers", "c", "{}") }
            assertEquals(1L, db.count("answers"))
        }
}
