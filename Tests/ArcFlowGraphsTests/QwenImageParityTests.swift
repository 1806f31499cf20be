// Qwen-Image and its ArcFlow student against fixtures from diffusers' own Qwen-Image classes
// (Tools/fixtures/make_qwen_fixtures.py): single evaluations (with and without true CFG), the
// student heads, the Euler teacher through QwenImagePipeline and the arc sampler, step by step.

import ArcFlowGraphs
import Foundation
import IR
import Passes
import Runtime
import TestSupport
import XCTest

struct QwenFixture {
    var name: String
    var checkpoint: QwenImageCheckpoint
    var inputs: SafeTensorsStore
    var reference: SafeTensorsStore
    var options: QwenImageOptions
    var trueCFGScale: Double

    init(_ name: String) throws {
        self.name = name
        let dir = "\(fixtures)/\(name)"
        checkpoint = try QwenImageCheckpoint.load("\(dir)/transformer")
        inputs = try SafeTensorsStore(path: "\(dir)/case.safetensors")
        reference = try SafeTensorsStore(path: "\(dir)/reference.safetensors")
        let json = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: "\(dir)/case.json"))) as! [String: Any]
        options = QwenImageOptions(height: json["height"] as! Int, width: json["width"] as! Int)
        options.textTokens = json["text_tokens"] as! Int
        trueCFGScale = json["true_cfg_scale"] as! Double
    }

    /// The adapters each configuration ships (K = 16 f16 and K = 8 f32 `transformer.`-prefixed for
    /// qwen-a; K = 8 f16 for qwen-b).
    var components: [Int] { name == "qwen-a" ? [16, 8] : [8] }

    func adapter(_ k: Int) throws -> ArcFlowAdapter { try QwenImageCheckpoint.adapter("\(fixtures)/\(name)/adapter-k\(k)") }
    func input(_ key: String) throws -> Tensor { try inputs.tensor(key) }
    func expected(_ key: String) throws -> Tensor { try reference.tensor(key) }

    func evaluationInputs(scale: Float = 1, negative: Bool = false) throws -> [String: Tensor] {
        var x = try input("noise")
        x.data = x.data.map { $0 * scale }
        var inputs = ["x": x, "prompt_embeds": try input("prompt_embeds")]
        if negative { inputs["negative_prompt_embeds"] = try input("negative_prompt_embeds") }
        return inputs
    }

    func samplerInputs(negative: Bool = false) throws -> [String: Tensor] {
        var inputs = ["noise": try input("noise"), "prompt_embeds": try input("prompt_embeds")]
        if negative { inputs["negative_prompt_embeds"] = try input("negative_prompt_embeds") }
        return inputs
    }
}

final class QwenImageParityTests: XCTestCase {
    let configs = ["qwen-a", "qwen-b"]

    func testConfigsAndFamilies() throws {
        let c = try QwenFixture("qwen-a")
        XCTAssertEqual(c.checkpoint.config, QwenImageConfig(numLayers: 2, attentionHeadDim: 32, numAttentionHeads: 2,
                                                           jointAttentionDim: 40, axesDimsRope: [8, 12, 12]))
        // out_channels: absent is diffusers' default 16; null is `out_channels or in_channels`, which
        // the 2×2 packing cannot take and is refused by name rather than read as 16.
        let sizes: [String: Any] = ["num_layers": 1, "attention_head_dim": 32, "num_attention_heads": 2, "joint_attention_dim": 40,
                                    "axes_dims_rope": [8, 12, 12]]
        XCTAssertEqual(try QwenImageConfig(ConfigFile(path: "c.json", json: sizes)).outChannels, 16)
        XCTAssertThrowsError(try QwenImageConfig(ConfigFile(path: "c.json", json: sizes.merging(["out_channels": NSNull()]) { $1 }))) { e in
            XCTAssertTrue("\(e)".contains("in_channels 64 must be 4 × out_channels 64"), "\(e)")
        }
        XCTAssertEqual(try TransformerFamily.of("\(fixtures)/qwen-a/transformer"), .qwenImage)
        XCTAssertEqual(try TransformerFamily.of("\(fixtures)/cfg-a/transformer"), .flux)
        XCTAssertEqual(try c.adapter(16).components, 16)
        XCTAssertEqual(try c.adapter(8).lora.count, 2 * 2 + 2 * 1 + 2, "image MLPs ×2 blocks, text MLPs of block 0, timestep embedder")
        // A FLUX adapter class is not a Qwen-Image adapter.
        XCTAssertThrowsError(try QwenImageCheckpoint.adapter("\(fixtures)/cfg-a/adapter-k4")) { e in
            XCTAssertTrue("\(e)".contains("unknown _class_name 'ArcFluxTransformer2DModel' (expected ArcQwenImageTransformer2DModel)"), "\(e)")
        }
    }

    func testTeacherEvaluations() throws {
        for name in configs {
            let c = try QwenFixture(name)
            for (sigma, scale, key) in [(1.0, Float(1), "teacher_v_s1.000"), (0.6, Float(0.3), "teacher_v_s0.600")] {
                let program = try QwenImageModel.evaluation(c.checkpoint, adapter: nil, sigma: sigma, options: c.options)
                let out = try compileAndRun(program, try c.evaluationInputs(scale: scale))
                let err = relativeL2(out["velocity"]!, try c.expected(key))
                print("\(name) \(key): relative L2 \(err)")
                XCTAssertLessThan(err, 1e-4, "\(name) \(key)")
            }
        }
    }

    /// One batched evaluation of prompt and negative prompt, combined as QwenImagePipeline does
    /// (with its per-token norm rescaling).
    func testTrueCFGEvaluation() throws {
        for name in configs {
            let c = try QwenFixture(name)
            var o = c.options
            o.trueCFGScale = c.trueCFGScale
            let program = try QwenImageModel.evaluation(c.checkpoint, adapter: nil, sigma: 0.6, options: o)
            let out = try compileAndRun(program, try c.evaluationInputs(scale: 0.3, negative: true))
            let err = relativeL2(out["velocity"]!, try c.expected("teacher_cfg_v_s0.600"))
            print("\(name) true CFG \(c.trueCFGScale) velocity: relative L2 \(err)")
            XCTAssertLessThan(err, 1e-4, name)
            // The guided velocity is not the prompt's alone: the negative prompt reaches it.
            XCTAssertGreaterThan(relativeL2(out["velocity"]!, try c.expected("teacher_v_s0.600")), 0.1)
        }
    }

    /// A negative prompt of its own length (QwenImagePipeline encodes each prompt at its own
    /// length): the guided velocity is QwenImagePipeline's combination of the prompt's velocity and
    /// the negative's, each as a plain evaluation at its length computes it (those match diffusers
    /// above, at any text length the fixtures cover).
    func testTrueCFGWithANegativeOfAnotherLength() throws {
        let c = try QwenFixture("qwen-a")
        let inputs = try c.evaluationInputs(scale: 0.3)
        let prompt = inputs["prompt_embeds"]!
        let (t, d) = (prompt.shape[1], prompt.shape[2]), t2 = t - 3
        // The negative: the prompt's last t2 tokens.
        let negative = Tensor(.f32([1, t2, d]), Array(prompt.data[(3 * d)...]))
        var o = c.options
        o.trueCFGScale = 4
        o.negativeTextTokens = t2
        let guided = try compileAndRun(try QwenImageModel.evaluation(c.checkpoint, adapter: nil, sigma: 0.6, options: o),
                                       inputs.merging(["negative_prompt_embeds": negative]) { a, _ in a })["velocity"]!
        o.trueCFGScale = nil
        o.negativeTextTokens = nil
        let cond = try compileAndRun(try QwenImageModel.evaluation(c.checkpoint, adapter: nil, sigma: 0.6, options: o), inputs)["velocity"]!
        o.textTokens = t2
        let uncond = try compileAndRun(try QwenImageModel.evaluation(c.checkpoint, adapter: nil, sigma: 0.6, options: o),
                                       ["x": inputs["x"]!, "prompt_embeds": negative])["velocity"]!
        // comb = u_neg + s(u − u_neg), rescaled to ‖u‖ per token: the norms over each token's packed
        // channels (all C channels of its 2×2 latent pixels).
        let (ch, h, w) = (cond.shape[1], cond.shape[2], cond.shape[3])
        var want = cond
        for r in 0..<(h / 2) {
            for q in 0..<(w / 2) {
                var at: [Int] = []
                for k in 0..<ch { for py in 0..<2 { for px in 0..<2 { at.append((k * h + 2 * r + py) * w + 2 * q + px) } } }
                let comb = at.map { Double(uncond.data[$0]) + 4 * (Double(cond.data[$0]) - Double(uncond.data[$0])) }
                let scale = at.map { Double(cond.data[$0]) * Double(cond.data[$0]) }.reduce(0, +).squareRoot()
                    / comb.map { $0 * $0 }.reduce(0, +).squareRoot()
                for (i, j) in at.enumerated() { want.data[j] = Float(comb[i] * scale) }
            }
        }
        let err = relativeL2(guided, want)
        print("true CFG with a \(t2)-token negative (prompt \(t)): relative L2 \(err) against the combination of two evaluations")
        XCTAssertLessThan(err, 1e-5)
        XCTAssertEqual(guided.shape, cond.shape)
    }

    func testStudentHeads() throws {
        for name in configs {
            let c = try QwenFixture(name)
            for k in c.components {
                let program = try QwenImageModel.evaluation(c.checkpoint, adapter: try c.adapter(k), sigma: 1, options: c.options)
                let out = try compileAndRun(program, try c.evaluationInputs())
                for head in FluxModel.headNames {
                    let err = relativeL2(out[head]!, try c.expected("k\(k)_\(head)_s1.000"))
                    print("\(name) K=\(k) \(head): relative L2 \(err)")
                    XCTAssertLessThan(err, 1e-4, "\(name) K=\(k) \(head)")
                }
            }
        }
    }

    /// The teacher's Euler sampler (4 steps, shift 3.2) against QwenImagePipeline's own loop, with
    /// the prompt alone and with true CFG.
    func testEulerTeacherStepByStep() throws {
        for name in configs {
            let c = try QwenFixture(name)
            for cfg in [nil, c.trueCFGScale] {
                var o = c.options
                o.sampler = .euler
                o.steps = 4
                o.trueCFGScale = cfg
                o.intermediateOutputs = true
                let program = try QwenImageModel.sampler(c.checkpoint, adapter: nil, options: o)
                // QwenImagePipeline's scheduler rounds its f64 schedule to f32 on its own path: the
                // knots agree to an ulp (0.7619048 vs 0.76190484), not bit for bit.
                for (ours, theirs) in zip(program.sigmas, try c.expected("euler4_sigmas").data) {
                    XCTAssertEqual(Float(ours), theirs, accuracy: 1e-6)
                }
                let out = try compileAndRun(program, try c.samplerInputs(negative: cfg != nil))
                let prefix = cfg == nil ? "euler4" : "cfg_euler4"
                for i in 1...4 {
                    let err = relativeL2(out["x\(i)"]!, try c.expected("\(prefix)_x\(i)"))
                    print("\(name) \(prefix) step \(i): relative L2 \(err)")
                    XCTAssertLessThan(err, 1e-3, "\(name) \(prefix) x\(i)")
                }
                XCTAssertEqual(out["latents"], out["x4"])
            }
        }
    }

    func testArcSamplerStepByStep() throws {
        for name in configs {
            let c = try QwenFixture(name)
            for k in c.components {
                for n in [2, 3] {
                    var o = c.options
                    o.steps = n
                    o.intermediateOutputs = true
                    let program = try QwenImageModel.sampler(c.checkpoint, adapter: try c.adapter(k), options: o)
                    XCTAssertEqual(program.sigmas.map { Float($0) }, try c.expected("arc\(n)_sigmas").data)
                    let out = try compileAndRun(program, try c.samplerInputs())
                    for i in 1...n {
                        let err = relativeL2(out["x\(i)"]!, try c.expected("k\(k)_arc\(n)_x\(i)"))
                        print("\(name) K=\(k) arc\(n) step \(i): relative L2 \(err)")
                        XCTAssertLessThan(err, 1e-3, "\(name) K=\(k) arc\(n) x\(i)")
                    }
                }
            }
        }
    }

    /// K = 1 in the reference's layout (an empty [0, D] loggamma layer) and one step (Δ = 1, whose
    /// ×Δ fold-constants drops from the pattern fold-arc-integral matches): a K = 1 student whose
    /// head is the teacher's own proj_out and norm_out, without LoRA, is the 1-step Euler teacher.
    func testOneComponentOneStepIsTheTeachersEulerStep() throws {
        let c = try QwenFixture("qwen-a")
        let dir = try makeTemporaryDirectory("arcflow-qwen-k1")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var config = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: "\(fixtures)/qwen-a/adapter-k8/config.json"))) as! [String: Any]
        config["num_gaussians"] = 1
        try JSONSerialization.data(withJSONObject: config).write(to: URL(fileURLWithPath: "\(dir)/config.json"))
        let base = c.checkpoint.store
        func copy(_ from: String, as name: String) throws -> TensorRecord {
            let t = base.type(of: from)!
            let bytes = [UInt8](UnsafeRawBufferPointer(start: try base.raw(from), count: t.byteCount))
            return TensorRecord(name: name, dtype: t.dtype, shape: t.shape, payload: .raw(bytes))
        }
        let width = base.type(of: "proj_out.weight")!.shape[1]
        let records = [
            try copy("proj_out.weight", as: "proj_out_means.weight"), try copy("proj_out.bias", as: "proj_out_means.bias"),
            try copy("norm_out.linear.weight", as: "norm_out.linear.weight"), try copy("norm_out.linear.bias", as: "norm_out.linear.bias"),
            TensorRecord(name: "proj_out_logweights.weight", dtype: .f32, shape: [4, width], payload: .floats(Array(repeating: 0, count: 4 * width))),
            TensorRecord(name: "proj_out_logweights.bias", dtype: .f32, shape: [4], payload: .floats([0, 0, 0, 0])),
            TensorRecord(name: "proj_out_loggamma.weight", dtype: .f32, shape: [0, width], payload: .floats([])),
            TensorRecord(name: "proj_out_loggamma.bias", dtype: .f32, shape: [0], payload: .floats([])),
        ]
        try writeSafeTensors(records, to: "\(dir)/diffusion_pytorch_model.safetensors")
        var o = c.options
        o.steps = 1
        let student = try QwenImageModel.sampler(c.checkpoint, adapter: try QwenImageCheckpoint.adapter(dir), options: o)
        o.sampler = .euler
        let teacher = try QwenImageModel.sampler(c.checkpoint, adapter: nil, options: o)
        XCTAssertEqual(student.sigmas, [1, 0])
        XCTAssertEqual(teacher.sigmas, [1, 0])
        let err = relativeL2(try compileAndRun(student, try c.samplerInputs())["latents"]!, try compileAndRun(teacher, try c.samplerInputs())["latents"]!)
        print("K = 1 student with the teacher's head, 1 step, against the 1-step Euler teacher: relative L2 \(err)")
        XCTAssertLessThan(err, 1e-6)
    }

    /// fuse-lora on against the adapter computed unfused (pass disabled).
    func testFusedLoRAMatchesUnfused() throws {
        let c = try QwenFixture("qwen-a")
        let program = try QwenImageModel.evaluation(c.checkpoint, adapter: try c.adapter(16), sigma: 1, options: c.options)
        let fused = try compileAndRun(program, try c.evaluationInputs())
        let unfused = try compileAndRun(program, try c.evaluationInputs(), disabling: ["fuse-lora"])
        for head in FluxModel.headNames {
            let diff = relativeL2(fused[head]!, unfused[head]!)
            print("qwen-a fuse-lora on vs off, \(head): relative difference \(diff)")
            XCTAssertLessThan(diff, 1e-5)
        }
    }

    /// Option checks name the option at fault.
    func testOptionErrors() throws {
        let c = try QwenFixture("qwen-a")
        var o = c.options
        o.trueCFGScale = 4
        XCTAssertThrowsError(try QwenImageModel.sampler(c.checkpoint, adapter: try c.adapter(16), options: o)) { e in
            XCTAssertTrue("\(e)".contains("--true-cfg-scale is for the teacher"), "\(e)")
        }
        o.sampler = .euler
        o.trueCFGScale = 1
        XCTAssertThrowsError(try QwenImageModel.sampler(c.checkpoint, adapter: nil, options: o)) { e in
            XCTAssertTrue("\(e)".contains("--true-cfg-scale must be greater than 1, got 1.0"), "\(e)")
        }
        o.trueCFGScale = nil
        o.negativeTextTokens = 3
        XCTAssertThrowsError(try QwenImageModel.sampler(c.checkpoint, adapter: nil, options: o)) { e in
            XCTAssertTrue("\(e)".contains("--negative-text-tokens goes with --true-cfg-scale"), "\(e)")
        }
    }
}
