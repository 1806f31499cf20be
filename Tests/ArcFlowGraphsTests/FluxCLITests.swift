// compile --transformer, generate and bench from the command line, and the one-line errors for
// bad checkpoints, adapters, sizes and embeddings.

import ArcFlowGraphs
import Foundation
import IR
import Runtime
import TestSupport
import XCTest

final class FluxCLITests: XCTestCase {
    var dir = ""
    let a = "\(fixtures)/cfg-a", bcfg = "\(fixtures)/cfg-b"

    override func setUpWithError() throws {
        dir = try makeTemporaryDirectory("arcflow-flux-cli")
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    func arcflow(_ args: [String]) throws -> CommandResult {
        try runArcflow(args, in: dir, environment: ["ARCFLOW_CACHE_DIR": testCacheRoot])
    }

    func compileA(_ extra: [String], adapter: String? = "adapter-k16") throws -> CommandResult {
        try arcflow(["compile", "--transformer", "\(a)/transformer"] + (adapter.map { ["--adapter", "\(a)/\($0)"] } ?? [])
                    + ["--height", "48", "--width", "80", "--text-tokens", "7"] + extra)
    }

    func testCompileGenerateAndBench() throws {
        let c = try compileA(["-o", "m", "--dump-ir", "ir"])
        XCTAssertEqual(c.status, 0, c.err)
        // Per-pass dumps include the two FLUX passes; afterwards no LoRA GEMM is left at run time,
        // and each arc step is one arc_step op.
        let dumps = try FileManager.default.contentsOfDirectory(atPath: "\(dir)/ir").sorted()
        XCTAssertTrue(dumps.contains("002_fuse-lora.ir") && dumps.contains("003_fold-arc-integral.ir"), "\(dumps)")
        let final = try Parser.parseVerified(try String(contentsOfFile: "\(dir)/m/model.ir", encoding: .utf8))
        XCTAssertFalse(final.main.nodes.contains { $0.op == .weight && $0.key!.contains("lora") })
        XCTAssertTrue(final.prologue!.nodes.contains { $0.op == .weight && $0.key!.contains("lora_A") })
        XCTAssertEqual(final.main.nodes.filter { $0.op == .arc_step }.count, 2)
        for d in dumps {
            let text = try String(contentsOfFile: "\(dir)/ir/\(d)", encoding: .utf8)
            XCTAssertEqual(Printer.print(try Parser.parseVerified(text)), text, d)
        }

        let g = try arcflow(["generate", "--model", "m", "--embeddings", "\(a)/case.safetensors", "--noise", "\(a)/case.safetensors",
                             "--output-latents", "lat.safetensors"])
        XCTAssertEqual(g.status, 0, g.err)
        let latents = try SafeTensorsStore(path: "\(dir)/lat.safetensors").tensor("latents")
        XCTAssertLessThan(relativeL2(latents, try SafeTensorsStore(path: "\(a)/reference.safetensors").tensor("k16_arc2_x2")), 1e-3)

        // Seeds reproduce bit-identically.
        for out in ["s1.safetensors", "s2.safetensors"] {
            XCTAssertEqual(try arcflow(["generate", "--model", "m", "--embeddings", "\(a)/case.safetensors", "--seed", "42",
                                        "--output-latents", out]).status, 0)
        }
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: "\(dir)/s1.safetensors")),
                       try Data(contentsOf: URL(fileURLWithPath: "\(dir)/s2.safetensors")))

        let bench = try arcflow(["bench", "--model", "m", "--runs", "2", "--json"])
        XCTAssertEqual(bench.status, 0, bench.err)
        let obj = try JSONSerialization.jsonObject(with: Data(bench.out.utf8)) as! [String: Any]
        for key in ["nfe_ms_median", "nfe_ms_min", "nfe_ms_max", "gflop_per_nfe"] { XCTAssertNotNil(obj[key], key) }
        // Every timed run, for benchmarks that pool runs across processes (Tools/fixtures/bench_common.py).
        let runs = try XCTUnwrap(obj["ms_runs"] as? [Double])
        XCTAssertEqual(runs.count, 2)
        XCTAssertEqual(runs.min(), obj["ms_min"] as? Double)
    }

    /// The embedded guidance is an input of a CLI-compiled sampler: `generate` runs the compiled
    /// default (the reference's 3.5) or `--guidance G`, which must equal a sampler compiled with G
    /// fixed; a model without a guidance embedder refuses the flag in one line.
    func testGuidanceAtRunTime() throws {
        let c = try compileA(["--sampler", "euler", "--steps", "4", "-o", "t", "--guidance", "3.5"], adapter: nil)
        XCTAssertEqual(c.status, 0, c.err)
        func latents(_ extra: [String]) throws -> Tensor {
            let g = try arcflow(["generate", "--model", "t", "--embeddings", "\(a)/case.safetensors", "--noise", "\(a)/case.safetensors",
                                 "--output-latents", "l.safetensors"] + extra)
            XCTAssertEqual(g.status, 0, g.err)
            return try SafeTensorsStore(path: "\(dir)/l.safetensors").tensor("latents")
        }
        XCTAssertLessThan(relativeL2(try latents([]), try FixtureCase("cfg-a").expected("euler4_x4")), 1e-3)
        let fixture = try FixtureCase("cfg-a")
        var o = fixture.options
        (o.sampler, o.steps, o.guidance) = (.euler, 4, 4.5)
        let fixed = try compileAndRun(try FluxModel.sampler(fixture.checkpoint, adapter: nil, options: o),
                                      ["noise": try fixture.input("noise"), "prompt_embeds": try fixture.input("prompt_embeds"),
                                       "pooled_prompt_embeds": try fixture.input("pooled_prompt_embeds")])["latents"]!
        let atRunTime = try latents(["--guidance", "4.5"])
        XCTAssertLessThan(relativeL2(atRunTime, fixed), 1e-5)
        XCTAssertGreaterThan(relativeL2(atRunTime, try fixture.expected("euler4_x4")), 1e-2)

        let b = try arcflow(["compile", "--transformer", "\(bcfg)/transformer", "--sampler", "euler", "--steps", "1", "--height", "112",
                             "--width", "48", "--text-tokens", "5", "-o", "nb"])
        XCTAssertEqual(b.status, 0, b.err)
        assertOneLineError(try arcflow(["generate", "--model", "nb", "--embeddings", "\(bcfg)/case.safetensors", "--seed", "1",
                                        "--guidance", "2", "--output-latents", "x.safetensors"]), contains: "takes no guidance scale at run time")
    }

    /// `--weights-dtype auto` on the bf16 checkpoint (f16 adapter, LoRA fused in f32 then rounded):
    /// 16-bit GEMM panels, final latents within 5e-3 relative L2 of the f32 build; the compiled
    /// weights file shrinks. `f32` packs f32 panels and stays at the reference's 1e-3.
    func testWeightsDTypeAutoKeepsLatentsNearF32() throws {
        var latents: [String: Tensor] = [:], bytes: [String: Int] = [:]
        for dtype in ["f32", "auto"] {
            let c = try compileA(["-o", dtype, "--weights-dtype", dtype])
            XCTAssertEqual(c.status, 0, c.err)
            let g = try arcflow(["generate", "--model", dtype, "--embeddings", "\(a)/case.safetensors", "--noise", "\(a)/case.safetensors",
                                 "--output-latents", "\(dtype).safetensors"])
            XCTAssertEqual(g.status, 0, g.err)
            latents[dtype] = try SafeTensorsStore(path: "\(dir)/\(dtype).safetensors").tensor("latents")
            bytes[dtype] = (try FileManager.default.attributesOfItem(atPath: "\(dir)/\(dtype)/weights.safetensors")[.size] as! NSNumber).intValue
            let manifest = try LoadedModel.readManifest("\(dir)/\(dtype)")
            let packed = manifest.weights.filter { $0.packing != nil }
            XCTAssertFalse(packed.isEmpty)
            // Packed weights: the bf16 base's type with auto (the adapter's dense f16 heads keep f16).
            XCTAssertTrue(packed.allSatisfy { dtype == "f32" ? $0.dtype == "f32" : $0.dtype != "f32" }, "\(packed.map(\.dtype))")
        }
        let reference = try SafeTensorsStore(path: "\(a)/reference.safetensors").tensor("k16_arc2_x2")
        let autoVsF32 = relativeL2(latents["auto"]!, latents["f32"]!)
        print("weights-dtype auto vs f32: relative L2 \(autoVsF32); vs reference: auto \(relativeL2(latents["auto"]!, reference)), "
              + "f32 \(relativeL2(latents["f32"]!, reference)); weights \(bytes["auto"]!) vs \(bytes["f32"]!) bytes")
        XCTAssertLessThan(autoVsF32, 5e-3)
        XCTAssertLessThan(relativeL2(latents["f32"]!, reference), 1e-3)
        XCTAssertLessThan(bytes["auto"]!, bytes["f32"]!)
    }

    /// `--compute bf16` (fast mode: bf16 panels × activations rounded to bf16, f32 sums) on the
    /// bf16 checkpoint: final latents within 1e-2 relative L2 of the f32 build; the generated C
    /// calls the bf16-compute GEMM (dt 3) and the bf16 attention. A bad value and f32 panels are usage errors.
    func testComputeBF16KeepsLatentsNearF32() throws {
        let bad = try compileA(["-o", "x", "--compute", "f16"])
        XCTAssertEqual(bad.status, 2)
        XCTAssertTrue(bad.err.contains("--compute must be f32 or bf16, got 'f16'"), bad.err)
        assertOneLineError(try compileA(["-o", "x", "--compute", "bf16", "--weights-dtype", "f32"]),
                           contains: "--compute bf16 multiplies bf16 weight panels: use --weights-dtype auto or bf16, not f32")
        guard FileManager.default.fileExists(atPath: "/proc/cpuinfo"),
              try String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8).contains(" avx512_bf16") else {
            throw XCTSkip("this CPU lacks avx512_bf16 (compile --compute bf16 refuses it)")
        }
        var latents: [String: Tensor] = [:]
        for (name, flags) in [("f32", ["--weights-dtype", "f32"]), ("bf16c", ["--compute", "bf16", "--dump-c"])] {
            let c = try compileA(["-o", name] + flags)
            XCTAssertEqual(c.status, 0, c.err)
            let g = try arcflow(["generate", "--model", name, "--embeddings", "\(a)/case.safetensors", "--noise", "\(a)/case.safetensors",
                                 "--output-latents", "\(name).safetensors"])
            XCTAssertEqual(g.status, 0, g.err)
            latents[name] = try SafeTensorsStore(path: "\(dir)/\(name).safetensors").tensor("latents")
        }
        let kernels = try FileManager.default.contentsOfDirectory(atPath: "\(dir)/bf16c/c").filter { $0.hasSuffix(".c") }
        let text = try kernels.map { try String(contentsOfFile: "\(dir)/bf16c/c/\($0)", encoding: .utf8) }.joined()
        XCTAssertNotNil(text.range(of: "af_gemm_packed\\(in[0-9]+, [0-9]+L, in[0-9]+, 3,", options: .regularExpression))
        XCTAssertTrue(text.contains("af_attention_bf16(in"), "plain attention multiplies bf16 pairs too")
        let reference = try SafeTensorsStore(path: "\(a)/reference.safetensors").tensor("k16_arc2_x2")
        let vsF32 = relativeL2(latents["bf16c"]!, latents["f32"]!)
        print("compute bf16 vs f32 build: relative L2 \(vsF32); vs reference \(relativeL2(latents["bf16c"]!, reference))")
        XCTAssertLessThan(vsF32, 1e-2)
    }

    /// Adapters as other tools write them (audit 6). A PEFT config's LoRA α (diffusers'
    /// save_lora_adapter metadata, or adapter_config.json) scales as `.alpha` tensors do; a tensor
    /// of a dtype an adapter cannot hold is refused by name, not dropped; an adapter without LoRA is
    /// applied with a note; a NaN in an adapter gives an error, not NaN latents.
    func testAdapterFilesFromOtherTools() throws {
        let src = "\(a)/adapter-k4", store = try SafeTensorsStore(path: "\(src)/diffusion_pytorch_model.safetensors")
        let entries = try store.names.map { name -> (name: String, dtype: String, shape: [Int], bytes: Data) in
            let t = try store.tensor(name)
            return (name, "F32", t.shape, t.data.withUnsafeBytes { Data($0) })
        }
        func adapter(_ name: String, _ entries: [(name: String, dtype: String, shape: [Int], bytes: Data)],
                     metadata: [String: String] = [:], extra: [String: String] = [:]) throws -> String {
            let d = "\(dir)/\(name)"
            try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
            try FileManager.default.copyItem(atPath: "\(src)/config.json", toPath: "\(d)/config.json")
            try writeRawSafeTensors(entries, metadata: metadata, to: "\(d)/diffusion_pytorch_model.safetensors")
            for (file, text) in extra { try text.write(toFile: "\(d)/\(file)", atomically: true, encoding: .utf8) }
            return d
        }
        func latents(_ adapterDir: String, _ name: String) throws -> (CommandResult, Tensor?) {
            let c = try arcflow(["compile", "--transformer", "\(a)/transformer", "--adapter", adapterDir, "--height", "48", "--width", "80",
                                 "--text-tokens", "7", "--weights-dtype", "f32", "-o", name])
            XCTAssertEqual(c.status, 0, c.err)
            let g = try arcflow(["generate", "--model", name, "--embeddings", "\(a)/case.safetensors", "--noise", "\(a)/case.safetensors",
                                 "--output-latents", "\(name).safetensors"])
            return (CommandResult(status: g.status, out: g.out, err: c.err + g.err),
                    g.status == 0 ? try SafeTensorsStore(path: "\(dir)/\(name).safetensors").tensor("latents") : nil)
        }
        // α = 8 for rank 4 (scale 2): as .alpha tensors, from the metadata, from adapter_config.json.
        let modules = Set(entries.compactMap { e in e.name.range(of: ".lora_A.weight").map { String(e.name[..<$0.lowerBound]) } })
        XCTAssertFalse(modules.isEmpty)
        let alphas = modules.sorted().map { ("\($0).alpha", "F32", [Int](), withUnsafeBytes(of: Float(8)) { Data($0) }) }
        let (_, byTensor) = try latents(try adapter("alpha-tensors", entries + alphas), "t")
        let (_, plain) = try latents(src, "plain")
        XCTAssertGreaterThan(relativeL2(byTensor!, plain!), 1e-3, "α = 8 must change the latents")
        let (m, byMetadata) = try latents(try adapter("alpha-meta", entries, metadata: ["lora_adapter_metadata": #"{"r": 4, "lora_alpha": 8}"#]), "m")
        XCTAssertTrue(m.err.contains("LoRA α = 8.0 from") && m.err.contains("lora_adapter_metadata"), m.err)
        XCTAssertLessThan(relativeL2(byMetadata!, byTensor!), 1e-6)
        let (_, byConfig) = try latents(try adapter("alpha-config", entries, extra: ["adapter_config.json": #"{"peft_type": "LORA", "r": 4, "lora_alpha": 8}"#]), "c")
        XCTAssertLessThan(relativeL2(byConfig!, byTensor!), 1e-6)
        assertOneLineError(try arcflow(["compile", "--transformer", "\(a)/transformer", "--adapter",
                                        try adapter("dora", entries, metadata: ["lora_adapter_metadata": #"{"r": 4, "lora_alpha": 4, "use_dora": true}"#]),
                                        "--height", "48", "--width", "80", "--text-tokens", "7", "-o", "x"]), contains: "use_dora true (DoRA) is not supported")
        // F64 (or integer) tensors are refused by name instead of silently missing.
        var f64 = entries
        let i = f64.firstIndex { $0.name.hasSuffix(".lora_A.weight") }!
        let doubles = f64[i].bytes.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }.map { Double($0) }
        f64[i] = (f64[i].name, "F64", f64[i].shape, doubles.withUnsafeBytes { Data($0) })
        assertOneLineError(try arcflow(["compile", "--transformer", "\(a)/transformer", "--adapter", try adapter("f64", f64),
                                        "--height", "48", "--width", "80", "--text-tokens", "7", "-o", "x"]),
                           contains: "tensor '\(f64[i].name)' has dtype F64, which an adapter cannot hold")
        // A plain diffusers LoRA folder (save_lora_weights) is named as such.
        let plainLoRA = "\(dir)/plain-lora"
        try FileManager.default.createDirectory(atPath: plainLoRA, withIntermediateDirectories: true)
        try writeRawSafeTensors(entries.filter { $0.name.contains(".lora_") }, to: "\(plainLoRA)/pytorch_lora_weights.safetensors")
        assertOneLineError(try arcflow(["compile", "--transformer", "\(a)/transformer", "--adapter", plainLoRA,
                                        "--height", "48", "--width", "80", "--text-tokens", "7", "-o", "x"]),
                           contains: "plain diffusers LoRA (save_lora_weights)")
        // A rank-0 LoRA (α/r = α/0) is refused by name, not fused into NaN weights.
        var empty = entries
        for (j, e) in empty.enumerated() where e.name.hasPrefix("\(modules.sorted()[0]).lora_") {
            empty[j] = (e.name, e.dtype, e.name.hasSuffix(".lora_A.weight") ? [0, e.shape[1]] : [e.shape[0], 0], Data())
        }
        assertOneLineError(try arcflow(["compile", "--transformer", "\(a)/transformer", "--adapter", try adapter("rank0", empty + alphas),
                                        "--height", "48", "--width", "80", "--text-tokens", "7", "-o", "x"]),
                           contains: "has rank 0")
        // PEFT's adapter-named keys and a config.json whose K is not the tensors': errors with the fix.
        let named = entries.map { e in (e.name.replacingOccurrences(of: ".lora_A.weight", with: ".lora_A.default.weight")
                                          .replacingOccurrences(of: ".lora_B.weight", with: ".lora_B.default.weight"), e.dtype, e.shape, e.bytes) }
        assertOneLineError(try arcflow(["compile", "--transformer", "\(a)/transformer", "--adapter", try adapter("peft-named", named),
                                        "--height", "48", "--width", "80", "--text-tokens", "7", "-o", "x"]),
                           contains: "(PEFT adapter-named keys: …lora_A.<adapter>.weight is …lora_A.weight in an exported adapter)")
        let k8 = try adapter("k8", entries)
        var config = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: "\(k8)/config.json"))) as! [String: Any]
        config["num_gaussians"] = 8
        try JSONSerialization.data(withJSONObject: config).write(to: URL(fileURLWithPath: "\(k8)/config.json"))
        assertOneLineError(try arcflow(["compile", "--transformer", "\(a)/transformer", "--adapter", k8,
                                        "--height", "48", "--width", "80", "--text-tokens", "7", "-o", "x"]),
                           contains: "the adapter's config.json says num_gaussians 8")
        // LoRA on a layer the student never runs (the teacher's proj_out, which the head replaces)
        // and on a layer the checkpoint does not have: each said for what it is.
        let first = modules.sorted()[0]
        func moved(to module: String) -> [(name: String, dtype: String, shape: [Int], bytes: Data)] {
            entries + entries.filter { $0.name.hasPrefix("\(first).lora_") }
                .map { ($0.name.replacingOccurrences(of: first, with: module), $0.dtype, $0.shape, $0.bytes) }
        }
        for (module, message) in [("proj_out", "targets a layer of the checkpoint that this model does not run"), ("no_such_layer", "matches no layer of this transformer")] {
            assertOneLineError(try arcflow(["compile", "--transformer", "\(a)/transformer", "--adapter", try adapter("lora-\(module)", moved(to: module)),
                                            "--height", "48", "--width", "80", "--text-tokens", "7", "-o", "x"]), contains: message)
        }
        // No LoRA at all: the head alone, said so.
        let (h, _) = try latents(try adapter("head-only", entries.filter { !$0.name.contains(".lora_") }), "h")
        XCTAssertEqual(h.status, 0, h.err)
        XCTAssertTrue(h.err.contains("has no LoRA tensors: only norm_out and the head are applied"), h.err)
        // A NaN in the adapter: generate fails and writes nothing.
        var nan = entries
        let j = nan.firstIndex { $0.name.hasSuffix(".lora_B.weight") }!
        var values = nan[j].bytes.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
        values[0] = .nan
        nan[j].bytes = values.withUnsafeBytes { Data($0) }
        let (n, _) = try latents(try adapter("nan", nan), "n")
        assertOneLineError(n.status == 0 ? n : CommandResult(status: n.status, out: n.out, err: n.err.split(separator: "\n").last.map(String.init) ?? ""),
                           contains: "the sampler's latents hold 960 non-finite values of 960")
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(dir)/n.safetensors"))
    }

    func testAdapterForAnotherBase() throws {
        let r = try arcflow(["compile", "--transformer", "\(a)/transformer", "--adapter", "\(bcfg)/adapter-k16",
                             "--height", "48", "--width", "80", "--text-tokens", "7", "-o", "m"])
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.err.contains("has shape [") && r.err.contains("expected ["), r.err)
        XCTAssertTrue(r.err.contains("norm_out.linear.weight") || r.err.contains("lora"), r.err)
        XCTAssertEqual(r.err.split(separator: "\n").count, 1, r.err)
    }

    func testMissingShard() throws {
        let t = "\(dir)/transformer"
        try FileManager.default.copyItem(atPath: "\(bcfg)/transformer", toPath: t)
        try FileManager.default.removeItem(atPath: "\(t)/diffusion_pytorch_model-00002-of-00002.safetensors")
        assertOneLineError(try arcflow(["compile", "--transformer", t, "--sampler", "euler", "--height", "112", "--width", "48", "-o", "m"]),
                           contains: "missing shard \(t)/diffusion_pytorch_model-00002-of-00002.safetensors")
    }

    func testUnknownAdapterClass() throws {
        let ad = "\(dir)/adapter"
        try FileManager.default.copyItem(atPath: "\(a)/adapter-k4", toPath: ad)
        let config = try String(contentsOfFile: "\(ad)/config.json", encoding: .utf8)
        try config.replacingOccurrences(of: "ArcFluxTransformer2DModel", with: "PiFluxTransformer2DModel")
            .write(toFile: "\(ad)/config.json", atomically: true, encoding: .utf8)
        assertOneLineError(try arcflow(["compile", "--transformer", "\(a)/transformer", "--adapter", ad, "--height", "48", "--width", "80", "-o", "m"]),
                           contains: "unknown _class_name 'PiFluxTransformer2DModel' (expected ArcFluxTransformer2DModel)")
    }

    func testSizesMustBeMultiplesOf16() throws {
        assertOneLineError(try arcflow(["compile", "--transformer", "\(a)/transformer", "--adapter", "\(a)/adapter-k4",
                                        "--height", "40", "--width", "80", "-o", "m"]),
                           contains: "--height 40 and --width 80 must be positive multiples of 16")
    }

    func testEmbeddingsOfTheWrongShape() throws {
        XCTAssertEqual(try compileA(["-o", "m", "--adapter", "\(a)/adapter-k4"], adapter: nil).status, 0)
        try writeSafeTensors([
            TensorRecord(name: "prompt_embeds", dtype: .f32, shape: [1, 9, 48], payload: .floats(Array(repeating: 0, count: 9 * 48))),
            TensorRecord(name: "pooled_prompt_embeds", dtype: .f32, shape: [1, 40], payload: .floats(Array(repeating: 0, count: 40))),
        ], to: "\(dir)/e.safetensors")
        assertOneLineError(try arcflow(["generate", "--model", "m", "--embeddings", "e.safetensors", "--seed", "1", "--output-latents", "l.safetensors"]),
                           contains: "e.safetensors: 'prompt_embeds' has shape [1, 9, 48], expected [1, 7, 48]")
        try writeSafeTensors([
            TensorRecord(name: "prompt", dtype: .f32, shape: [1, 7, 48], payload: .floats(Array(repeating: 0, count: 7 * 48))),
        ], to: "\(dir)/e2.safetensors")
        assertOneLineError(try arcflow(["generate", "--model", "m", "--embeddings", "e2.safetensors", "--seed", "1", "--output-latents", "l.safetensors"]),
                           contains: "e2.safetensors has no tensor 'prompt_embeds' (expected f32[1, 7, 48])")
    }
}
