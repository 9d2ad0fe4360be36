// The ConnectivityManager bridge's answers to the callbacks Android sends, in the orders
// Android sends them.
package org.outpost.android

import android.content.Context
import android.net.ConnectivityManager
import android.net.Network
import android.net.NetworkCapabilities
import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Test
import org.junit.runner.RunWith
import org.outpost.ffi.OutpostException
import org.robolectric.RobolectricTestRunner
import org.robolectric.RuntimeEnvironment
import org.robolectric.Shadows.shadowOf
import org.robolectric.shadows.ShadowNetwork
import org.robolectric.shadows.ShadowNetworkCapabilities

@RunWith(RobolectricTestRunner::class)
class OutpostNetworkBridgeTest {
    private val context: Context = RuntimeEnvironment.getApplication()
    private val connectivity = context.getSystemService(ConnectivityManager::class.java)
    private val reports = mutableListOf<Boolean>()
    private val bridge = OutpostNetworkBridge(context) { reports += it }
    private val wifi: Network = ShadowNetwork.newInstance(1)
    private val cell: Network = ShadowNetwork.newInstance(2)

    private fun caps(vararg capabilities: Int): NetworkCapabilities =
        ShadowNetworkCapabilities.newInstance().also { c ->
            capabilities.forEach { shadowOf(c).addCapability(it) }
        }

    private val internet = caps(NetworkCapabilities.NET_CAPABILITY_INTERNET)

    @Test
    fun startReportsTheNetworkThenFollowsTheDefaultOne() {
        bridge.start()
        assertTrue(shadowOf(connectivity).networkCallbacks.contains(bridge.callback))
        assertEquals(1, reports.size)
        bridge.close()
        assertTrue(shadowOf(connectivity).networkCallbacks.isEmpty())
    }

    @Test
    fun anUnvalidatedNetworkWithInternetCounts() {
        // A zero-rated carrier network: internet, never validated.
        bridge.callback.onAvailable(cell)
        bridge.callback.onCapabilitiesChanged(cell, internet)
        assertEquals(listOf(true, true), reports)
        bridge.callback.onCapabilitiesChanged(cell, caps())
        assertEquals(false, reports.last())
    }

    @Test
    fun losingTheDefaultNetworkReportsOffline() {
        bridge.callback.onAvailable(wifi)
        bridge.callback.onLost(wifi)
        assertEquals(listOf(true, false), reports)
    }

    @Test
    fun aLateLossOfThePreviousNetworkIsIgnored() {
        bridge.callback.onAvailable(wifi)
        // The default moves to cellular, and Android reports the wifi gone afterwards.
        bridge.callback.onAvailable(cell)
        bridge.callback.onCapabilitiesChanged(cell, internet)
        bridge.callback.onLost(wifi)
        assertEquals(listOf(true, true, true), reports)
        bridge.callback.onLost(cell)
        assertEquals(false, reports.last())
    }

    @Test
    fun aBlockedNetworkIsOfflineUntilUnblocked() {
        bridge.callback.onAvailable(wifi)
        bridge.callback.onBlockedStatusChanged(wifi, true)
        bridge.callback.onBlockedStatusChanged(wifi, false)
        assertEquals(listOf(true, false, true), reports)
    }

    @Test
    fun blockedStaysOfflineThroughCapabilityChanges() {
        bridge.callback.onAvailable(wifi)
        bridge.callback.onBlockedStatusChanged(wifi, true)
        // Android keeps sending capabilities while Data Saver blocks the app.
        bridge.callback.onCapabilitiesChanged(wifi, internet)
        assertEquals(listOf(true, false, false), reports)
        bridge.callback.onBlockedStatusChanged(wifi, false)
        assertEquals(true, reports.last())
        // A block belongs to its network: the next default starts unblocked.
        bridge.callback.onBlockedStatusChanged(wifi, true)
        bridge.callback.onAvailable(cell)
        assertEquals(true, reports.last())
    }

    @Test
    fun aClosedStoreStopsTheBridgeInsteadOfCrashingTheApp() {
        // Signed out or closed while the bridge still follows the network.
        val closed = OutpostNetworkBridge(context) { throw OutpostException.Closed() }
        closed.start()
        assertTrue(shadowOf(connectivity).networkCallbacks.isEmpty())
        closed.callback.onAvailable(wifi)
        closed.callback.onLost(wifi)
        closed.close()
    }

    @Test
    fun closeIsSafeTwiceAndBeforeStart() {
        bridge.close()
        bridge.start()
        bridge.close()
        bridge.close()
        assertTrue(shadowOf(connectivity).networkCallbacks.isEmpty())
    }
}
