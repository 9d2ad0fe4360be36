// Tells the core what the OS knows about the network. The core trusts "up" only after its
// own debounce and health probe, so flapping callbacks are harmless; what matters is that
// "down" is never reported while a usable network is the default, and the reverse.
package org.outpost.android

import android.content.Context
import android.net.ConnectivityManager
import android.net.Network
import android.net.NetworkCapabilities
import org.outpost.Outpost

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

    // Callbacks arrive on ConnectivityManager's thread, one at a time; the lock only
    // orders them against start().
    private val lock = Any()
    private var current: Network? = null

    internal val callback =
        object : ConnectivityManager.NetworkCallback() {
            override fun onAvailable(network: Network) =
                synchronized(lock) {
                    current = network
                    report(true)
                }

            override fun onCapabilitiesChanged(network: Network, caps: NetworkCapabilities) =
                synchronized(lock) {
                    current = network
                    report(usable(caps))
                }

            override fun onBlockedStatusChanged(network: Network, blocked: Boolean) =
                synchronized(lock) {
                    // Data saver or a background restriction: no traffic until it lifts.
                    if (network == current) report(!blocked)
                }

            override fun onLost(network: Network) =
                synchronized(lock) {
                    // A late onLost for the network the default just moved away from says
                    // nothing about the new one; no lookup of activeNetwork, which races.
                    if (network == current) {
                        current = null
                        report(false)
                    }
                }
        }

    /** Reports the network now, then follows it. */
    fun start() {
        synchronized(lock) {
            val active = connectivity.activeNetwork
            current = active
            report(active != null && usable(connectivity.getNetworkCapabilities(active)))
        }
        connectivity.registerDefaultNetworkCallback(callback)
    }

    override fun close() = connectivity.unregisterNetworkCallback(callback)

    private companion object {
        fun usable(caps: NetworkCapabilities?): Boolean =
            caps != null && caps.hasCapability(NetworkCapabilities.NET_CAPABILITY_INTERNET)
    }
}
