import Foundation
import ArcFlowGraphs
@testable import DefaultModel
import IR
import Runtime
import ShapesWorld
import Training
import XCTest

final class DefaultModelTests: XCTestCase {
    /// A tiny train step, compiled, on rendered batches.
    func makeTrainer(seed: UInt64, steps: Int, lr: Double = 3e-3) throws -> Trainer {
        let c = TeacherConfig.tiny(batch: 4)
        let store = TeacherGraphs.store(c, trained: TensorStore(TeacherWeights.random(c, seed: seed)))
        let step = try OptimizerStep.build(lossGraph: try TeacherGraphs.loss(c, weights: store), loss: "loss",
                                           parameters: TeacherWeights.trainable(c).map { TrainableParameter($0, ema: true) },
                                           optimizer: OptimizerConfig(maxGradNorm: 1))
        let session = try TrainingSession(step: step, executable: try ModelCompiler.build(Module(step.graph), weights: store).load(), initial: store)
        var batches = TeacherBatches(config: c, seed: seed)
        batches.dropout = 0
        let config = TrainConfig(steps: steps, schedule: LRSchedule(lr: lr), seed: seed, threads: 1, progress: false)
        return Trainer(session: session, batches: FixedBatch(inner: batches), config: config, directory: nil)
    }

    /// One batch repeated: a model this small must fit it, so the loss must fall.
    struct FixedBatch: BatchProvider {
        let inner: TeacherBatches
        func batch(step: Int) throws -> [String: [Float]] { try inner.batch(step: 0) }
    }

    func testLossFalls() throws {
        let t = try makeTrainer(seed: 3, steps: 40)
        try t.run()
        let first = t.history.prefix(5).map(\.loss).reduce(0, +) / 5
        let last = t.history.suffix(5).map(\.loss).reduce(0, +) / 5
        XCTAssertLessThan(last, 0.7 * first, "loss \(first) → \(last)")
    }

    func testSameSeedSameWeights() throws {
        let a = try makeTrainer(seed: 5, steps: 3), b = try makeTrainer(seed: 5, steps: 3)
        try a.run(); try b.run()
        XCTAssertEqual(a.history.map(\.loss), b.history.map(\.loss))
        XCTAssertEqual(try a.session.bytes("proj_out.weight"), try b.session.bytes("proj_out.weight"))
        XCTAssertEqual(try a.session.bytes("ema/x_embedder.weight"), try b.session.bytes("ema/x_embedder.weight"))
    }

    func testBatchesArePureFunctionsOfTheStep() throws {
        let p = TeacherBatches(config: .tiny(batch: 3), seed: 9)
        XCTAssertEqual(try p.batch(step: 7), try p.batch(step: 7))
        XCTAssertNotEqual(try p.batch(step: 7)["x0"], try p.batch(step: 8)["x0"])
        XCTAssertFalse(p.prompts(step: 1).contains { $0.containsHeldOutPair })
    }

    /// The compiled CFG sampler (2 unrolled steps) against the interpreter.
    func testCFGSamplerMatchesInterpreter() throws {
        let c = TeacherConfig.tiny()
        let store = TeacherGraphs.store(c, trained: TensorStore(TeacherWeights.random(c, seed: 11)))
        let graph = try TeacherGraphs.sampler(c, weights: store, count: 2, steps: 2)
        var rng = SeededGenerator(seed: 1)
        let ids = try ["a red circle", "a small blue square at the top left"].flatMap { try WorldVocabulary.encode($0).map(Float.init) }
        let inputs: [String: Tensor] = [
            "noise": Tensor(.f32([2, 3, 64, 64]), rng.normals(2 * 3 * 64 * 64)),
            "input_ids": Tensor(.f32([2, WorldVocabulary.length]), ids),
            "sigmas": Tensor(.f32([3]), [1, 0.5, 0]),
            "guidance_scale": Tensor(.f32([1]), [4]),
        ]
        let compiled = try ModelCompiler.build(Module(graph), weights: store).load().run(inputs)["images"]!
        let reference = try Interpreter.run(graph, inputs: inputs) { key, _ in try store.tensor(key) }["images"]!
        XCTAssertEqual(compiled.type, reference.type)
        let err = zip(compiled.data, reference.data).map { abs($0 - $1) }.max()!
        let scale = reference.data.map(abs).max()!
        XCTAssertLessThan(err, 1e-3 * max(scale, 1), "max |compiled − interpreter| = \(err)")
    }

    /// Guidance 1 is the conditional model alone; the loss graph's x_t at σ and the sampler agree
    /// on layouts: patchify then unpatchify is the identity.
    func testPatchifyRoundTrip() throws {
        let c = TeacherConfig.tiny()
        let b = GraphBuilder(name: "p")
        let x = b.input("x", .f32([2, 3, 64, 64]))
        b.output("y", TeacherGraphs.unpatchify(TeacherGraphs.patchify(x, c), c))
        var rng = SeededGenerator(seed: 2)
        let t = Tensor(.f32([2, 3, 64, 64]), rng.normals(2 * 3 * 64 * 64))
        XCTAssertEqual(try Interpreter.run(try b.finish(), inputs: ["x": t]) { k, _ in throw ArcError("no weight \(k)") }["y"], t)
    }

    func testStandardConfigSize() {
        let n = TeacherWeights.layout(.standard()).reduce(0) { $0 + $1.shape.reduce(1, *) }
        XCTAssertGreaterThan(n, 5_000_000)
        XCTAssertLessThan(n, 8_000_000)
    }

    /// The shipped teacher's train step builds (graph only, not compiled): with no single blocks
    /// the last block's text output reaches nothing, and differentiating a weight that does not
    /// affect the loss is an error, so those weights are frozen rather than trained.
    func testStandardTrainStepBuilds() throws {
        let c = TeacherConfig.standard(batch: 1)
        let store = TeacherGraphs.store(c, trained: TensorStore(TeacherWeights.random(c, seed: 0)))
        let trained = TeacherWeights.trainable(c)
        let step = try OptimizerStep.build(lossGraph: try TeacherGraphs.loss(c, weights: store), loss: "loss",
                                           parameters: trained.map { TrainableParameter($0) }, optimizer: OptimizerConfig(maxGradNorm: 1))
        XCTAssertEqual(TeacherWeights.frozen(c), ["attn.to_add_out", "ff_context.net.0.proj", "ff_context.net.2"].flatMap { m in
            ["weight", "bias"].map { "transformer_blocks.3.\(m).\($0)" }
        })
        XCTAssertEqual(trained.count + 6, TeacherWeights.layout(c).count)
        XCTAssertTrue(step.stateNames.contains("adam_m/transformer_blocks.3.ff.net.2.weight"))
        XCTAssertTrue(TeacherWeights.frozen(.tiny()).isEmpty, "the tiny config has a single block that reads the text rows")
    }

    /// `train-default --init-weights`: every weight read from a file, checked against the layout.
    func testInitWeightsFromAFile() throws {
        let c = TeacherConfig.tiny()
        let dir = NSTemporaryDirectory() + "arcflow-init-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let weights = TeacherWeights.random(c, seed: 7)
        try TeacherWeights.write(weights, to: "\(dir)/w.safetensors")
        let read = try TeacherRun.initialWeights(c, from: "\(dir)/w.safetensors")
        XCTAssertEqual(read.count, weights.count)
        for (k, t) in weights { XCTAssertEqual(read[k]?.data, t.data, k) }
        try TeacherWeights.write(weights.filter { $0.key != "proj_out.bias" }, to: "\(dir)/short.safetensors")
        XCTAssertThrowsError(try TeacherRun.initialWeights(c, from: "\(dir)/short.safetensors")) {
            XCTAssertTrue("\($0)".contains("proj_out.bias"), "\($0)")
        }
        XCTAssertThrowsError(try TeacherRun.initialWeights(c, from: "\(dir)/none")) {
            XCTAssertTrue("\($0)".contains("--init-weights"), "\($0)")
        }
    }
}
