// iOS-only glue: BGTaskScheduler sync and the last seconds after the app leaves the
// foreground. Thin on purpose: when to retry and what to send are the core's decisions.
import Foundation

#if canImport(BackgroundTasks) && canImport(UIKit) && os(iOS)
import BackgroundTasks
import UIKit

/// Syncs in the background:
/// - a `BGAppRefreshTask` (about 30 s, several times a day) for routine syncs;
/// - a `BGProcessingTask` (minutes, when iOS chooses, with network) for a long first
///   sync or a large backlog;
/// - `finishSyncInBackground` for the edits saved just before the user left the app.
///
/// List both identifiers under `BGTaskSchedulerPermittedIdentifiers` in Info.plist and
/// call `register` before the app finishes launching.
public enum OutpostBackgroundSync {
    /// A refresh task gets about 30 s; stop a little before iOS does.
    public static let refreshDeadline: TimeInterval = 25
    /// Background time after leaving the foreground is about 30 s as well.
    public static let backgroundTimeDeadline: TimeInterval = 25

    /// Registers both handlers. Returns false when iOS refused one (an identifier missing
    /// from Info.plist, or `register` called after launch), so the app can log it: no
    /// background sync will run for that task.
    @discardableResult
    public static func register(
        refreshIdentifier: String,
        processingIdentifier: String,
        store: @escaping @Sendable () async -> OutpostStore?
    ) -> Bool {
        let refresh = BGTaskScheduler.shared.register(forTaskWithIdentifier: refreshIdentifier, using: nil) { task in
            // Ask for the next refresh first: a task that expires must not end the cycle.
            try? scheduleRefresh(identifier: refreshIdentifier)
            run(UncheckedTask(task), store: store, deadline: refreshDeadline) { report in
                if report?.shouldRetry == true { try? scheduleProcessing(identifier: processingIdentifier) }
            }
        }
        let processing = BGTaskScheduler.shared.register(forTaskWithIdentifier: processingIdentifier, using: nil) { task in
            // No deadline of ours: iOS's expiration is the limit.
            run(UncheckedTask(task), store: store, deadline: nil) { report in
                if report?.shouldRetry == true { try? scheduleProcessing(identifier: processingIdentifier) }
            }
        }
        return refresh && processing
    }

    /// Asks iOS for the next refresh, no earlier than `after` seconds from now. Throws
    /// `BGTaskScheduler.Error` (`.notPermitted`, `.tooManyPendingTaskRequests`,
    /// `.unavailable` when Background App Refresh is off).
    public static func scheduleRefresh(identifier: String, after: TimeInterval = 15 * 60) throws {
        let request = BGAppRefreshTaskRequest(identifier: identifier)
        request.earliestBeginDate = Date(timeIntervalSinceNow: after)
        try BGTaskScheduler.shared.submit(request)
    }

    /// Asks iOS for a long sync with network, for a first sync or a backlog the refresh
    /// task could not finish.
    public static func scheduleProcessing(identifier: String) throws {
        let request = BGProcessingTaskRequest(identifier: identifier)
        request.requiresNetworkConnectivity = true
        request.requiresExternalPower = false
        try BGTaskScheduler.shared.submit(request)
    }

    /// Keeps syncing for the background time iOS grants once the app leaves the
    /// foreground (call it from `sceneDidEnterBackground`), so an answer saved just before
    /// reaches the server. The sync stops cleanly when the time runs out.
    @MainActor
    public static func finishSyncInBackground(_ store: OutpostStore) {
        let application = UIApplication.shared
        let cancellation = PendingCancellation()
        let end = BackgroundTimeEnd(application)
        let id = application.beginBackgroundTask(withName: "org.outpost.sync") {
            cancellation.cancel()
            end.now()
        }
        guard id != .invalid else { return }
        end.set(id)
        // On the main actor, like this function: only the sync itself runs elsewhere.
        cancellation.attach(Task {
            _ = try? await store.syncNow(deadline: backgroundTimeDeadline)
            end.now()
        })
    }

    /// Runs one background sync for `task`: the expiration handler is in place before
    /// the work starts, and the task is completed exactly once.
    private static func run(
        _ task: UncheckedTask,
        store: @escaping @Sendable () async -> OutpostStore?,
        deadline: TimeInterval?,
        then: @escaping @Sendable (SyncReport?) -> Void
    ) {
        let cancellation = PendingCancellation()
        let complete = Once()
        task.task.expirationHandler = {
            // Cancelling the sync puts in-flight edits back in the queue.
            cancellation.cancel()
            complete.run { task.task.setTaskCompleted(success: false) }
        }
        cancellation.attach(Task {
            let report: SyncReport?
            if let store = await store() {
                report = try? await store.syncNow(deadline: deadline)
            } else {
                report = nil
            }
            then(report)
            complete.run { task.task.setTaskCompleted(success: report.map { !$0.shouldRetry } ?? false) }
        })
    }
}

/// A `BGTask`, which is not `Sendable`, handed to the task that completes it. Its
/// methods may be called from any thread (BackgroundTasks documents them so).
private final class UncheckedTask: @unchecked Sendable {
    let task: BGTask
    init(_ task: BGTask) { self.task = task }
}

/// Ends a background-time request exactly once: when the sync is done or when the time
/// runs out, whichever is first.
@MainActor
private final class BackgroundTimeEnd {
    private let application: UIApplication
    private var id: UIBackgroundTaskIdentifier = .invalid
    private var ended = false

    init(_ application: UIApplication) { self.application = application }

    func set(_ id: UIBackgroundTaskIdentifier) {
        self.id = id
        if ended { application.endBackgroundTask(id) }
    }

    func now() {
        guard !ended else { return }
        ended = true
        if id != .invalid { application.endBackgroundTask(id) }
    }
}
#endif
