// Typed collections: records read and written as the app's own @Serializable classes.
//
// Why it exists: the core speaks JSON text, and an app that parses `dataJson` by hand on
// every screen repeats the same mistakes: CRDT fields read as raw `{"$crdt": ...}`
// objects, a plain put that turns a shared counter back into a number, fields of a newer
// app version dropped by an older one. This file maps between JSON and the app's classes
// and keeps those rules in one place. It adds no store logic: every read and write goes
// through the JSON-text API of [Outpost], which is unchanged.
package org.outpost

import kotlin.reflect.KProperty1
import kotlinx.coroutines.CoroutineDispatcher
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.flow.Flow
import kotlinx.coroutines.channels.Channel
import kotlinx.coroutines.flow.buffer
import kotlinx.coroutines.flow.flowOn
import kotlinx.coroutines.withContext
import kotlinx.coroutines.flow.map
import kotlinx.serialization.ExperimentalSerializationApi
import kotlinx.serialization.KSerializer
import kotlinx.serialization.SerializationException
import kotlinx.serialization.builtins.ListSerializer
import kotlinx.serialization.builtins.serializer
import kotlinx.serialization.descriptors.PrimitiveKind
import kotlinx.serialization.descriptors.PrimitiveSerialDescriptor
import kotlinx.serialization.descriptors.SerialDescriptor
import kotlinx.serialization.descriptors.StructureKind
import kotlinx.serialization.encoding.Decoder
import kotlinx.serialization.encoding.Encoder
import kotlinx.serialization.json.Json
import kotlinx.serialization.json.JsonArray
import kotlinx.serialization.json.JsonDecoder
import kotlinx.serialization.json.JsonElement
import kotlinx.serialization.json.JsonNull
import kotlinx.serialization.json.JsonObject
import kotlinx.serialization.json.JsonPrimitive
import kotlinx.serialization.json.contentOrNull
import kotlinx.serialization.json.jsonArray
import kotlinx.serialization.json.jsonObject
import kotlinx.serialization.json.jsonPrimitive
import kotlinx.serialization.json.longOrNull
import kotlinx.serialization.serializer
import org.outpost.ffi.OutpostException
import org.outpost.ffi.Query
import org.outpost.ffi.Record
import org.outpost.ffi.SyncState

/**
 * The [Json] typed collections use unless given another: unknown keys are ignored and
 * defaults are written. Whatever [Json] a collection is given, it keeps those two
 * settings (see [collection]).
 */
val OutpostJson: Json = Json {
    ignoreUnknownKeys = true
    encodeDefaults = true
}

/**
 * The collection [name] with its records as [T], a `@Serializable` class whose properties
 * are the record's top-level fields. [json] may carry the app's serializers module or
 * naming strategy; `ignoreUnknownKeys` and `encodeDefaults` are switched on in any case:
 * an older app version must read records a newer one wrote, and a field left at its
 * default must still be stored, or a query on it would not find the record.
 *
 * Records are decoded on [decodeOn], never on the collecting thread: a list of a few
 * hundred records is too much work for the main thread.
 *
 * Throws [IllegalArgumentException] when [T] is not a class or holds a [Counter],
 * [OrSet] or [Register] below the top level (the core merges CRDT fields only there).
 */
inline fun <reified T> Outpost.collection(
    name: String,
    json: Json = OutpostJson,
    decodeOn: CoroutineDispatcher = Dispatchers.Default,
): TypedCollection<T> = TypedCollection(this, name, serializer<T>(), json, decodeOn)

/** A record with its metadata: the id and sync state a list row needs. */
data class Entry<out T>(
    val id: String,
    val value: T,
    /** Whether this device's last edit has reached the server (or failed, or conflicts). */
    val syncState: SyncState,
    /** The server version of the synced base; 0 while never synced. */
    val version: Long,
    val updatedAtMs: Long,
)

/**
 * Errors of the mapping between records and [T]. Errors of the store itself stay
 * [OutpostException] (`InvalidData`, `NotFound`, `Closed`, `Crdt`, ...), unchanged, so
 * a typed call throws one of the two sealed hierarchies and nothing else (bar
 * [IllegalArgumentException] for a field that is not a CRDT field of [T]).
 */
sealed class OutpostTypedException(message: String, cause: Throwable?) : Exception(message, cause) {
    /**
     * A stored record that does not decode into the collection's type: a field of the
     * wrong JSON type, or a required field the record lacks (give fields added in a later
     * app version a default). An observe Flow fails with it; `catch` it there.
     */
    class Decode(val collection: String, val id: String, cause: Throwable) :
        OutpostTypedException("record $collection/$id does not decode: ${cause.message}", cause)

    /** A value that does not encode as a JSON object (a record is one). */
    class Encode(val collection: String, message: String, cause: Throwable?) :
        OutpostTypedException("value for $collection does not encode: $message", cause)
}

/**
 * The records of one collection as [T]. Get one with [collection].
 *
 * CRDT fields ([Counter], [OrSet], [Register]) read as their values. They are written
 * only with [increment], [setAdd], [setRemove] and [setRegister]: [put] never writes them
 * (a value there could not say which device counted what, and the core would store it
 * as a plain value in place of the merged one, losing other devices' increments).
 * A counter or set no device has touched reads as 0 or empty; a register never set is
 * missing, so give such a property a default or make it nullable.
 *
 * Each write returns the record as stored, decoded. A write is done once it returns or
 * throws [OutpostTypedException.Decode]: only the stored record failed to decode.
 */
class TypedCollection<T>(
    val outpost: Outpost,
    val name: String,
    val serializer: KSerializer<T>,
    json: Json = OutpostJson,
    private val decodeOn: CoroutineDispatcher = Dispatchers.Default,
) {
    @PublishedApi
    internal val json: Json = Json(json) {
        ignoreUnknownKeys = true
        encodeDefaults = true
    }

    private val descriptor = serializer.descriptor

    /** The CRDT fields of [T]: JSON key to kind. */
    private val crdtFields: Map<String, CrdtKind>

    /** Property (element) name to JSON key, for the helpers taking a property. */
    private val keys: Map<String, String>

    init {
        require(descriptor.kind == StructureKind.CLASS || descriptor.kind == StructureKind.OBJECT) {
            "a typed collection needs a class, not ${descriptor.serialName} (${descriptor.kind})"
        }
        val crdt = mutableMapOf<String, CrdtKind>()
        val names = mutableMapOf<String, String>()
        for (i in 0 until descriptor.elementsCount) {
            val key = jsonKey(i)
            names[descriptor.getElementName(i)] = key
            val element = descriptor.getElementDescriptor(i)
            val kind = CrdtKind.of(element)
            if (kind != null) crdt[key] = kind else rejectNested(element, descriptor.getElementName(i), mutableSetOf())
        }
        crdtFields = crdt
        keys = names
    }

    @OptIn(ExperimentalSerializationApi::class)
    private fun jsonKey(i: Int): String {
        val name = descriptor.getElementName(i)
        return json.configuration.namingStrategy?.serialNameForJson(descriptor, i, name) ?: name
    }

    private fun rejectNested(d: SerialDescriptor, path: String, seen: MutableSet<String>) {
        if (!seen.add(d.serialName)) return
        CrdtKind.of(d)?.let {
            throw IllegalArgumentException(
                "$path: a ${it.type} merges only as a top-level field of a record, not inside ${descriptor.serialName}",
            )
        }
        if (d.kind is StructureKind) {
            for (i in 0 until d.elementsCount) rejectNested(d.getElementDescriptor(i), "$path.${d.getElementName(i)}", seen)
        }
    }

    /**
     * Writes [value] as record [id] (a new id when null) and returns what is stored. It
     * sets every field [T] declares and leaves the record's other fields as they are:
     * fields a newer app version added, and the CRDT fields, which [put] never writes
     * (see the class). For an existing record this is a patch, for a new one a put.
     */
    suspend fun put(id: String?, value: T): Entry<T> =
        withContext(decodeOn) {
            entry(putFields(id, encode(value), { i, f -> outpost.put(name, i, f) }, { i, f -> outpost.patch(name, i, f) }))
        }

    /** A patch of the declared fields for an existing record, else a put. */
    private inline fun putFields(
        id: String?,
        fields: String,
        put: (String?, String) -> Record,
        patch: (String, String) -> Record,
    ): Record =
        if (id == null) {
            put(null, fields)
        } else {
            try {
                patch(id, fields)
            } catch (e: OutpostException.NotFound) {
                put(id, fields)
            }
        }

    /**
     * This collection inside a [transaction] block (get one with [Transaction.of]): the
     * same mapping and rules, blocking, reading the transaction's own writes.
     */
    inner class InTransaction internal constructor(private val tx: Transaction) {
        fun put(id: String?, value: T): Entry<T> =
            entry(putFields(id, encode(value), { i, f -> tx.put(name, i, f) }, { i, f -> tx.patch(name, i, f) }))

        fun get(id: String): T? = getEntry(id)?.value

        fun getEntry(id: String): Entry<T>? = tx.get(name, id)?.let(::entry)

        fun query(query: Query = Query()): List<T> = entries(query).map { it.value }

        fun entries(query: Query = Query()): List<Entry<T>> = tx.query(name, query).map(::entry)

        fun delete(id: String) = tx.delete(name, id)

        fun increment(id: String, field: KProperty1<T, Counter?>, by: Long = 1): Entry<T> {
            val key = keyOf(field)
            requireKind(key, CrdtKind.COUNTER)
            return entry(tx.increment(name, id, key, by))
        }
    }

    suspend fun get(id: String): T? = getEntry(id)?.value

    suspend fun getEntry(id: String): Entry<T>? = withContext(decodeOn) { outpost.get(name, id)?.let(::entry) }

    /** Records matching [query], in its order; build one with [org.outpost.query]. */
    suspend fun query(query: Query = Query()): List<T> = entries(query).map { it.value }

    /** [query] with ids and sync states. */
    suspend fun entries(query: Query = Query()): List<Entry<T>> = withContext(decodeOn) { outpost.query(name, query).map(::entry) }

    /**
     * [Outpost.observe] decoded: a record that does not decode fails the Flow with
     * [OutpostTypedException.Decode].
     */
    fun observe(query: Query = Query()): Flow<List<T>> = observeEntries(query).map { list -> list.map { it.value } }

    /**
     * [observe] with ids and sync states: emitted again when a local edit makes a row
     * PENDING and when the server's answer makes it SYNCED (or FAILED).
     */
    fun observeEntries(query: Query = Query()): Flow<List<Entry<T>>> =
        outpost.observe(name, query).map { records -> records.map(::entry) }.decoded()

    /** One record: now (null when absent), then each time a commit changes it. */
    fun observeOne(id: String): Flow<T?> = observeEntry(id).map { it?.value }

    fun observeEntry(id: String): Flow<Entry<T>?> = outpost.observeOne(name, id).map { it?.let(::entry) }.decoded()

    // Conflated again after the hop to decodeOn: a slow collector gets the latest result,
    // as from Outpost.observe, not a queue of stale ones.
    private fun <R> Flow<R>.decoded(): Flow<R> = flowOn(decodeOn).buffer(Channel.CONFLATED)

    suspend fun delete(id: String) = outpost.delete(name, id)

    /** Adds [by] (negative to subtract) to the [Counter] [field] of record [id]. */
    suspend fun increment(id: String, field: KProperty1<T, Counter?>, by: Long = 1): Entry<T> =
        increment(id, keyOf(field), by)

    /** [increment] by JSON key, e.g. for a field renamed with @SerialName. */
    suspend fun increment(id: String, field: String, by: Long = 1): Entry<T> {
        requireKind(field, CrdtKind.COUNTER)
        return withContext(decodeOn) { entry(outpost.increment(name, id, field, by)) }
    }

    suspend fun setAdd(id: String, field: KProperty1<T, OrSet?>, element: String): Entry<T> =
        setAdd(id, keyOf(field), element)

    suspend fun setAdd(id: String, field: String, element: String): Entry<T> {
        requireKind(field, CrdtKind.OR_SET)
        return withContext(decodeOn) { entry(outpost.setAdd(name, id, field, element)) }
    }

    suspend fun setRemove(id: String, field: KProperty1<T, OrSet?>, element: String): Entry<T> =
        setRemove(id, keyOf(field), element)

    suspend fun setRemove(id: String, field: String, element: String): Entry<T> {
        requireKind(field, CrdtKind.OR_SET)
        return withContext(decodeOn) { entry(outpost.setRemove(name, id, field, element)) }
    }

    /** Sets the [Register] [field] of record [id]; the latest write wins across devices. */
    suspend inline fun <reified V> setRegister(id: String, field: KProperty1<T, Register<V>?>, value: V): Entry<T> =
        setRegisterJson(id, keyOf(field), json.encodeToString(serializer<V>(), value))

    suspend inline fun <reified V> setRegister(id: String, field: String, value: V): Entry<T> =
        setRegisterJson(id, field, json.encodeToString(serializer<V>(), value))

    @PublishedApi
    internal suspend fun setRegisterJson(id: String, field: String, valueJson: String): Entry<T> {
        requireKind(field, CrdtKind.REGISTER)
        return withContext(decodeOn) { entry(outpost.setRegister(name, id, field, valueJson)) }
    }

    @PublishedApi
    internal fun keyOf(field: KProperty1<T, *>): String =
        keys[field.name]
            ?: throw IllegalArgumentException(
                "${field.name} is not a field of ${descriptor.serialName} (renamed with @SerialName? pass the JSON key)",
            )

    private fun requireKind(field: String, kind: CrdtKind) =
        require(crdtFields[field] == kind) { "$field is not a ${kind.type} field of ${descriptor.serialName}" }

    private fun encode(value: T): String {
        val element =
            try {
                json.encodeToJsonElement(serializer, value)
            } catch (e: SerializationException) {
                throw OutpostTypedException.Encode(name, e.message ?: "", e)
            }
        val obj = element as? JsonObject ?: throw OutpostTypedException.Encode(name, "not a JSON object: $element", null)
        return JsonObject(obj.filterKeys { it !in crdtFields }).toString()
    }

    private fun entry(record: Record): Entry<T> =
        Entry(record.id, decode(record), record.syncState, record.version, record.updatedAtMs)

    private fun decode(record: Record): T =
        try {
            val data = json.parseToJsonElement(record.dataJson).jsonObject
            val missing = crdtFields.filter { (key, _) -> key !in data }.mapNotNull { (key, kind) -> kind.empty?.let { key to it } }
            json.decodeFromJsonElement(serializer, if (missing.isEmpty()) data else JsonObject(data + missing))
        } catch (e: SerializationException) {
            throw OutpostTypedException.Decode(name, record.id, e)
        } catch (e: IllegalArgumentException) {
            // What kotlinx.serialization throws for a JSON value of the wrong shape.
            throw OutpostTypedException.Decode(name, record.id, e)
        }
}

/** A CRDT type of this file: its descriptor name, its `$crdt` tags, and its untouched value. */
private enum class CrdtKind(val serialName: String, val type: String, val tags: Set<String>, val empty: JsonElement?) {
    COUNTER("org.outpost.Counter", "Counter", setOf("gcounter", "pncounter"), JsonPrimitive(0)),
    OR_SET("org.outpost.OrSet", "OrSet", setOf("orset"), JsonArray(emptyList())),
    REGISTER("org.outpost.Register", "Register", setOf("lww"), null),
    ;

    companion object {
        fun of(d: SerialDescriptor): CrdtKind? = entries.firstOrNull { it.serialName == d.serialName.removeSuffix("?") }
    }
}

/**
 * A counter field: the sum of every device's increments, merged without conflict. Read
 * it from a record; change it with [TypedCollection.increment]. A sum beyond [Long]'s
 * range reads as [Long.MAX_VALUE] or [Long.MIN_VALUE].
 */
@kotlinx.serialization.Serializable(with = CounterSerializer::class)
data class Counter(val value: Long = 0)

/**
 * An observed-remove set field: the strings added and not removed since, by any device;
 * an add concurrent with a remove wins. Read-only here, in sorted order; change it with
 * [TypedCollection.setAdd] and [TypedCollection.setRemove].
 */
@kotlinx.serialization.Serializable(with = OrSetSerializer::class)
class OrSet(elements: Collection<String> = emptyList()) : Set<String> by elements.toSortedSet() {
    override fun equals(other: Any?): Boolean = other is Set<*> && other.size == size && other.containsAll(this)

    override fun hashCode(): Int = sumOf { it.hashCode() }

    override fun toString(): String = joinToString(", ", "OrSet[", "]")
}

/**
 * A last-write-wins register field: the value of the latest [TypedCollection.setRegister]
 * by any device, by hybrid clock.
 */
@kotlinx.serialization.Serializable(with = RegisterSerializer::class)
data class Register<out V>(val value: V)

/** The core's JSON form of a [kind] in [element], or null when [element] is a plain value. */
private fun crdtObject(element: JsonElement, kind: CrdtKind): JsonObject? {
    val obj = element as? JsonObject ?: return null
    val tag = obj["\$crdt"] ?: return null
    if ((tag as? JsonPrimitive)?.contentOrNull !in kind.tags) {
        throw SerializationException("expected a ${kind.type} CRDT, found ${'$'}crdt $tag")
    }
    return obj
}

private fun Decoder.json(what: String): JsonDecoder =
    this as? JsonDecoder ?: throw SerializationException("$what is read from JSON only")

/**
 * Reads a counter from the core's form (Σp − Σn) or a plain number; writes the number,
 * which [TypedCollection.put] leaves out.
 */
object CounterSerializer : KSerializer<Counter> {
    override val descriptor = PrimitiveSerialDescriptor("org.outpost.Counter", PrimitiveKind.LONG)

    override fun serialize(encoder: Encoder, value: Counter) = encoder.encodeLong(value.value)

    override fun deserialize(decoder: Decoder): Counter {
        val element = decoder.json("Counter").decodeJsonElement()
        val obj = crdtObject(element, CrdtKind.COUNTER) ?: return Counter(plainLong(element))
        fun sum(key: String) =
            (obj[key] as? JsonObject ?: JsonObject(emptyMap())).values.fold(java.math.BigInteger.ZERO) { a, v ->
                a + (v.jsonPrimitive.contentOrNull?.toBigIntegerOrNull() ?: throw SerializationException("bad count $v"))
            }
        val total = sum("p") - sum("n")
        val clamped = total.max(Long.MIN_VALUE.toBigInteger()).min(Long.MAX_VALUE.toBigInteger())
        return Counter(clamped.toLong())
    }

    private fun plainLong(e: JsonElement): Long =
        (e as? JsonPrimitive)?.takeIf { !it.isString }?.longOrNull ?: throw SerializationException("expected a counter, found $e")
}

/** Reads an OR-set from the core's form or a plain array of strings; writes the array. */
object OrSetSerializer : KSerializer<OrSet> {
    private val list = ListSerializer(String.serializer())

    @OptIn(ExperimentalSerializationApi::class)
    override val descriptor: SerialDescriptor = SerialDescriptor("org.outpost.OrSet", list.descriptor)

    override fun serialize(encoder: Encoder, value: OrSet) = list.serialize(encoder, value.toList())

    override fun deserialize(decoder: Decoder): OrSet {
        val json = decoder.json("OrSet")
        val element = json.decodeJsonElement()
        val obj = crdtObject(element, CrdtKind.OR_SET) ?: return OrSet(json.json.decodeFromJsonElement(list, element))
        fun tags(key: String) = (obj[key] as? JsonObject ?: throw SerializationException("OR-set without $key")).mapValues { (_, v) -> v.jsonArray.toSet() }
        val removes = tags("removes")
        return OrSet(tags("adds").filter { (x, added) -> (added - removes[x].orEmpty()).isNotEmpty() }.keys)
    }
}

/** Reads a register from the core's form or a plain value; writes the value. */
class RegisterSerializer<V>(private val value: KSerializer<V>) : KSerializer<Register<V>> {
    @OptIn(ExperimentalSerializationApi::class)
    override val descriptor: SerialDescriptor = SerialDescriptor("org.outpost.Register", value.descriptor)

    override fun serialize(encoder: Encoder, value: Register<V>) = this.value.serialize(encoder, value.value)

    override fun deserialize(decoder: Decoder): Register<V> {
        val json = decoder.json("Register")
        val element = json.decodeJsonElement()
        val inner = crdtObject(element, CrdtKind.REGISTER)?.let { it["v"] ?: JsonNull } ?: element
        return Register(json.json.decodeFromJsonElement(value, inner))
    }
}

/**
 * [collection] inside this transaction:
 * ```
 * db.transaction {
 *     val p = of(patients).get("p1") ?: error("no such patient")
 *     of(patients).put("p1", p.copy(village = "v043"))
 * }
 * ```
 */
fun <T> Transaction.of(collection: TypedCollection<T>): TypedCollection<T>.InTransaction = collection.InTransaction(this)
