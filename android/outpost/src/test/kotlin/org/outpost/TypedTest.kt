// Typed collections end to end: the app's @Serializable classes over the real native
// library and a real outpost-server. The JSON-text API is used beside them only to set
// up what another app version (or a bad writer) would store, and to see what is stored.
package org.outpost

import kotlin.time.Duration.Companion.seconds
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.async
import kotlinx.coroutines.cancelAndJoin
import kotlinx.coroutines.flow.catch
import kotlinx.coroutines.flow.first
import kotlinx.coroutines.flow.toList
import kotlinx.coroutines.launch
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import java.util.concurrent.Executors
import kotlinx.coroutines.asCoroutineDispatcher
import kotlinx.serialization.KSerializer
import kotlinx.serialization.SerialName
import kotlinx.serialization.encoding.Decoder
import kotlinx.serialization.Serializable
import kotlinx.serialization.json.Json
import kotlinx.serialization.json.JsonObject
import kotlinx.serialization.json.jsonObject
import kotlinx.serialization.json.jsonPrimitive
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.assertThrows
import org.outpost.ffi.OutpostException
import org.outpost.ffi.SyncOutcome
import org.outpost.ffi.SyncState

@Serializable
data class Patient(val name: String, val village: String, val age: Int = 0)

@Serializable
data class Survey(
    val title: String,
    val visits: Counter = Counter(),
    val tags: OrSet = OrSet(),
    val status: Register<String>? = null,
    @SerialName("done_by") val doneBy: OrSet = OrSet(),
)

/** No defaults: a counter and a set no device has touched still read. */
@Serializable
data class Tally(val title: String, val visitCount: Counter, val seenBy: OrSet)

@Serializable
data class Nested(val title: String, val inner: Survey)

class TypedTest : ServerTest() {
    private suspend fun device(name: String, token: String = AMINA) = server.device(name, token).also { open += it }

    private fun fields(json: String): JsonObject = Json.parseToJsonElement(json).jsonObject

    @Test
    fun putGetQueryAndDelete() =
        runBlocking<Unit> {
            val patients = device("a").collection<Patient>("patients")
            patients.put("p1", Patient("Amina", "v042", 31))
            patients.put("p2", Patient("Ben", "v043", 4))
            val made = patients.put(null, Patient("Chioma", "v042"))
            assertTrue(made.id.isNotEmpty())
            assertEquals(SyncState.PENDING, made.syncState)
            assertEquals(Patient("Amina", "v042", 31), patients.get("p1"))
            assertNull(patients.get("nobody"))
            val v042 = query { where { "village" eq "v042" }; orderBy("name") }
            assertEquals(listOf("Amina", "Chioma"), patients.query(v042).map { it.name })
            assertEquals(listOf("p1", made.id), patients.entries(v042).map { it.id })
            // A default is stored, so a query on it finds the record.
            assertEquals(listOf(made.id), patients.entries(query { where { "age" eq 0 } }).map { it.id })
            patients.delete("p1")
            assertNull(patients.getEntry("p1"))
            assertEquals(2, patients.query().size)
        }

    @Test
    fun fieldsOfANewerAppVersionAreReadAroundAndKept() =
        runBlocking<Unit> {
            val db = device("a")
            // What a newer version of the app wrote: a field this version does not know.
            db.put("patients", "p1", """{"name":"Amina","village":"v042","age":31,"phone":"+234"}""")
            val patients = db.collection<Patient>("patients")
            val p1 = patients.get("p1")!!
            assertEquals(Patient("Amina", "v042", 31), p1)
            patients.put("p1", p1.copy(age = 32))
            val stored = fields(db.get("patients", "p1")!!.dataJson)
            assertEquals("+234", stored["phone"]?.jsonPrimitive?.content)
            assertEquals(32, stored["age"]?.jsonPrimitive?.content?.toInt())
        }

    @Test
    fun crdtFieldsReadAsValuesAndPutNeverOverwritesThem() =
        runBlocking<Unit> {
            val db = device("a")
            val surveys = db.collection<Survey>("answers")
            // Never touched: a counter reads 0, a set empty, a register its default.
            assertEquals(Survey("s"), surveys.put("s1", Survey("s")).value)
            surveys.increment("s1", Survey::visits)
            surveys.increment("s1", "visits", by = 4)
            surveys.increment("s1", Survey::visits, by = -2)
            surveys.setAdd("s1", Survey::tags, "rural")
            surveys.setAdd("s1", Survey::tags, "urgent")
            surveys.setRemove("s1", Survey::tags, "rural")
            surveys.setAdd("s1", "done_by", "amina")
            val set = surveys.setRegister("s1", Survey::status, "closed")
            val expected = Survey("s", Counter(3), OrSet(listOf("urgent")), Register("closed"), OrSet(listOf("amina")))
            assertEquals(expected, set.value)
            assertEquals(setOf("urgent"), surveys.get("s1")!!.tags)
            // A put of a stale copy changes the title only: the CRDT fields keep their merged state.
            surveys.put("s1", Survey("renamed", visits = Counter(0), tags = OrSet()))
            assertEquals(expected.copy(title = "renamed"), surveys.get("s1"))
            val stored = fields(db.get("answers", "s1")!!.dataJson)
            assertEquals("pncounter", stored["visits"]!!.jsonObject["\$crdt"]!!.jsonPrimitive.content)
            assertEquals("lww", stored["status"]!!.jsonObject["\$crdt"]!!.jsonPrimitive.content)
        }

    @Test
    fun countersAndSetsMergeAcrossDevices() =
        runBlocking<Unit> {
            val a = device("a").collection<Survey>("answers")
            val b = device("b", BEN).collection<Survey>("answers")
            a.put("s1", Survey("shared"))
            assertEquals(SyncOutcome.COMPLETED, a.outpost.syncNow(30.seconds).outcome)
            assertEquals(SyncOutcome.COMPLETED, b.outpost.syncNow(30.seconds).outcome)
            // Both offline in effect: each counts and tags before seeing the other.
            a.increment("s1", Survey::visits, 2)
            a.setAdd("s1", Survey::tags, "from-a")
            b.increment("s1", Survey::visits, 5)
            b.setAdd("s1", Survey::tags, "from-b")
            for (db in listOf(a, b, a)) assertEquals(SyncOutcome.COMPLETED, db.outpost.syncNow(30.seconds).outcome)
            for (db in listOf(a, b)) {
                val entry = db.getEntry("s1")!!
                assertEquals(Counter(7), entry.value.visits)
                assertEquals(setOf("from-a", "from-b"), entry.value.tags)
                assertEquals(SyncState.SYNCED, entry.syncState)
            }
        }

    @Test
    fun observeEmitsTypedValuesAndSyncStates() =
        runBlocking<Unit> {
            val db = device("a")
            val patients = db.collection<Patient>("patients")
            val seen = mutableListOf<List<Pair<String, SyncState>>>()
            val collector =
                launch(Dispatchers.Default) {
                    patients.observeEntries(query { where { "village" eq "v042" } }).collect { list ->
                        synchronized(seen) { seen += list.map { it.value.name to it.syncState } }
                    }
                }
            suspend fun waitFor(expected: List<Pair<String, SyncState>>) =
                eventually { synchronized(seen) { seen.lastOrNull() == expected } }
            waitFor(emptyList())
            patients.put("p1", Patient("Amina", "v042"))
            patients.put("p2", Patient("Ben", "v043"))
            waitFor(listOf("Amina" to SyncState.PENDING))
            // The server's acknowledgement reaches the same subscription: the row's
            // "sending" mark clears without another edit.
            assertEquals(SyncOutcome.COMPLETED, db.syncNow(30.seconds).outcome)
            waitFor(listOf("Amina" to SyncState.SYNCED))
            collector.cancelAndJoin()

            val one = async(Dispatchers.Default) { withTimeout(10_000) { patients.observeOne("p3").first { it != null } } }
            assertNull(patients.observeOne("p3").first())
            patients.put("p3", Patient("Chioma", "v043"))
            assertEquals(Patient("Chioma", "v043"), one.await())
            assertEquals(listOf("Amina"), patients.observe(query { where { "village" eq "v042" } }).first().map { it.name })
        }

    @OptIn(kotlinx.serialization.ExperimentalSerializationApi::class)
    @Test
    fun anAppsOwnJsonKeepsTheCollectionRules() =
        runBlocking<Unit> {
            val db = device("a")
            // The app's Json: snake_case keys, and neither ignoreUnknownKeys nor encodeDefaults.
            val snake = Json { namingStrategy = kotlinx.serialization.json.JsonNamingStrategy.SnakeCase }
            db.put("answers", "t1", """{"title":"t","added_later":true}""")
            val tallies = db.collection<Tally>("answers", snake)
            assertEquals(Tally("t", Counter(0), OrSet()), tallies.get("t1"))
            tallies.increment("t1", Tally::visitCount, 3)
            tallies.setAdd("t1", Tally::seenBy, "ben")
            assertEquals(Tally("t", Counter(3), OrSet(listOf("ben"))), tallies.get("t1"))
            val stored = fields(db.get("answers", "t1")!!.dataJson)
            assertEquals(setOf("title", "added_later", "visit_count", "seen_by"), stored.keys)
            // encodeDefaults is on: a default value is stored, so a query on it finds the record.
            val patients = db.collection<Patient>("patients", snake)
            patients.put("p1", Patient("Amina", "v042"))
            assertEquals(listOf("p1"), patients.entries(query { where { "age" eq 0 } }).map { it.id })
        }

    @Test
    fun recordsDecodeOnTheGivenDispatcherNotTheCollectors() =
        runBlocking<Unit> {
            val db = device("a")
            db.put("patients", "p1", """{"name":"Amina","village":"v042"}""")
            val threads = java.util.Collections.synchronizedSet(mutableSetOf<String>())
            val recording =
                object : KSerializer<Patient> by Patient.serializer() {
                    override fun deserialize(decoder: Decoder): Patient =
                        Patient.serializer().deserialize(decoder).also { threads += Thread.currentThread().name.substringBefore(" @") }
                }
            val pool = Executors.newSingleThreadExecutor { Thread(it, "typed-decode") }.asCoroutineDispatcher()
            pool.use {
                val patients = TypedCollection(db, "patients", recording, OutpostJson, pool)
                patients.get("p1")
                patients.query()
                patients.observe().first()
                patients.observeOne("p1").first()
                patients.put("p2", Patient("Ben", "v043"))
            }
            assertEquals(setOf("typed-decode"), threads.toSet())
        }

    @Test
    fun aRecordThatDoesNotDecodeIsATypedError() =
        runBlocking<Unit> {
            val db = device("a")
            db.put("patients", "ok", """{"name":"Amina","village":"v042"}""")
            db.put("patients", "bad", """{"name":"Ben","village":42}""")
            db.put("patients", "short", """{"name":"Chioma"}""")
            val patients = db.collection<Patient>("patients")
            assertEquals(Patient("Amina", "v042"), patients.get("ok"))
            for (id in listOf("bad", "short")) {
                val e = assertThrows<OutpostTypedException.Decode> { runBlocking { patients.get(id) } }
                assertEquals("patients", e.collection)
                assertEquals(id, e.id)
            }
            assertThrows<OutpostTypedException.Decode> { runBlocking { patients.query() } }
            // An observe Flow fails with the same type, which the app can catch.
            val failed = mutableListOf<Throwable>()
            val emitted = withTimeout(10_000) { patients.observe().catch { failed += it }.toList() }
            assertEquals(emptyList<List<Patient>>(), emitted)
            assertEquals("bad", (failed.single() as OutpostTypedException.Decode).id)
            // A CRDT of the wrong kind where a counter is expected is a decode error too.
            db.put("answers", "s1", """{"title":"s","visits":{"${'$'}crdt":"orset","adds":{},"removes":{}}}""")
            assertThrows<OutpostTypedException.Decode> { runBlocking { db.collection<Survey>("answers").get("s1") } }
        }

    @Test
    fun misuseIsRejectedAndStoreErrorsStayOutpostExceptions() =
        runBlocking<Unit> {
            val db = device("a")
            assertThrows<IllegalArgumentException> { db.collection<Nested>("answers") }
            assertThrows<IllegalArgumentException> { db.collection<String>("answers") }
            val surveys = db.collection<Survey>("answers")
            surveys.put("s1", Survey("s"))
            // A field that is not a counter, and a renamed one by property name.
            assertThrows<IllegalArgumentException> { runBlocking { surveys.increment("s1", "title") } }
            assertThrows<IllegalArgumentException> { runBlocking { surveys.setAdd("s1", "visits", "x") } }
            assertThrows<IllegalArgumentException> { runBlocking { surveys.setAdd("s1", Survey::doneBy, "x") } }
            assertThrows<OutpostException.NotFound> { runBlocking { surveys.increment("nobody", Survey::visits) } }
            assertThrows<OutpostException.InvalidCollection> {
                runBlocking { db.collection<Survey>("Not a name").put("s1", Survey("s")) }
            }
        }

    @Test
    fun crdtFormsReadLikeTheCore() {
        // The fixtures of core/src/crdt/tests.rs `values`, plus the plain forms.
        val survey =
            OutpostJson.decodeFromString(
                Survey.serializer(),
                """{"title":"t","visits":{"${'$'}crdt":"pncounter","p":{"a":1},"n":{"b":4}},
                  "tags":{"${'$'}crdt":"orset","adds":{"z":["a:1"],"x":["a:2","b:1"],"gone":["a:3"]},
                          "removes":{"x":["a:2"],"gone":["a:3"],"never":["c:1"]}},
                  "status":{"${'$'}crdt":"lww","v":"hi","t":"1700000000000-00001-a"}}""",
            )
        assertEquals(Survey("t", Counter(-3), OrSet(listOf("x", "z")), Register("hi")), survey)
        val max = "18446744073709551615"
        val big = """{"title":"t","visits":{"${'$'}crdt":"gcounter","p":{"a":$max,"b":1}}}"""
        assertEquals(Counter(Long.MAX_VALUE), OutpostJson.decodeFromString(Survey.serializer(), big).visits)
        val low = """{"title":"t","visits":{"${'$'}crdt":"pncounter","p":{},"n":{"a":$max}}}"""
        assertEquals(Counter(Long.MIN_VALUE), OutpostJson.decodeFromString(Survey.serializer(), low).visits)
        val plain = Survey("t", Counter(2), OrSet(listOf("b", "a")), Register("x"))
        assertEquals(plain, OutpostJson.decodeFromString(Survey.serializer(), OutpostJson.encodeToString(Survey.serializer(), plain)))
    }

    @Test
    fun typedReadModifyWriteInATransaction() =
        runBlocking<Unit> {
            val db = device("a")
            val patients = db.collection<Patient>("patients")
            val surveys = db.collection<Survey>("answers")
            patients.put("p1", Patient("Amina", "v042"))
            val seen =
                db.transaction {
                    val p = of(patients).get("p1") ?: error("no patient")
                    of(patients).put("p1", p.copy(village = "v043"))
                    of(surveys).put("s1", Survey("moved"))
                    of(surveys).increment("s1", Survey::visits, by = 2)
                    // Its own writes, before the commit.
                    of(patients).get("p1")?.village to of(surveys).entries().single().value.visits
                }
            assertEquals("v043" to Counter(2), seen)
            assertEquals(Patient("Amina", "v043"), patients.get("p1"))
            assertEquals(Counter(2), surveys.get("s1")?.visits)

            // A block that throws leaves nothing behind.
            val thrown =
                runCatching {
                    db.transaction {
                        of(patients).put("p1", Patient("Amina", "v999"))
                        of(surveys).delete("s1")
                        throw IllegalStateException("changed my mind")
                    }
                }.exceptionOrNull()
            assertEquals("changed my mind", thrown?.message)
            assertEquals("v043", patients.get("p1")?.village)
            assertEquals("moved", surveys.get("s1")?.title)
        }
}
