// Local queries from Kotlin: the typed builder, keyset pages, search, observers and bad
// input, on the real native library and a real outpost-server (as an app would open it).
package org.outpost

import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.cancelAndJoin
import kotlinx.coroutines.flow.first
import kotlinx.coroutines.launch
import kotlinx.coroutines.runBlocking
import org.junit.jupiter.api.AfterEach
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.BeforeEach
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.assertThrows
import org.outpost.ffi.OutpostException
import org.outpost.ffi.Query
import org.outpost.ffi.Record

class QueryTest {
    private lateinit var server: TestServer
    private lateinit var db: Outpost

    private val names = listOf("Amina", "Ben", "Chioma", "Amir", "Dara", "Émile", "Femi", "Amadou", "Gift", "Hana")

    @BeforeEach
    fun start() =
        runBlocking<Unit> {
            server = TestServer()
            db = server.device("q")
            // p00..p09: even ones in v042, ages 0..9, every third one due, the first five children.
            names.forEachIndexed { i, name ->
                val status = if (i % 3 == 0) "\"due\"" else "null"
                db.put(
                    "patients",
                    "p%02d".format(i),
                    """{"name":"$name","village":"v04${2 + i % 2}","age":$i,"status":$status,"child":${i < 5}}""",
                )
            }
        }

    @AfterEach
    fun stop() {
        db.close()
        server.close()
    }

    private fun ids(records: List<Record>) = records.map { it.id }

    @Test
    fun conditionsRenderTheCoreJsonForm() {
        val w =
            where {
                ("village" eq "v\"042\n") and ("age" gte 5) and ("status" isIn listOf("due", null, 1.5)) and
                    (("name" beginsWithIgnoreCase "am") or isNull("x") or exists("y")) and search("amin*") and
                    ("tags" ne listOf(mapOf("a" to true)))
            }
        assertEquals(
            """{"and":[{"eq":["village","v\"042\u000a"]},{"gte":["age",5]},{"in":["status",["due",null,1.5]]},""" +
                """{"or":[{"prefix_ci":["name","am"]},{"is_null":"x"},{"exists":"y"}]},{"search":"amin*"},""" +
                """{"ne":["tags",[{"a":true}]]}]}""",
            w.toJson(),
        )
        val q = query { where { "a" eq 1 }; where { "b" lt "x" }; orderByDescending("a"); orderById(); limit(5); offset(2) }
        assertEquals("""{"and":[{"eq":["a",1]},{"lt":["b","x"]}]}""", q.filterJson)
        assertEquals(listOf("a", null), q.order.map { it.field })
        assertEquals(listOf(true, false), q.order.map { it.descending })
        assertEquals(5u, q.limit)
        assertEquals(2u, q.offset)
    }

    @Test
    fun builderQueryWithSeveralOperatorsAndOrders() =
        runBlocking<Unit> {
            val due =
                query {
                    where { ("village" eq "v042") and ("age" gte 2) and ("status" isIn listOf("due", null)) }
                    orderBy("age", descending = true)
                    limit(3)
                }
            assertEquals(listOf("p08", "p06", "p04"), ids(db.query("patients", due)))
            val mixed =
                query {
                    where { ("name" beginsWithIgnoreCase "am") or isNull("status") }
                    where { "child" eq true }
                    orderByDescending("village")
                    orderBy("name")
                }
            assertEquals(listOf("p03", "p01", "p00", "p02", "p04"), ids(db.query("patients", mixed)))
            assertEquals(2L, db.countWhere("patients", where { ("age" lt 5) and ("status" eq "due") }))
            // The legacy equality list still works beside the builder.
            assertEquals(5L, db.count("patients", listOf(org.outpost.ffi.Filter("child", "false"))))
        }

    @Test
    fun keysetPagingThroughQueryPage() =
        runBlocking<Unit> {
            var q = query { orderBy("village"); limit(4) }
            val seen = mutableListOf<String>()
            var pages = 0
            while (true) {
                val page = db.queryPage("patients", q)
                pages++
                seen += ids(page.records)
                // A record sorting before the cursor would shift an offset, never a keyset.
                if (pages == 1) db.put("patients", "a-new", """{"village":"v000"}""")
                q = q.copy(after = page.next ?: break)
            }
            assertEquals(3, pages)
            assertEquals((0..9).sortedBy { it % 2 }.map { "p%02d".format(it) }, seen)
        }

    @Test
    fun searchQuery() =
        runBlocking<Unit> {
            assertEquals(listOf("p00", "p03"), ids(db.query("patients", query { where { search("ami*") } })))
            assertEquals(listOf("p05"), ids(db.query("patients", query { where { search("EMILE") } })))
            assertEquals(1L, db.countWhere("patients", where { search("amadou") and ("child" eq false) }))
        }

    @Test
    fun observeEmitsTheInitialResultThenAChangedOne() =
        runBlocking<Unit> {
            val due = query { where { "status" eq "due" } }
            val results = mutableListOf<List<String>>()
            val collector =
                launch(Dispatchers.Default) {
                    db.observe("patients", due).collect { synchronized(results) { results += ids(it) } }
                }
            eventually(what = "the initial result") { synchronized(results) { results.isNotEmpty() } }
            db.patch("patients", "p01", """{"status":"due"}""")
            // Neither changes the result: no emission.
            db.patch("patients", "p02", """{"age":20}""")
            db.put("answers", "a1", "{}")
            eventually(what = "the changed result") { synchronized(results) { results.size >= 2 } }
            db.patch("patients", "p09", """{"status":"done"}""")
            eventually(what = "the result without p09") { synchronized(results) { results.size >= 3 } }
            collector.cancelAndJoin()
            assertEquals(
                listOf(
                    listOf("p00", "p03", "p06", "p09"),
                    listOf("p00", "p01", "p03", "p06", "p09"),
                    listOf("p00", "p01", "p03", "p06"),
                ),
                synchronized(results) { results.toList() },
            )
        }

    @Test
    fun observeOneFollowsARecord() =
        runBlocking<Unit> {
            val states = mutableListOf<String?>()
            val collector =
                launch(Dispatchers.Default) {
                    db.observeOne("patients", "p-new").collect { synchronized(states) { states += it?.dataJson } }
                }
            suspend fun waitFor(n: Int) = eventually(what = "$n states") { synchronized(states) { states.size >= n } }
            waitFor(1)
            db.put("patients", "p-new", """{"name":"Zainab"}""")
            waitFor(2)
            db.put("patients", "p-other", "{}")
            db.delete("patients", "p-new")
            waitFor(3)
            collector.cancelAndJoin()
            assertEquals(listOf(null, """{"name":"Zainab"}""", null), synchronized(states) { states.toList() })
        }

    @Test
    fun badInputRaisesTheTypedException() =
        runBlocking<Unit> {
            val bad =
                listOf(
                    query { where { "na\"me" eq "Amina" } }, // a field name no JSON path can name
                    query { where { "child" gt true } }, // a range on a boolean
                    query { after("not-a-cursor") }, // a garbled cursor
                    Query(filterJson = """{"like":["name","Am%"]}"""), // an unknown operator
                    query { orderBy("") },
                )
            for (q in bad) {
                assertThrows<OutpostException.InvalidData>(q.toString()) { runBlocking { db.query("patients", q) } }
                assertThrows<OutpostException.InvalidData>(q.toString()) { runBlocking { db.queryPage("patients", q) } }
                assertThrows<OutpostException.InvalidData>(q.toString()) { runBlocking { db.observe("patients", q).first() } }
            }
            // A cursor of another order.
            val next = db.queryPage("patients", query { limit(2) }).next!!
            assertThrows<OutpostException.InvalidData> { runBlocking { db.queryPage("patients", query { orderBy("age"); after(next) }) } }
            // No search fields are declared on answers.
            assertThrows<OutpostException.InvalidData> { runBlocking { db.countWhere("answers", where { search("x") }) } }
            // Values with no JSON form are refused before they reach the core.
            assertThrows<OutpostException.InvalidData> { where { "age" gt Double.NaN }.toJson() }
            assertThrows<OutpostException.InvalidData> { query { limit(-1) } }
            assertThrows<OutpostException.UnknownCollection> { runBlocking { db.observeOne("nope", "x").first() } }
            assertEquals(10L, db.count("patients"))
            assertEquals(10uL, db.native.status().pending)
        }
}
