// Compiles running at the same time, and compiles killed half-way: the library cache builds
// each library once, and nothing a killed compile leaves behind trips a later one.
// Each compile is an arcflow process, as users and job arrays run them.

import Codegen
import Foundation
import IR
import Runtime
import TestSupport
import XCTest

final class CacheConcurrencyTests: XCTestCase {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    let mlpIR = CacheConcurrencyTests.root.appendingPathComponent("examples/mlp.ir").path
    var dir = ""
    var cache: String { dir + "/cache" }

    override func setUpWithError() throws {
        dir = try makeTemporaryDirectory("arcflow-cache-concurrency")
        let r = try runArcflow(["random-weights", mlpIR, "-o", "w.safetensors", "--seed", "1"], in: dir)
        XCTAssertEqual(r.status, 0, r.err)
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    /// Starts `arcflow compile` on the MLP into `output` without waiting; stdout and stderr go to
    /// files (a pipe nobody reads could fill and stall the process).
    func startCompile(_ output: String, tag: String) throws -> Process {
        let p = Process()
        p.executableURL = arcflowExecutable()
        p.arguments = ["compile", mlpIR, "--weights", "w.safetensors", "-o", output, "-v"]
        p.currentDirectoryURL = URL(fileURLWithPath: dir)
        p.environment = ProcessInfo.processInfo.environment.merging(["ARCFLOW_CACHE_DIR": cache]) { _, new in new }
        FileManager.default.createFile(atPath: "\(dir)/\(tag).out", contents: nil)
        FileManager.default.createFile(atPath: "\(dir)/\(tag).err", contents: nil)
        p.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: "\(dir)/\(tag).out"))
        p.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: "\(dir)/\(tag).err"))
        try p.run()
        return p
    }

    func text(_ file: String) -> String { (try? String(contentsOfFile: "\(dir)/\(file)", encoding: .utf8)) ?? "" }

    /// Names in `folder` that are temporaries of arcflow's atomic writes.
    func temporaries(in folder: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? []).filter { TemporaryFiles.owner(of: $0) != nil }
    }

    func testEightConcurrentCompilesBuildOnceAndAllSucceed() throws {
        let processes = try (0..<8).map { try startCompile("model", tag: "c\($0)") }
        processes.forEach { $0.waitUntilExit() }
        var built = 0, hits = 0
        for (k, p) in processes.enumerated() {
            XCTAssertEqual(p.terminationStatus, 0, "compile \(k): \(text("c\(k).err"))")
            let out = text("c\(k).out")
            if out.contains("library built") { built += 1 }
            if out.contains("library cache hit") { hits += 1 }
        }
        XCTAssertEqual(built, 1, "exactly one process builds the library")
        XCTAssertEqual(hits, 7, "the others wait for it and hit the cache")
        // The cache holds two entries (the library and the prelude object it links) and their
        // lock files, no build folders; the model loads and runs.
        let entries = try FileManager.default.contentsOfDirectory(atPath: cache).sorted()
        XCTAssertEqual(entries.count, 4, "\(entries)")
        XCTAssertEqual(entries.filter { $0.hasSuffix(".lock") }.count, 2, "\(entries)")
        let files = entries.filter { !$0.hasSuffix(".lock") }.map { try? FileManager.default.contentsOfDirectory(atPath: "\(cache)/\($0)") }
        XCTAssertEqual(files.filter { $0?.contains("lib.so") == true }.count, 1, "\(files)")
        XCTAssertEqual(files.filter { $0?.contains("prelude.o") == true }.count, 1, "\(files)")
        XCTAssertEqual(temporaries(in: "\(dir)/model"), [])
        let model = try LoadedModel.load("\(dir)/model")
        let y = try model.executable.run(["x": Tensor(.f32([8, 64]), [Float](repeating: 0.5, count: 512))])["y"]!
        XCTAssertEqual(y.shape, [8, 10])
        XCTAssertTrue(y.data.allSatisfy(\.isFinite))
    }

    func testKillNineDuringCompileLeavesNothingThatTripsALaterCompile() throws {
        let p = try startCompile("model", tag: "killed")
        // Wait until its build folder exists (the C compiler is running), then kill it.
        let deadline = Date().addingTimeInterval(120)
        var seen: [String] = []
        while seen.isEmpty && p.isRunning && Date() < deadline {
            seen = temporaries(in: cache).filter { TemporaryFiles.owner(of: $0) == p.processIdentifier }
            if seen.isEmpty { usleep(2_000) }
        }
        XCTAssertFalse(seen.isEmpty, "the compile finished before its build folder was seen: \(text("killed.out"))")
        kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
        XCTAssertEqual(p.terminationReason, .uncaughtSignal)
        // Its C compiler children outlive it; let them finish so they do not write into the folder later.
        waitForProcesses(mentioning: seen.map { "\(cache)/\($0)" })
        XCTAssertFalse(temporaries(in: cache).isEmpty, "the killed compile left its build folder")

        // Also what a writer killed while writing the model folder would leave: a temporary
        // weights file and folder of a dead process, next to a live process's temporary.
        let deadPID = try deadProcessID()
        let model = "\(dir)/model"
        try FileManager.default.createDirectory(atPath: "\(model)/.c.tmp.\(deadPID).1f", withIntermediateDirectories: true)
        FileManager.default.createFile(atPath: "\(model)/.weights.safetensors.tmp.\(deadPID).abc", contents: Data([1, 2, 3]))
        let live = ".weights.safetensors.tmp.\(getpid()).abc"
        FileManager.default.createFile(atPath: "\(model)/\(live)", contents: Data([1]))

        let again = try startCompile("model", tag: "again")
        again.waitUntilExit()
        XCTAssertEqual(again.terminationStatus, 0, text("again.err"))
        XCTAssertTrue(text("again.out").contains("library built"), text("again.out"))
        XCTAssertTrue(text("again.err").contains("left by a build that did not finish"), text("again.err"))
        XCTAssertEqual(temporaries(in: cache), [], "the dead compile's build folder is removed")
        XCTAssertEqual(temporaries(in: model), [live], "dead writers' temporaries go, a live one's stays")
        _ = try LoadedModel.load(model)
    }

    /// The pid of a process that has exited (and been reaped).
    func deadProcessID() throws -> Int32 {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/true")
        try p.run()
        p.waitUntilExit()
        return p.processIdentifier
    }

    /// Waits (up to two minutes) until no process has any of `paths` on its command line.
    func waitForProcesses(mentioning paths: [String]) {
        let deadline = Date().addingTimeInterval(120)
        while Date() < deadline {
            let pids = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
            let busy = pids.contains { pid in
                guard Int(pid) != nil, let cmd = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return false }
                let s = String(decoding: cmd, as: UTF8.self)
                return paths.contains { s.contains($0) }
            }
            if !busy { return }
            usleep(20_000)
        }
    }
}
