// iOS-only glue: BGTaskScheduler sync and the NWPathMonitor network bridge. Thin on
// purpose: when to retry and what to send are the core's decisions.
import Foundation

#if canImport(BackgroundTasks) && os(iOS)
import BackgroundTasks

/// Registers a BGAppRefreshTask that syncs within the task's time and cancels cleanly
/// when iOS expires it. Call `register` before the app finishes launching, and list the
/// identifier under `BGTaskSchedulerPermittedIdentifiers` in Info.plist.
public enum OutpostBackgroundSync {
    /// A refresh task gets about 30 s; stop a little before iOS does.
    public static let deadline: TimeInterval = 25

    public static func register(identifier: String, store: @escaping @Sendable () -> OutpostStore?) {
        BGTaskScheduler.shared.register(forTaskWithIdentifier: identifier, using: nil) { task in
            schedule(identifier: identifier)
            guard let store = store() else {
                task.setTaskCompleted(success: false)
                return
            }
            let work = Task {
                // Queued attachments move too, after records, within the same deadline.
                let report = try? await store.syncNow(deadline: deadline)
                task.setTaskCompleted(success: report.map { !$0.shouldRetry } ?? false)
            }
            task.expirationHandler = {
                // Cancelling the task cancels the sync; unsent edits stay queued.
                work.cancel()
            }
        }
    }

    /// Asks iOS for the next refresh, no earlier than `after` seconds from now.
    public static func schedule(identifier: String, after: TimeInterval = 15 * 60) {
        let request = BGAppRefreshTaskRequest(identifier: identifier)
        request.earliestBeginDate = Date(timeIntervalSinceNow: after)
        try? BGTaskScheduler.shared.submit(request)
    }
}
#endif

#if canImport(Network)
import Network

/// Tells the core what the OS knows about the network. The core trusts "up" only after
/// its own debounce and health probe, so a flapping path is harmless.
public final class OutpostNetworkMonitor: @unchecked Sendable {
    private let monitor = NWPathMonitor()
    private let store: OutpostStore

    public init(store: OutpostStore) {
        self.store = store
    }

    public func start() {
        monitor.pathUpdateHandler = { [store] path in
            store.setNetworkAvailable(path.status == .satisfied)
        }
        monitor.start(queue: DispatchQueue(label: "org.outpost.network"))
    }

    public func stop() {
        monitor.cancel()
    }
}
#endif
