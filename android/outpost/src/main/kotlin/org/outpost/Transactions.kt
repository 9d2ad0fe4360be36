// Outpost.transaction { }: reads and writes of one block in one database transaction.
//
// Why it exists: batch() takes writes decided up front, but a read-modify-write (read a
// stock count, check it, write it back) must read inside the transaction it writes in.
// The core runs the block on a thread of its own while it holds the writer; this file
// adapts that to Kotlin: a receiver with the store's familiar functions, the block's
// value returned, and the block's own exception rethrown after the rollback.
package org.outpost

import kotlinx.coroutines.withContext
import org.outpost.ffi.Filter
import org.outpost.ffi.OutpostException
import org.outpost.ffi.Query
import org.outpost.ffi.Record
import org.outpost.ffi.TransactionBody
import org.outpost.ffi.Transaction as NativeTransaction

/**
 * A transaction in progress: the receiver of [Outpost.transaction]'s block. Its functions
 * are [Outpost]'s of the same names and errors, but blocking, and they see the writes made
 * so far in this transaction. Use it only inside the block: afterwards every call throws
 * `OutpostException.TransactionEnded` and changes nothing.
 */
class Transaction internal constructor(
    /** The generated object, for anything this layer does not wrap. */
    val native: NativeTransaction,
) {
    fun put(collection: String, id: String? = null, json: String): Record = native.put(collection, id, json)

    fun patch(collection: String, id: String, fieldsJson: String): Record = native.patch(collection, id, fieldsJson)

    fun delete(collection: String, id: String) = native.delete(collection, id)

    fun get(collection: String, id: String): Record? = native.get(collection, id)

    fun query(collection: String, query: Query = Query()): List<Record> = native.query(collection, query)

    fun count(collection: String, filters: List<Filter> = emptyList()): Long =
        native.count(collection, filters).toLong()

    fun countWhere(collection: String, where: Where): Long = native.countWhere(collection, where.toJson()).toLong()

    fun increment(collection: String, id: String, field: String, by: Long = 1): Record =
        native.increment(collection, id, field, by)

    fun setRegister(collection: String, id: String, field: String, valueJson: String): Record =
        native.setRegister(collection, id, field, valueJson)

    fun setAdd(collection: String, id: String, field: String, element: String): Record =
        native.setAdd(collection, id, field, element)

    fun setRemove(collection: String, id: String, field: String, element: String): Record =
        native.setRemove(collection, id, field, element)
}

/**
 * Runs [block] in one database transaction and returns its value: its reads see its own
 * writes, and its writes commit together when it returns (with one change event, after
 * the commit). If it throws, every write is rolled back and its exception is rethrown as
 * it was thrown. An `OutpostException` from the middle of a write (`Database`, `Closed`)
 * also rolls everything back, even if the block caught it; bad input (`InvalidData`,
 * `NotFound`, `Crdt`, ...) changes nothing, so the block may catch it and carry on.
 *
 * ```
 * val left = db.transaction {
 *     val stock = get("stock", "amoxicillin") ?: error("no stock record")
 *     val n = JSONObject(stock.dataJson).getInt("count")
 *     check(n > 0) { "out of stock" }
 *     patch("stock", "amoxicillin", """{"count":${n - 1}}""")
 *     n - 1
 * }
 * ```
 *
 * The block is plain blocking code on a thread the core starts for it; the caller
 * suspends on [Outpost]'s IO dispatcher meanwhile. The transaction holds the store's
 * writer until the block returns, so other writes (the sync's too) wait: keep it short,
 * with no network calls. Inside it, read and write only through the receiver. A blocking
 * call on this store's `native` object from the block throws
 * `OutpostException.InTransaction`, but a suspending one ([Outpost.put] in `runBlocking`)
 * hops to another thread, waits for the transaction to end, and so never returns; so
 * would any write the block waits for. Cancelling the caller does not stop the block:
 * the call returns once it has run.
 */
suspend fun <R> Outpost.transaction(block: Transaction.() -> R): R =
    withContext(io) {
        val body = Body(block)
        try {
            native.transaction(body)
        } catch (e: OutpostException) {
            throw body.thrown ?: e
        }
        body.value()
    }

/** Runs the block on the core's thread and keeps what it returned or threw. */
private class Body<R>(private val block: Transaction.() -> R) : TransactionBody {
    // Written on the core's thread, read on the caller's after the native call returns.
    @Volatile private var returned: Any? = null

    @Volatile var thrown: Throwable? = null

    override fun run(tx: NativeTransaction) {
        try {
            returned = Transaction(tx).block()
        } catch (t: Throwable) {
            // Every Throwable: an Error escaping here would not reach the core as a
            // failure, and the writes would commit.
            thrown = t
            throw OutpostException.Callback("the transaction block threw $t")
        }
    }

    @Suppress("UNCHECKED_CAST")
    fun value(): R = returned as R
}
