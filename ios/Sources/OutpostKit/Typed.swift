// Typed collections over `Codable`, and value types for CRDT fields.
//
// Why: with JSON text every screen repeats the same mistakes: CRDT fields read as raw
// `{"$crdt": ...}` objects, a `put` of a whole struct that overwrites a counter other
// devices incremented, a decoding error that surfaces far from the record it came from.
// This maps a record to a `Codable` type once, the way the Kotlin layer (`Typed.kt`)
// does: CRDT fields decode from the core's form and are changed only by their own calls.
import Foundation

/// An error of the typed layer itself; the store's errors stay `OutpostError`.
public enum OutpostTypedError: Error, CustomStringConvertible {
    /// The record's JSON does not decode as the collection's type.
    case decode(collection: String, id: String, underlying: Error)
    /// The value does not encode to a JSON object the collection can store.
    case encode(collection: String, detail: String)

    public var description: String {
        switch self {
        case let .decode(collection, id, underlying):
            return "record \(collection)/\(id) does not decode: \(underlying)"
        case let .encode(collection, detail):
            return "value for \(collection) does not encode: \(detail)"
        }
    }
}

extension OutpostStore {
    /// The collection `name` as values of `T`:
    /// ```
    /// struct Patient: Codable, Sendable { var name: String; var village: String; var visits: Counter? }
    /// let patients = store.collection("patients", as: Patient.self)
    /// try await patients.put(Patient(name: "Amina", village: "v042", visits: nil), id: "p1")
    /// try await patients.increment("p1", field: "visits")
    /// ```
    public func collection<T: Codable & Sendable>(_ name: String, as type: T.Type = T.self) -> TypedCollection<T> {
        TypedCollection(name: name, store: self)
    }
}

/// A collection whose records are values of `T`. CRDT fields (`Counter`, `OrSet`,
/// `Register`) are read from records and written only by `increment`, `setAdd`,
/// `setRemove` and `setRegister`: `put` never writes them, so it cannot undo another
/// device's increment. Declare them optional: a record that no call has touched yet has
/// no such field. They merge only as top-level fields of the record.
public struct TypedCollection<T: Codable & Sendable>: Sendable {
    public let name: String
    public let store: OutpostStore

    /// A value with its record's id and sync state.
    public struct Entry: Sendable {
        public let id: String
        public let value: T
        public let syncState: SyncState
        public let version: Int64
        public let updatedAtMs: Int64
    }

    /// Sets every field `T` encodes and leaves the record's other fields as they are
    /// (fields a newer app version added, and the CRDT fields): a patch for an existing
    /// record, a put for a new one (with a new id when `id` is nil).
    @discardableResult
    public func put(_ value: T, id: String? = nil) async throws -> Entry {
        let fields = try encode(value)
        let record: Record = try await store.transaction { [name] tx in
            try TypedCollection.putFields(id: id, fields: fields, tx: tx, collection: name)
        }
        return try entry(record)
    }

    public func get(_ id: String) async throws -> T? {
        try await getEntry(id)?.value
    }

    public func getEntry(_ id: String) async throws -> Entry? {
        try await store.get(name, id: id).map(entry)
    }

    /// Values matching `query`, in its order.
    public func query(_ query: Query = Query()) async throws -> [T] {
        try await entries(query).map(\.value)
    }

    public func entries(_ query: Query = Query()) async throws -> [Entry] {
        try await store.query(name, query).map(entry)
    }

    /// The query's values now and after each change (see `OutpostStore.observe`); a
    /// record that does not decode finishes the stream with `OutpostTypedError.decode`.
    public func observe(_ query: Query = Query()) -> AsyncThrowingStream<[T], Error> {
        map(store.observe(name, query)) { records in try records.map { try entry($0).value } }
    }

    public func observeEntries(_ query: Query = Query()) -> AsyncThrowingStream<[Entry], Error> {
        map(store.observe(name, query)) { records in try records.map(entry) }
    }

    public func observeOne(_ id: String) -> AsyncThrowingStream<T?, Error> {
        map(store.observeOne(name, id: id)) { record in try record.map { try entry($0).value } }
    }

    public func delete(_ id: String) async throws {
        try await store.delete(name, id: id)
    }

    @discardableResult
    public func increment(_ id: String, field: String, by: Int64 = 1) async throws -> Entry {
        try entry(await store.increment(name, id: id, field: field, by: by))
    }

    @discardableResult
    public func setAdd(_ id: String, field: String, element: String) async throws -> Entry {
        try entry(await store.setAdd(name, id: id, field: field, element: element))
    }

    @discardableResult
    public func setRemove(_ id: String, field: String, element: String) async throws -> Entry {
        try entry(await store.setRemove(name, id: id, field: field, element: element))
    }

    /// Sets the register in `field` to `value`.
    @discardableResult
    public func setRegister<V: Encodable>(_ id: String, field: String, to value: V) async throws -> Entry {
        let json: String
        do {
            json = String(decoding: try JSONEncoder().encode(value), as: UTF8.self)
        } catch {
            throw OutpostTypedError.encode(collection: name, detail: "\(field): \(error)")
        }
        return try entry(await store.setRegister(name, id: id, field: field, valueJson: json))
    }

    // MARK: Mapping

    /// A patch of the declared fields for an existing record, else a put; in one
    /// transaction, so a record created meanwhile is patched, not replaced.
    static func putFields(id: String?, fields: String, tx: Transaction, collection: String) throws -> Record {
        guard let id else { return try tx.put(collection: collection, id: nil, dataJson: fields) }
        if try tx.get(collection: collection, id: id) != nil {
            return try tx.patch(collection: collection, id: id, fieldsJson: fields)
        }
        return try tx.put(collection: collection, id: id, dataJson: fields)
    }

    /// `value` as a JSON object without its CRDT fields.
    func encode(_ value: T) throws -> String {
        let encoder = JSONEncoder()
        encoder.userInfo[CRDTMarker.userInfoKey] = true
        let object: Any
        do {
            object = try JSONSerialization.jsonObject(with: encoder.encode(value))
        } catch {
            throw OutpostTypedError.encode(collection: name, detail: "\(error)")
        }
        guard var fields = object as? [String: Any] else {
            throw OutpostTypedError.encode(collection: name, detail: "not a JSON object")
        }
        for (key, field) in fields where CRDTMarker.isMarker(field) {
            fields.removeValue(forKey: key)
        }
        if let path = CRDTMarker.nested(in: fields, path: "") {
            throw OutpostTypedError.encode(
                collection: name, detail: "\(path): a CRDT field merges only at the top level of a record"
            )
        }
        do {
            return String(decoding: try JSONSerialization.data(withJSONObject: fields), as: UTF8.self)
        } catch {
            throw OutpostTypedError.encode(collection: name, detail: "\(error)")
        }
    }

    func entry(_ record: Record) throws -> Entry {
        do {
            let value = try JSONDecoder().decode(T.self, from: Data(record.dataJson.utf8))
            return Entry(
                id: record.id, value: value, syncState: record.syncState, version: record.version,
                updatedAtMs: record.updatedAtMs
            )
        } catch {
            throw OutpostTypedError.decode(collection: name, id: record.id, underlying: error)
        }
    }

    private func map<A: Sendable, B: Sendable>(
        _ stream: AsyncThrowingStream<A, Error>,
        _ transform: @escaping @Sendable (A) throws -> B
    ) -> AsyncThrowingStream<B, Error> {
        AsyncThrowingStream(bufferingPolicy: .bufferingNewest(1)) { continuation in
            let task = Task {
                do {
                    for try await element in stream {
                        continuation.yield(try transform(element))
                    }
                    continuation.finish()
                } catch {
                    continuation.finish(throwing: error)
                }
            }
            continuation.onTermination = { _ in task.cancel() }
        }
    }
}

/// What a CRDT field encodes as inside `TypedCollection.put`: a marker object that `put`
/// removes. Elsewhere (an app's own `JSONEncoder`) it encodes its plain value.
enum CRDTMarker {
    static let userInfoKey = CodingUserInfoKey(rawValue: "org.outpost.crdt-marker")!
    static let key = "$outpost_crdt_field"

    static func encodesMarker(_ encoder: Encoder) -> Bool {
        encoder.userInfo[userInfoKey] as? Bool == true
    }

    static func encode(_ encoder: Encoder) throws {
        var container = encoder.container(keyedBy: DynamicKey.self)
        try container.encode(true, forKey: DynamicKey(key))
    }

    static func isMarker(_ value: Any) -> Bool {
        (value as? [String: Any]).map { $0.count == 1 && $0[key] != nil } ?? false
    }

    /// The path of a marker below the top level, if any.
    static func nested(in value: Any, path: String) -> String? {
        if isMarker(value) { return path }
        if let object = value as? [String: Any] {
            for (k, v) in object {
                if let found = nested(in: v, path: path.isEmpty ? k : "\(path).\(k)") { return found }
            }
        } else if let array = value as? [Any] {
            for (i, v) in array.enumerated() {
                if let found = nested(in: v, path: "\(path)[\(i)]") { return found }
            }
        }
        return nil
    }
}

struct DynamicKey: CodingKey {
    var stringValue: String
    var intValue: Int? { nil }
    init(_ string: String) { stringValue = string }
    init?(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) { nil }
}

/// The members of the core's JSON form of a CRDT (`{"$crdt": "pncounter", "p": {...}}`).
private enum CRDTKey: String, CodingKey {
    case type = "$crdt", p, n, adds, removes, v
}

private func crdtContainer(
    _ decoder: Decoder, accepting tags: Set<String>, what: String
) throws -> KeyedDecodingContainer<CRDTKey>? {
    guard let container = try? decoder.container(keyedBy: CRDTKey.self),
          container.contains(.type)
    else { return nil }
    let tag = try container.decode(String.self, forKey: .type)
    guard tags.contains(tag) else {
        throw DecodingError.dataCorruptedError(
            forKey: .type, in: container, debugDescription: "expected a \(what) CRDT, found $crdt \(tag)"
        )
    }
    return container
}

/// A counter field: the sum of every device's increments, merged without conflict.
/// Change it with `increment`. A sum beyond `Int64`'s range reads as its bound.
public struct Counter: Codable, Sendable, Hashable {
    public var value: Int64

    public init(_ value: Int64 = 0) { self.value = value }

    public init(from decoder: Decoder) throws {
        if let counts = try crdtContainer(decoder, accepting: ["gcounter", "pncounter"], what: "counter") {
            let p = try counts.decodeIfPresent([String: UInt64].self, forKey: .p) ?? [:]
            let n = try counts.decodeIfPresent([String: UInt64].self, forKey: .n) ?? [:]
            value = Counter.difference(Counter.sum(p), Counter.sum(n))
        } else {
            value = try decoder.singleValueContainer().decode(Int64.self)
        }
    }

    public func encode(to encoder: Encoder) throws {
        if CRDTMarker.encodesMarker(encoder) { return try CRDTMarker.encode(encoder) }
        var container = encoder.singleValueContainer()
        try container.encode(value)
    }

    /// A sum of unsigned counts as a 128-bit (high, low) pair: no count overflows it.
    static func sum(_ counts: [String: UInt64]) -> (high: UInt64, low: UInt64) {
        var high: UInt64 = 0
        var low: UInt64 = 0
        for count in counts.values {
            let (sum, carry) = low.addingReportingOverflow(count)
            low = sum
            if carry { high += 1 }
        }
        return (high, low)
    }

    /// `p - n`, clamped to `Int64`.
    static func difference(_ p: (high: UInt64, low: UInt64), _ n: (high: UInt64, low: UInt64)) -> Int64 {
        let positive = p.high > n.high || (p.high == n.high && p.low >= n.low)
        let (big, small) = positive ? (p, n) : (n, p)
        let (low, borrow) = big.low.subtractingReportingOverflow(small.low)
        let high = big.high - small.high - (borrow ? 1 : 0)
        let magnitudeLimit = positive ? UInt64(Int64.max) : UInt64(Int64.max) + 1
        if high > 0 || low > magnitudeLimit { return positive ? Int64.max : Int64.min }
        if positive { return Int64(low) }
        return low == magnitudeLimit ? Int64.min : -Int64(low)
    }
}

/// An observed-remove set field: the strings added and not removed since, by any device;
/// an add concurrent with a remove wins. Change it with `setAdd` and `setRemove`.
public struct OrSet: Codable, Sendable, Hashable {
    public var elements: Set<String>

    public init(_ elements: Set<String> = []) { self.elements = elements }

    /// The elements in sorted order, for display.
    public var sorted: [String] { elements.sorted() }

    public init(from decoder: Decoder) throws {
        if let set = try crdtContainer(decoder, accepting: ["orset"], what: "OR-set") {
            let adds = try set.decode([String: [String]].self, forKey: .adds)
            let removes = try set.decodeIfPresent([String: [String]].self, forKey: .removes) ?? [:]
            elements = Set(adds.compactMap { element, tags in
                Set(tags).subtracting(removes[element] ?? []).isEmpty ? nil : element
            })
        } else {
            elements = Set(try decoder.singleValueContainer().decode([String].self))
        }
    }

    public func encode(to encoder: Encoder) throws {
        if CRDTMarker.encodesMarker(encoder) { return try CRDTMarker.encode(encoder) }
        var container = encoder.singleValueContainer()
        try container.encode(sorted)
    }
}

/// A last-write-wins register field: the value of the latest `setRegister` by any
/// device, by hybrid clock.
public struct Register<Value: Codable & Sendable>: Codable, Sendable {
    public var value: Value

    public init(_ value: Value) { self.value = value }

    public init(from decoder: Decoder) throws {
        if let register = try crdtContainer(decoder, accepting: ["lww"], what: "register") {
            value = try register.decode(Value.self, forKey: .v)
        } else {
            value = try decoder.singleValueContainer().decode(Value.self)
        }
    }

    public func encode(to encoder: Encoder) throws {
        if CRDTMarker.encodesMarker(encoder) { return try CRDTMarker.encode(encoder) }
        var container = encoder.singleValueContainer()
        try container.encode(value)
    }
}

extension Register: Equatable where Value: Equatable {}
extension Register: Hashable where Value: Hashable {}
