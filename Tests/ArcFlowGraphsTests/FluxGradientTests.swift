// Training through the compiler: gradients of a FLUX/ArcFlow student's loss with respect to its
// adapter (LoRA A/B, norm_out, the head) against PyTorch autograd
// (Tools/fixtures/make_flux_grad_fixtures.py → Fixtures/<cfg>/grads-k16.safetensors).

import ArcFlowGraphs
import Foundation
import IR
import Passes
import Runtime
import TestSupport
import XCTest

final class FluxGradientTests: XCTestCase {
    /// The tensor group of an adapter key, for the per-group report.
    static func group(_ key: String) -> String {
        if key.hasSuffix(".lora_A.weight") { return "LoRA A" }
        if key.hasSuffix(".lora_B.weight") { return "LoRA B" }
        if key.hasPrefix("norm_out.") { return "norm_out" }
        return "head"
    }

    struct GradientCase {
        var fixture: FixtureCase
        var reference: SafeTensorsStore
        var program: FluxProgram
        var inputs: [String: Tensor]

        init(_ name: String) throws {
            fixture = try FixtureCase(name)
            reference = try SafeTensorsStore(path: "\(fixtures)/\(name)/grads-k16.safetensors")
            let sigma = Double(try reference.tensor("sigma").data[0])
            program = try FluxModel.trainingEvaluation(fixture.checkpoint, adapter: try fixture.adapter(16), sigma: sigma,
                                                       options: fixture.options)
            inputs = ["x": try fixture.input("noise"), "prompt_embeds": try fixture.input("prompt_embeds"),
                      "pooled_prompt_embeds": try fixture.input("pooled_prompt_embeds")]
            for head in FluxModel.headNames { inputs["target_\(head)"] = try reference.tensor("target_\(head)") }
        }

        /// Differentiates with respect to `wrt`, compiles through the default pipeline and runs.
        func gradients(wrt: [String]) throws -> (module: Module, outputs: [String: Tensor]) {
            let module = Module(try gradientGraph(program.module.main, loss: "loss", wrt: wrt))
            var options = CompileOptions()
            options.cacheRoot = testCacheRoot
            let compiled = try ModelCompiler.build(module, weights: program.weights, options: options)
            return (module, try compiled.load().run(inputs))
        }

        /// Compares every gradient in `outputs` with the reference; returns the worst relative L2
        /// per tensor group.
        func check(_ outputs: [String: Tensor], wrt: [String], label: String) throws -> [String: Double] {
            var worst: [String: (Double, String)] = [:]
            for key in wrt {
                let plain = String(key.dropFirst("adapter:".count))
                guard let got = outputs[gradientOutputName(key)] else { XCTFail("\(label): no gradient for \(key)"); continue }
                let want = try reference.tensor("grad:\(plain)")
                XCTAssertEqual(got.type.shape, want.type.shape, "\(label) \(plain)")
                let err = relativeL2(got, want)
                XCTAssertLessThan(err, 1e-4, "\(label): gradient of \(plain)")
                let g = FluxGradientTests.group(plain)
                if err > (worst[g]?.0 ?? -1) { worst[g] = (err, plain) }
            }
            for (g, (err, key)) in worst.sorted(by: { $0.key < $1.key }) {
                print("\(label) \(g): max relative L2 \(err) (\(key))")
            }
            return worst.mapValues(\.0)
        }
    }

    /// The acceptance check: loss and the gradient of every adapter tensor (LoRA A/B of every
    /// adapted layer, norm_out.linear.*, the three head layers), compiled, against PyTorch.
    func testAdapterGradientsMatchPyTorch() throws {
        for name in ["cfg-a", "cfg-b"] {
            let c = try GradientCase(name)
            let wrt = FluxModel.trainableKeys(try c.fixture.adapter(16))
            XCTAssertEqual(wrt.count, c.reference.names.filter { $0.hasPrefix("grad:") }.count, "\(name): every reference gradient is checked")
            let (_, out) = try c.gradients(wrt: wrt)
            let loss = try XCTUnwrap(out["loss"])
            let want = try c.reference.tensor("loss").data[0]
            let lossErr = abs(Double(loss.data[0]) - Double(want)) / abs(Double(want))
            print("\(name) loss \(loss.data[0]) vs PyTorch \(want): relative error \(lossErr)")
            XCTAssertLessThan(lossErr, 1e-5, "\(name) loss")
            let worst = try c.check(out, wrt: wrt, label: name)
            XCTAssertEqual(Set(worst.keys), ["LoRA A", "LoRA B", "norm_out", "head"])
        }
    }

    /// With only the LoRA A tensors differentiated, the backward never reads x·Aᵀ, so fuse-lora
    /// folds the forward LoRA into the base weight; the gradients must not change.
    func testGradientsWithForwardLoRAFused() throws {
        let c = try GradientCase("cfg-a")
        let wrt = FluxModel.trainableKeys(try c.fixture.adapter(16)).filter { $0.hasSuffix(".lora_A.weight") }
        let (module, out) = try c.gradients(wrt: wrt)
        var only = PipelineOptions()
        only.passes = ["fuse-lora"]
        let (fused, _) = try runPipeline(module, only)
        XCTAssertNotEqual(fused, module, "fuse-lora should fold the forward LoRA when B is not differentiated")
        _ = try c.check(out, wrt: wrt, label: "cfg-a (A only, forward fused)")
    }

    func testTrainingEvaluationErrors() throws {
        let c = try FixtureCase("cfg-a")
        let adapter = try c.adapter(16)
        XCTAssertThrowsError(try FluxModel.trainingEvaluation(c.checkpoint, adapter: adapter, sigma: 0.5, options: c.options,
                                                              lossWeights: ["velocity": 1])) { e in
            XCTAssert("\(e)".contains("no head named 'velocity'"), "\(e)")
        }
        XCTAssertThrowsError(try FluxModel.trainingEvaluation(c.checkpoint, adapter: adapter, sigma: 0.5, options: c.options,
                                                              lossWeights: ["means": 0])) { e in
            XCTAssert("\(e)".contains("every loss weight is zero"), "\(e)")
        }
        // A means-only loss has no target inputs for the other heads, and the heads stay outputs on request.
        let p = try FluxModel.trainingEvaluation(c.checkpoint, adapter: adapter, sigma: 0.5, options: c.options,
                                                 lossWeights: ["means": 2], keepHeads: true)
        let inputs = p.module.main.nodes.filter { $0.op == .input }.compactMap(\.key)
        XCTAssertEqual(Set(inputs), ["x", "prompt_embeds", "pooled_prompt_embeds", "target_means"])
        XCTAssertEqual(Set(p.module.main.outputs.map(\.name)), ["means", "logweights", "gammas", "loss"])
        XCTAssertEqual(p.module.main[p.module.main.outputs.first { $0.name == "loss" }!.value].type, .f32([]))
    }
}
