// The Swift layer over the real library and a real server: open, write, query, observe,
// sync between two devices, a manual conflict, typed errors, cancellation and close.
import Foundation
import XCTest
@testable import OutpostKit

struct Review: Codable, Equatable {
    var score: Int
    var note: String?
}

/// What `body` threw, or a failure when it did not throw.
func thrown(_ body: () async throws -> Void) async -> Error? {
    do {
        try await body()
        return nil
    } catch {
        return error
    }
}

final class OutpostStoreTests: XCTestCase {
    func testPutGetQueryAndCountOffTheCallersActor() async throws {
        let server = try TestServer()
        defer { server.stop() }
        let a = try await server.device("a")
        try await a.put("patients", id: "p1", json: #"{"name":"Amina","village":"v042","age":7}"#)
        try await a.put("patients", id: "p2", json: #"{"name":"Ben","village":"v042","age":3}"#)
        try await a.put("patients", id: "p3", json: #"{"name":"Chioma","village":"v043","age":9}"#)

        let p1 = try await a.get("patients", id: "p1")
        XCTAssertEqual(p1?.syncState, .pending)
        let older = try await a.query(
            "patients", Query(filter: .eq("village", "v042") && .gte("age", 5), order: [.ascending("name")])
        )
        XCTAssertEqual(older.map(\.id), ["p1"])
        let total = try await a.count("patients")
        XCTAssertEqual(total, 3)
        let inVillage = try await a.count("patients", where: .eq("village", "v042"))
        XCTAssertEqual(inVillage, 2)
        let found = try await a.query("patients", Query(filter: .search("chi*")))
        XCTAssertEqual(found.map(\.id), ["p3"])
        await a.close()
    }

    func testObserveGetsItsFirstResultAndItsChangesWhileOtherCollectionsAreWritten() async throws {
        let server = try TestServer()
        defer { server.stop() }
        let a = try await server.device("a")
        try await a.put("patients", id: "p1", json: #"{"name":"Amina","village":"v042"}"#)

        // Writes to another collection throughout: they must neither replace nor delay
        // this query's results.
        let noise = Task {
            for i in 0..<200 where !Task.isCancelled {
                _ = try? await a.put("answers", id: "n\(i)", json: #"{"q":1}"#)
            }
        }
        defer { noise.cancel() }

        var results = a.observe("patients", Query(filter: .eq("village", "v042"))).makeAsyncIterator()
        let first = try await results.next()
        XCTAssertEqual(first?.map(\.id), ["p1"])
        try await a.put("patients", id: "p2", json: #"{"name":"Ben","village":"v042"}"#)
        var latest = first
        while latest?.count != 2 {
            latest = try await results.next()
        }
        XCTAssertEqual(latest?.map(\.id), ["p1", "p2"])
        noise.cancel()
        await a.close()
    }

    func testTwoDevicesSyncThroughTheServer() async throws {
        let server = try TestServer()
        defer { server.stop() }
        let a = try await server.device("a", as: amina)
        let b = try await server.device("b", as: ben)
        try await a.put("answers", id: "q1", json: #"{"answer":"yes"}"#)

        let sent = try await a.syncNow(deadline: 30)
        XCTAssertEqual(sent.outcome, .completed, "\(sent)")
        XCTAssertEqual(sent.applied, 1)
        let synced = try await a.get("answers", id: "q1")
        XCTAssertEqual(synced?.syncState, .synced)

        let received = try await b.syncNow(deadline: 30)
        XCTAssertEqual(received.outcome, .completed, "\(received)")
        let onB = try await b.get("answers", id: "q1")
        XCTAssertEqual(onB?.dataJson, #"{"answer":"yes"}"#)
        let status = try await b.status()
        XCTAssertTrue(status.hasSynced)
        await a.close()
        await b.close()
    }

    func testAManualConflictIsResolvedFromSwift() async throws {
        let server = try TestServer()
        defer { server.stop() }
        let a = try await server.device("a", as: amina)
        let b = try await server.device("b", as: ben)
        var found = b.conflicts().makeAsyncIterator()

        try await a.put("reviews", id: "r1", json: #"{"score":1,"note":"base"}"#)
        _ = try await a.syncNow(deadline: 30)
        _ = try await b.syncNow(deadline: 30)
        try await a.patch("reviews", id: "r1", fieldsJson: #"{"score":2}"#)
        try await b.patch("reviews", id: "r1", fieldsJson: #"{"score":3}"#)
        _ = try await a.syncNow(deadline: 30)
        let report = try await b.syncNow(deadline: 30)
        XCTAssertEqual(report.conflicts, 1, "\(report)")

        let announced = await found.next()
        let open = try await b.openConflicts()
        XCTAssertEqual(open.map(\.id), announced.map { [$0.id] })
        let conflict = try XCTUnwrap(open.first)
        XCTAssertEqual(try JSONDecoder().decode(Review.self, from: Data((conflict.localJson ?? "").utf8)).score, 3)
        XCTAssertEqual(try JSONDecoder().decode(Review.self, from: Data((conflict.remoteJson ?? "").utf8)).score, 2)
        let conflicted = try await b.get("reviews", id: "r1")
        XCTAssertEqual(conflicted?.syncState, .conflicted)

        try await b.resolve(conflictId: conflict.id, .merged(dataJson: #"{"score":5,"note":"agreed"}"#))
        let left = try await b.openConflicts()
        XCTAssertTrue(left.isEmpty)
        let log = try await b.conflictLog()
        XCTAssertTrue(log.contains { $0.id == conflict.id && $0.resolved })
        _ = try await b.syncNow(deadline: 30)
        _ = try await a.syncNow(deadline: 30)
        let agreed = try await a.get("reviews", id: "r1")
        XCTAssertEqual(try decode(Review.self, agreed), Review(score: 5, note: "agreed"))
        await a.close()
        await b.close()
    }

    func testBadInputIsATypedErrorAndChangesNothing() async throws {
        let server = try TestServer()
        defer { server.stop() }
        let a = try await server.device("a")

        let notJSON = await thrown { try await a.put("answers", id: "x", json: "{not json") }
        guard case .InvalidData? = notJSON as? OutpostError else {
            return XCTFail("expected InvalidData, got \(String(describing: notJSON))")
        }
        let unknown = await thrown { try await a.put("nowhere", id: "x", json: "{}") }
        guard case .UnknownCollection(name: "nowhere")? = unknown as? OutpostError else {
            return XCTFail("expected UnknownCollection, got \(String(describing: unknown))")
        }
        let badFilter = await thrown { _ = try await a.query("answers", Query(filter: .gt("done", true))) }
        guard case .InvalidData? = badFilter as? OutpostError else {
            return XCTFail("expected InvalidData, got \(String(describing: badFilter))")
        }
        let count = try await a.count("answers")
        XCTAssertEqual(count, 0)
        let status = try await a.status()
        XCTAssertEqual(status.pending, 0)
        await a.close()
    }

    func testCancellingSyncNowStopsTheSyncAndKeepsTheEdit() async throws {
        let server = try TestServer()
        defer { server.stop() }
        let gate = Gate()
        let token = amina.token
        let a = try await server.device("a", token: { _ in
            await gate.wait()
            return token
        })
        try await a.put("answers", id: "c1", json: "{}")

        let sync = Task { try await a.syncNow() }
        try await eventually("the sync to start") { try await a.status().activity == .syncing }
        sync.cancel()
        // The core reports the sync cancelled; a CancellationError would do as well.
        if let cancelled = try? await sync.value {
            XCTAssertEqual(cancelled.outcome, .cancelled, "\(cancelled)")
        }
        try await eventually("the sync to stop") { try await a.status().activity != .syncing }
        let status = try await a.status()
        XCTAssertEqual(status.pending, 1)
        let kept = try await a.get("answers", id: "c1")
        XCTAssertEqual(kept?.syncState, .pending)

        await gate.release()
        let report = try await a.syncNow(deadline: 30)
        XCTAssertEqual(report.outcome, .completed, "\(report)")
        XCTAssertEqual(report.applied, 1)
        await a.close()
    }

    func testCloseEndsStreamsAndLaterCallsThrowClosed() async throws {
        let server = try TestServer()
        defer { server.stop() }
        let a = try await server.device("a")
        try await a.put("answers", id: "kept", json: "{}")

        var results = a.observe("answers").makeAsyncIterator()
        let first = try await results.next()
        XCTAssertEqual(first?.map(\.id), ["kept"])
        var events = a.changes().makeAsyncIterator()
        await a.close()
        await a.close()
        // Both streams finish (after anything still buffered).
        while try await results.next() != nil {}
        while await events.next() != nil {}

        let closed = await thrown { _ = try await a.get("answers", id: "kept") }
        XCTAssertEqual(closed as? OutpostError, .Closed)
        let closedWrite = await thrown { _ = try await a.put("answers", id: "x", json: "{}") }
        XCTAssertEqual(closedWrite as? OutpostError, .Closed)

        // The data outlives the handle.
        let again = try await server.device("a")
        let kept = try await again.get("answers", id: "kept")
        XCTAssertNotNil(kept)
        await again.close()
    }

    func testATransactionCommitsTogetherOrNotAtAll() async throws {
        let server = try TestServer()
        defer { server.stop() }
        let a = try await server.device("a")
        let written = try await a.transaction { tx in
            _ = try tx.put(collection: "answers", id: "t1", dataJson: "{}")
            _ = try tx.put(collection: "answers", id: "t2", dataJson: "{}")
            return try tx.count(collection: "answers", filters: [])
        }
        XCTAssertEqual(written, 2)

        struct Abandon: Error {}
        let failed = await thrown {
            _ = try await a.transaction { tx in
                _ = try tx.put(collection: "answers", id: "t3", dataJson: "{}")
                throw Abandon()
            }
        }
        XCTAssertTrue(failed is Abandon, "\(String(describing: failed))")
        let count = try await a.count("answers")
        XCTAssertEqual(count, 2)
        await a.close()
    }

    func testABlockingCallCancelledBeforeItStartsNeverRuns() async throws {
        let ran = Flag()
        let task = Task { () async throws -> Int in
            withUnsafeCurrentTask { $0?.cancel() }
            return try await Blocking.run {
                ran.set()
                return 1
            }
        }
        let outcome = await task.result
        XCTAssertThrowsError(try outcome.get()) { XCTAssertTrue($0 is CancellationError, "\($0)") }
        XCTAssertFalse(ran.isSet)
    }
}
