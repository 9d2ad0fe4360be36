// Typed local queries for Kotlin: conditions with infix operators and a `query { }` builder.
//
// Why it exists: the FFI carries a filter as the core's JSON form (text), which an app
// should not write by hand, since a typo there only shows up at run time. This file gives
// the operators names and the compiler's checks, and renders them to that JSON form; what
// a filter means, and every check of it, stays in the Rust core.
package org.outpost

import org.outpost.ffi.OrderBy
import org.outpost.ffi.OutpostException
import org.outpost.ffi.Query

/**
 * Which records a query selects. Build one with [where] (or inside `query { where { } }`):
 * `("village" eq "v042") and ("age" gte 5)`.
 *
 * Values are JSON values: `null`, booleans, numbers, strings, lists and string-keyed maps.
 * Comparisons respect JSON types (`1` never matches `"1"` or `true`); a range compares
 * numbers with numbers and strings with strings.
 */
sealed class Where {
    /** The field holds [value] (a field holding null matches `null`; a missing one does not). */
    data class Eq(val field: String, val value: Any?) : Where()

    /** Not [Eq]: a record without the field matches. */
    data class Ne(val field: String, val value: Any?) : Where()

    data class Lt(val field: String, val value: Any?) : Where()

    data class Lte(val field: String, val value: Any?) : Where()

    data class Gt(val field: String, val value: Any?) : Where()

    data class Gte(val field: String, val value: Any?) : Where()

    /** The field equals one of [values]. */
    data class In(val field: String, val values: List<Any?>) : Where()

    /** The field holds a string starting with [prefix]. */
    data class Prefix(val field: String, val prefix: String, val ignoreCase: Boolean = false) : Where()

    /** The field holds null or is missing. */
    data class IsNull(val field: String) : Where()

    /** The field is present, whatever it holds. */
    data class Exists(val field: String) : Where()

    /**
     * Full-text search over the collection's declared search fields: whole words, case
     * and diacritics folded; a word ending in `*` is a prefix (`amin*`).
     */
    data class Search(val text: String) : Where()

    /** Every condition holds (none: every record). */
    data class And(val all: List<Where>) : Where()

    /** Some condition holds (none: no record). */
    data class Or(val any: List<Where>) : Where()

    infix fun and(other: Where): Where = And(((this as? And)?.all ?: listOf(this)) + ((other as? And)?.all ?: listOf(other)))

    infix fun or(other: Where): Where = Or(((this as? Or)?.any ?: listOf(this)) + ((other as? Or)?.any ?: listOf(other)))

    /**
     * The core's JSON form, e.g. `{"and":[{"eq":["village","v042"]},{"gte":["age",5]}]}`.
     * A value with no JSON form (NaN, a `Date`) throws `OutpostException.InvalidData`.
     */
    fun toJson(): String =
        when (this) {
            is Eq -> compare("eq", field, value)
            is Ne -> compare("ne", field, value)
            is Lt -> compare("lt", field, value)
            is Lte -> compare("lte", field, value)
            is Gt -> compare("gt", field, value)
            is Gte -> compare("gte", field, value)
            is In -> compare("in", field, values)
            is Prefix -> compare(if (ignoreCase) "prefix_ci" else "prefix", field, prefix)
            is IsNull -> operator("is_null", json(field))
            is Exists -> operator("exists", json(field))
            is Search -> operator("search", json(text))
            is And -> operator("and", all.joinToString(",", "[", "]") { it.toJson() })
            is Or -> operator("or", any.joinToString(",", "[", "]") { it.toJson() })
        }
}

private fun operator(name: String, argument: String) = "{\"$name\":$argument}"

private fun compare(name: String, field: String, value: Any?) = operator(name, "[${json(field)},${json(value)}]")

/** JSON text of a value; anything JSON cannot hold is bad input, typed like the core's. */
internal fun json(value: Any?): String =
    when (value) {
        null -> "null"
        is Boolean, is Int, is Long, is Short, is Byte, is UInt, is ULong, is UShort, is UByte -> value.toString()
        is Double -> finite(value.isFinite(), value)
        is Float -> finite(value.isFinite(), value)
        is Number -> value.toString()
        is String -> quote(value)
        is Char -> quote(value.toString())
        is Iterable<*> -> value.joinToString(",", "[", "]") { json(it) }
        is Array<*> -> value.asIterable().joinToString(",", "[", "]") { json(it) }
        is Map<*, *> ->
            value.entries.joinToString(",", "{", "}") { (k, v) ->
                if (k !is String) throw OutpostException.InvalidData("a filter value's map keys must be strings, not $k")
                "${quote(k)}:${json(v)}"
            }
        else -> throw OutpostException.InvalidData("a filter value must be JSON, not a ${value::class.qualifiedName}")
    }

private fun finite(ok: Boolean, value: Number): String =
    if (ok) value.toString() else throw OutpostException.InvalidData("a filter value must be a finite number, not $value")

private fun quote(s: String): String =
    buildString(s.length + 2) {
        append('"')
        for (c in s) {
            when {
                c == '"' -> append("\\\"")
                c == '\\' -> append("\\\\")
                c < ' ' -> append("\\u%04x".format(c.code))
                else -> append(c)
            }
        }
        append('"')
    }

/** The operators of [where]: `"village" eq "v042"`, `"age" gte 5`, `search("amin*")`. */
object WhereScope {
    infix fun String.eq(value: Any?): Where = Where.Eq(this, value)

    infix fun String.ne(value: Any?): Where = Where.Ne(this, value)

    infix fun String.lt(value: Any?): Where = Where.Lt(this, value)

    infix fun String.lte(value: Any?): Where = Where.Lte(this, value)

    infix fun String.gt(value: Any?): Where = Where.Gt(this, value)

    infix fun String.gte(value: Any?): Where = Where.Gte(this, value)

    infix fun String.isIn(values: Iterable<Any?>): Where = Where.In(this, values.toList())

    infix fun String.beginsWith(prefix: String): Where = Where.Prefix(this, prefix)

    infix fun String.beginsWithIgnoreCase(prefix: String): Where = Where.Prefix(this, prefix, ignoreCase = true)

    fun isNull(field: String): Where = Where.IsNull(field)

    fun exists(field: String): Where = Where.Exists(field)

    fun search(text: String): Where = Where.Search(text)

    fun allOf(vararg conditions: Where): Where = Where.And(conditions.toList())

    fun anyOf(vararg conditions: Where): Where = Where.Or(conditions.toList())
}

/** A condition built with the [WhereScope] operators, e.g. for `countWhere`. */
fun where(build: WhereScope.() -> Where): Where = WhereScope.build()

/** Builds a [Query]; see [query]. */
class QueryBuilder internal constructor() {
    private var filter: Where? = null
    private val order = mutableListOf<OrderBy>()
    private var limit: UInt? = null
    private var offset: UInt = 0u
    private var after: String? = null

    /** Adds a condition; several are and-ed. */
    fun where(condition: Where) {
        filter = filter?.and(condition) ?: condition
    }

    fun where(build: WhereScope.() -> Where) = where(WhereScope.build())

    /** Adds a sort key after the ones already given; ties are broken by id. */
    fun orderBy(field: String, descending: Boolean = false) {
        order += OrderBy(field, descending)
    }

    fun orderByDescending(field: String) = orderBy(field, descending = true)

    /** Sorts by record id (the default when no key is given). */
    fun orderById(descending: Boolean = false) {
        order += OrderBy(null, descending)
    }

    fun limit(n: Int) {
        limit = count("limit", n)
    }

    fun offset(n: Int) {
        offset = count("offset", n)
    }

    /** Continues after a page: pass `Page.next` from [Outpost.queryPage]. */
    fun after(cursor: String?) {
        after = cursor
    }

    private fun count(what: String, n: Int): UInt =
        if (n >= 0) n.toUInt() else throw OutpostException.InvalidData("$what must not be negative, got $n")

    internal fun build() = Query(filterJson = filter?.toJson(), order = order.toList(), limit = limit, offset = offset, after = after)
}

/**
 * A query for [Outpost.query], [Outpost.queryPage] and [Outpost.observe]:
 * `query { where { ("village" eq "v042") and ("age" gte 5) }; orderBy("name"); limit(50) }`.
 */
fun query(build: QueryBuilder.() -> Unit): Query = QueryBuilder().apply(build).build()
