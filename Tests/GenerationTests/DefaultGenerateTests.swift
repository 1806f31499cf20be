// `arcflow generate` without --model: the embedded default model from a tiny random folder
// (teacher exported, students untrained), through the CLI as a user runs it.

import DefaultModel
import Foundation
import Generation
import IR
import Imaging
import Runtime
import TestSupport
import XCTest

final class DefaultGenerateTests: XCTestCase {
    nonisolated(unsafe) static var folder: String?

    override class func tearDown() {
        if let f = folder { try? FileManager.default.removeItem(atPath: f) }
        folder = nil
        super.tearDown()
    }

    /// One tiny default folder for the class: the teacher (TeacherConfig.tiny, random), an
    /// untrained K = 2 "arcflow" student and a K = 1 "linear" one.
    func defaultFolder() throws -> String {
        if let f = Self.folder { return f }
        let dir = try makeTemporaryDirectory("default-folder")
        let c = TeacherConfig.tiny(batch: 1)
        // Teacher sampler defaults of 2 steps (not 28): the grid compiles the teacher unrolled.
        try DefaultModelExport.write(TeacherWeights.random(c, seed: 4), config: c, trainedSteps: "0",
                                     teacher: .init(steps: 2, guidance: 5, shift: 1), to: dir)
        let folder = try DefaultModelFolder.load(dir)
        try DefaultModelExport.writeInitialStudent(teacher: folder, components: 2, rank: 2, to: "\(dir)/arcflow")
        try DefaultModelExport.writeInitialStudent(teacher: folder, components: 1, rank: 2, to: "\(dir)/linear")
        Self.folder = dir
        return dir
    }

    func arcflow(_ args: [String], in dir: String, env: [String: String] = [:]) throws -> CommandResult {
        var e = ["ARCFLOW_CACHE_DIR": testCacheRoot, "ARCFLOW_DEFAULT_MODEL": try defaultFolder()]
        e.merge(env) { _, new in new }
        return try runArcflow(args + (args.first == "compile" ? [] : ["--threads", "1"]), in: dir, environment: e)
    }

    func parameters(_ path: String) throws -> String {
        pngText(try bytes(path))["parameters"] ?? ""
    }

    func testSameSeedSameImageAndSameNoiseAcrossVariants() throws {
        let work = try makeTemporaryDirectory("default-gen")
        defer { try? FileManager.default.removeItem(atPath: work) }
        let prompt = "a small red circle at the top left"
        var hashes: [String] = []
        for (name, flags) in [("arc", [String]()), ("teacher", ["--teacher", "--steps", "3"]), ("linear", ["--baseline", "linear"]),
                              ("arc3", ["--steps", "3"])] {
            let r = try arcflow(["generate", "--prompt", prompt, "--seed", "5", "-o", "\(name).png"] + flags, in: work)
            XCTAssertEqual(r.status, 0, r.err)
            XCTAssertTrue(r.err.contains("step 1/"), "progress lines: \(r.err)")
            let p = try parameters("\(work)/\(name).png")
            XCTAssertTrue(p.hasPrefix(prompt + "\n"), p)
            hashes.append(String(p.components(separatedBy: "Noise hash: ").last!.prefix(10)))
        }
        XCTAssertEqual(Set(hashes).count, 1, "the three variants (and a student at 3 NFE) start from the same noise: \(hashes)")
        XCTAssertTrue(try parameters("\(work)/arc3.png").contains("Steps: 3, Sampler: ArcFlow"))
        XCTAssertNotEqual(try Data(contentsOf: URL(fileURLWithPath: "\(work)/arc.png")), try Data(contentsOf: URL(fileURLWithPath: "\(work)/arc3.png")))
        let guided = try arcflow(["generate", "--prompt", prompt, "--guidance", "2", "-o", "g.png"], in: work)
        XCTAssertEqual(guided.status, 2, "a usage error")
        XCTAssertTrue(guided.err.contains("--guidance goes with --teacher"), guided.err)
        XCTAssertTrue(try parameters("\(work)/teacher.png").contains("CFG scale: 5.0"))
        // Another guidance runs the same compiled teacher (its scale is an input), and changes the image.
        let t2 = try arcflow(["generate", "--prompt", prompt, "--seed", "5", "--teacher", "--steps", "3", "--guidance", "2", "-o", "t2.png"], in: work)
        XCTAssertEqual(t2.status, 0, t2.err)
        func folder(_ err: String) -> String? { err.split(separator: "\n").first { $0.contains("ready in") }?.components(separatedBy: "(").last }
        let t5 = try arcflow(["generate", "--prompt", prompt, "--seed", "5", "--teacher", "--steps", "3", "-o", "t5.png"], in: work)
        XCTAssertNotNil(folder(t2.err), t2.err)
        XCTAssertEqual(folder(t2.err), folder(t5.err), "one compiled teacher for both scales")
        XCTAssertFalse(t2.err.contains("compiling") || t5.err.contains("compiling"), t2.err + t5.err)
        XCTAssertTrue(try parameters("\(work)/t2.png").contains("CFG scale: 2.0"))
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: "\(work)/t5.png")), try Data(contentsOf: URL(fileURLWithPath: "\(work)/teacher.png")))
        XCTAssertNotEqual(try Data(contentsOf: URL(fileURLWithPath: "\(work)/t2.png")), try Data(contentsOf: URL(fileURLWithPath: "\(work)/teacher.png")))
        XCTAssertTrue(try parameters("\(work)/arc.png").contains("Adapter: arcflow"))

        // Determinism: the same seed again gives the same bytes; another seed other noise.
        let again = try arcflow(["generate", "--prompt", prompt, "--seed", "5", "-o", "again.png"], in: work)
        XCTAssertEqual(again.status, 0, again.err)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: "\(work)/arc.png")), try Data(contentsOf: URL(fileURLWithPath: "\(work)/again.png")))
        XCTAssertEqual(try arcflow(["generate", "--prompt", prompt, "--seed", "6", "-o", "other.png"], in: work).status, 0)
        XCTAssertFalse(try parameters("\(work)/other.png").contains("Noise hash: \(hashes[0])"))
        XCTAssertNotEqual(try Data(contentsOf: URL(fileURLWithPath: "\(work)/arc.png")), try Data(contentsOf: URL(fileURLWithPath: "\(work)/other.png")))
    }

    func testPromptsFileAndGrid() throws {
        let work = try makeTemporaryDirectory("default-prompts")
        defer { try? FileManager.default.removeItem(atPath: work) }
        // A byte-order mark and CRLF line ends (a Windows editor's file): two prompts all the same.
        try "\u{FEFF}a red circle\r\na blue square to the left of a green circle\r\n".write(toFile: "\(work)/p.txt", atomically: true, encoding: .utf8)
        let r = try arcflow(["generate", "--prompts", "p.txt", "--seed", "3", "-o", "imgs"], in: work)
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertTrue(try parameters("\(work)/imgs/00001.png").contains("Seed: 4,"))
        // Line i uses seed S + i: a seed with no room for line 1 is refused before anything is written.
        for command in ["--prompts", "--grid"] {
            let o = try arcflow(["generate", command, "p.txt", "--seed", String(Int.max), "-o", command == "--grid" ? "big.png" : "big"], in: work)
            assertOneLineError(o, contains: "leaves no room for 2 prompts")
            XCTAssertFalse(FileManager.default.fileExists(atPath: "\(work)/big"))
            XCTAssertFalse(FileManager.default.fileExists(atPath: "\(work)/big.png"))
        }
        let g = try arcflow(["generate", "--grid", "p.txt", "--seed", "3", "-o", "grid.png"], in: work)
        XCTAssertEqual(g.status, 0, g.err)
        let ihdr = pngChunks(try bytes("\(work)/grid.png")).first { $0.type == "IHDR" }!.body
        func be(_ i: Int) -> Int { ihdr[i..<(i + 4)].reduce(0) { $0 << 8 | Int($1) } }
        // 3 columns (teacher, ArcFlow, linear) and 2 rows of 64×64 images at ×2 with 4 px gaps, after
        // the labels: a left band as wide as a cell (the long prompt wraps to it) and a header of one
        // line (9 px, 1 px under it).
        XCTAssertEqual(be(0), (4 + 128) + 4 + 3 * (128 + 4))
        XCTAssertEqual(be(4), (4 + 9 + 1) + 4 + 2 * (128 + 4))
    }

    /// report-default on the tiny folder: a table row per model, every category, report.md written.
    func testReportDefault() throws {
        let work = try makeTemporaryDirectory("default-report")
        defer { try? FileManager.default.removeItem(atPath: work) }
        let r = try arcflow(["report-default", "-o", "rep", "--prompts", "1"], in: work)
        XCTAssertEqual(r.status, 0, r.err)
        let table = try String(contentsOfFile: "\(work)/rep/report.md", encoding: .utf8)
        for needle in ["| teacher (Euler, CFG 5.0) | 2 × 2", "| ArcFlow student (K = 2) | 2 |", "| linear student (K = 1) | 2 |",
                       "one object", "two objects", "held-out pairs", "/1) |"] where !table.contains(needle) {
            XCTFail("'\(needle)' not in:\n\(table)")
        }
        XCTAssertTrue(FileManager.default.fileExists(atPath: "\(work)/rep/teacher.png"))
        XCTAssertTrue(FileManager.default.fileExists(atPath: "\(work)/rep/grid.png"))
        XCTAssertTrue(table.contains("| model | fails | count | identity |"), table)
        let csv = try String(contentsOfFile: "\(work)/rep/verdicts.csv", encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(csv.count, 4, "a header and one row per prompt")
        // The students at 3 NFE: the NFE column says so.
        let r3 = try arcflow(["report-default", "-o", "rep3", "--prompts", "1", "--student-steps", "3"], in: work)
        XCTAssertEqual(r3.status, 0, r3.err)
        let table3 = try String(contentsOfFile: "\(work)/rep3/report.md", encoding: .utf8)
        XCTAssertTrue(table3.contains("| ArcFlow student (K = 2) | 3 |") && table3.contains("| linear student (K = 1) | 3 |"), table3)
    }

    func testGrammarErrorAndMissingFolder() throws {
        let work = try makeTemporaryDirectory("default-errors")
        defer { try? FileManager.default.removeItem(atPath: work) }
        let bad = try arcflow(["generate", "--prompt", "a red hexagon", "-o", "x.png"], in: work)
        assertOneLineError(bad, contains: "hexagon")
        XCTAssertTrue(bad.err.contains("circle"), "lists what was expected: \(bad.err)")
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(work)/x.png"))

        let missing = try arcflow(["generate", "--prompt", "a red circle", "-o", "x.png"], in: work,
                                  env: ["ARCFLOW_DEFAULT_MODEL": "\(work)/nowhere"])
        assertOneLineError(missing, contains: "no embedded default model at \(work)/nowhere")
        XCTAssertTrue(missing.err.contains("train-default"), missing.err)

        let usage = try arcflow(["generate", "--prompt", "a red circle", "--baseline", "cubic", "-o", "x.png"], in: work)
        XCTAssertEqual(usage.status, 2, usage.err)
    }

    /// `train-default`'s shape options fail before anything is compiled: a patch the pixel layout
    /// cannot take, and a resumed run asked for another shape than its own weights have.
    func testTrainDefaultShapeErrors() throws {
        let work = try makeTemporaryDirectory("train-shape")
        defer { try? FileManager.default.removeItem(atPath: work) }
        assertOneLineError(try arcflow(["train-default", "-o", "run", "--patch", "6"], in: work), contains: "--patch 6")
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(work)/run/init.safetensors"))
        let c = TeacherConfig.standard()
        try FileManager.default.createDirectory(atPath: "\(work)/old", withIntermediateDirectories: true)
        let zeros = TeacherWeights.layout(c).reduce(into: [String: Tensor]()) {
            $0[$1.name] = Tensor(.f32($1.shape), [Float](repeating: 0, count: $1.shape.reduce(1, *)))
        }
        try TeacherWeights.write(zeros, to: "\(work)/old/init.safetensors")
        try TeacherWeights.write([:], to: "\(work)/old/state.safetensors")
        let resumed = try arcflow(["train-default", "-o", "old", "--resume", "--width", "256"], in: work)
        assertOneLineError(resumed, contains: "a resumed run keeps its shape")
        XCTAssertTrue(resumed.err.contains("patch 8, width 192, 4 double + 0 single blocks"), resumed.err)
    }

    /// A student adapter folder through `compile --transformer … --adapter …` and `generate
    /// --embeddings`: undistilled (zero LoRA B, heads from the teacher, γ = 0) its 2 arc steps are
    /// the unguided teacher's 2 Euler steps on the same schedule (φ(0) is 1.00005: the reference's
    /// clamp), so the two latents agree; K = 1 has no rate layer and agrees exactly up to rounding.
    func testStudentAdapterThroughCompileAndGenerate() throws {
        let work = try makeTemporaryDirectory("default-compile")
        defer { try? FileManager.default.removeItem(atPath: work) }
        let dir = try defaultFolder()
        var rng = SeededGenerator(seed: 8)
        try writeSafeTensors([
            TensorRecord(name: "prompt_embeds", dtype: .f32, shape: [1, 12, 16], payload: .floats(rng.normals(12 * 16))),
            TensorRecord(name: "pooled_prompt_embeds", dtype: .f32, shape: [1, 16], payload: .floats(rng.normals(16))),
        ], to: "\(work)/e.safetensors")
        func latents(_ name: String, _ flags: [String]) throws -> Tensor {
            let c = try arcflow(["compile", "--transformer", "\(dir)/transformer", "--latent-size", "8x8", "--text-tokens", "12",
                                 "--cache-dir", testCacheRoot, "-o", name] + flags, in: work)
            XCTAssertEqual(c.status, 0, c.err)
            let g = try arcflow(["generate", "--model", name, "--embeddings", "e.safetensors", "--seed", "2", "--output-latents", "\(name).safetensors"], in: work)
            XCTAssertEqual(g.status, 0, g.err)
            return try SafeTensorsStore(path: "\(work)/\(name).safetensors").tensor("latents")
        }
        let teacher = try latents("teacher", ["--sampler", "euler", "--steps", "2", "--shift", "1"])
        let arc = try latents("arc", ["--adapter", "\(dir)/arcflow"])
        let linear = try latents("linear", ["--adapter", "\(dir)/linear"])
        XCTAssertLessThan(relativeL2(arc, teacher), 1e-3)
        XCTAssertLessThan(relativeL2(linear, teacher), 1e-4)
        XCTAssertGreaterThan(relativeL2(teacher, Tensor(teacher.type, seededNoise(teacher.type, seed: 2).data)), 1e-2)

        // CFG belongs to the teacher's Euler sampler, and needs negative embeddings.
        let arcCFG = try arcflow(["compile", "--transformer", "\(dir)/transformer", "--adapter", "\(dir)/arcflow", "--latent-size", "8x8",
                                  "--text-tokens", "12", "--true-cfg-scale", "3", "-o", "bad"], in: work)
        assertOneLineError(arcCFG, contains: "--true-cfg-scale needs --sampler euler")
        // FluxPipeline guides only when true_cfg_scale > 1; a scale it would ignore is refused.
        let weak = try arcflow(["compile", "--transformer", "\(dir)/transformer", "--sampler", "euler", "--latent-size", "8x8",
                                "--text-tokens", "12", "--true-cfg-scale", "1", "-o", "bad"], in: work)
        assertOneLineError(weak, contains: "--true-cfg-scale must be greater than 1, got 1.0")
        let cfg = try arcflow(["compile", "--transformer", "\(dir)/transformer", "--sampler", "euler", "--steps", "2", "--shift", "1", "--latent-size", "8x8",
                               "--text-tokens", "12", "--true-cfg-scale", "3", "--cache-dir", testCacheRoot, "-o", "cfg"], in: work)
        XCTAssertEqual(cfg.status, 0, cfg.err)
        let noNegative = try arcflow(["generate", "--model", "cfg", "--embeddings", "e.safetensors", "--seed", "2", "--output-latents", "l.safetensors"], in: work)
        assertOneLineError(noNegative, contains: "negative_prompt_embeds")
        // --negative-embeddings: a file made for --embeddings (prompt_embeds, pooled_prompt_embeds) is
        // the negative prompt; the prompt itself as the negative makes FluxPipeline's u_neg + s·(u − u_neg)
        // the unguided teacher's prediction exactly. The same negatives inside e.safetensors agree.
        let own = try arcflow(["generate", "--model", "cfg", "--embeddings", "e.safetensors", "--negative-embeddings", "e.safetensors",
                               "--seed", "2", "--output-latents", "own.safetensors"], in: work)
        XCTAssertEqual(own.status, 0, own.err)
        let ownLatents = try SafeTensorsStore(path: "\(work)/own.safetensors").tensor("latents")
        XCTAssertLessThan(relativeL2(ownLatents, teacher), 1e-6)
        // The scale is read at run time: another one changes nothing here (u_neg = u), and a model
        // without true CFG refuses it in one line.
        let scaled = try arcflow(["generate", "--model", "cfg", "--embeddings", "e.safetensors", "--negative-embeddings", "e.safetensors",
                                  "--true-cfg-scale", "7", "--seed", "2", "--output-latents", "scaled.safetensors"], in: work)
        XCTAssertEqual(scaled.status, 0, scaled.err)
        XCTAssertLessThan(relativeL2(try SafeTensorsStore(path: "\(work)/scaled.safetensors").tensor("latents"), teacher), 1e-6)
        assertOneLineError(try arcflow(["generate", "--model", "teacher", "--embeddings", "e.safetensors", "--true-cfg-scale", "3", "--seed", "2",
                                        "--output-latents", "l.safetensors"], in: work), contains: "takes no true-CFG scale at run time")
        let e = try SafeTensorsStore(path: "\(work)/e.safetensors")
        try writeSafeTensors(try ["prompt_embeds", "pooled_prompt_embeds"].flatMap { name -> [TensorRecord] in
            let t = try e.tensor(name)
            return [TensorRecord(name: name, dtype: .f32, shape: t.shape, payload: .floats(t.data)),
                    TensorRecord(name: "negative_" + name, dtype: .f32, shape: t.shape, payload: .floats(t.data))]
        }, to: "\(work)/both.safetensors")
        let inside = try arcflow(["generate", "--model", "cfg", "--embeddings", "both.safetensors", "--seed", "2", "--output-latents", "inside.safetensors"], in: work)
        XCTAssertEqual(inside.status, 0, inside.err)
        XCTAssertTrue(try SafeTensorsStore(path: "\(work)/inside.safetensors").tensor("latents").data == ownLatents.data)
        assertOneLineError(try arcflow(["generate", "--model", "cfg", "--embeddings", "both.safetensors", "--negative-embeddings", "missing.safetensors",
                                        "--seed", "2", "--output-latents", "l.safetensors"], in: work), contains: "missing.safetensors")
    }
}
