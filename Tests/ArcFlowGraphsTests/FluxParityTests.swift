// FLUX and ArcFlow against fixtures from diffusers/PyTorch (Tools/fixtures/make_flux_fixtures.py):
// single transformer evaluations, both samplers step by step, two configurations.

import ArcFlowGraphs
import Foundation
import IR
import Passes
import Runtime
import TestSupport
import XCTest

let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures").path

struct FixtureCase {
    var name: String
    var checkpoint: FluxCheckpoint
    var inputs: SafeTensorsStore
    var reference: SafeTensorsStore
    var options: FluxOptions

    init(_ name: String) throws {
        self.name = name
        let dir = "\(fixtures)/\(name)"
        checkpoint = try FluxCheckpoint.load("\(dir)/transformer")
        inputs = try SafeTensorsStore(path: "\(dir)/case.safetensors")
        reference = try SafeTensorsStore(path: "\(dir)/reference.safetensors")
        let json = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: "\(dir)/case.json"))) as! [String: Any]
        options = FluxOptions(height: json["height"] as! Int, width: json["width"] as! Int)
        options.textTokens = json["text_tokens"] as! Int
        options.guidance = json["guidance"] as? Double
    }

    func adapter(_ k: Int) throws -> ArcFlowAdapter { try ArcFlowAdapter.load("\(fixtures)/\(name)/adapter-k\(k)") }
    func input(_ key: String) throws -> Tensor { try inputs.tensor(key) }
    func expected(_ key: String) throws -> Tensor { try reference.tensor(key) }
}

/// Compiles a FLUX program through the full default pipeline and runs it.
func compileAndRun(_ program: FluxProgram, _ inputs: [String: Tensor], disabling: Set<String> = []) throws -> [String: Tensor] {
    var options = CompileOptions()
    options.cacheRoot = testCacheRoot
    options.pipeline.disabled = disabling
    assertRoundTrips(program.module)
    let compiled = try ModelCompiler.build(program.module, weights: program.weights, options: options)
    assertRoundTrips(compiled.module)
    return try compiled.load().run(inputs)
}

final class FluxParityTests: XCTestCase {
    func testTeacherEvaluations() throws {
        for name in ["cfg-a", "cfg-b"] {
            let c = try FixtureCase(name)
            for (sigma, scale, key) in [(1.0, Float(1), "teacher_v_s1.000"), (0.6, Float(0.3), "teacher_v_s0.600")] {
                let program = try FluxModel.evaluation(c.checkpoint, adapter: nil, sigma: sigma, options: c.options)
                var x = try c.input("noise")
                x.data = x.data.map { $0 * scale }
                let out = try compileAndRun(program, ["x": x, "prompt_embeds": try c.input("prompt_embeds"),
                                                       "pooled_prompt_embeds": try c.input("pooled_prompt_embeds")])
                let err = relativeL2(out["velocity"]!, try c.expected(key))
                print("\(name) \(key): relative L2 \(err)")
                XCTAssertLessThan(err, 1e-4, "\(name) \(key)")
            }
        }
    }

    func testStudentHeads() throws {
        for name in ["cfg-a", "cfg-b"] {
            let c = try FixtureCase(name)
            for k in [16, 4] {
                let program = try FluxModel.evaluation(c.checkpoint, adapter: try c.adapter(k), sigma: 1, options: c.options)
                let out = try compileAndRun(program, ["x": try c.input("noise"), "prompt_embeds": try c.input("prompt_embeds"),
                                                       "pooled_prompt_embeds": try c.input("pooled_prompt_embeds")])
                for head in ["means", "logweights", "gammas"] {
                    let err = relativeL2(out[head]!, try c.expected("k\(k)_\(head)_s1.000"))
                    print("\(name) K=\(k) \(head): relative L2 \(err)")
                    XCTAssertLessThan(err, 1e-4, "\(name) K=\(k) \(head)")
                }
            }
        }
    }

    func samplerInputs(_ c: FixtureCase) throws -> [String: Tensor] {
        ["noise": try c.input("noise"), "prompt_embeds": try c.input("prompt_embeds"),
         "pooled_prompt_embeds": try c.input("pooled_prompt_embeds")]
    }

    func testEulerSamplerStepByStep() throws {
        for name in ["cfg-a", "cfg-b"] {
            let c = try FixtureCase(name)
            var o = c.options
            o.sampler = .euler
            o.steps = 4
            o.intermediateOutputs = true
            let program = try FluxModel.sampler(c.checkpoint, adapter: nil, options: o)
            XCTAssertEqual(program.sigmas.map { Float($0) }, try c.expected("euler4_sigmas").data)
            let out = try compileAndRun(program, try samplerInputs(c))
            for i in 1...4 {
                let err = relativeL2(out["x\(i)"]!, try c.expected("euler4_x\(i)"))
                print("\(name) euler step \(i): relative L2 \(err)")
                XCTAssertLessThan(err, 1e-3, "\(name) euler x\(i)")
            }
            XCTAssertEqual(out["latents"], out["x4"])
        }
    }

    func testArcSamplerStepByStep() throws {
        for name in ["cfg-a", "cfg-b"] {
            let c = try FixtureCase(name)
            for k in [16, 4] {
                for n in [2, 3] {
                    var o = c.options
                    o.sampler = .arc
                    o.steps = n
                    o.intermediateOutputs = true
                    let program = try FluxModel.sampler(c.checkpoint, adapter: try c.adapter(k), options: o)
                    XCTAssertEqual(program.sigmas.map { Float($0) }, try c.expected("arc\(n)_sigmas").data)
                    let out = try compileAndRun(program, try samplerInputs(c))
                    for i in 1...n {
                        let err = relativeL2(out["x\(i)"]!, try c.expected("k\(k)_arc\(n)_x\(i)"))
                        print("\(name) K=\(k) arc\(n) step \(i): relative L2 \(err)")
                        XCTAssertLessThan(err, 1e-3, "\(name) K=\(k) arc\(n) x\(i)")
                    }
                }
            }
        }
    }

    /// fuse-lora on against the adapter computed unfused (pass disabled).
    func testFusedLoRAMatchesUnfused() throws {
        for name in ["cfg-a", "cfg-b"] {
            let c = try FixtureCase(name)
            let program = try FluxModel.evaluation(c.checkpoint, adapter: try c.adapter(16), sigma: 1, options: c.options)
            let inputs = ["x": try c.input("noise"), "prompt_embeds": try c.input("prompt_embeds"),
                          "pooled_prompt_embeds": try c.input("pooled_prompt_embeds")]
            let fused = try compileAndRun(program, inputs)
            let unfused = try compileAndRun(program, inputs, disabling: ["fuse-lora"])
            for head in ["means", "logweights", "gammas"] {
                let diff = relativeL2(fused[head]!, unfused[head]!)
                print("\(name) fuse-lora on vs off, \(head): relative difference \(diff)")
                XCTAssertLessThan(diff, 1e-5)
            }
        }
    }

    /// The folded arc_step kernel against the primitive ops it replaces (pass disabled); one step
    /// too (Δ = 1, whose ×Δ fold-constants drops from the pattern).
    func testFoldedArcStepMatchesPrimitiveOps() throws {
        let c = try FixtureCase("cfg-a")
        for steps in [2, 1] {
            var o = c.options
            o.steps = steps
            let program = try FluxModel.sampler(c.checkpoint, adapter: try c.adapter(16), options: o)
            var module = program.module
            try foldConstants.run(&module, PassContext())
            try foldArcIntegral.run(&module, PassContext())
            XCTAssertEqual(module.main.nodes.filter { $0.op == .arc_step }.count, steps)
            let folded = try compileAndRun(program, try samplerInputs(c))
            let primitive = try compileAndRun(program, try samplerInputs(c), disabling: ["fold-arc-integral"])
            XCTAssertLessThan(relativeL2(folded["latents"]!, primitive["latents"]!), 1e-6, "\(steps) steps")
        }
    }

    /// cfg-c: no double-stream block (`num_layers` 0; the text only meets the image in the single
    /// blocks), an f16 base and a prefixed f16 K = 8 adapter: one teacher evaluation, the Euler
    /// teacher's final latents, and the student's heads and 2-NFE latents against diffusers.
    func testNoDoubleBlocks() throws {
        let c = try FixtureCase("cfg-c")
        XCTAssertEqual(c.checkpoint.config.numLayers, 0)
        let inputs = ["x": try c.input("noise"), "prompt_embeds": try c.input("prompt_embeds"),
                      "pooled_prompt_embeds": try c.input("pooled_prompt_embeds")]
        let teacher = try compileAndRun(try FluxModel.evaluation(c.checkpoint, adapter: nil, sigma: 1, options: c.options), inputs)
        XCTAssertLessThan(relativeL2(teacher["velocity"]!, try c.expected("teacher_v_s1.000")), 1e-4)
        let heads = try compileAndRun(try FluxModel.evaluation(c.checkpoint, adapter: try c.adapter(8), sigma: 1, options: c.options), inputs)
        for head in ["means", "logweights", "gammas"] {
            let err = relativeL2(heads[head]!, try c.expected("k8_\(head)_s1.000"))
            print("cfg-c K=8 \(head): relative L2 \(err)")
            XCTAssertLessThan(err, 1e-4, head)
        }
        for (sampler, steps, adapter, key) in [(Sampler.euler, 4, nil as ArcFlowAdapter?, "euler4_x4"), (.arc, 2, try c.adapter(8), "k8_arc2_x2")] {
            var o = c.options
            o.sampler = sampler
            o.steps = steps
            let out = try compileAndRun(try FluxModel.sampler(c.checkpoint, adapter: adapter, options: o), try samplerInputs(c))
            let err = relativeL2(out["latents"]!, try c.expected(key))
            print("cfg-c \(key): relative L2 \(err)")
            XCTAssertLessThan(err, 1e-3, key)
        }
    }
}
