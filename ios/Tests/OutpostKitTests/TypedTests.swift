// Typed collections over Codable, and the CRDT value types' reading of the core's form.
import Foundation
import XCTest
@testable import OutpostKit

struct Patient: Codable, Sendable, Equatable {
    var name: String
    var village: String
    var visits: Counter?
    var tags: OrSet?
    var triage: Register<String>?
}

struct Nested: Codable, Sendable {
    struct Inner: Codable, Sendable { var visits: Counter }
    var inner: Inner
}

final class TypedTests: XCTestCase {
    func testPutNeverOverwritesCRDTFieldsAndReadsThemBack() async throws {
        let server = try TestServer()
        defer { server.stop() }
        let a = try await server.device("a")
        let patients = a.collection("patients", as: Patient.self)

        try await patients.put(Patient(name: "Amina", village: "v042"), id: "p1")
        try await patients.increment("p1", field: "visits")
        try await patients.increment("p1", field: "visits", by: 2)
        try await patients.setAdd("p1", field: "tags", element: "malaria")
        try await patients.setAdd("p1", field: "tags", element: "follow-up")
        try await patients.setRemove("p1", field: "tags", element: "malaria")
        try await patients.setRegister("p1", field: "triage", to: "urgent")

        // A whole value written again, with its CRDT fields empty: they stay as merged.
        let stale = Patient(name: "Amina K.", village: "v042", visits: Counter(99), tags: OrSet(["x"]))
        let entry = try await patients.put(stale, id: "p1")
        XCTAssertEqual(entry.value.name, "Amina K.")
        XCTAssertEqual(entry.value.visits, Counter(3))
        XCTAssertEqual(entry.value.tags, OrSet(["follow-up"]))
        XCTAssertEqual(entry.value.triage, Register("urgent"))
        XCTAssertEqual(entry.syncState, .pending)

        let read = try await patients.get("p1")
        XCTAssertEqual(read?.visits?.value, 3)
        let inVillage = try await patients.query(Query(filter: .eq("village", "v042")))
        XCTAssertEqual(inVillage.map(\.name), ["Amina K."])
        let missing = try await patients.get("nobody")
        XCTAssertNil(missing)

        var observed = patients.observeOne("p1").makeAsyncIterator()
        let now = try await observed.next()
        XCTAssertEqual(now??.visits, Counter(3))
        await a.close()
    }

    func testARecordThatDoesNotDecodeNamesItself() async throws {
        let server = try TestServer()
        defer { server.stop() }
        let a = try await server.device("a")
        try await a.put("patients", id: "odd", json: #"{"name":42}"#)
        do {
            _ = try await a.collection("patients", as: Patient.self).get("odd")
            XCTFail("decoded a record without a village")
        } catch let OutpostTypedError.decode(collection, id, _) {
            XCTAssertEqual(collection, "patients")
            XCTAssertEqual(id, "odd")
        }
        await a.close()
    }

    func testACRDTFieldBelowTheTopLevelIsRefused() async throws {
        let server = try TestServer()
        defer { server.stop() }
        let a = try await server.device("a")
        do {
            try await a.collection("patients", as: Nested.self).put(Nested(inner: .init(visits: Counter(1))), id: "n")
            XCTFail("stored a nested counter")
        } catch let OutpostTypedError.encode(_, detail) {
            XCTAssertTrue(detail.contains("inner.visits"), detail)
        }
        let stored = try await a.get("patients", id: "n")
        XCTAssertNil(stored)
        await a.close()
    }

    func testTheCoresCRDTFormsDecode() throws {
        func decoded<T: Decodable>(_ type: T.Type, _ json: String) throws -> T {
            try JSONDecoder().decode(T.self, from: Data(json.utf8))
        }
        XCTAssertEqual(try decoded(Counter.self, #"{"$crdt":"gcounter","p":{"a":1,"b":2}}"#), Counter(3))
        XCTAssertEqual(try decoded(Counter.self, #"{"$crdt":"pncounter","p":{"a":1},"n":{"b":4}}"#), Counter(-3))
        XCTAssertEqual(try decoded(Counter.self, "7"), Counter(7))
        let max = UInt64.max
        XCTAssertEqual(
            try decoded(Counter.self, #"{"$crdt":"pncounter","p":{"a":\#(max),"b":\#(max)},"n":{}}"#),
            Counter(Int64.max)
        )
        XCTAssertEqual(try decoded(Counter.self, #"{"$crdt":"pncounter","p":{},"n":{"a":\#(max)}}"#), Counter(Int64.min))
        XCTAssertEqual(
            try decoded(Counter.self, #"{"$crdt":"pncounter","p":{"a":\#(max)},"n":{"a":\#(max - 5)}}"#), Counter(5)
        )
        XCTAssertEqual(
            try decoded(OrSet.self, #"{"$crdt":"orset","adds":{"x":["a:1","b:2"],"y":["a:3"]},"removes":{"x":["a:1","c:9"]}}"#),
            OrSet(["x", "y"])
        )
        XCTAssertEqual(
            try decoded(OrSet.self, #"{"$crdt":"orset","adds":{"x":["a:1"]},"removes":{"x":["a:1"]}}"#), OrSet()
        )
        XCTAssertEqual(
            try decoded(Register<[Int]>.self, #"{"$crdt":"lww","v":[1,2,3],"t":"1700000000000-00001-a"}"#),
            Register([1, 2, 3])
        )
        XCTAssertThrowsError(try decoded(Counter.self, #"{"$crdt":"orset","adds":{},"removes":{}}"#))
        // Outside `put`, a CRDT value encodes as its plain value.
        XCTAssertEqual(String(decoding: try JSONEncoder().encode(Counter(4)), as: UTF8.self), "4")
    }

    func testFiltersRenderTheCoresJSON() {
        XCTAssertEqual(
            (Filter.eq("village", "v042") && .gte("age", 5)).json,
            #"{"and":[{"eq":["village","v042"]},{"gte":["age",5]}]}"#
        )
        XCTAssertEqual(Filter.isIn("s", ["due", nil]).json, #"{"in":["s",["due",null]]}"#)
        XCTAssertEqual(Filter.prefix("name", "Am", ignoringCase: true).json, #"{"prefix_ci":["name","Am"]}"#)
        XCTAssertEqual(Filter.eq("q\"", "line\n").json, #"{"eq":["q\"","line\u000a"]}"#)
    }
}
