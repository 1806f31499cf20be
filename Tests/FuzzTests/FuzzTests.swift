// CI's share of fuzzing: a few thousand deterministic cases per reader (Tools/fuzz.sh runs more),
// and every saved crasher replayed as a regression test.

import Foundation
import IR
import TestSupport
import XCTest

final class FuzzTests: XCTestCase {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path

    /// `arcflow-fuzz`, built next to the test bundle (this target depends on it).
    func fuzz(_ args: [String]) throws -> CommandResult {
        var dir = URL(fileURLWithPath: CommandLine.arguments[0])
        while !FileManager.default.isExecutableFile(atPath: dir.appendingPathComponent("arcflow-fuzz").path) && dir.path != "/" {
            dir.deleteLastPathComponent()
        }
        let p = Process()
        p.executableURL = dir.appendingPathComponent("arcflow-fuzz")
        p.arguments = args + ["--root", Self.root]
        let out = Pipe()
        p.standardOutput = out
        p.standardError = out
        try p.run()
        let o = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return CommandResult(status: p.terminationStatus, out: String(decoding: o, as: UTF8.self), err: "")
    }

    /// Cases per target: sized so all eight finish in about a minute on 2 cores
    /// (`ARCFLOW_FUZZ_CASES` overrides; crashers go to a temporary folder, not the repository).
    func check(_ target: String, cases: Int) throws {
        let n = Int(ProcessInfo.processInfo.environment["ARCFLOW_FUZZ_CASES"] ?? "") ?? cases
        let crashers = try makeTemporaryDirectory("arcflow-fuzz-crashers")
        defer { try? FileManager.default.removeItem(atPath: crashers) }
        let r = try fuzz(["run", target, "--cases", String(n), "--seed", "1", "--crashers", crashers])
        XCTAssertEqual(r.status, 0, r.out)
        XCTAssertTrue(r.out.contains("\(target): \(n) cases"), r.out)
        XCTAssertTrue(r.out.contains("crashes 0, hangs 0, multi-line 0, other findings 0"), r.out)
    }

    func testIR() throws { try check("ir", cases: 3000) }
    func testSafeTensors() throws { try check("safetensors", cases: 3000) }
    func testShards() throws { try check("shards", cases: 2000) }
    func testConfig() throws { try check("config", cases: 2000) }
    func testTokenizer() throws { try check("tokenizer", cases: 2000) }
    func testPrompt() throws { try check("prompt", cases: 2000) }
    func testModel() throws { try check("model", cases: 2000) }
    func testCache() throws { try check("cache", cases: 2000) }

    /// Every input a fuzz run ever saved (Tests/Fuzz/crashers/TARGET/) must now be handled:
    /// accepted, or rejected with a one-line error.
    func testCrashersAreFixed() throws {
        let dir = "\(Self.root)/Tests/Fuzz/crashers"
        for target in (try? FileManager.default.contentsOfDirectory(atPath: dir))?.sorted() ?? [] {
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: "\(dir)/\(target)", isDirectory: &isDir), isDir.boolValue else { continue }
            let files = try FileManager.default.contentsOfDirectory(atPath: "\(dir)/\(target)").sorted().map { "\(dir)/\(target)/\($0)" }
            guard !files.isEmpty else { continue }
            let r = try fuzz(["replay", target] + files)
            XCTAssertEqual(r.status, 0, r.out)
            XCTAssertEqual(r.out.split(separator: "\n").count, files.count, r.out)
        }
    }
}
