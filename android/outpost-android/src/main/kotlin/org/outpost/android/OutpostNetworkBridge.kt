// Tells the core what the OS knows about the network. The core trusts "up" only after its
// own debounce and health probe, so flapping callbacks are harmless; what matters is that
// "down" is never reported while a usable network is the default, and the reverse.
package org.outpost.android

import android.content.Context
import android.net.ConnectivityManager
import android.net.Network
import android.net.NetworkCapabilities
import org.outpost.Outpost
import org.outpost.ffi.OutpostException

/**
 * Follows the system's default network. A network counts as usable when it offers
 * internet access, validated or not: a zero-rated carrier network or one behind a
 * captive check may never validate, and the core's own probe decides whether the server
 * answers. Call [start] once, [close] when done.
 */
class OutpostNetworkBridge(
    context: Context,
    private val report: (Boolean) -> Unit,
) : AutoCloseable {
    constructor(context: Context, outpost: Outpost) : this(context, outpost::setNetworkAvailable)

    private val connectivity = context.getSystemService(ConnectivityManager::class.java)

    // Callbacks arrive on ConnectivityManager's thread, one at a time; the lock orders
    // them against start() and close().
    private val lock = Any()
    private var current: Network? = null

    /** Data Saver or a background restriction blocks the current network. */
    private var blocked = false
    private var registered = false

    /** The store closed: nothing more to report, ever. */
    private var stopped = false

    internal val callback =
        object : ConnectivityManager.NetworkCallback() {
            override fun onAvailable(network: Network) =
                synchronized(lock) {
                    follow(network)
                    tell(!blocked)
                }

            override fun onCapabilitiesChanged(network: Network, caps: NetworkCapabilities) =
                synchronized(lock) {
                    follow(network)
                    tell(usable(caps) && !blocked)
                }

            override fun onBlockedStatusChanged(network: Network, blocked: Boolean) =
                synchronized(lock) {
                    // No traffic until it lifts, whatever the capabilities say meanwhile.
                    if (network == current) {
                        this@OutpostNetworkBridge.blocked = blocked
                        tell(!blocked)
                    }
                }

            override fun onLost(network: Network) =
                synchronized(lock) {
                    // A late onLost for the network the default just moved away from says
                    // nothing about the new one; no lookup of activeNetwork, which races.
                    if (network == current) {
                        current = null
                        blocked = false
                        tell(false)
                    }
                }
        }

    /** Reports the network now, then follows it. */
    fun start() {
        synchronized(lock) {
            val active = connectivity.activeNetwork
            current = active
            blocked = false
            tell(active != null && usable(connectivity.getNetworkCapabilities(active)))
            if (registered || stopped) return
            registered = true
        }
        connectivity.registerDefaultNetworkCallback(callback)
    }

    /** Stops following the network; safe to call more than once, or before [start]. */
    override fun close() {
        synchronized(lock) {
            if (!registered) return
            registered = false
        }
        connectivity.unregisterNetworkCallback(callback)
    }

    private fun follow(network: Network) {
        if (network != current) blocked = false
        current = network
    }

    /**
     * Reports to the store. One closed or signed out meanwhile has nothing to follow the
     * network for: the bridge stops, rather than throw on ConnectivityManager's thread
     * (which would end the app).
     */
    private fun tell(usable: Boolean) {
        try {
            report(usable)
        } catch (e: OutpostException.Closed) {
            stopped = true
            if (registered) {
                registered = false
                runCatching { connectivity.unregisterNetworkCallback(callback) }
            }
        }
    }

    private companion object {
        fun usable(caps: NetworkCapabilities?): Boolean =
            caps != null && caps.hasCapability(NetworkCapabilities.NET_CAPABILITY_INTERNET)
    }
}
