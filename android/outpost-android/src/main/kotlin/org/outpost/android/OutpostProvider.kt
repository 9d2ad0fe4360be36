// How code that Android starts on its own (a WorkManager worker in a cold process) finds
// the app's store: the Application says how to open it, and everyone shares the one
// instance. A static holder set in Application.onCreate would do, except that a worker
// may run before anything set it, which is exactly when it matters.
package org.outpost.android

import kotlinx.coroutines.sync.Mutex
import kotlinx.coroutines.sync.withLock
import org.outpost.Outpost

/**
 * Implemented by the app's `Application`: the one open [Outpost] of the process, opened
 * on first use. The UI and [OutpostSyncWorker] both call it, so they share one store and
 * one sync engine. [SharedOutpost] implements the "open once" part.
 */
interface OutpostProvider {
    suspend fun outpost(): Outpost
}

/**
 * Opens the store on first [get] and hands the same instance to every later caller,
 * concurrent ones included. A failed open is not remembered: the next call tries again.
 * Nor is a store that was closed or signed out since: the next call opens it again
 * (for whoever [open] says is signed in now), so a worker never retries a closed store.
 */
class SharedOutpost(private val open: suspend () -> Outpost) {
    private val lock = Mutex()

    @Volatile
    private var opened: Outpost? = null

    suspend fun get(): Outpost = live() ?: lock.withLock { live() ?: open().also { opened = it } }

    private fun live(): Outpost? = opened?.takeUnless { it.native.isClosed() }

    /** The store if it was opened, without opening it. */
    fun peek(): Outpost? = opened
}
