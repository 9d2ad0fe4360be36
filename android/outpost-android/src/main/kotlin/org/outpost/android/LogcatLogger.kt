// Outpost's log records in Logcat, under the tag `Outpost`: the logger for apps that
// have no logging library of their own, and for reading a field device with adb.
package org.outpost.android

import android.util.Log
import org.outpost.Outpost
import org.outpost.OutpostLog
import org.outpost.ffi.LogLevel
import org.outpost.setLogger

/**
 * Writes Outpost's log records to Logcat as `<target>: <message>`, tag [TAG]. Install it
 * once, e.g. in `Application.onCreate`: `LogcatLogger.install()`.
 */
object LogcatLogger : OutpostLog {
    const val TAG = "Outpost"

    /** Sends records at [level] and above to Logcat, replacing any logger set before. */
    fun install(level: LogLevel = LogLevel.INFO) = Outpost.setLogger(level, this)

    override fun log(level: LogLevel, target: String, message: String) {
        Log.println(priority(level), TAG, "$target: $message")
    }

    private fun priority(level: LogLevel): Int =
        when (level) {
            LogLevel.ERROR -> Log.ERROR
            LogLevel.WARN -> Log.WARN
            LogLevel.INFO -> Log.INFO
            LogLevel.DEBUG -> Log.DEBUG
            LogLevel.TRACE -> Log.VERBOSE
        }
}
