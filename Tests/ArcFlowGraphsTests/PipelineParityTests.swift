// The FLUX pipeline's other graphs (CLIP, T5, VAE decoder) and the pipeline folder reader against
// transformers / diffusers fixtures (Tools/fixtures/make_pipeline_fixtures.py, Fixtures/pipeline).

import ArcFlowGraphs
import Foundation
import IR
import Passes
import Runtime
import TestSupport
import XCTest

let pipelineFixture = "\(fixtures)/pipeline"

/// Runs a component graph through the full compiler and the native library.
func runCompiledComponent(_ program: ComponentProgram, _ inputs: [String: Tensor]) throws -> [String: Tensor] {
    var options = CompileOptions()
    options.cacheRoot = testCacheRoot
    assertRoundTrips(program.module)
    let compiled = try ModelCompiler.build(program.module, weights: program.weights, options: options)
    return try compiled.load().run(inputs)
}

/// reference.safetensors of the pipeline fixture, including its U8 images (which SafeTensorsStore
/// does not read as floats): those are parsed here from the header's offsets.
final class PipelineReference {
    let store: SafeTensorsStore
    let path = "\(pipelineFixture)/reference.safetensors"
    init() throws { store = try SafeTensorsStore(path: path) }
    func tensor(_ key: String) throws -> Tensor { try store.tensor(key) }

    func uint8(_ key: String) throws -> (shape: [Int], data: [UInt8]) { try readUInt8Tensor(path, key) }
}

/// A store with one tensor hidden (a checkpoint missing a weight).
final class HidingStore: WeightStore {
    let base: WeightStore, hidden: String
    init(_ base: WeightStore, hiding: String) { self.base = base; hidden = hiding }
    var label: String { base.label }
    var names: [String] { base.names.filter { $0 != hidden } }
    func type(of name: String) -> TensorType? { name == hidden ? nil : base.type(of: name) }
    func raw(_ name: String) throws -> UnsafeRawPointer { try base.raw(name) }
}

final class PipelineParityTests: XCTestCase {
    static let prompts = 0..<4

    func clipCheck(run: (ComponentProgram, [String: Tensor]) throws -> [String: Tensor]) throws {
        let ref = try PipelineReference()
        let clip = try CLIPTextEncoder.load("\(pipelineFixture)/text_encoder")
        XCTAssertEqual(clip.config.eosTokenId, 2)
        let program = try CLIPTextEncoderGraph.build(config: clip.config, weights: clip.store)
        for i in Self.prompts {
            let out = try run(program, ["input_ids": try ref.tensor("clip_input_ids_\(i)")])
            let ep = relativeL2(out["pooled_prompt_embeds"]!, try ref.tensor("clip_pooled_\(i)"))
            let eh = relativeL2(out["last_hidden_state"]!, try ref.tensor("clip_hidden_\(i)"))
            print("CLIP prompt \(i): pooled relative L2 \(ep), last_hidden_state \(eh)")
            XCTAssertLessThan(ep, 1e-4, "pooled \(i)")
            XCTAssertLessThan(eh, 1e-4, "hidden \(i)")
        }
    }

    func t5Check(run: (ComponentProgram, [String: Tensor]) throws -> [String: Tensor]) throws {
        let ref = try PipelineReference()
        let t5 = try T5Encoder.load("\(pipelineFixture)/text_encoder_2")
        XCTAssertEqual((t5.store as? SafeTensorsStore)?.files.count, 2, "the fixture's T5 is sharded")
        XCTAssertEqual(t5.store.type(of: "shared.weight")?.dtype, .bf16)
        let program = try T5EncoderGraph.build(config: t5.config, weights: t5.store, tokens: 32)
        for i in Self.prompts {
            let out = try run(program, ["input_ids": try ref.tensor("t5_input_ids_\(i)")])
            let e = relativeL2(out["prompt_embeds"]!, try ref.tensor("t5_hidden_\(i)"))
            print("T5 prompt \(i): relative L2 \(e)")
            XCTAssertLessThan(e, 1e-4, "T5 \(i)")
        }
    }

    func vaeCheck(run: (ComponentProgram, [String: Tensor]) throws -> [String: Tensor]) throws {
        let ref = try PipelineReference()
        let vae = try VAEDecoder.load("\(pipelineFixture)/vae")
        XCTAssertEqual(vae.store.type(of: "decoder.conv_in.weight")?.dtype, .f16)
        let program = try VAEDecoderGraph.build(config: vae.config, weights: vae.store, latentHeight: 6, latentWidth: 10)
        let image = try run(program, ["latents": try ref.tensor("vae_latents")])["image"]!
        XCTAssertEqual(image.shape, [1, 3, 48, 80])
        let e = relativeL2(image, try ref.tensor("vae_image"))
        let want = try ref.uint8("vae_image_u8")
        XCTAssertEqual(want.shape, [1, 48, 80, 3])
        let (bad, worst) = compareRGB8(VAEDecoderGraph.rgb8(image), want.data)
        print("VAE decode: relative L2 \(e); uint8 channels off by > 1: \(bad * 100)%, max difference \(worst)")
        XCTAssertLessThan(e, 1e-4)
        XCTAssertLessThanOrEqual(bad, 0.001)
    }

    func interpret(_ p: ComponentProgram, _ inputs: [String: Tensor]) throws -> [String: Tensor] { try p.interpret(inputs) }

    /// A CLIPTextModel as transformers 5 saves it (keys without `text_model.`) reads the same tensors.
    func testCLIPKeysWithoutTextModelPrefix() throws {
        let dir = try makeTemporaryDirectory("clip-v5")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let src = "\(pipelineFixture)/text_encoder"
        try FileManager.default.copyItem(atPath: "\(src)/config.json", toPath: "\(dir)/config.json")
        let original = try CLIPTextEncoder.load(src).store
        let records = try original.names.map { name -> TensorRecord in
            let t = original.type(of: name)!
            XCTAssertTrue(name.hasPrefix("text_model."), name)
            return TensorRecord(name: String(name.dropFirst("text_model.".count)), dtype: t.dtype, shape: t.shape,
                                payload: .raw([UInt8](UnsafeRawBufferPointer(start: try original.raw(name), count: t.byteCount))))
        }
        try writeSafeTensors(records, to: "\(dir)/model.safetensors")
        let store = try CLIPTextEncoder.load(dir).store
        XCTAssertEqual(store.names.sorted(), original.names.sorted())
        for name in original.names {
            XCTAssertEqual(store.type(of: name), original.type(of: name), name)
            let n = original.type(of: name)!.byteCount
            XCTAssertEqual(memcmp(try store.raw(name), try original.raw(name), n), 0, name)
        }
    }

    func testCLIPTextEncoderInterpreted() throws { try clipCheck(run: interpret) }
    func testT5EncoderInterpreted() throws { try t5Check(run: interpret) }
    func testVAEDecoderInterpreted() throws { try vaeCheck(run: interpret) }
    func testCLIPTextEncoderCompiled() throws { try clipCheck(run: runCompiledComponent) }
    func testT5EncoderCompiled() throws { try t5Check(run: runCompiledComponent) }
    func testVAEDecoderCompiled() throws { try vaeCheck(run: runCompiledComponent) }

    /// Non-legacy pooling (eos_token_id != 2): the first position holding eos_token_id.
    func testCLIPPoolingByEOSTokenId() throws {
        let ref = try PipelineReference()
        let clip = try CLIPTextEncoder.load("\(pipelineFixture)/text_encoder")
        let ids = try ref.tensor("clip_input_ids_1")
        for (eos, key) in [(Int(try ref.tensor("clip_eos_alt").data[0]), "clip_pooled_eos_alt_1"), (726, "clip_pooled_eos_real_1")] {
            var config = clip.config
            config.eosTokenId = eos
            let out = try CLIPTextEncoderGraph.build(config: config, weights: clip.store).interpret(["input_ids": ids])
            let e = relativeL2(out["pooled_prompt_embeds"]!, try ref.tensor(key))
            print("CLIP pooled with eos_token_id \(eos): relative L2 \(e)")
            XCTAssertLessThan(e, 1e-4, key)
        }
    }

    /// Configs that name other activations (Fixtures/variants, Tools/fixtures/make_variant_fixtures.py):
    /// the VAE's `act_fn` in its resnets (relu, mish), a relu CLIP whose config has no
    /// `eos_token_id` (transformers' default 49407 applies: with no id equal to it, position 0
    /// pools), a gated-silu T5; each against the library that wrote it.
    func testActivationVariants() throws {
        let dir = "\(fixtures)/variants"
        for (name, act) in [("vae-relu", NamedActivation.relu), ("vae-mish", .mish)] {
            let ref = try SafeTensorsStore(path: "\(dir)/\(name)/reference.safetensors")
            var vae = try VAEDecoder.load("\(dir)/\(name)")
            XCTAssertEqual(vae.config.actFn, act)
            let inputs = ["latents": try ref.tensor("latents")]
            let image = try runCompiledComponent(try VAEDecoderGraph.build(config: vae.config, weights: vae.store, latentHeight: 4, latentWidth: 6), inputs)["image"]!
            let err = relativeL2(image, try ref.tensor("image"))
            print("\(name): relative L2 \(err)")
            XCTAssertLessThan(err, 1e-4, name)
            vae.config.actFn = .silu   // what was built before act_fn was read: visibly wrong
            let silu = try runCompiledComponent(try VAEDecoderGraph.build(config: vae.config, weights: vae.store, latentHeight: 4, latentWidth: 6), inputs)["image"]!
            XCTAssertGreaterThan(relativeL2(silu, try ref.tensor("image")), 1e-2, name)
        }
        let clipRef = try SafeTensorsStore(path: "\(dir)/clip-relu-noeos/reference.safetensors")
        let clip = try CLIPTextEncoder.load("\(dir)/clip-relu-noeos")
        XCTAssertEqual([clip.config.eosTokenId, clip.config.maxPositionEmbeddings], [49407, 12])
        XCTAssertEqual(clip.config.hiddenAct, .relu)
        let program = try CLIPTextEncoderGraph.build(config: clip.config, weights: clip.store, tokens: 12)
        let (ids, hidden, pooled) = (try clipRef.tensor("input_ids"), try clipRef.tensor("last_hidden_state"), try clipRef.tensor("pooler_output"))
        for row in 0..<2 {
            func rowOf(_ t: Tensor) -> Tensor {
                let n = t.data.count / 2
                return Tensor(.f32([1] + t.shape.dropFirst()), Array(t.data[(row * n)..<((row + 1) * n)]))
            }
            let out = try runCompiledComponent(program, ["input_ids": rowOf(ids)])
            XCTAssertLessThan(relativeL2(out["last_hidden_state"]!, rowOf(hidden)), 1e-4, "CLIP row \(row)")
            XCTAssertLessThan(relativeL2(out["pooled_prompt_embeds"]!, rowOf(pooled)), 1e-4, "CLIP pooled row \(row)")
        }
        let t5Ref = try SafeTensorsStore(path: "\(dir)/t5-gated-silu/reference.safetensors")
        let t5 = try T5Encoder.load("\(dir)/t5-gated-silu")
        XCTAssertEqual(t5.config.feedForward, .gated(.silu))
        let t5Out = try runCompiledComponent(try T5EncoderGraph.build(config: t5.config, weights: t5.store, tokens: 10),
                                             ["input_ids": try t5Ref.tensor("input_ids")])
        XCTAssertLessThan(relativeL2(t5Out["prompt_embeds"]!, try t5Ref.tensor("last_hidden_state")), 1e-4)
    }

    func testT5RelativePositionBuckets() {
        // transformers' _relative_position_bucket(bidirectional, 32 buckets, max 128), row q = 0 and q = 20.
        let t = T5EncoderGraph.relativePositionBuckets(tokens: 32, numBuckets: 32, maxDistance: 128)
        XCTAssertEqual(Array(t[0..<12]), [0, 17, 18, 19, 20, 21, 22, 23, 24, 24, 24, 24])
        XCTAssertEqual(t[12], 25)  // 16 + 8 + int(log(12/8)/log(16)·8 = 1.17)
        XCTAssertEqual(t[20 * 32 + 0], 10)  // 20 back: large bucket 8 + int(log(20/8)/log(16)·8) = 10
        XCTAssertEqual(t[20 * 32 + 20], 0)
        XCTAssertEqual(t[20 * 32 + 19], 1)
    }

    func testPipelineFolderAndScheduler() throws {
        let p = try FluxPipelineFolder.load(pipelineFixture)
        XCTAssertTrue(p.scheduler.useDynamicShifting)
        XCTAssertEqual(p.vae.config.scalingFactor, 0.3611)
        XCTAssertEqual(p.vae.config.shiftFactor, 0.1159)
        XCTAssertEqual(p.transformer.store.type(of: "x_embedder.weight")?.dtype, .bf16)
        let sigmas = try p.scheduler.sigmas(steps: 4, imageSeqLen: 15)
        let want = try PipelineReference().tensor("e2e_sigmas").data
        XCTAssertEqual(sigmas.count, want.count)
        for (a, b) in zip(sigmas, want) { XCTAssertEqual(Float(a), b, accuracy: 2e-7) }
        XCTAssertNoThrow(try p.textEncoderProgram(tokens: 77))
        XCTAssertNoThrow(try p.textEncoder2Program(tokens: 32))
        XCTAssertNoThrow(try p.vaeDecoderProgram(height: 48, width: 80))
        XCTAssertThrowsError(try p.vaeDecoderProgram(height: 44, width: 80))
    }

    /// Scheduler configs at the edges of what FluxPipeline does with them (a sweep against
    /// `pipe.scheduler.sigmas` found each): shift_terminal 0 is no stretch (diffusers tests it for
    /// truth), a terminal stretch ends on the terminal σ and needs two steps, and keys that change
    /// the steps or the timesteps are refused by name.
    func testSchedulerConfigEdges() throws {
        let base: [String: Any] = ["_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0, "use_dynamic_shifting": false]
        func config(_ extra: [String: Any]) throws -> FlowMatchSchedulerConfig {
            try FlowMatchSchedulerConfig(ConfigFile(path: "s.json", json: base.merging(extra) { $1 }))
        }
        let plain = try config([:]).sigmas(steps: 4, imageSeqLen: 15)
        XCTAssertEqual(plain.count, 5)
        for (a, b) in zip(plain, [1, 0.9, 0.75, 0.5, 0]) { XCTAssertEqual(a, b, accuracy: 1e-12) }
        XCTAssertEqual(try config(["shift_terminal": 0.0]).sigmas(steps: 4, imageSeqLen: 15), plain)
        let stretched = try config(["shift_terminal": 0.02]).sigmas(steps: 4, imageSeqLen: 15)
        XCTAssertEqual(stretched[0], 1, accuracy: 1e-12)
        XCTAssertEqual(stretched[3], 0.02, accuracy: 1e-12)
        assertError({ _ = try config(["shift_terminal": 0.02]).sigmas(steps: 1, imageSeqLen: 15) },
                    contains: ["s.json gives σ", "for 1 step", "shift_terminal needs at least 2 steps"])
        XCTAssertEqual(try config(["shift_terminal": 0.0]).sigmas(steps: 1, imageSeqLen: 15), [1, 0])
        assertError({ _ = try config(["use_flow_sigmas": true]) }, contains: ["s.json", "'use_flow_sigmas' true is not supported"])
        assertError({ _ = try config(["num_train_timesteps": 500]) }, contains: ["s.json", "num_train_timesteps 500 is not supported"])
        assertError({ _ = try config(["use_dynamic_shifting": true, "base_image_seq_len": 64, "max_image_seq_len": 64]) },
                    contains: ["base_image_seq_len and max_image_seq_len are both 64"])
    }

    /// Prompt ids → CLIP + T5 (interpreted) → FLUX Euler sampler with the pipeline's shifted σ
    /// (compiled) → VAE (interpreted) against `FluxPipeline(..., output_type="np")`.
    func testEndToEndTeacher() throws {
        let ref = try PipelineReference()
        let p = try FluxPipelineFolder.load(pipelineFixture)
        let clip = try p.textEncoderProgram(tokens: 77), t5 = try p.textEncoder2Program(tokens: 32)
        let vae = try p.vaeDecoderProgram(height: 48, width: 80)
        var o = FluxOptions(height: 48, width: 80)
        o.sampler = .euler
        o.steps = 4
        o.textTokens = 32
        o.guidance = 3.5
        o.sigmas = try p.scheduler.sigmas(steps: 4, imageSeqLen: 15)
        let sampler = try FluxModel.sampler(p.transformer, adapter: nil, options: o)
        for i in 0..<2 {
            let pooled = try clip.interpret(["input_ids": try ref.tensor("clip_input_ids_\(i)")])["pooled_prompt_embeds"]!
            let embeds = try t5.interpret(["input_ids": try ref.tensor("t5_input_ids_\(i)")])["prompt_embeds"]!
            let latents = try compileAndRun(sampler, ["noise": try ref.tensor("e2e_noise"), "prompt_embeds": embeds,
                                                      "pooled_prompt_embeds": pooled])["latents"]!
            let el = relativeL2(latents, try ref.tensor("e2e_latents_\(i)"))
            let image = try vae.interpret(["latents": latents])["image"]!
            let (bad, worst) = compareRGB8(VAEDecoderGraph.rgb8(image), try ref.uint8("e2e_image_u8_\(i)").data)
            print("end to end prompt \(i): latents relative L2 \(el); uint8 channels off by > 1: \(bad * 100)%, max difference \(worst)")
            XCTAssertLessThan(el, 1e-3)
            XCTAssertLessThanOrEqual(bad, 0.001)
        }
    }

    // MARK: Errors: one line naming the file and key

    func copyFixture() throws -> String {
        let dir = try makeTemporaryDirectory("pipeline") + "/pipe"
        try FileManager.default.copyItem(atPath: pipelineFixture, toPath: dir)
        return dir
    }

    func assertError(_ body: () throws -> Void, contains needles: [String], file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try body(), file: file, line: line) { error in
            let message = (error as? ArcError)?.message ?? "\(error)"
            XCTAssertFalse(message.contains("\n"), message, file: file, line: line)
            for n in needles { XCTAssertTrue(message.contains(n), "'\(n)' not in: \(message)", file: file, line: line) }
        }
    }

    func testMissingSubfolder() throws {
        let dir = try copyFixture()
        defer { try? FileManager.default.removeItem(atPath: (dir as NSString).deletingLastPathComponent) }
        try FileManager.default.removeItem(atPath: "\(dir)/vae")
        assertError({ _ = try FluxPipelineFolder.load(dir) }, contains: ["\(dir)/vae", "AutoencoderKL"])
    }

    func testBrokenModelIndexAndSchedulerConfig() throws {
        let dir = try copyFixture()
        defer { try? FileManager.default.removeItem(atPath: (dir as NSString).deletingLastPathComponent) }
        let indexPath = "\(dir)/model_index.json"
        var index = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: indexPath))) as! [String: Any]
        index["text_encoder_2"] = ["transformers", "T5Model"]
        try JSONSerialization.data(withJSONObject: index).write(to: URL(fileURLWithPath: indexPath))
        assertError({ _ = try FluxPipelineFolder.load(dir) }, contains: ["model_index.json", "text_encoder_2", "T5Model"])
        index["text_encoder_2"] = ["transformers", "T5EncoderModel"]
        try JSONSerialization.data(withJSONObject: index).write(to: URL(fileURLWithPath: indexPath))
        let schedPath = "\(dir)/scheduler/scheduler_config.json"
        var sched = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: schedPath))) as! [String: Any]
        sched["_class_name"] = nil
        try JSONSerialization.data(withJSONObject: sched).write(to: URL(fileURLWithPath: schedPath))
        assertError({ _ = try FluxPipelineFolder.load(dir) }, contains: ["scheduler_config.json", "_class_name"])
    }

    func testUnknownFeedForwardProj() throws {
        let path = "\(pipelineFixture)/text_encoder_2/config.json"
        var json = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as! [String: Any]
        json["feed_forward_proj"] = "gated-softsign"
        assertError({ _ = try T5EncoderConfig(ConfigFile(path: path, json: json)) }, contains: [path, "feed_forward_proj", "gated-softsign"])
        json["feed_forward_proj"] = "relu"
        XCTAssertEqual(try T5EncoderConfig(ConfigFile(path: path, json: json)).feedForward, .plain(.relu))
        json["d_model"] = nil
        assertError({ _ = try T5EncoderConfig(ConfigFile(path: path, json: json)) }, contains: [path, "d_model"])
    }

    func testMissingTensor() throws {
        let t5 = try T5Encoder.load("\(pipelineFixture)/text_encoder_2")
        let key = "encoder.block.1.layer.1.DenseReluDense.wi_1.weight"
        assertError({ _ = try T5EncoderGraph.build(config: t5.config, weights: HidingStore(t5.store, hiding: key), tokens: 32) },
                    contains: [key, "[48, 32]"])
        let vae = try VAEDecoder.load("\(pipelineFixture)/vae")
        let vkey = "decoder.up_blocks.2.resnets.0.conv_shortcut.weight"
        assertError({ _ = try VAEDecoderGraph.build(config: vae.config, weights: HidingStore(vae.store, hiding: vkey), latentHeight: 6, latentWidth: 10) },
                    contains: [vkey, "[16, 32, 1, 1]", "diffusion_pytorch_model.safetensors"])
    }
}
