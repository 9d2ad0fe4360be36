// The Swift face of Outpost: async/await and AsyncStreams over the generated bindings.
//
// Why a layer at all: the generated API is blocking calls and callback protocols, which
// an app should neither call on the main actor nor wire by hand into every view. This
// file only adapts them; all logic (outbox, retries, conflicts) stays in the Rust core,
// where it is tested once. It is not compiled in this repository's CI (no Swift toolchain).
import Foundation
@_exported import OutpostFFI

/// An open Outpost database with its sync engine. Open one per database for the app's
/// lifetime and share it. Errors are `OutpostError` cases (`.InvalidData`, `.Closed`, ...).
public final class OutpostStore: @unchecked Sendable {
    /// The generated object, for anything this layer does not wrap.
    public let native: Outpost

    /// Opens (or creates) the database. `token` is called off the main thread, with
    /// `refresh == true` after the server answered 401.
    public init(config: OutpostConfig, token: @escaping @Sendable (_ refresh: Bool) throws -> String) throws {
        native = try Outpost.open(config: config, tokens: ClosureTokenProvider(token))
    }

    /// Runs a blocking call off the caller's actor: a durable write waits for an fsync.
    private func offMain<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
        try await Task.detached(priority: .userInitiated) { try work() }.value
    }

    public func put(_ collection: String, id: String? = nil, json: String) async throws -> Record {
        try await offMain { try self.native.put(collection: collection, id: id, dataJson: json) }
    }

    public func patch(_ collection: String, id: String, fieldsJson: String) async throws -> Record {
        try await offMain { try self.native.patch(collection: collection, id: id, fieldsJson: fieldsJson) }
    }

    public func delete(_ collection: String, id: String) async throws {
        try await offMain { try self.native.delete(collection: collection, id: id) }
    }

    public func get(_ collection: String, id: String) async throws -> Record? {
        try await offMain { try self.native.get(collection: collection, id: id) }
    }

    public func query(_ collection: String, _ query: Query = Query()) async throws -> [Record] {
        try await offMain { try self.native.query(collection: collection, query: query) }
    }

    /// All ops in one transaction: a whole screen of answers commits together or not at all.
    public func batch(_ ops: [WriteOp]) async throws -> [Record?] {
        try await offMain { try self.native.batch(ops: ops) }
    }

    /// Every change event, local or pulled, while iterated.
    public func changes() -> AsyncStream<ChangeEvent> {
        AsyncStream { continuation in
            let listener = ClosureChangeListener { continuation.yield($0) }
            do {
                let handle = try native.subscribe(listener: listener)
                continuation.onTermination = { _ in handle.close() }
            } catch {
                continuation.finish()
            }
        }
    }

    /// The query's result now, then again after every commit touching `collection`.
    public func observe(_ collection: String, _ query: Query = Query()) -> AsyncThrowingStream<[Record], Error> {
        AsyncThrowingStream { continuation in
            let task = Task.detached {
                do {
                    // Subscribed before the first query, so no commit falls in between.
                    for await event in self.changesIncludingNow() where event.contains(collection) {
                        continuation.yield(try self.native.query(collection: collection, query: query))
                    }
                    continuation.finish()
                } catch {
                    continuation.finish(throwing: error)
                }
            }
            continuation.onTermination = { _ in task.cancel() }
        }
    }

    /// Collections touched, with a first `nil` element meaning "query now"; bursts coalesce.
    private func changesIncludingNow() -> AsyncStream<Set<String>?> {
        AsyncStream(bufferingPolicy: .bufferingNewest(1)) { continuation in
            let listener = ClosureChangeListener { continuation.yield(Set($0.collections)) }
            do {
                let handle = try native.subscribe(listener: listener)
                continuation.yield(nil)
                continuation.onTermination = { _ in handle.close() }
            } catch {
                continuation.finish()
            }
        }
    }

    /// The current sync status, then every change.
    public func statusUpdates() -> AsyncStream<SyncStatus> {
        AsyncStream(bufferingPolicy: .bufferingNewest(1)) { continuation in
            let listener = ClosureStatusListener { continuation.yield($0) }
            do {
                let handle = try native.subscribeStatus(listener: listener)
                continuation.onTermination = { _ in handle.close() }
            } catch {
                continuation.finish()
            }
        }
    }

    /// Manual conflicts as sync finds them (one consumer at a time). `openConflicts()`
    /// lists every conflict still waiting.
    public func conflicts() -> AsyncStream<Conflict> {
        AsyncStream { continuation in
            let listener = ClosureConflictListener { continuation.yield($0) }
            do {
                try native.setConflictListener(listener: listener)
                continuation.onTermination = { [weak self] _ in try? self?.native.setConflictListener(listener: nil) }
            } catch {
                continuation.finish()
            }
        }
    }

    public func openConflicts() async throws -> [Conflict] {
        try await offMain { try self.native.conflicts() }
    }

    public func resolve(conflictId: Int64, _ resolution: Resolution) async throws {
        try await offMain { try self.native.resolve(conflictId: conflictId, resolution: resolution) }
    }

    /// Puts edits the server rejected back in the queue; returns how many.
    public func retryFailed() async throws -> UInt64 {
        try await offMain { try self.native.retryFailed() }
    }

    /// Edits the server rejected for good, oldest first; each keeps its data.
    public func failedEdits() async throws -> [FailedEdit] {
        try await offMain { try self.native.failedEdits() }
    }

    /// Gives up one rejected edit (the user's decision); the record returns to its last
    /// synced state.
    public func discardFailed(entryId: Int64) async throws {
        try await offMain { try self.native.discardFailed(entryId: entryId) }
    }

    /// Pushes, then pulls, within `deadline` seconds. Cancelling the calling task cancels
    /// the sync: in-flight edits go back to the queue, never lost or doubled.
    public func syncNow(deadline: TimeInterval? = nil) async throws -> SyncReport {
        let ms = deadline.map { UInt64(max(0, $0) * 1000) }
        return try await withTaskCancellationHandler {
            try await native.syncNow(deadlineMs: ms)
        } onCancel: {
            try? native.cancelSync()
        }
    }

    /// The platform's view of the network (see `OutpostNetworkMonitor`).
    public func setNetworkAvailable(_ available: Bool) {
        try? native.setNetworkAvailable(available: available)
    }

    /// Stops sync and listeners and closes the database; later calls throw `.Closed`.
    public func close() {
        try? native.close()
    }
}

private extension Optional where Wrapped == Set<String> {
    /// `nil` is the initial "query now".
    func contains(_ collection: String) -> Bool {
        switch self {
        case .none: return true
        case .some(let set): return set.contains(collection)
        }
    }
}

final class ClosureTokenProvider: TokenProvider, @unchecked Sendable {
    let fetch: @Sendable (Bool) throws -> String
    init(_ fetch: @escaping @Sendable (Bool) throws -> String) { self.fetch = fetch }
    func token(refresh: Bool) throws -> String { try fetch(refresh) }
}

final class ClosureChangeListener: ChangeListener, @unchecked Sendable {
    let handle: @Sendable (ChangeEvent) -> Void
    init(_ handle: @escaping @Sendable (ChangeEvent) -> Void) { self.handle = handle }
    func onChange(event: ChangeEvent) throws { handle(event) }
}

final class ClosureStatusListener: StatusListener, @unchecked Sendable {
    let handle: @Sendable (SyncStatus) -> Void
    init(_ handle: @escaping @Sendable (SyncStatus) -> Void) { self.handle = handle }
    func onStatus(status: SyncStatus) throws { handle(status) }
}

final class ClosureConflictListener: ConflictListener, @unchecked Sendable {
    let handle: @Sendable (Conflict) -> Void
    init(_ handle: @escaping @Sendable (Conflict) -> Void) { self.handle = handle }
    func onConflict(conflict: Conflict) throws { handle(conflict) }
}
