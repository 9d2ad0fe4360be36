// A real outpost-server on a loopback port and devices against it, as the Kotlin and
// Python suites start them: a temporary TOML config with three users, `listen` on port
// 0, and the address read from the server's first line on stdout.
import Foundation
import XCTest
import OutpostKit

struct TestUser: Sendable {
    let name: String
    let team: String
    let token: String
}

let amina = TestUser(name: "amina", team: "north", token: "token-amina-0123456789abcdef0123456789")
let ben = TestUser(name: "ben", team: "north", token: "token-ben-0123456789abcdef0123456789")
let chioma = TestUser(name: "chioma", team: "south", token: "token-chioma-0123456789abcdef0123456789")

let testCollections = [
    CollectionSpec(name: "answers", strategy: .lastWriteWins),
    CollectionSpec(name: "patients", strategy: .fieldMerge, indexes: [["village", "name"], ["age"]], search: ["name"]),
    CollectionSpec(name: "reviews", strategy: .manual),
]

struct TestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// A server process with its own folder; `stop()` ends both.
final class TestServer: @unchecked Sendable {
    let url: String
    let dir: URL
    private let process: Process

    init() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("outpost-swift-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        var lines = [
            "listen = \"127.0.0.1:0\"", "database = \"\(dir.path)/server.db\"",
            "default_access = \"team\"", "tombstone_retention_days = 30",
        ]
        for user in [amina, ben, chioma] {
            lines += ["", "[[users]]", "name = \"\(user.name)\"", "team = \"\(user.team)\"", "token = \"\(user.token)\""]
        }
        let config = dir.appendingPathComponent("server.toml")
        try (lines.joined(separator: "\n") + "\n").write(to: config, atomically: true, encoding: .utf8)

        let binary = ProcessInfo.processInfo.environment["OUTPOST_SERVER_BIN"] ?? "../target/debug/outpost-server"
        let process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = ["--config", config.path]
        let out = Pipe()
        process.standardOutput = out
        process.standardError = FileHandle.nullDevice
        try process.run()
        self.process = process
        do {
            url = try Self.address(from: out.fileHandleForReading)
        } catch {
            process.terminate()
            throw error
        }
        // Keep reading: a server whose stdout pipe is full would stop.
        out.fileHandleForReading.readabilityHandler = { handle in _ = handle.availableData }
    }

    private static func address(from handle: FileHandle) throws -> String {
        let prefix = "outpost-server listening on http://"
        var buffer = Data()
        while true {
            let chunk = handle.availableData
            if chunk.isEmpty { throw TestFailure("outpost-server exited before it listened") }
            buffer.append(chunk)
            // Only whole lines: the last piece may still be arriving.
            let lines = String(decoding: buffer, as: UTF8.self).components(separatedBy: "\n").dropLast()
            if let line = lines.first(where: { $0.hasPrefix(prefix) }) {
                return "http://" + line.dropFirst(prefix.count).trimmingCharacters(in: .whitespaces) + "/"
            }
        }
    }

    func stop() {
        // Killed and reaped directly: `waitUntilExit` spins a run loop, which a test's
        // async context lacks. ECHILD means Foundation reaped it first: it is gone too.
        kill(process.processIdentifier, SIGKILL)
        var status: Int32 = 0
        _ = waitpid(process.processIdentifier, &status, 0)
        try? FileManager.default.removeItem(at: dir)
    }

    /// A device of `user` with its own database file in the server's folder.
    func device(
        _ name: String, as user: TestUser = amina, autoSync: Bool = false,
        token: (@Sendable (Bool) async throws -> String?)? = nil
    ) async throws -> OutpostStore {
        let config = OutpostConfig(
            path: dir.appendingPathComponent("\(name).db").path, serverUrl: url,
            collections: testCollections, durability: .normal, autoSync: autoSync,
            backoffInitialMs: 100, backoffMaxMs: 500, networkDebounceMs: 20
        )
        let fixed = user.token
        return try await OutpostStore.open(config: config, token: token ?? { _ in fixed })
    }
}

/// Waits until `condition` holds, polling; fails the test after `timeout` seconds.
func eventually(
    _ what: String, timeout: TimeInterval = 10, _ condition: () async throws -> Bool
) async throws {
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        if try await condition() { return }
        try await Task.sleep(nanoseconds: 20_000_000)
    }
    throw TestFailure("timed out waiting for \(what)")
}

/// A record's data decoded as `T`.
func decode<T: Decodable>(_ type: T.Type, _ record: Record?) throws -> T {
    guard let record else { throw TestFailure("no record") }
    return try JSONDecoder().decode(T.self, from: Data(record.dataJson.utf8))
}

/// Opens on `release()` (or after 10 s): holds a token provider, and so a sync, mid-way.
actor Gate {
    private var open = false

    func release() { open = true }

    func wait() async {
        let deadline = Date().addingTimeInterval(10)
        while !open && Date() < deadline {
            try? await Task.sleep(nanoseconds: 10_000_000)
        }
    }
}

/// A flag set from any thread.
final class Flag: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false

    func set() {
        lock.lock()
        value = true
        lock.unlock()
    }

    var isSet: Bool {
        lock.lock()
        defer { lock.unlock() }
        return value
    }
}
