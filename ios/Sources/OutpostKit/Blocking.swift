// Where the core's blocking calls run.
//
// Why: a durable write waits for an fsync and a query reads the file. Run on the caller's
// actor they freeze the UI; run in `Task.detached` they hold one of the few threads of
// Swift's cooperative pool and ignore cancellation. Here they run on a dispatch queue of
// their own and are awaited through a continuation: the pool thread is free meanwhile,
// and a call cancelled before it started never starts.
import Foundation

enum Blocking {
    /// Concurrent: reads proceed side by side; the core serialises writes itself.
    static let queue = DispatchQueue(
        label: "org.outpost.blocking", qos: .userInitiated, attributes: .concurrent
    )

    /// Runs `work` on the queue and returns its result. If the calling task is cancelled
    /// before `work` starts, it throws `CancellationError` and `work` never runs; once
    /// started, a call completes (a write is never cut in half).
    static func run<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
        let gate = StartGate()
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, Error>) in
                queue.async {
                    guard gate.start() else {
                        continuation.resume(throwing: CancellationError())
                        return
                    }
                    continuation.resume(with: Result { try work() })
                }
            }
        } onCancel: {
            gate.cancel()
        }
    }
}

/// Start or cancel, whichever comes first, decided once under a lock.
final class StartGate: @unchecked Sendable {
    private enum State { case waiting, started, cancelled }
    private let lock = NSLock()
    private var state = State.waiting

    /// True when the work may run (it was not cancelled first).
    func start() -> Bool {
        lock.lock()
        defer { lock.unlock() }
        if state == .waiting { state = .started }
        return state == .started
    }

    func cancel() {
        lock.lock()
        defer { lock.unlock() }
        if state == .waiting { state = .cancelled }
    }
}

/// A task to cancel that may not exist yet: cancelling first cancels it on arrival.
/// For OS handlers (a BGTask's expiration, the end of background time) that can fire
/// before the work they stop has started.
final class PendingCancellation: @unchecked Sendable {
    private let lock = NSLock()
    private var task: Task<Void, Never>?
    private var cancelled = false

    func attach(_ task: Task<Void, Never>) {
        lock.lock()
        let cancelNow = cancelled
        self.task = task
        lock.unlock()
        if cancelNow { task.cancel() }
    }

    func cancel() {
        lock.lock()
        cancelled = true
        let task = self.task
        lock.unlock()
        task?.cancel()
    }
}

/// Runs `body` once, however many callers race to it.
final class Once: @unchecked Sendable {
    private let lock = NSLock()
    private var done = false

    func run(_ body: () -> Void) {
        lock.lock()
        let first = !done
        done = true
        lock.unlock()
        if first { body() }
    }
}
