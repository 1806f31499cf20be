// Acceptance: the tiny diffusers FluxPipeline fixture (Tests/ArcFlowGraphsTests/Fixtures/pipeline) compiled
// into a pipeline folder, then prompt → image through the library and through the arcflow binary, against
// FluxPipeline's own images; the ArcFlow adapter fixture (…/pipeline-adapter) against the reference sampler;
// bad inputs fail with one line and leave no output behind.

import Foundation
import Generation
import IR
import Imaging
import Runtime
import TestSupport
import XCTest

let fixtureRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .appendingPathComponent("ArcFlowGraphsTests/Fixtures").path
let pipelineFixture = "\(fixtureRoot)/pipeline"
/// The same pipeline as diffusers 0.42.1 / transformers 5.25.0 save it: the CLIP tokenizer as tokenizer.json
/// alone, CLIPTextModel's keys without `text_model.`, other random weights and T5 ids (its own references).
let tf5Fixture = "\(fixtureRoot)/pipeline-tf5"
let adapterFixture = "\(fixtureRoot)/pipeline-adapter"
let pipelineReference = "\(pipelineFixture)/reference.safetensors"
/// Same size and text length as the fixture's references.
let sizeFlags = ["--height", "48", "--width", "80", "--text-tokens", "32"]

/// Compiles are the slow part (~40 s each on an idle machine): each pipeline is compiled once per
/// test process and shared by every test; the library cache makes reruns fast.
enum Compiled {
    static let root = try! makeTemporaryDirectory("generation-tests")
    /// The teacher (Euler, 4 steps, the scheduler config's dynamic shifting), through the library.
    static func compileTeacher(of fixture: String, into name: String) throws -> String {
        var o = PipelineCompileOptions(height: 48, width: 80)
        o.steps = 4
        o.textTokens = 32
        o.compile.cacheRoot = testCacheRoot
        try PipelineCompiler.compile(pipeline: fixture, adapter: nil, options: o, output: "\(root)/\(name)")
        return "\(root)/\(name)"
    }
    static let teacher = Result<String, Error> { try compileTeacher(of: pipelineFixture, into: "teacher") }
    static let teacherTF5 = Result<String, Error> { try compileTeacher(of: tf5Fixture, into: "teacher-tf5") }
    /// ArcFlow (the adapter fixture, default 2 steps, shift 3.2, guidance 3.5), through the CLI.
    static let arc = Result<String, Error> {
        let r = try runArcflow(["compile", "--pipeline", pipelineFixture, "--adapter", adapterFixture, "--cache-dir", testCacheRoot,
                                "-o", "\(root)/arc"] + sizeFlags, in: root)
        guard r.status == 0 else { throw ArcError("compile --adapter failed: \(r.err)") }
        return "\(root)/arc"
    }
}

/// PNG chunks (type, body) after the signature; CRCs are the Imaging tests' business.
func pngChunks(_ d: [UInt8]) -> [(type: String, body: [UInt8])] {
    var out: [(String, [UInt8])] = [], i = 8
    while i + 12 <= d.count {
        let n = d[i..<(i + 4)].reduce(0) { $0 << 8 | Int($1) }
        out.append((String(decoding: d[(i + 4)..<(i + 8)], as: UTF8.self), Array(d[(i + 8)..<(i + 8 + n)])))
        i += 12 + n
    }
    return out
}

/// The tEXt chunks of a PNG file as key → text.
func pngText(_ d: [UInt8]) -> [String: String] {
    var t: [String: String] = [:]
    for c in pngChunks(d) where c.type == "tEXt" {
        let z = c.body.firstIndex(of: 0)!
        t[String(decoding: c.body[..<z], as: UTF8.self)] = String(bytes: c.body[(z + 1)...], encoding: .isoLatin1)
    }
    return t
}

/// The compressed pixel stream: the encoder is deterministic, so equal IDAT bytes mean equal pixels
/// without an inflate in the tests.
func idat(_ d: [UInt8]) -> [UInt8] { pngChunks(d).filter { $0.type == "IDAT" }.flatMap(\.body) }

func bytes(_ path: String) throws -> [UInt8] { [UInt8](try Data(contentsOf: URL(fileURLWithPath: path))) }

func fixturePrompts(_ fixture: String = pipelineFixture) throws -> [String] {
    let json = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: "\(fixture)/case.json"))) as! [String: Any]
    return json["prompts"] as! [String]
}

final class PipelineEndToEndTests: XCTestCase {
    let ref = try! SafeTensorsStore(path: pipelineReference)
    var work = ""

    override func setUpWithError() throws { work = try makeTemporaryDirectory("generation") }
    override func tearDown() { try? FileManager.default.removeItem(atPath: work) }
    override class func tearDown() { try? FileManager.default.removeItem(atPath: Compiled.root) }

    func writeTensor(_ name: String, _ t: Tensor, to path: String) throws {
        try writeSafeTensors([TensorRecord(name: name, dtype: .f32, shape: t.shape, payload: .floats(t.data))], to: path)
    }

    func assertImage(_ got: Image8, matches key: String, in path: String = pipelineReference, _ label: String,
                     file: StaticString = #filePath, line: UInt = #line) throws {
        let want = try readUInt8Tensor(path, key)
        XCTAssertEqual(want.shape, [1, got.height, got.width, 3], file: file, line: line)
        let (bad, worst) = compareRGB8(got.pixels, want.data)
        print("\(label): uint8 channels off by > 1: \(bad * 100)%, max difference \(worst)")
        XCTAssertLessThanOrEqual(bad, 0.001, label, file: file, line: line)
    }

    // MARK: library

    /// Tokenize, encode, sample and decode a compiled teacher through the library against its fixture's
    /// references: token ids exactly, final latents, FluxPipeline's uint8 images.
    func checkTeacher(_ compiled: Result<String, Error>, fixture: String, _ label: String) throws {
        let path = "\(fixture)/reference.safetensors"
        let ref = try SafeTensorsStore(path: path)
        let p = try CompiledPipeline(folder: try compiled.get(), threads: 2)
        XCTAssertEqual([p.manifest.sampler, "\(p.manifest.steps)", "\(p.manifest.textTokens)"], ["euler", "4", "32"])
        XCTAssertEqual(p.manifest.guidance, 3.5)
        for (a, b) in zip(p.manifest.sigmas, try ref.tensor("e2e_sigmas").data) { XCTAssertEqual(Float(a), b, accuracy: 2e-7) }
        let prompts = try fixturePrompts(fixture)
        for i in 0..<4 {
            let t = try p.tokenize(prompts[i])
            XCTAssertEqual(t.clip, try ref.tensor("clip_input_ids_\(i)").data.map { Int($0) }, "\(label): CLIP ids \(i)")
            XCTAssertEqual(t.t5, try ref.tensor("t5_input_ids_\(i)").data.map { Int($0) }, "\(label): T5 ids \(i)")
        }
        for i in 0..<2 {
            var evaluations = 0
            let latents = try p.sample(try p.encode(prompts[i]), noise: try ref.tensor("e2e_noise")) { evaluations = $0 }
            XCTAssertEqual(evaluations, 4)
            XCTAssertLessThan(relativeL2(latents, try ref.tensor("e2e_latents_\(i)")), 1e-3, "\(label): latents \(i)")
            try assertImage(try p.decode(latents), matches: "e2e_image_u8_\(i)", in: path, "\(label) prompt \(i)")
        }
    }

    func testLibraryTokenizeEncodeSampleDecode() throws {
        try checkTeacher(Compiled.teacher, fixture: pipelineFixture, "library")
    }

    /// A folder that the current libraries wrote (transformers 5 changed both the tokenizer files and
    /// the CLIP keys), compiled and run the same way.
    func testTransformers5PipelineFolder() throws {
        try checkTeacher(Compiled.teacherTF5, fixture: tf5Fixture, "transformers 5")
    }

    // MARK: CLI

    func testGenerateWithNoiseFile() throws {
        let model = try Compiled.teacher.get()
        try writeTensor("noise", try ref.tensor("e2e_noise"), to: "\(work)/noise.safetensors")
        let prompt = try fixturePrompts()[1]
        let r = try runArcflow(["generate", "--model", model, "--prompt", prompt, "--noise", "noise.safetensors", "-o", "out.png",
                                "--output-latents", "latents.safetensors", "--threads", "2"], in: work)
        XCTAssertEqual(r.status, 0, r.err)
        let png = try bytes("\(work)/out.png")
        XCTAssertEqual(Array(png.prefix(8)), [137, 80, 78, 71, 13, 10, 26, 10])
        let parameters = try XCTUnwrap(pngText(png)["parameters"])
        for needle in [prompt, "Seed: noise file noise.safetensors", "Sampler: Euler (flow matching)", "Steps: 4", "Size: 80x48", "Guidance: 3.5"] {
            XCTAssertTrue(parameters.contains(needle), "'\(needle)' not in: \(parameters)")
        }
        // The pixels: the latents decoded by the library match the reference and re-encode to the same IDAT.
        let latents = try SafeTensorsStore(path: "\(work)/latents.safetensors").tensor("latents")
        XCTAssertLessThan(relativeL2(latents, try ref.tensor("e2e_latents_1")), 1e-3)
        let image = try CompiledPipeline(folder: model, threads: 2).decode(latents)
        try assertImage(image, matches: "e2e_image_u8_1", "CLI prompt 1")
        XCTAssertEqual(idat(png), idat([UInt8](PNG.encode(image))), "the PNG holds the decoded latents")

        // Another embedded guidance, at run time: the same folder, other latents, and the PNG says which.
        let g = try runArcflow(["generate", "--model", model, "--prompt", prompt, "--noise", "noise.safetensors", "-o", "g.png",
                                "--output-latents", "g.safetensors", "--guidance", "4.5", "--threads", "2"], in: work)
        XCTAssertEqual(g.status, 0, g.err)
        XCTAssertTrue(try XCTUnwrap(pngText(try bytes("\(work)/g.png"))["parameters"]).contains("Guidance: 4.5"))
        XCTAssertGreaterThan(relativeL2(try SafeTensorsStore(path: "\(work)/g.safetensors").tensor("latents"), latents), 1e-3)
    }

    func testPromptsFileReportsEmptyLineAndShards() throws {
        let model = try Compiled.teacher.get()
        try "a photo of a cat\n\nA red fox\n".write(toFile: "\(work)/prompts.txt", atomically: true, encoding: .utf8)
        let r = try runArcflow(["generate", "--model", model, "--prompts", "prompts.txt", "-o", "all", "--seed", "7", "--threads", "2"], in: work)
        XCTAssertNotEqual(r.status, 0)
        XCTAssertEqual(r.err.split(separator: "\n").filter { $0.contains("prompts.txt:2: ") }.count, 1, r.err)
        XCTAssertFalse(r.err.contains("prompts.txt:1:") || r.err.contains("prompts.txt:3:"), r.err)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: "\(work)/all").sorted(), ["00000.png", "00002.png"])
        // Line i uses seed S + i: the seed in the PNG says which.
        XCTAssertTrue(pngText(try bytes("\(work)/all/00002.png"))["parameters"]!.contains("A red fox\nSteps: 4, Sampler: Euler (flow matching), Guidance: 3.5, Seed: 9,"))

        try "one\ntwo\nthree\nfour\n".write(toFile: "\(work)/four.txt", atomically: true, encoding: .utf8)
        let s = try runArcflow(["generate", "--model", model, "--prompts", "four.txt", "-o", "odd", "--shard", "1/2", "--threads", "2"], in: work)
        XCTAssertEqual(s.status, 0, s.err)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: "\(work)/odd").sorted(), ["00001.png", "00003.png"])
    }

    func testTokenizeEncodeDecodeCommands() throws {
        let model = try Compiled.teacher.get()
        let prompt = try fixturePrompts()[0]
        let t = try runArcflow(["tokenize", "--model", model, "--prompt", prompt], in: work)
        XCTAssertEqual(t.status, 0, t.err)
        let json = try JSONDecoder().decode([String: [Int]].self, from: Data(t.out.utf8))
        XCTAssertEqual(json["clip"], try ref.tensor("clip_input_ids_0").data.map { Int($0) })
        XCTAssertEqual(json["t5"], try ref.tensor("t5_input_ids_0").data.map { Int($0) })

        let e = try runArcflow(["encode", "--model", model, "--prompt", prompt, "-o", "e.safetensors", "--threads", "2"], in: work)
        XCTAssertEqual(e.status, 0, e.err)
        let embeddings = try SafeTensorsStore(path: "\(work)/e.safetensors")
        XCTAssertEqual(embeddings.type(of: "prompt_embeds")?.shape, [1, 32, 32])
        XCTAssertEqual(embeddings.type(of: "pooled_prompt_embeds")?.shape, [1, 32])
        XCTAssertLessThan(relativeL2(try embeddings.tensor("prompt_embeds"), try ref.tensor("t5_hidden_0")), 1e-4)
        XCTAssertLessThan(relativeL2(try embeddings.tensor("pooled_prompt_embeds"), try ref.tensor("clip_pooled_0")), 1e-4)

        try writeTensor("latents", try ref.tensor("e2e_latents_0"), to: "\(work)/l.safetensors")
        let d = try runArcflow(["decode", "--model", model, "--latents", "l.safetensors", "-o", "d.png", "--threads", "2"], in: work)
        XCTAssertEqual(d.status, 0, d.err)
        let png = try bytes("\(work)/d.png")
        XCTAssertEqual(Array(png.prefix(8)), [137, 80, 78, 71, 13, 10, 26, 10])
        let image = try CompiledPipeline(folder: model, threads: 2).decode(try ref.tensor("e2e_latents_0"))
        try assertImage(image, matches: "e2e_image_u8_0", "decode of the reference latents")
        XCTAssertEqual(idat(png), idat([UInt8](PNG.encode(image))))
    }

    /// compile --adapter, then generate from the fixture's noise: the reference ArcFlow sampler's image.
    func testArcFlowAdapterEndToEnd() throws {
        let model = try Compiled.arc.get()
        let p = try CompiledPipeline(folder: model, threads: 2)
        XCTAssertEqual([p.manifest.sampler, "\(p.manifest.steps)"], ["arc", "2"])
        let adapterRef = try SafeTensorsStore(path: "\(adapterFixture)/reference.safetensors")
        for (a, b) in zip(p.manifest.sigmas, try adapterRef.tensor("arc_sigmas").data) { XCTAssertEqual(Float(a), b, accuracy: 1e-6) }
        try writeTensor("noise", try ref.tensor("e2e_noise"), to: "\(work)/noise.safetensors")
        let r = try runArcflow(["generate", "--model", model, "--prompt", try fixturePrompts()[0], "--noise", "noise.safetensors",
                                "-o", "arc.png", "--output-latents", "l.safetensors", "--threads", "2"], in: work)
        XCTAssertEqual(r.status, 0, r.err)
        let png = try bytes("\(work)/arc.png")
        let parameters = try XCTUnwrap(pngText(png)["parameters"])
        XCTAssertTrue(parameters.contains("Steps: 2, Sampler: ArcFlow") && parameters.contains("Adapter: pipeline-adapter"), parameters)
        let latents = try SafeTensorsStore(path: "\(work)/l.safetensors").tensor("latents")
        let e = relativeL2(latents, try adapterRef.tensor("arc_latents_0"))
        print("ArcFlow adapter: latents relative L2 \(e)")
        XCTAssertLessThan(e, 1e-3)
        let image = try p.decode(latents)
        try assertImage(image, matches: "arc_image_u8_0", in: "\(adapterFixture)/reference.safetensors", "ArcFlow adapter prompt 0")
        XCTAssertEqual(idat(png), idat([UInt8](PNG.encode(image))))
    }

    // MARK: bad input: one line on stderr, exit 1, nothing written

    func brokenCopy(_ edit: (String) throws -> Void) throws -> String {
        let dir = "\(work)/pipe"
        try FileManager.default.copyItem(atPath: pipelineFixture, toPath: dir)
        try edit(dir)
        return dir
    }

    func editJSON(_ path: String, _ edit: (inout [String: Any]) -> Void) throws {
        var json = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as! [String: Any]
        edit(&json)
        try JSONSerialization.data(withJSONObject: json).write(to: URL(fileURLWithPath: path))
    }

    func assertCompileFails(_ dir: String, contains needles: [String], file: StaticString = #filePath, line: UInt = #line) throws {
        let r = try runArcflow(["compile", "--pipeline", dir, "--cache-dir", testCacheRoot, "-o", "out"] + sizeFlags, in: work)
        for n in needles { assertOneLineError(r, contains: n, file: file, line: line) }
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(work)/out"), "no output folder", file: file, line: line)
    }

    /// A VAE of three levels (×4, not FLUX.1's ×8): the sampler's latents are 1/4 of the image, as
    /// FluxPipeline's vae_scale_factor makes them, so the decoder reads what the sampler writes.
    /// (The fixture's decoder minus its last level: the unused tensors stay in the file.)
    func testVAEOfAnotherScaleFactor() throws {
        let dir = try brokenCopy { d in
            try self.editJSON("\(d)/vae/config.json") { j in
                j["block_out_channels"] = [16, 32, 32]
                j["down_block_types"] = Array(repeating: "DownEncoderBlock2D", count: 3)
                j["up_block_types"] = Array(repeating: "UpDecoderBlock2D", count: 3)
            }
        }
        let bad = try runArcflow(["compile", "--pipeline", dir, "--cache-dir", testCacheRoot, "-o", "out", "--height", "36", "--width", "48"], in: work)
        assertOneLineError(bad, contains: "multiples of 8 (this VAE's latents are 1/4 of the image")
        let c = try runArcflow(["compile", "--pipeline", dir, "--cache-dir", testCacheRoot, "--sampler", "euler", "--steps", "2",
                                "--height", "32", "--width", "48", "--text-tokens", "32", "-o", "out"], in: work)
        XCTAssertEqual(c.status, 0, c.err)
        let manifest = try String(contentsOfFile: "\(work)/out/sampler/manifest.json", encoding: .utf8)
        XCTAssertTrue(manifest.contains("\"latent_height\" : \"8\"") && manifest.contains("\"latent_width\" : \"12\""), manifest)
        let g = try runArcflow(["generate", "--model", "out", "--prompt", "a photo of a cat", "--seed", "0", "-o", "x.png", "--threads", "1"], in: work)
        XCTAssertEqual(g.status, 0, g.err)
        let ihdr = pngChunks(try bytes("\(work)/x.png")).first { $0.type == "IHDR" }!.body
        XCTAssertEqual(Array(ihdr[0..<8]), [0, 0, 0, 48, 0, 0, 0, 32])
    }

    func testCompileMissingSubfolder() throws {
        let dir = try brokenCopy { try FileManager.default.removeItem(atPath: "\($0)/vae") }
        try assertCompileFails(dir, contains: ["\(dir)/vae", "AutoencoderKL"])
    }

    func testCompileTokenizerOfAnotherFormat() throws {
        let dir = try brokenCopy { d in
            try self.editJSON("\(d)/tokenizer_2/tokenizer.json") { j in
                var m = j["model"] as! [String: Any]
                m["type"] = "BPE"
                j["model"] = m
            }
        }
        try assertCompileFails(dir, contains: ["tokenizer_2/tokenizer.json", "BPE"])
    }

    func testCompileUnknownFeedForwardProj() throws {
        let dir = try brokenCopy { d in try self.editJSON("\(d)/text_encoder_2/config.json") { $0["feed_forward_proj"] = "gated-softsign" } }
        try assertCompileFails(dir, contains: ["text_encoder_2/config.json", "feed_forward_proj", "gated-softsign"])
    }

    func testGenerateUnwritableOutput() throws {
        let model = try Compiled.teacher.get()
        // Root ignores permission bits, so the unwritable folder is one under a regular file.
        try Data("x".utf8).write(to: URL(fileURLWithPath: "\(work)/regular"))
        for (out, folder) in [("/nonexistent-dir/x.png", "/nonexistent-dir"), ("\(work)/regular/x.png", "\(work)/regular")] {
            let r = try runArcflow(["generate", "--model", model, "--prompt", "a cat", "--seed", "1", "-o", out], in: work)
            assertOneLineError(r, contains: "cannot write \(out): folder \(folder)")
            XCTAssertFalse(FileManager.default.fileExists(atPath: out))
        }
        let d = try runArcflow(["decode", "--model", model, "--latents", "l.safetensors", "-o", "/nonexistent-dir/x.png"], in: work)
        assertOneLineError(d, contains: "cannot write /nonexistent-dir/x.png")
    }

    func testPromptFileWithOnlyAnEmptyLine() throws {
        let model = try Compiled.teacher.get()
        try "  \n".write(toFile: "\(work)/blank.txt", atomically: true, encoding: .utf8)
        let r = try runArcflow(["generate", "--model", model, "--prompts", "blank.txt", "-o", "out", "--threads", "2"], in: work)
        XCTAssertEqual(r.status, 1, r.err)
        XCTAssertTrue(r.err.contains("blank.txt:1: empty line"), r.err)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: "\(work)/out"), [], "no PNG")
    }
}
