// The app the shrinker check puts through ProGuard: it uses every way the library crosses
// JNA (calls with records and errors in buffers, foreign callbacks, an async foreign
// callback) and a typed collection with a CRDT field, so that a rule missing for any of
// them shows as a crash. Prints "ok" last.
package org.outpost.shrink

import java.io.File
import kotlin.time.Duration.Companion.seconds
import kotlinx.coroutines.flow.first
import kotlinx.coroutines.runBlocking
import kotlinx.serialization.Serializable
import org.outpost.Counter
import org.outpost.Outpost
import org.outpost.collection
import org.outpost.ffi.CollectionSpec
import org.outpost.ffi.ConflictStrategy
import org.outpost.ffi.Durability
import org.outpost.ffi.OutpostConfig
import org.outpost.ffi.OutpostException
import org.outpost.tokenProvider

@Serializable
data class Visit(val patient: String, val count: Counter = Counter())

fun main(args: Array<String>) =
    runBlocking {
        val config =
            OutpostConfig(
                path = File(args[0], "shrunk.db").path,
                // Nothing listens there: the sync fails fast, after asking for a token.
                serverUrl = "http://127.0.0.1:9/",
                collections = listOf(CollectionSpec("answers", ConflictStrategy.LAST_WRITE_WINS)),
                durability = Durability.NORMAL,
            )
        var asked = 0
        val outpost = Outpost.open(config, tokenProvider { asked++; "token-shrink-0123456789abcdef" })
        outpost.put("answers", "q1", """{"a":"yes"}""")
        check(outpost.get("answers", "q1")?.dataJson?.contains("yes") == true) { "read back" }
        // A query listener: the first result arrives through a foreign callback.
        check(outpost.observe("answers").first().size == 1) { "observe" }
        // Typed: the app's class and the library's CRDT value, through kotlinx.serialization.
        val visits = outpost.collection<Visit>("answers")
        visits.put("v1", Visit("p-17"))
        visits.increment("v1", Visit::count, 2)
        check(visits.get("v1") == Visit("p-17", Counter(2))) { "typed read back: ${visits.get("v1")}" }
        // A typed error from the core, decoded from its buffer.
        val error = runCatching { outpost.get("no such collection", "x") }.exceptionOrNull()
        check(error is OutpostException) { "expected an OutpostException, got $error" }
        // The token provider is an async foreign callback; the status listener another.
        outpost.setNetworkAvailable(true)
        outpost.syncNow(deadline = 5.seconds)
        check(asked > 0) { "token provider not asked" }
        outpost.closeAndWait()
        println("ok")
    }
