// Builds generated C into a shared library, cached by content hash, written atomically.

import Foundation
import IR

/// A content-addressed cache of compiled libraries: `<root>/<key>/lib.so` with its SHA-256 in
/// `lib.so.sha256`. The key hashes the C sources, the codegen version, the compiler identity and
/// flags and the CPU features. The prelude object every library links is an entry too
/// (`<root>/<key>/prelude.o`, keyed by its source and the same build identity). Entries appear by
/// directory rename, so a reader sees all or nothing; an entry whose file no longer matches its
/// hash is deleted and rebuilt, never loaded.
/// Concurrent compiles of one library build it once: the builder holds `<root>/.<key>.lock`
/// (flock, released by the kernel even if the builder is killed) and the others wait, then hit.
/// Build folders are `.<key>.tmp.<pid>.<random>`; one whose process is dead is removed by the next build.
public struct BuildCache {
    public var root: String
    public var toolchain: Toolchain
    /// Messages for the user (cache hits, rebuilds), e.g. printed in verbose mode.
    public var log: (String) -> Void = { _ in }

    public init(root: String = BuildCache.defaultRoot(), toolchain: Toolchain) {
        self.root = root
        self.toolchain = toolchain
    }

    /// `$ARCFLOW_CACHE_DIR`, else `$XDG_CACHE_HOME/arcflow`, else `~/.cache/arcflow`.
    public static func defaultRoot(_ env: [String: String] = ProcessInfo.processInfo.environment) -> String {
        if let d = env["ARCFLOW_CACHE_DIR"], !d.isEmpty { return d }
        if let x = env["XDG_CACHE_HOME"], !x.isEmpty { return x + "/arcflow" }
        return (env["HOME"] ?? NSTemporaryDirectory()) + "/.cache/arcflow"
    }

    /// The keys of `program`'s prelude object and library. Both start from what every entry
    /// depends on besides its sources (codegen version, compiler, flags, CPU features), hashed
    /// once; the library's key includes the prelude object's.
    public func keys(for program: CProgram) -> (prelude: String, library: String) {
        var identity = SHA256()
        identity.update(codegenVersion)
        identity.update(toolchain.identity)
        identity.update((toolchain.compileFlags + toolchain.linkFlags).joined(separator: " "))
        identity.update(cpuFeatureHash())
        var p = identity
        p.update("prelude object")
        p.update(program.prelude.name)
        p.update(program.prelude.text)
        let prelude = SHA256.hex(p.finalize())
        var l = identity
        l.update(prelude)
        for s in program.sources { l.update(s.name); l.update(s.text) }
        return (prelude, SHA256.hex(l.finalize()))
    }

    /// Result of `library(for:)`: the path of a verified library and whether it came from the cache.
    public struct Entry {
        public var path: String
        public var key: String
        public var cacheHit: Bool
        /// The compile commands, as run (or as they were run for the cached entry).
        public var commands: [[String]]
    }

    /// Returns a verified library for `program`, building it if the cache has no valid entry.
    /// The prelude object it links is an entry of its own (`prelude.o`), built by the first
    /// library that needs it: the heavy kernel families compile once per compiler, flags and CPU.
    public func library(for program: CProgram) throws -> Entry {
        let keys = keys(for: program)
        let prelude = try entry(key: keys.prelude, file: "prelude.o", what: "the kernel prelude") { tmp in
            try program.prelude.text.write(toFile: "\(tmp)/\(program.prelude.name)", atomically: false, encoding: .utf8)
            let compile = toolchain.compileCommand(source: "\(tmp)/\(program.prelude.name)", object: "\(tmp)/prelude.o")
            try check(try runProcess(compile[0], Array(compile.dropFirst())), compile)
            return [compile]
        }
        return try entry(key: keys.library, file: "lib.so", what: "\(program.sources.count) translation units") { tmp in
            // Compile every translation unit in parallel, then link them with the prelude object.
            var commands: [[String]] = []
            var objects: [String] = []
            for s in program.sources {
                try s.text.write(toFile: "\(tmp)/\(s.name)", atomically: false, encoding: .utf8)
                let obj = "\(tmp)/\(s.name).o"
                commands.append(toolchain.compileCommand(source: "\(tmp)/\(s.name)", object: obj))
                objects.append(obj)
            }
            var results = [Result<ProcessResult, Error>?](repeating: nil, count: commands.count)
            let lock = NSLock()
            DispatchQueue.concurrentPerform(iterations: commands.count) { i in
                let r = Result { try runProcess(commands[i][0], Array(commands[i].dropFirst())) }
                lock.lock(); results[i] = r; lock.unlock()
            }
            for (i, r) in results.enumerated() {
                try check(try r!.get(), commands[i])
            }
            let link = toolchain.linkCommand(objects: objects + [prelude.path], output: "\(tmp)/lib.so")
            try check(try runProcess(link[0], Array(link.dropFirst())), link)
            for o in objects { try? FileManager.default.removeItem(atPath: o) }
            return prelude.commands + commands + [link]
        }
    }

    /// The entry `key` holding `file`: the cached one if it is whole, else built by `build` (which
    /// makes `file` in the folder it is given and returns the commands it ran). One builder per key
    /// across processes: the others wait on the lock, then find its entry. The build folder is
    /// published by rename, so a reader sees all or nothing.
    private func entry(key: String, file: String, what: String, build: (_ folder: String) throws -> [[String]]) throws -> Entry {
        let fm = FileManager.default
        let dir = "\(root)/\(key)"
        if let hit = cachedEntry(key: key, file: file) { return hit }
        try fm.createDirectory(atPath: root, withIntermediateDirectories: true)
        let buildLock = try FileLock("\(root)/.\(key).lock") { log("waiting for another process building \(key.prefix(16))") }
        defer { buildLock.unlock() }
        if let hit = cachedEntry(key: key, file: file) { return hit }
        for name in TemporaryFiles.removeStale(in: root) { log("removed \(name), left by a build that did not finish") }
        let tmp = TemporaryFiles.path(for: dir)
        try fm.createDirectory(atPath: tmp, withIntermediateDirectories: true)
        defer { try? fm.removeItem(atPath: tmp) }
        log("building \(key.prefix(16)) (\(what))")
        let commands = try build(tmp)
        try sha256(ofFile: "\(tmp)/\(file)").write(toFile: "\(tmp)/\(file).sha256", atomically: false, encoding: .utf8)
        try commands.map { $0.joined(separator: " ") }.joined(separator: "\n")
            .write(toFile: "\(tmp)/commands.txt", atomically: false, encoding: .utf8)
        // Publish by rename; if another process won the race, use its entry.
        if rename(tmp, dir) != 0 && !fm.fileExists(atPath: "\(dir)/\(file)") {
            throw ArcError("cannot publish cache entry \(dir): \(String(cString: strerror(errno)))")
        }
        return Entry(path: "\(dir)/\(file)", key: key, cacheHit: false, commands: commands)
    }

    /// The entry for `key` if it is whole and its `file` matches its recorded SHA-256; a
    /// corrupted entry (any file missing, unreadable or altered) is deleted and nil returned, so
    /// the caller rebuilds it. Cache entries are files on disk: this is a reader of untrusted input.
    public func cachedEntry(key: String, file: String = "lib.so") -> Entry? {
        let fm = FileManager.default
        let dir = "\(root)/\(key)"
        let path = "\(dir)/\(file)"
        guard fm.fileExists(atPath: dir) else { return nil }
        if let data = try? readInputFile(path + ".sha256", limit: 4096),
           let expected = String(data: data, encoding: .utf8)?.trimmingCharacters(in: .whitespacesAndNewlines),
           let actual = try? sha256(ofFile: path), expected == actual {
            let text = (try? readInputFile("\(dir)/commands.txt", limit: 1 << 20)).map { String(decoding: $0, as: UTF8.self) } ?? ""
            let commands = text.split(separator: "\n").map { $0.split(separator: " ").map(String.init) }
            return Entry(path: path, key: key, cacheHit: true, commands: commands)
        }
        log("cache entry \(key.prefix(16)) is corrupted; rebuilding")
        try? fm.removeItem(atPath: dir)
        return nil
    }

    private func check(_ r: ProcessResult, _ command: [String]) throws {
        guard r.status == 0 else {
            // One line: the compiler's own lines joined with " | " (its stderr, capped at 4 KB).
            let stderr = r.error.trimmingCharacters(in: .whitespacesAndNewlines).split(separator: "\n").joined(separator: " | ")
            throw ArcError("C compiler failed (exit \(r.status)): \(command.joined(separator: " ")): \(stderr.prefix(4096))")
        }
    }
}

/// SHA-256 of a file's bytes, memory-mapped.
public func sha256(ofFile path: String) throws -> String {
    let data = try Data(contentsOf: URL(fileURLWithPath: path), options: .alwaysMapped)
    return data.withUnsafeBytes { SHA256.hash($0) }
}
