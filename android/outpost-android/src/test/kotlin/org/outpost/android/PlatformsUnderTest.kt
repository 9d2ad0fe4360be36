// Robolectric knows every platform up to API 35 and loads framework resources from the
// newest one it knows. The build provides only API 30 and 34 (target/robolectric), so
// this provider, registered in META-INF/services, narrows Robolectric to those two.
package org.outpost.android

import java.util.TreeMap
import javax.annotation.Priority
import javax.inject.Inject
import org.robolectric.internal.dependency.DependencyResolver
import org.robolectric.pluginapi.Sdk
import org.robolectric.plugins.DefaultSdkProvider

@Priority(1)
class PlatformsUnderTest @Inject constructor(resolver: DependencyResolver) : DefaultSdkProvider(resolver) {
    override fun populateSdks(knownSdks: TreeMap<Int, Sdk>) {
        super.populateSdks(knownSdks)
        knownSdks.keys.retainAll(setOf(30, 34))
    }
}
