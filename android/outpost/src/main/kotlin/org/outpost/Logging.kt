// Outpost's log records, handed to the app's logger: a failure in the field (a sync that
// keeps failing, a listener that throws) then leaves a trace in Logcat, Timber or a crash
// reporter's breadcrumbs. The records never hold record data or a token.
//
// The core delivers records on a thread of its own, one at a time, from a bounded queue:
// a slow logger loses records (and is told how many) rather than slowing the store.
package org.outpost

import org.outpost.ffi.LogLevel
import org.outpost.ffi.OutpostLogger

/**
 * Receives Outpost's log records; implement it to forward them (e.g. to Timber).
 * `target` names the part of Outpost that logged, e.g. `outpost_core::sync::push`.
 * Called on Outpost's log thread, never the main thread; an exception is ignored.
 */
fun interface OutpostLog {
    fun log(level: LogLevel, target: String, message: String)
}

/**
 * Sends Outpost's log records at [level] and above to [log], for the whole process,
 * replacing the logger set before. [LogLevel.INFO] logs each sync that does not complete;
 * [LogLevel.DEBUG] also every completed sync and every retried request.
 */
fun Outpost.Companion.setLogger(level: LogLevel = LogLevel.INFO, log: OutpostLog) {
    org.outpost.ffi.setLogger(Forward(log), level)
}

/** Stops sending Outpost's log records; those already queued still arrive. */
fun Outpost.Companion.clearLogger() {
    org.outpost.ffi.clearLogger()
}

private class Forward(private val log: OutpostLog) : OutpostLogger {
    override fun log(level: LogLevel, target: String, message: String) {
        // A logger that fails loses its record, nothing more; the core would ignore the
        // error too, but it is cheaper not to carry it across.
        try {
            log.log(level, target, message)
        } catch (e: Exception) {
            // Nowhere to report it: this is the log.
        }
    }
}
