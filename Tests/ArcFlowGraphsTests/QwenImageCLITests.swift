// compile --transformer on Qwen-Image folders and generate --embeddings [--negative-embeddings]
// from the command line: the dumps (fuse-lora, fold-arc-integral), parity of the written latents,
// and the one-line errors.

import ArcFlowGraphs
import Foundation
import IR
import Runtime
import TestSupport
import XCTest

/// Matmuls that multiply an activation (anything computed from a graph input) by a LoRA matrix,
/// i.e. the unfused x·Aᵀ and (x·Aᵀ)·Bᵀ; after fuse-lora only weight-only B·A products remain.
func activationLoRAMatmuls(_ g: Graph) -> Int {
    var fromInput = [Bool](repeating: false, count: g.nodes.count)
    var isLoRA = fromInput
    for (i, n) in g.nodes.enumerated() {
        fromInput[i] = n.op == .input || n.operands.contains { fromInput[$0] }
        isLoRA[i] = (n.op == .weight && n.key!.contains(".lora_")) || (n.op == .convert && isLoRA[n.operands[0]])
    }
    return g.nodes.filter { n in n.op == .matmul && n.operands.contains { fromInput[$0] } && n.operands.contains { isLoRA[$0] } }.count
}

final class QwenImageCLITests: XCTestCase {
    var dir = ""
    let a = "\(fixtures)/qwen-a", b = "\(fixtures)/qwen-b"

    override func setUpWithError() throws {
        dir = try makeTemporaryDirectory("arcflow-qwen-cli")
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    func arcflow(_ args: [String]) throws -> CommandResult {
        try runArcflow(args, in: dir, environment: ["ARCFLOW_CACHE_DIR": testCacheRoot])
    }

    func compileA(_ extra: [String]) throws -> CommandResult {
        try arcflow(["compile", "--transformer", "\(a)/transformer", "--height", "48", "--width", "80", "--text-tokens", "7"] + extra)
    }

    func reference(_ key: String, _ config: String? = nil) throws -> Tensor {
        try SafeTensorsStore(path: "\(config ?? a)/reference.safetensors").tensor(key)
    }

    func latents(_ file: String) throws -> Tensor { try SafeTensorsStore(path: "\(dir)/\(file)").tensor("latents") }

    /// The student: 2 and 3 NFE, dumps after every pass, latents against the fixture.
    func testArcCompileDumpsAndGenerate() throws {
        for (steps, k) in [(2, 16), (3, 8)] {
            let c = try compileA(["--adapter", "\(a)/adapter-k\(k)", "--steps", String(steps), "-o", "m\(steps)", "--dump-ir", "ir\(steps)"])
            XCTAssertEqual(c.status, 0, c.err)
            let dumps = try FileManager.default.contentsOfDirectory(atPath: "\(dir)/ir\(steps)").sorted()
            XCTAssertTrue(dumps.contains("002_fuse-lora.ir") && dumps.contains("003_fold-arc-integral.ir"), "\(dumps)")
            func dump(_ file: String) throws -> Module { try Parser.parseVerified(try String(contentsOfFile: "\(dir)/ir\(steps)/\(file)", encoding: .utf8)) }
            // Before fuse-lora every LoRA layer multiplies activations by A and then B; after it, none does.
            let before = activationLoRAMatmuls(try dump("000_input.ir").main)
            XCTAssertGreaterThan(before, 0)
            XCTAssertEqual(activationLoRAMatmuls(try dump("002_fuse-lora.ir").main), 0)
            // One arc_step kernel per step after fold-arc-integral and in the final program.
            XCTAssertEqual(try dump("003_fold-arc-integral.ir").main.nodes.filter { $0.op == .arc_step }.count, steps)
            let final = try Parser.parseVerified(try String(contentsOfFile: "\(dir)/m\(steps)/model.ir", encoding: .utf8))
            XCTAssertEqual(final.main.nodes.filter { $0.op == .arc_step }.count, steps)
            XCTAssertFalse(final.main.nodes.contains { $0.op == .weight && $0.key!.contains("lora") })
            XCTAssertTrue(final.prologue!.nodes.contains { $0.op == .weight && $0.key!.contains("lora_A") })
            print("qwen-a K=\(k) arc\(steps): \(before) activation×LoRA matmuls before fuse-lora, 0 after; \(steps) arc_step kernels")

            let g = try arcflow(["generate", "--model", "m\(steps)", "--embeddings", "\(a)/case.safetensors", "--noise", "\(a)/case.safetensors",
                                 "--output-latents", "lat\(steps).safetensors"])
            XCTAssertEqual(g.status, 0, g.err)
            let err = relativeL2(try latents("lat\(steps).safetensors"), try reference("k\(k)_arc\(steps)_x\(steps)"))
            print("qwen-a K=\(k) arc\(steps) generate: relative L2 \(err)")
            XCTAssertLessThan(err, 1e-3)
        }
        // The student takes no negative prompt.
        assertOneLineError(try arcflow(["generate", "--model", "m2", "--embeddings", "\(a)/case.safetensors", "--negative-embeddings",
                                        "\(a)/case.safetensors", "--seed", "1", "--output-latents", "l.safetensors"]),
                           contains: "--negative-embeddings: m2 was compiled without true CFG")
        // Seeds reproduce bit-identically.
        for out in ["s1.safetensors", "s2.safetensors"] {
            XCTAssertEqual(try arcflow(["generate", "--model", "m2", "--embeddings", "\(a)/case.safetensors", "--seed", "7",
                                        "--output-latents", out]).status, 0)
        }
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: "\(dir)/s1.safetensors")),
                       try Data(contentsOf: URL(fileURLWithPath: "\(dir)/s2.safetensors")))
    }

    /// The teacher with true CFG: compiled from the sharded f32 qwen-b folder, latents against
    /// QwenImagePipeline's, and the errors around the negative prompt.
    func testTrueCFGTeacherGenerate() throws {
        let c = try arcflow(["compile", "--transformer", "\(b)/transformer", "--sampler", "euler", "--steps", "4", "--true-cfg-scale", "4",
                             "--height", "112", "--width", "48", "--text-tokens", "5", "-o", "t"])
        XCTAssertEqual(c.status, 0, c.err)
        let g = try arcflow(["generate", "--model", "t", "--embeddings", "\(b)/case.safetensors", "--negative-embeddings", "\(b)/case.safetensors",
                             "--noise", "\(b)/case.safetensors", "--output-latents", "lat.safetensors"])
        XCTAssertEqual(g.status, 0, g.err)
        let err = relativeL2(try latents("lat.safetensors"), try reference("cfg_euler4_x4", b))
        print("qwen-b euler4 true CFG 4 generate: relative L2 \(err)")
        XCTAssertLessThan(err, 1e-3)

        // The scale is an input: another one at run time equals a teacher compiled with it fixed
        // (the library's default), and a scale the pipeline would not guide with is refused.
        let g25 = try arcflow(["generate", "--model", "t", "--embeddings", "\(b)/case.safetensors", "--negative-embeddings", "\(b)/case.safetensors",
                               "--noise", "\(b)/case.safetensors", "--true-cfg-scale", "2.5", "--output-latents", "lat25.safetensors"])
        XCTAssertEqual(g25.status, 0, g25.err)
        let qb = try QwenImageCheckpoint.load("\(b)/transformer")
        var o = QwenImageOptions(height: 112, width: 48)
        (o.sampler, o.steps, o.textTokens, o.trueCFGScale) = (.euler, 4, 5, 2.5)
        var options = CompileOptions()
        options.cacheRoot = testCacheRoot
        let program = try QwenImageModel.sampler(qb, adapter: nil, options: o)
        let caseFile = try SafeTensorsStore(path: "\(b)/case.safetensors")
        let fixed = try ModelCompiler.build(program.module, weights: program.weights, options: options).load()
            .run(["noise": try caseFile.tensor("noise"), "prompt_embeds": try caseFile.tensor("prompt_embeds"),
                  "negative_prompt_embeds": try caseFile.tensor("negative_prompt_embeds")])["latents"]!
        XCTAssertLessThan(relativeL2(try latents("lat25.safetensors"), fixed), 1e-5)
        XCTAssertGreaterThan(relativeL2(try latents("lat25.safetensors"), try latents("lat.safetensors")), 1e-3)
        let weak = try arcflow(["generate", "--model", "t", "--embeddings", "\(b)/case.safetensors", "--negative-embeddings", "\(b)/case.safetensors",
                                "--seed", "1", "--true-cfg-scale", "1", "--output-latents", "l.safetensors"])
        XCTAssertEqual(weak.status, 2)
        XCTAssertTrue(weak.err.contains("--true-cfg-scale must be greater than 1, got 1.0"), weak.err)

        // A file holding only prompt_embeds works as the negative too (here: the prompt itself,
        // which makes the guidance a no-op: the prompt-only teacher's latents).
        let cond = try SafeTensorsStore(path: "\(b)/case.safetensors").tensor("prompt_embeds")
        try writeSafeTensors([TensorRecord(name: "prompt_embeds", dtype: .f32, shape: cond.shape, payload: .floats(cond.data))],
                             to: "\(dir)/same.safetensors")
        XCTAssertEqual(try arcflow(["generate", "--model", "t", "--embeddings", "same.safetensors", "--negative-embeddings", "same.safetensors",
                                    "--noise", "\(b)/case.safetensors", "--output-latents", "same-lat.safetensors"]).status, 0)
        XCTAssertLessThan(relativeL2(try latents("same-lat.safetensors"), try reference("euler4_x4", b)), 1e-3)

        // diffusers ≥ 0.36 masks padding in attention (prompt_embeds_mask): the prompt padded at the
        // end with rows that would change every output if they were read, and an int64 mask, gives
        // the unpadded run's latents bit for bit; padding inside the prompt is refused.
        let padded = Tensor(.f32([1, 8, 24]), cond.data + (0..<(3 * 24)).map { Float($0 % 7) - 3 })
        for (name, mask): (String, [Int64]) in [("padded", [1, 1, 1, 1, 1, 0, 0, 0]), ("holes", [1, 1, 0, 1, 1, 1, 0, 0])] {
            try writeEmbeddingsWithMask(padded, mask: mask, to: "\(dir)/\(name).safetensors")
        }
        let p = try arcflow(["generate", "--model", "t", "--embeddings", "padded.safetensors", "--negative-embeddings", "\(b)/case.safetensors",
                             "--noise", "\(b)/case.safetensors", "--output-latents", "padded-lat.safetensors"])
        XCTAssertEqual(p.status, 0, p.err)
        XCTAssertTrue(p.err.contains("arcflow: prompt_embeds: 3 padding rows dropped"), p.err)
        XCTAssertEqual(try latents("padded-lat.safetensors").data, try latents("lat.safetensors").data)
        assertOneLineError(try arcflow(["generate", "--model", "t", "--embeddings", "holes.safetensors", "--negative-embeddings", "\(b)/case.safetensors",
                                        "--seed", "1", "--output-latents", "l.safetensors"]),
                           contains: "holes.safetensors: 'prompt_embeds_mask' marks padding before the end of the prompt")
        assertOneLineError(try arcflow(["generate", "--model", "t", "--embeddings", "\(b)/case.safetensors", "--seed", "1",
                                        "--output-latents", "l.safetensors"]),
                           contains: "t was compiled with true CFG (scale 4.0) and needs --negative-embeddings NE.safetensors")
        try writeSafeTensors([TensorRecord(name: "negative", dtype: .f32, shape: [1, 5, 24], payload: .floats(Array(repeating: 0, count: 5 * 24)))],
                             to: "\(dir)/bad-name.safetensors")
        assertOneLineError(try arcflow(["generate", "--model", "t", "--embeddings", "\(b)/case.safetensors", "--negative-embeddings",
                                        "bad-name.safetensors", "--seed", "1", "--output-latents", "l.safetensors"]),
                           contains: "bad-name.safetensors has no tensor 'negative_prompt_embeds' or 'prompt_embeds' (expected f32[1, 5, 24]); it has: negative")
        try writeSafeTensors([TensorRecord(name: "negative_prompt_embeds", dtype: .f32, shape: [1, 6, 24],
                                           payload: .floats(Array(repeating: 0, count: 6 * 24)))], to: "\(dir)/bad-shape.safetensors")
        assertOneLineError(try arcflow(["generate", "--model", "t", "--embeddings", "\(b)/case.safetensors", "--negative-embeddings",
                                        "bad-shape.safetensors", "--seed", "1", "--output-latents", "l.safetensors"]),
                           contains: "bad-shape.safetensors: 'negative_prompt_embeds' has shape [1, 6, 24], expected [1, 5, 24] (the model was compiled for a negative prompt of 5 text tokens; compile --negative-text-tokens T2 for another length)")
        try writeSafeTensors([TensorRecord(name: "prompt_embeds", dtype: .f32, shape: [1, 5, 32], payload: .floats(Array(repeating: 0, count: 5 * 32)))],
                             to: "\(dir)/wide.safetensors")
        assertOneLineError(try arcflow(["generate", "--model", "t", "--embeddings", "wide.safetensors", "--negative-embeddings",
                                        "\(b)/case.safetensors", "--seed", "1", "--output-latents", "l.safetensors"]),
                           contains: "wide.safetensors: 'prompt_embeds' has shape [1, 5, 32], expected [1, 5, 24]")
        assertOneLineError(try arcflow(["generate", "--model", "t", "--embeddings", "\(b)/case.safetensors", "--negative-embeddings",
                                        "\(b)/case.safetensors", "--noise", "\(a)/case.safetensors", "--output-latents", "l.safetensors"]),
                           contains: "'noise' has shape [1, 16, 6, 10], expected [1, 16, 14, 6]")
    }

    /// `prompt_embeds` f32 and `prompt_embeds_mask` int64 [1, T], as diffusers' encode_prompt returns them.
    func writeEmbeddingsWithMask(_ embeds: Tensor, mask: [Int64], to path: String) throws {
        try writeRawSafeTensors([("prompt_embeds", "F32", embeds.shape, embeds.data.withUnsafeBytes { Data($0) }),
                                 ("prompt_embeds_mask", "I64", [1, mask.count], mask.withUnsafeBytes { Data($0) })], to: path)
    }

    func testCompileErrors() throws {
        // The Qwen-Image-Layered keys change every output: refused, not run as the base model.
        for key in ["use_additional_t_cond", "use_layer3d_rope"] {
            let v = "\(dir)/\(key)"
            try FileManager.default.createDirectory(atPath: v, withIntermediateDirectories: true)
            var config = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: "\(a)/transformer/config.json"))) as! [String: Any]
            config[key] = true
            try JSONSerialization.data(withJSONObject: config).write(to: URL(fileURLWithPath: "\(v)/config.json"))
            assertOneLineError(try arcflow(["compile", "--transformer", v, "--sampler", "euler", "--height", "48", "--width", "80", "-o", "m"]),
                               contains: "\(key) true is not supported (a Qwen-Image-Layered variant")
        }
        // A folder of neither family: one line naming the class.
        let t = "\(dir)/other"
        try FileManager.default.createDirectory(atPath: t, withIntermediateDirectories: true)
        try #"{"_class_name": "SD3Transformer2DModel", "num_layers": 2}"#.write(toFile: "\(t)/config.json", atomically: true, encoding: .utf8)
        assertOneLineError(try arcflow(["compile", "--transformer", t, "--sampler", "euler", "--height", "48", "--width", "80", "-o", "m"]),
                           contains: "other/config.json: _class_name 'SD3Transformer2DModel' is neither FluxTransformer2DModel nor QwenImageTransformer2DModel")
        // A FLUX adapter on a Qwen-Image base, and the reverse.
        assertOneLineError(try compileA(["--adapter", "\(fixtures)/cfg-a/adapter-k4", "-o", "m"]),
                           contains: "unknown _class_name 'ArcFluxTransformer2DModel' (expected ArcQwenImageTransformer2DModel)")
        assertOneLineError(try arcflow(["compile", "--transformer", "\(fixtures)/cfg-a/transformer", "--adapter", "\(a)/adapter-k8",
                                        "--height", "48", "--width", "80", "-o", "m"]),
                           contains: "unknown _class_name 'ArcQwenImageTransformer2DModel' (expected ArcFluxTransformer2DModel)")
        // An adapter for the other Qwen-Image configuration.
        let r = try compileA(["--adapter", "\(b)/adapter-k8", "-o", "m"])
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.err.contains("has shape [") && r.err.contains("for this base (an adapter for another model?)") || r.err.contains("for this transformer config"), r.err)
        XCTAssertEqual(r.err.split(separator: "\n").count, 1, r.err)
        // The prompt's length has no default (each Qwen-Image prompt has its own).
        let noT = try arcflow(["compile", "--transformer", "\(a)/transformer", "--sampler", "euler", "--height", "48", "--width", "80", "-o", "m"])
        XCTAssertEqual(noT.status, 2)
        XCTAssertTrue(noT.err.contains("Qwen-Image needs --text-tokens T: the prompt's token count"), noT.err)
        // True CFG belongs to the teacher; guidance to FLUX.
        let s = try compileA(["--adapter", "\(a)/adapter-k16", "--true-cfg-scale", "4", "-o", "m"])
        XCTAssertEqual(s.status, 1)
        XCTAssertTrue(s.err.contains("--true-cfg-scale is for the teacher (--sampler euler)"), s.err)
        let g = try compileA(["--sampler", "euler", "--guidance", "3.5", "-o", "m"])
        XCTAssertEqual(g.status, 2)
        XCTAssertTrue(g.err.contains("--guidance is FLUX's embedded guidance; Qwen-Image has none"), g.err)
        // FLUX takes true CFG too (FluxPipeline's true_cfg_scale), for its teacher only.
        let f = try arcflow(["compile", "--transformer", "\(fixtures)/cfg-a/transformer", "--adapter", "\(fixtures)/cfg-a/adapter-k16",
                             "--true-cfg-scale", "4", "--height", "48", "--width", "80", "-o", "m"])
        XCTAssertEqual(f.status, 1)
        XCTAssertTrue(f.err.contains("--true-cfg-scale needs --sampler euler"), f.err)
    }
}
