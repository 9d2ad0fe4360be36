// Test support: the real outpost-server on a loopback port and devices opened on it.
//
// The server is started as testkit/src/server.rs starts it: a temporary TOML config with
// users, `listen = "127.0.0.1:0"`, and the address read from the first stdout line.
package org.outpost

import java.io.File
import java.nio.file.Files
import java.util.concurrent.LinkedBlockingQueue
import java.util.concurrent.TimeUnit
import kotlinx.coroutines.delay
import kotlinx.coroutines.withTimeout
import org.junit.jupiter.api.AfterEach
import org.junit.jupiter.api.BeforeEach
import org.outpost.ffi.CollectionSpec
import org.outpost.ffi.ConflictStrategy
import org.outpost.ffi.Durability
import org.outpost.ffi.OutpostConfig
import org.outpost.ffi.TokenProvider

const val AMINA = "token-amina-0123456789abcdef0123456789"
const val BEN = "token-ben-0123456789abcdef0123456789"
const val CHIOMA = "token-chioma-0123456789abcdef0123456789"

class TestServer : AutoCloseable {
    val dir: File = Files.createTempDirectory("outpost-kt").toFile()
    private val process: Process
    val url: String

    init {
        val config = File(dir, "server.toml")
        val users =
            listOf(Triple("amina", "north", AMINA), Triple("ben", "north", BEN), Triple("chioma", "south", CHIOMA))
                .joinToString("") { (name, team, token) ->
                    "\n[[users]]\nname = \"$name\"\nteam = \"$team\"\ntoken = \"$token\"\n"
                }
        config.writeText(
            "listen = \"127.0.0.1:0\"\ndatabase = \"${File(dir, "server.db").path}\"\n" +
                "default_access = \"team\"\ntombstone_retention_days = 30\n" + users,
        )
        val bin = System.getProperty("outpost.server.bin") ?: "../target/debug/outpost-server"
        process =
            ProcessBuilder(bin, "--config", config.path)
                .redirectError(ProcessBuilder.Redirect.DISCARD)
                .start()
        val lines = LinkedBlockingQueue<String>()
        Thread {
            process.inputStream.bufferedReader().lineSequence().forEach { lines.put(it) }
        }.apply { isDaemon = true }.start()
        val prefix = "outpost-server listening on http://"
        var addr: String? = null
        val deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(30)
        while (addr == null && System.nanoTime() < deadline) {
            val line = lines.poll(100, TimeUnit.MILLISECONDS) ?: continue
            if (line.startsWith(prefix)) addr = line.removePrefix(prefix).trim()
        }
        check(addr != null) { "outpost-server did not start" }
        url = "http://$addr/"
    }

    fun config(name: String) =
        OutpostConfig(
            path = File(dir, "$name.db").path,
            serverUrl = url,
            collections =
                listOf(
                    CollectionSpec("answers", ConflictStrategy.LAST_WRITE_WINS),
                    CollectionSpec(
                        "patients",
                        ConflictStrategy.FIELD_MERGE,
                        indexes = listOf(listOf("village", "name"), listOf("age")),
                        search = listOf("name"),
                    ),
                    CollectionSpec("reviews", ConflictStrategy.MANUAL),
                ),
            durability = Durability.NORMAL,
            backoffInitialMs = 100uL,
            backoffMaxMs = 500uL,
            networkDebounceMs = 20uL,
        )

    suspend fun device(
        name: String,
        token: String = AMINA,
        tokens: TokenProvider = tokenProvider { token },
    ): Outpost = Outpost.open(config(name), tokens)

    override fun close() {
        process.destroyForcibly()
        process.waitFor(10, TimeUnit.SECONDS)
        dir.deleteRecursively()
    }
}

/** Polls [check] until it holds; fails after [timeoutMs]. */
suspend fun eventually(timeoutMs: Long = 10_000, what: String = "condition", check: suspend () -> Boolean) {
    withTimeout(timeoutMs) {
        while (!check()) delay(20)
    }
}

/** A suite with a fresh server for each test; the devices in [open] are closed after it. */
abstract class ServerTest {
    protected lateinit var server: TestServer
    protected val open = mutableListOf<Outpost>()

    @BeforeEach
    fun start() {
        server = TestServer()
    }

    @AfterEach
    fun stop() {
        open.forEach { it.close() }
        server.close()
    }
}
