// Typed local queries for Swift: an `indirect enum Filter` and a `Query` value, encoded
// to the FFI's query record.
//
// Why it exists: the FFI carries a filter as the core's JSON form (text), which an app
// should not write by hand, since a typo there only shows up at run time. These types
// name the operators and encode them to that form; what a filter means, and every check
// of it, stays in the Rust core. The Kotlin builder (`QueryBuilder.kt`) renders the same
// JSON and is what the JVM suite tests; this file mirrors it.
import Foundation
import OutpostFFI

/// Which records a query selects: `.eq("village", "v042") && .gte("age", 5)`.
///
/// Comparisons respect JSON types (`1` never matches `"1"` or `true`); a range compares
/// numbers with numbers and strings with strings. Bad input (a range on a boolean, a
/// field name with `"`, a non-finite number) is `OutpostError.InvalidData` from the call.
public indirect enum Filter: Sendable, Equatable {
    /// The field holds the value (a field holding null matches `nil`; a missing one does not).
    case eq(String, Value)
    /// Not `eq`: a record without the field matches.
    case ne(String, Value)
    case lt(String, Value)
    case lte(String, Value)
    case gt(String, Value)
    case gte(String, Value)
    /// The field equals one of the values.
    case isIn(String, [Value])
    /// The field holds a string starting with the prefix.
    case prefix(String, String, ignoringCase: Bool = false)
    /// The field holds null or is missing.
    case isNull(String)
    /// The field is present, whatever it holds.
    case exists(String)
    /// Full-text search over the collection's declared search fields: whole words, case
    /// and diacritics folded; a word ending in `*` is a prefix (`amin*`).
    case search(String)
    /// Every filter holds (none: every record).
    case and([Filter])
    /// Some filter holds (none: no record).
    case or([Filter])

    /// A JSON value to compare with; literals work: `.eq("age", 5)`, `.isIn("s", ["due", nil])`.
    public enum Value: Sendable, Equatable, ExpressibleByNilLiteral, ExpressibleByBooleanLiteral,
        ExpressibleByIntegerLiteral, ExpressibleByFloatLiteral, ExpressibleByStringLiteral,
        ExpressibleByArrayLiteral
    {
        case null
        case bool(Bool)
        case int(Int64)
        case double(Double)
        case string(String)
        case array([Value])

        public init(nilLiteral: ()) { self = .null }
        public init(booleanLiteral value: Bool) { self = .bool(value) }
        public init(integerLiteral value: Int64) { self = .int(value) }
        public init(floatLiteral value: Double) { self = .double(value) }
        public init(stringLiteral value: String) { self = .string(value) }
        public init(arrayLiteral elements: Value...) { self = .array(elements) }

        /// JSON text. A non-finite double has none: it reaches the core as invalid JSON,
        /// which is `InvalidData` there.
        public var json: String {
            switch self {
            case .null: return "null"
            case let .bool(b): return b ? "true" : "false"
            case let .int(i): return String(i)
            case let .double(d): return d.isFinite ? "\(d)" : "NaN"
            case let .string(s): return Filter.quote(s)
            case let .array(vs): return "[" + vs.map(\.json).joined(separator: ",") + "]"
            }
        }
    }

    /// Both hold (flattening nested `and`s).
    public static func && (lhs: Filter, rhs: Filter) -> Filter {
        switch (lhs, rhs) {
        case let (.and(l), .and(r)): return .and(l + r)
        case let (.and(l), r): return .and(l + [r])
        case let (l, .and(r)): return .and([l] + r)
        default: return .and([lhs, rhs])
        }
    }

    /// Either holds (flattening nested `or`s).
    public static func || (lhs: Filter, rhs: Filter) -> Filter {
        switch (lhs, rhs) {
        case let (.or(l), .or(r)): return .or(l + r)
        case let (.or(l), r): return .or(l + [r])
        case let (l, .or(r)): return .or([l] + r)
        default: return .or([lhs, rhs])
        }
    }

    /// The core's JSON form, e.g. `{"and":[{"eq":["village","v042"]},{"gte":["age",5]}]}`.
    public var json: String {
        switch self {
        case let .eq(f, v): return Filter.compare("eq", f, v)
        case let .ne(f, v): return Filter.compare("ne", f, v)
        case let .lt(f, v): return Filter.compare("lt", f, v)
        case let .lte(f, v): return Filter.compare("lte", f, v)
        case let .gt(f, v): return Filter.compare("gt", f, v)
        case let .gte(f, v): return Filter.compare("gte", f, v)
        case let .isIn(f, vs): return Filter.compare("in", f, .array(vs))
        case let .prefix(f, p, ci): return Filter.compare(ci ? "prefix_ci" : "prefix", f, .string(p))
        case let .isNull(f): return Filter.wrap("is_null", Filter.quote(f))
        case let .exists(f): return Filter.wrap("exists", Filter.quote(f))
        case let .search(text): return Filter.wrap("search", Filter.quote(text))
        case let .and(fs): return Filter.wrap("and", "[" + fs.map(\.json).joined(separator: ",") + "]")
        case let .or(fs): return Filter.wrap("or", "[" + fs.map(\.json).joined(separator: ",") + "]")
        }
    }

    private static func wrap(_ name: String, _ argument: String) -> String {
        "{\"\(name)\":\(argument)}"
    }

    private static func compare(_ name: String, _ field: String, _ value: Value) -> String {
        Filter.wrap(name, "[\(quote(field)),\(value.json)]")
    }

    fileprivate static func quote(_ s: String) -> String {
        var out = "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case _ where scalar.value < 0x20: out += String(format: "\\u%04x", scalar.value)
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }
}

/// A filter, an order and a page, for `OutpostStore.query`, `queryPage` and `observe`:
/// `Query(filter: .eq("village", "v042") && .gte("age", 5), order: [.ascending("name")], limit: 50)`.
public struct Query: Sendable, Equatable {
    /// One sort key; ties are broken by record id.
    public struct Sort: Sendable, Equatable {
        /// A top-level field, or nil for the record id.
        public var field: String?
        public var descending: Bool

        public init(field: String?, descending: Bool = false) {
            self.field = field
            self.descending = descending
        }

        public static func ascending(_ field: String) -> Sort { Sort(field: field) }
        public static func descending(_ field: String) -> Sort { Sort(field: field, descending: true) }
        /// By record id (the order when none is given).
        public static let id = Sort(field: nil)
    }

    /// Nil selects every record.
    public var filter: Filter?
    /// Sort keys, most significant first.
    public var order: [Sort]
    public var limit: UInt32?
    public var offset: UInt32
    /// A `Page.next` from `queryPage`: continue right after that page's last record.
    public var after: String?

    public init(
        filter: Filter? = nil, order: [Sort] = [], limit: UInt32? = nil, offset: UInt32 = 0,
        after: String? = nil
    ) {
        self.filter = filter
        self.order = order
        self.limit = limit
        self.offset = offset
        self.after = after
    }

    /// The FFI record this query crosses as.
    var ffi: OutpostFFI.Query {
        OutpostFFI.Query(
            filters: [], orderBy: nil, descending: false, limit: limit, offset: offset,
            filterJson: filter?.json,
            order: order.map { OutpostFFI.OrderBy(field: $0.field, descending: $0.descending) },
            after: after
        )
    }
}
