// Figure 8 from Kotlin: per-call time of `put` and `get` through the generated UniFFI
// bindings (JNA), the path an Android app takes. Written as a JUnit test only so the
// Maven project needs no plugin beyond those android/pom.xml already uses.
//
// The JVM is measured warm: 2,000 calls of each kind run first on other records, so the
// figure is the steady-state cost of the FFI, not JIT compilation.
package org.outpost.bench

import java.io.File
import org.junit.jupiter.api.Test
import org.outpost.ffi.CollectionSpec
import org.outpost.ffi.ConflictStrategy
import org.outpost.ffi.Durability
import org.outpost.ffi.Outpost
import org.outpost.ffi.OutpostConfig
import org.outpost.ffi.TokenProvider

class FfiBenchTest {
    private object NoToken : TokenProvider {
        override suspend fun token(refresh: Boolean): String? = ""
    }

    // The same record as bench/src/util.rs payload(i), as compact JSON text.
    private fun payload(i: Long): String =
        "{\"answer\":\"The patient reports fever for three days, no cough, drinking well.\"," +
            "\"checked\":${i % 2 == 0L}," +
            "\"notes\":\"Follow-up visit planned next week; referred to the district clinic.\"," +
            "\"patient\":\"p-${"%08d".format(i)}\",\"question\":\"q-${"%03d".format(i % 200)}\"," +
            "\"score\":${i % 97},\"village\":\"Kole\",\"visit\":$i}"

    private fun median(v: LongArray): Double {
        val s = v.sorted()
        return if (s.isEmpty()) 0.0 else s[s.size / 2] / 1000.0
    }

    @Test
    fun putAndGet() {
        val n = System.getProperty("bench.n").toInt()
        val out = File(System.getProperty("bench.out"))
        val config = OutpostConfig(
            path = System.getProperty("bench.db"),
            serverUrl = "http://127.0.0.1:9/",
            collections = listOf(CollectionSpec("answers", ConflictStrategy.LAST_WRITE_WINS)),
            durability = Durability.NORMAL,
        )
        val db = Outpost.open(config, NoToken)
        val warm = 2000
        for (i in 0 until warm) {
            db.put("answers", "w-$i", payload(i.toLong()))
            db.get("answers", "w-$i")
        }
        val puts = LongArray(n)
        val gets = LongArray(n)
        for (i in 0 until n) {
            val id = "r-${"%08d".format(i)}"
            val data = payload(i.toLong())
            val t = System.nanoTime()
            db.put("answers", id, data)
            puts[i] = System.nanoTime() - t
        }
        for (i in 0 until n) {
            val id = "r-${"%08d".format(i)}"
            val t = System.nanoTime()
            val r = db.get("answers", id)
            gets[i] = System.nanoTime() - t
            check(r != null) { "kotlin ffi: a written record is missing" }
        }
        db.closeStore()
        db.close()
        out.parentFile?.mkdirs()
        out.writeText(
            "{\"n\":$n,\"put_p50_us\":${median(puts)},\"put_mean_us\":${puts.average() / 1000.0}," +
                "\"get_p50_us\":${median(gets)},\"get_mean_us\":${gets.average() / 1000.0}}\n",
        )
    }
}
