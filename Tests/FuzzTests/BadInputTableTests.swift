// The README's bad-input table, row by row: each row's scenario is built here and must produce
// exactly the message the table shows (`…` in the table stands for machine-specific text), with
// the exit status and files the guarantee column promises.

import Foundation
import Generation
import IR
import Runtime
import ShapesWorld
import TestSupport
import Tokenizers
import XCTest

final class BadInputTableTests: XCTestCase {
    static let root = FuzzTests.root
    static let fixtures = "\(root)/Tests/ArcFlowGraphsTests/Fixtures"
    let mlpIR = "\(BadInputTableTests.root)/examples/mlp.ir"
    var dir = ""

    override func setUpWithError() throws { dir = try makeTemporaryDirectory("arcflow-bad-input") }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    // MARK: helpers

    func arcflow(_ args: [String], env: [String: String] = [:]) throws -> CommandResult {
        try runArcflow(args, in: dir, environment: ["ARCFLOW_CACHE_DIR": dir + "/cache"].merging(env) { _, n in n })
    }

    /// The one stderr line of a failed command; the status must be `status` and nothing else printed.
    func failure(_ args: [String], status: Int32 = 1, env: [String: String] = [:], file: StaticString = #filePath, line: UInt = #line) throws -> String {
        let r = try arcflow(args, env: env)
        XCTAssertEqual(r.status, status, r.err, file: file, line: line)
        let lines = r.err.split(separator: "\n", omittingEmptySubsequences: false).filter { !$0.isEmpty }
        XCTAssertEqual(lines.count, 1, "one line expected: \(r.err)", file: file, line: line)
        return String(lines.first ?? "")
    }

    func message(_ body: () throws -> Void) -> String {
        do { try body(); return "(no error)" } catch let e as ArcError { return e.message } catch { return "\(error)" }
    }

    func write(_ name: String, _ bytes: [UInt8]) throws {
        let p = "\(dir)/\(name)"
        try? FileManager.default.createDirectory(atPath: (p as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try Data(bytes).write(to: URL(fileURLWithPath: p))
    }
    func write(_ name: String, _ text: String) throws { try write(name, Array(text.utf8)) }

    /// A safetensors file with a hand-written header.
    func handMade(_ name: String, header: String, data: [UInt8] = []) throws {
        let h = Array(header.utf8)
        try write(name, withUnsafeBytes(of: UInt64(h.count).littleEndian) { Array($0) } + h + data)
    }

    func weights() throws {
        XCTAssertEqual(try arcflow(["random-weights", mlpIR, "-o", "w.safetensors"]).status, 0)
    }

    /// Lists a folder, hidden files included: "no partial file" means nothing at all was left.
    func contents(_ d: String) -> [String] { (try? FileManager.default.contentsOfDirectory(atPath: "\(dir)/\(d)"))?.sorted() ?? [] }

    /// A small tmpfs at `name` (read-only, or `size` bytes); nil when this machine does not let
    /// the test mount one (not root, or no mount permission in the container).
    func mountTmpfs(_ name: String, options: String) throws -> String? {
        let p = "\(dir)/\(name)"
        try FileManager.default.createDirectory(atPath: p, withIntermediateDirectories: true)
        let m = Process()
        m.executableURL = URL(fileURLWithPath: "/bin/mount")
        m.arguments = ["-t", "tmpfs", "-o", options, "tmpfs", p]
        m.standardError = Pipe()
        guard (try? m.run()) != nil else { return nil }
        m.waitUntilExit()
        guard m.terminationStatus == 0 else { return nil }
        addTeardownBlock {
            let u = Process(); u.executableURL = URL(fileURLWithPath: "/bin/umount"); u.arguments = [p]
            try? u.run(); u.waitUntilExit()
        }
        return p
    }

    /// A compiled FLUX sampler (fixture cfg-a, 48×80, 7 text tokens), for the embedding rows. Its
    /// library comes from the tests' shared cache (FluxCLITests builds the same one): these rows
    /// are about `generate`'s checks, not the build.
    func fluxSampler() throws {
        let r = try arcflow(["compile", "--transformer", "\(Self.fixtures)/cfg-a/transformer", "--adapter", "\(Self.fixtures)/cfg-a/adapter-k4",
                             "--height", "48", "--width", "80", "--text-tokens", "7", "-o", "flux"], env: ["ARCFLOW_CACHE_DIR": testCacheRoot])
        XCTAssertEqual(r.status, 0, r.err)
    }

    func embeddings(_ name: String, promptShape: [Int], value: Float = 0) throws {
        let n = promptShape.reduce(1, *)
        var v = [Float](repeating: 0, count: n); v[n / 2] = value
        try writeSafeTensors([
            TensorRecord(name: "prompt_embeds", dtype: .f32, shape: promptShape, payload: .floats(v)),
            TensorRecord(name: "pooled_prompt_embeds", dtype: .f32, shape: [1, 40], payload: .floats(Array(repeating: 0, count: 40))),
        ], to: "\(dir)/\(name)")
    }

    // MARK: the rows (numbers as in the README)

    lazy var rows: [Int: () throws -> String] = [
        1: { [self] in
            try write("c.ir", Array("graph @g {\n  %x = input \"".utf8) + [0xFF] + Array("\" : f32[2]\n  output \"y\" %x\n}\n".utf8))
            return try failure(["dump-ir", "c.ir"])
        },
        2: { [self] in
            try write("c.ir", "graph @g {\n  %x = input \"a\u{0c}b\" : f32[2]\n  %y = input \"a\u{0c}b\" : f32[2]\n  output \"y\" %y\n}\n")
            return try failure(["dump-ir", "c.ir"])
        },
        3: { [self] in try failure(["dump-ir", "nope.ir"]) },
        4: { [self] in
            try FileManager.default.createDirectory(atPath: "\(dir)/d.ir", withIntermediateDirectories: true)
            return try failure(["dump-ir", "d.ir"])
        },
        5: { [self] in
            _ = FileManager.default.createFile(atPath: "\(dir)/big.ir", contents: nil)
            let h = try FileHandle(forWritingTo: URL(fileURLWithPath: "\(dir)/big.ir"))
            try h.truncate(atOffset: 300 << 20)   // sparse: no disk used
            try h.close()
            return try failure(["dump-ir", "big.ir"])
        },
        6: { [self] in
            try write("bad.ir", "graph @g {\n  %x = input \"x\" : f32[2,\n}\n")
            return try failure(["dump-ir", "bad.ir"])
        },
        7: { [self] in
            try write("shape.ir", "graph @g {\n  %a = input \"a\" : f32[2,3]\n  %y = matmul %a, %a : f32[2,3]\n  output \"y\" %y\n}\n")
            return try failure(["dump-ir", "shape.ir"])
        },
        8: { [self] in
            try write("huge.ir", "graph @g {\n  %a = input \"a\" : f32[4611686018427387904,4]\n  output \"y\" %a\n}\n")
            return try failure(["dump-ir", "huge.ir"])
        },
        9: { [self] in try write("w.safetensors", [1, 2, 3]); return try failure(["compile", mlpIR, "--weights", "w.safetensors", "-o", "m"]) },
        10: { [self] in
            try handMade("w.safetensors", header: "{}")
            var d = try Data(contentsOf: URL(fileURLWithPath: "\(dir)/w.safetensors"))
            d.replaceSubrange(0..<8, with: withUnsafeBytes(of: UInt64(1 << 40).littleEndian) { Data($0) })
            try d.write(to: URL(fileURLWithPath: "\(dir)/w.safetensors"))
            return try failure(["compile", mlpIR, "--weights", "w.safetensors", "-o", "m"])
        },
        11: { [self] in try handMade("w.safetensors", header: "{\"a\": [1,"); return try failure(["compile", mlpIR, "--weights", "w.safetensors", "-o", "m"]) },
        12: { [self] in
            try handMade("w.safetensors", header: #"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
                         data: [UInt8](repeating: 0, count: 12))
            return try failure(["compile", mlpIR, "--weights", "w.safetensors", "-o", "m"])
        },
        13: { [self] in
            try handMade("w.safetensors", header: #"{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#, data: [0, 0, 0, 0])
            return try failure(["compile", mlpIR, "--weights", "w.safetensors", "-o", "m"])
        },
        14: { [self] in
            try handMade("w.safetensors", header: #"{"x":{"dtype":"F32","shape":[2,3],"data_offsets":[0,12]}}"#, data: [UInt8](repeating: 0, count: 12))
            return try failure(["compile", mlpIR, "--weights", "w.safetensors", "-o", "m"])
        },
        15: { [self] in
            try writeSafeTensors([TensorRecord(name: "fc1.weight", dtype: .f32, shape: [64, 256], payload: .floats(Array(repeating: 0, count: 64 * 256)))],
                                 to: "\(dir)/w.safetensors")
            return try failure(["compile", mlpIR, "--weights", "w.safetensors", "-o", "m"])
        },
        16: { [self] in
            try writeSafeTensors([TensorRecord(name: "fc1.weight", dtype: .bf16, shape: [256, 64], payload: .floats(Array(repeating: 0, count: 64 * 256)))],
                                 to: "\(dir)/w.safetensors")
            return try failure(["compile", mlpIR, "--weights", "w.safetensors", "-o", "m"])
        },
        17: { [self] in
            try writeSafeTensors([], to: "\(dir)/w.safetensors")
            return try failure(["compile", mlpIR, "--weights", "w.safetensors", "-o", "m"])
        },
        18: { [self] in
            try FileManager.default.copyItem(atPath: "\(Self.fixtures)/cfg-b/transformer", toPath: "\(dir)/t")
            try FileManager.default.removeItem(atPath: "\(dir)/t/diffusion_pytorch_model-00002-of-00002.safetensors")
            return try failure(["compile", "--transformer", "t", "--sampler", "euler", "--height", "112", "--width", "48", "-o", "m"])
        },
        19: { [self] in
            try FileManager.default.copyItem(atPath: "\(Self.fixtures)/cfg-a/adapter-k4", toPath: "\(dir)/ad")
            let c = try String(contentsOfFile: "\(dir)/ad/config.json", encoding: .utf8)
            try write("ad/config.json", c.replacingOccurrences(of: "ArcFluxTransformer2DModel", with: "PiFluxTransformer2DModel"))
            return try failure(["compile", "--transformer", "\(Self.fixtures)/cfg-a/transformer", "--adapter", "ad", "--height", "48", "--width", "80", "-o", "m"])
        },
        20: { [self] in
            try FileManager.default.copyItem(atPath: "\(Self.fixtures)/cfg-a/transformer", toPath: "\(dir)/t")
            let c = try String(contentsOfFile: "\(dir)/t/config.json", encoding: .utf8)
            try write("t/config.json", c.replacingOccurrences(of: #""num_layers": 2"#, with: #""num_layers": "2""#))
            return try failure(["compile", "--transformer", "t", "--sampler", "euler", "--height", "48", "--width", "80", "-o", "m"])
        },
        21: { [self] in
            try FileManager.default.copyItem(atPath: "\(Self.fixtures)/cfg-b/adapter-k16", toPath: "\(dir)/other")
            return try failure(["compile", "--transformer", "\(Self.fixtures)/cfg-a/transformer", "--adapter", "other",
                         "--height", "48", "--width", "80", "--text-tokens", "7", "-o", "m"])
        },
        22: { [self] in
            try fluxSampler()
            try embeddings("e.safetensors", promptShape: [1, 9, 48])
            return try failure(["generate", "--model", "flux", "--embeddings", "e.safetensors", "--seed", "1", "--output-latents", "l.safetensors"])
        },
        23: { [self] in
            try fluxSampler()
            try embeddings("e.safetensors", promptShape: [1, 7, 48], value: .nan)
            let line = try failure(["generate", "--model", "flux", "--embeddings", "e.safetensors", "--seed", "1", "--output-latents", "l.safetensors"])
            XCTAssertFalse(FileManager.default.fileExists(atPath: "\(dir)/l.safetensors"))
            return line
        },
        24: { [self] in message { _ = try Prompt.parse("a red blob") } },
        25: { [self] in
            try write("p.txt", Array("a red fox\n".utf8) + [0xC3, 0x28])
            return message { _ = try readPromptLines("\(dir)/p.txt") }.replacingOccurrences(of: dir + "/", with: "")
        },
        26: { [self] in
            try FileManager.default.copyItem(atPath: "\(Self.fixtures)/pipeline/tokenizer", toPath: "\(dir)/tok")
            try FileManager.default.removeItem(atPath: "\(dir)/tok/vocab.json")
            return message { _ = try CLIPTokenizer(folder: "\(dir)/tok") }.replacingOccurrences(of: dir + "/", with: "")
        },
        27: { [self] in
            try weights()
            if getuid() != 0 {
                try FileManager.default.createDirectory(atPath: "\(dir)/ro", withIntermediateDirectories: true)
                chmod("\(dir)/ro", 0o555)
            } else if try mountTmpfs("ro", options: "ro,size=64k") == nil {
                throw XCTSkip("running as root without permission to mount a read-only tmpfs: cannot make an unwritable folder")
            }
            let line = try failure(["random-weights", mlpIR, "-o", "ro/w.safetensors"])
            XCTAssertEqual(contents("ro"), [], "no partial file")
            return line
        },
        28: { [self] in
            guard try mountTmpfs("full", options: "size=64k") != nil else {
                throw XCTSkip("cannot mount a 64 KiB tmpfs here (needs root and mount permission): full-disk row not checked")
            }
            let line = try failure(["random-weights", mlpIR, "-o", "full/w.safetensors"])   // 66 KiB of weights
            XCTAssertEqual(contents("full"), [], "no partial file")
            return line
        },
        29: { [self] in
            try weights()
            XCTAssertEqual(try arcflow(["compile", mlpIR, "--weights", "w.safetensors", "-o", "m"]).status, 0)
            // The model's library (the cache also holds the prelude object, whose hash may sort first).
            let entry = contents("cache").first { !$0.hasPrefix(".") && FileManager.default.fileExists(atPath: "\(dir)/cache/\($0)/lib.so") }!
            try write("cache/\(entry)/lib.so", "garbage")
            let r = try arcflow(["compile", mlpIR, "--weights", "w.safetensors", "-o", "m", "-v"])
            XCTAssertEqual(r.status, 0, r.err)
            return r.err.split(separator: "\n").first { $0.contains("corrupted") }.map(String.init) ?? r.err
        },
        30: { [self] in
            try weights()
            XCTAssertEqual(try arcflow(["compile", mlpIR, "--weights", "w.safetensors", "-o", "m"]).status, 0)
            try write("m/model.so", "garbage")
            try writeSafeTensors([], to: "\(dir)/in.safetensors")
            return try failure(["run", "--model", "m", "--inputs", "in.safetensors", "-o", "o.safetensors"])
        },
        31: { [self] in
            // A compiler that hangs; the compile is killed (SIGKILL, no clean-up) while it waits.
            try weights()
            try write("slowcc", "#!/bin/sh\nif [ \"$1\" = --version ]; then echo 'slowcc 1.0'; exit 0; fi\nsleep 8\n")
            chmod("\(dir)/slowcc", 0o755)
            let p = Process()
            p.executableURL = URL(fileURLWithPath: CommandLine.arguments[0])
            var bin = URL(fileURLWithPath: CommandLine.arguments[0])
            while !FileManager.default.isExecutableFile(atPath: bin.appendingPathComponent("arcflow").path) && bin.path != "/" { bin.deleteLastPathComponent() }
            p.executableURL = bin.appendingPathComponent("arcflow")
            p.arguments = ["compile", mlpIR, "--weights", "w.safetensors", "-o", "m"]
            p.currentDirectoryURL = URL(fileURLWithPath: dir)
            p.environment = ProcessInfo.processInfo.environment.merging(["ARCFLOW_CC": "\(dir)/slowcc", "ARCFLOW_CACHE_DIR": "\(dir)/cache"]) { _, n in n }
            p.standardError = Pipe(); p.standardOutput = Pipe()
            try p.run()
            Thread.sleep(forTimeInterval: 2)
            kill(p.processIdentifier, SIGKILL)
            p.waitUntilExit()
            XCTAssertEqual(contents("cache").filter { !$0.hasPrefix(".") }, [], "no cache entry from a killed compile")
            try writeSafeTensors([], to: "\(dir)/in.safetensors")
            return try failure(["run", "--model", "m", "--inputs", "in.safetensors", "-o", "o.safetensors"])
        },
        32: { [self] in
            try weights()
            try write("fakecc", "#!/bin/sh\nif [ \"$1\" = --version ]; then echo 'fakecc 1.0'; exit 0; fi\necho 'fakecc: error: no thanks' >&2\nexit 3\n")
            chmod("\(dir)/fakecc", 0o755)
            let line = try failure(["compile", mlpIR, "--weights", "w.safetensors", "-o", "m"], env: ["ARCFLOW_CC": "\(dir)/fakecc"])
            XCTAssertFalse(FileManager.default.fileExists(atPath: "\(dir)/m/manifest.json"))
            return line.replacingOccurrences(of: dir + "/", with: "./")
        },
        33: { [self] in
            try weights()
            return try failure(["compile", mlpIR, "--weights", "w.safetensors", "-o", "m"], env: ["PATH": "/nonexistent"])
        },
        34: { [self] in try failure(["run", "--model", "nowhere", "--inputs", "in.safetensors", "-o", "o.safetensors"]) },
        35: { [self] in
            try weights()
            XCTAssertEqual(try arcflow(["compile", mlpIR, "--weights", "w.safetensors", "-o", "m"]).status, 0)
            try handMade("in.safetensors", header: #"{"x":{"dtype":"F32","shape":[8,64],"data_offsets":[0,2048]}}"#, data: [UInt8](repeating: 0, count: 1024))
            let line = try failure(["run", "--model", "m", "--inputs", "in.safetensors", "-o", "o.safetensors"])
            XCTAssertFalse(FileManager.default.fileExists(atPath: "\(dir)/o.safetensors"))
            return line
        },
    ]

    /// The table rows of README.md's "Bad input" section: number → message (between backticks).
    static func readmeRows() throws -> [Int: String] {
        let text = try String(contentsOfFile: "\(root)/README.md", encoding: .utf8)
        guard let start = text.range(of: "## Bad input") else { return [:] }
        var rows: [Int: String] = [:]
        for line in text[start.upperBound...].split(separator: "\n") {
            if line.hasPrefix("## ") { break }
            let cells = line.split(separator: "|", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
            guard cells.count >= 5, let n = Int(cells[1]) else { continue }
            var m = cells[3]
            // `message`, or ``` `` message `` ``` when the message itself holds a backtick.
            if m.hasPrefix("`` ") && m.hasSuffix(" ``") { m = String(m.dropFirst(3).dropLast(3)) } else if m.hasPrefix("`") && m.hasSuffix("`") { m = String(m.dropFirst().dropLast()) }
            rows[n] = m.replacingOccurrences(of: "\\|", with: "|")
        }
        return rows
    }

    /// `…` in a table message matches any text (paths of this machine's compiler and BLAS).
    func matches(_ pattern: String, _ s: String) -> Bool {
        let parts = pattern.components(separatedBy: "…")
        guard s.hasPrefix(parts[0]) else { return false }
        var rest = s.dropFirst(parts[0].count)
        for p in parts.dropFirst() {
            if p.isEmpty { continue }
            guard let r = rest.range(of: p) else { return false }
            rest = rest[r.upperBound...]
        }
        return parts.count == 1 ? rest.isEmpty : rest.isEmpty || parts.last!.isEmpty
    }

    func checkRow(_ n: Int) throws {
        let produced = try rows[n]!()
        XCTAssertFalse(produced.contains("\n"), "row \(n): \(produced)")
        if ProcessInfo.processInfo.environment["ARCFLOW_PRINT_TABLE"] != nil { print("ROW \(n)\t\(produced)") }
        let table = try Self.readmeRows()
        guard let want = table[n] else { return XCTFail("README's bad-input table has no row \(n); this test produced: \(produced)") }
        XCTAssertTrue(matches(want, produced), "row \(n): README says\n  \(want)\nthe program says\n  \(produced)")
    }

    func testTableHasARowPerTest() throws {
        XCTAssertEqual(Set(try Self.readmeRows().keys), Set(rows.keys))
        XCTAssertGreaterThanOrEqual(rows.count, 25)
    }

    func testRow01() throws { try checkRow(1) }
    func testRow02() throws { try checkRow(2) }
    func testRow03() throws { try checkRow(3) }
    func testRow04() throws { try checkRow(4) }
    func testRow05() throws { try checkRow(5) }
    func testRow06() throws { try checkRow(6) }
    func testRow07() throws { try checkRow(7) }
    func testRow08() throws { try checkRow(8) }
    func testRow09() throws { try checkRow(9) }
    func testRow10() throws { try checkRow(10) }
    func testRow11() throws { try checkRow(11) }
    func testRow12() throws { try checkRow(12) }
    func testRow13() throws { try checkRow(13) }
    func testRow14() throws { try checkRow(14) }
    func testRow15() throws { try checkRow(15) }
    func testRow16() throws { try checkRow(16) }
    func testRow17() throws { try checkRow(17) }
    func testRow18() throws { try checkRow(18) }
    func testRow19() throws { try checkRow(19) }
    func testRow20() throws { try checkRow(20) }
    func testRow21() throws { try checkRow(21) }
    func testRow22() throws { try checkRow(22) }
    func testRow23() throws { try checkRow(23) }
    func testRow24() throws { try checkRow(24) }
    func testRow25() throws { try checkRow(25) }
    func testRow26() throws { try checkRow(26) }
    func testRow27() throws { try checkRow(27) }
    func testRow28() throws { try checkRow(28) }
    func testRow29() throws { try checkRow(29) }
    func testRow30() throws { try checkRow(30) }
    func testRow31() throws { try checkRow(31) }
    func testRow32() throws { try checkRow(32) }
    func testRow33() throws { try checkRow(33) }
    func testRow34() throws { try checkRow(34) }
    func testRow35() throws { try checkRow(35) }
}
