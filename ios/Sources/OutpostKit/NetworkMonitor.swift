// The network bridge for Apple platforms: NWPathMonitor's view, handed to the core.
import Foundation

#if canImport(Network)
import Network

/// Tells the core what the OS knows about the network. The core trusts "up" only after
/// its own debounce and health probe, so a flapping path is harmless. When the store
/// does not sync by itself (`autoSync` off), a return of the network starts a sync, so
/// edits saved offline leave as soon as they can. Stops when released or on `stop()`.
public final class OutpostNetworkMonitor: @unchecked Sendable {
    // Mutable state is touched only on `queue`, where the monitor calls back.
    private let monitor = NWPathMonitor()
    private let queue = DispatchQueue(label: "org.outpost.network")
    private let store: OutpostStore
    private let syncOnReconnect: Bool
    private var wasUp: Bool?

    /// `syncOnReconnect`: start a sync when the network returns; defaults to on when the
    /// store does not sync by itself.
    public init(store: OutpostStore, syncOnReconnect: Bool? = nil) {
        self.store = store
        self.syncOnReconnect = syncOnReconnect ?? !store.autoSync
    }

    public func start() {
        monitor.pathUpdateHandler = { [weak self] path in
            self?.update(up: path.status == .satisfied)
        }
        monitor.start(queue: queue)
    }

    public func stop() {
        monitor.cancel()
    }

    deinit {
        monitor.cancel()
    }

    private func update(up: Bool) {
        store.setNetworkAvailable(up)
        let reconnected = up && wasUp == false
        wasUp = up
        if reconnected && syncOnReconnect {
            Task { [store] in _ = try? await store.syncNow(deadline: 60) }
        }
    }
}
#endif
