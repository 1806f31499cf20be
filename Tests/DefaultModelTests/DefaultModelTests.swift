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

    /// `train-default --relation-across`: the layout prior shapes a run's batches, so a resumed
    /// run must keep its own; another one is refused with both values named.
    func testResumeKeepsTheRunsRelationPrior() throws {
        let dir = NSTemporaryDirectory() + "arcflow-across-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var o = TeacherRunOptions(directory: dir)
        o.shape = TeacherShape(patch: 32, width: 64, doubleBlocks: 1, singleBlocks: 1)
        (o.batch, o.steps, o.warmup, o.evalEvery, o.saveEvery, o.threads) = (2, 2, 0, 0, 1, 1)
        o.relationAcross = 6
        o.log = { _ in }
        try TeacherRun.run(o)
        o.resume = true
        o.steps = 3
        o.relationAcross = nil
        XCTAssertThrowsError(try TeacherRun.prepare(o)) {
            XCTAssertTrue("\($0)".contains("--relation-across 6.0, not unset"), "\($0)")
        }
        o.relationAcross = 6
        o.guidance = 4
        var lines: [String] = []
        o.log = { lines.append($0) }
        XCTAssertEqual(try TeacherRun.prepare(o).trainer.session.stepCount, 2)
        // The settings that changed are said (the decay start, 2 for 2 and for 3 steps, did not).
        XCTAssertEqual(lines.filter { $0.hasPrefix("note:") }, [
            "note: resuming with steps 3 where the run so far had 2; the new value applies from here",
            "note: resuming with guidance 4.0 where the run so far had 5.0; the new value applies from here",
        ])
        // The batches differ from the world's prior exactly in the two-object scenes.
        let c = try TeacherConfig.make(o.shape!, batch: 16)
        var narrow = TeacherBatches(config: c, seed: 3)
        narrow.relationAcross = 6
        XCTAssertNotEqual(try narrow.batch(step: 0)["x0"], try TeacherBatches(config: c, seed: 3).batch(step: 0)["x0"])
        XCTAssertEqual(narrow.prompts(step: 0), TeacherBatches(config: c, seed: 3).prompts(step: 0))
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
        // A finer patch starts from the coarser teacher's weights, re-patched.
        var finer = c
        finer.patch = c.patch / 2
        finer.flux.inChannels = 3 * finer.patch * finer.patch
        let warm = try TeacherRun.initialWeights(finer, from: "\(dir)/w.safetensors")
        XCTAssertEqual(warm, TeacherWeights.repatched(weights, from: c.patch, to: finer.patch))
        XCTAssertEqual(warm["x_embedder.weight"]?.shape, [c.flux.width, finer.tokenChannels])
        // The steps behind a warm start chain into the exported count: a flat file's metadata,
        // a default-model folder's model.json; unrecorded steps leave the run's own.
        XCTAssertNil(try TeacherRun.trainedSteps(of: "\(dir)/w.safetensors"))
        try TeacherWeights.write(weights, metadata: ["trained_steps": "30000"], to: "\(dir)/ema.safetensors")
        XCTAssertEqual(try TeacherRun.trainedSteps(of: "\(dir)/ema.safetensors"), "30000")
        let std = TeacherConfig.standard()
        try DefaultModelExport.write(TeacherWeights.random(std, seed: 1), config: std, trainedSteps: "30000 + 7000", to: "\(dir)/model")
        XCTAssertEqual(try TeacherRun.trainedSteps(of: "\(dir)/model"), "30000 + 7000")
        XCTAssertEqual(TeacherRun.chainedSteps(7000, after: "30000"), "30000 + 7000")
        XCTAssertEqual(TeacherRun.chainedSteps(7000, after: nil), "7000")
    }

    /// `train-default --patch/--width/--double-blocks/--single-blocks`: a teacher's shape is read
    /// back from its weights alone (what `--resume`, `--export-teacher`, `--evaluate` and
    /// `distill-default` rely on), and shapes the pixel layout or heads cannot take are refused.
    func testTeacherShapeFromWeights() throws {
        for shape in [TeacherShape(), TeacherShape(patch: 4, width: 128, doubleBlocks: 2, singleBlocks: 1),
                      TeacherShape(patch: 16, width: 64, doubleBlocks: 1, singleBlocks: 0)] {
            let c = try TeacherConfig.make(shape, batch: 3)
            let weights = TensorStore(TeacherWeights.layout(c).reduce(into: [String: Tensor]()) {
                $0[$1.name] = Tensor(.f32($1.shape), [Float](repeating: 0, count: $1.shape.reduce(1, *)))
            })
            let read = try TeacherConfig.inferred(from: weights, batch: 3)
            XCTAssertEqual(read, c, "\(shape)")
            XCTAssertEqual(read.shape, shape)
            XCTAssertEqual(try TeacherShape(metadata: TeacherShape.metadata(shape), in: "state"), shape)
        }
        XCTAssertEqual(try TeacherConfig.make(TeacherShape()), .standard())
        for (bad, word) in [(TeacherShape(patch: 6, width: 192, doubleBlocks: 4, singleBlocks: 0), "--patch 6"),
                            (TeacherShape(patch: 8, width: 100, doubleBlocks: 4, singleBlocks: 0), "--width 100"),
                            (TeacherShape(patch: 8, width: 192, doubleBlocks: 0, singleBlocks: 0), "--double-blocks")] {
            XCTAssertThrowsError(try TeacherConfig.make(bad)) { XCTAssertTrue("\($0)".contains(word), "\($0)") }
        }
        // The tiny test teacher (heads of 8, another text encoder) is not one train-default makes.
        let tiny = TeacherConfig.tiny()
        XCTAssertThrowsError(try TeacherConfig.inferred(from: TensorStore(TeacherWeights.random(tiny, seed: 1), label: "tiny"))) {
            XCTAssertTrue("\($0)".contains("tiny"), "\($0)")
        }
        XCTAssertThrowsError(try TeacherConfig.inferred(from: TensorStore([:], label: "empty"))) {
            XCTAssertTrue("\($0)".contains("x_embedder.weight"), "\($0)")
        }
    }

    /// `--init-weights` with more blocks (`deepened`): the deeper teacher samples exactly what
    /// the shallower one does (its new blocks' gates start closed), from a teacher without single
    /// blocks (whose last double block's text side was never trained) and from one with them;
    /// the new blocks are not all zero, so training can open them.
    func testDeepenedTeacherComputesWhatItsSourceDid() throws {
        var rng = SeededGenerator(seed: 5)
        let ids = try ["a red circle", "a blue square above a white triangle"].flatMap { try WorldVocabulary.encode($0).map(Float.init) }
        let inputs: [String: Tensor] = [
            "noise": Tensor(.f32([2, 3, 64, 64]), rng.normals(2 * 3 * 64 * 64)),
            "input_ids": Tensor(.f32([2, WorldVocabulary.length]), ids),
            "sigmas": Tensor(.f32([3]), [1, 0.6, 0.2]), "guidance_scale": Tensor(.f32([1]), [3]),
        ]
        func sample(_ c: TeacherConfig, _ w: [String: Tensor]) throws -> [Float] {
            let store = TeacherGraphs.store(c, trained: TensorStore(w))
            return try Interpreter.run(try TeacherGraphs.sampler(c, weights: store, count: 2, steps: 2), inputs: inputs) { key, _ in
                try store.tensor(key)
            }["images"]!.data
        }
        func config(_ double: Int, _ single: Int) -> TeacherConfig {
            var c = TeacherConfig.tiny()
            c.flux.numLayers = double
            c.flux.numSingleLayers = single
            return c
        }
        for (from, to) in [((1, 0), (3, 1)), ((1, 1), (2, 3))] {
            let (small, big) = (config(from.0, from.1), config(to.0, to.1))
            // The source's own blocks trained away from their init: every gate open.
            let w = TeacherWeights.random(small, seed: 9).mapValues { t in Tensor(t.type, t.data.map { $0 + 0.05 }) }
            let deep = TeacherWeights.deepened(w, from: small, to: big, seed: 3)
            XCTAssertEqual(Set(deep.keys), Set(TeacherWeights.layout(big).map(\.name)))
            let before = try sample(small, w), after = try sample(big, deep)
            let err = zip(before, after).map { abs($0 - $1) }.max()!
            XCTAssertLessThan(err, 1e-4 * max(before.map(abs).max()!, 1), "\(from) → \(to): max difference \(err)")
            // Not an identity by accident: the same blocks with their gates open compute something else.
            let opened = deep.mapValues { t in Tensor(t.type, t.data.map { $0 == 0 ? 0.05 : $0 }) }
            XCTAssertGreaterThan(zip(before, try sample(big, opened)).map { abs($0 - $1) }.max()!, 1e-3)
            let d = big.flux.width, gate = deep["transformer_blocks.\(to.0 - 1).norm1.linear.weight"]!.data
            XCTAssertTrue(gate[(2 * d * d)..<(3 * d * d)].allSatisfy { $0 == 0 })
            XCTAssertTrue(gate[(3 * d * d)..<(4 * d * d)].contains { $0 != 0 })
            // A last double block's untrained text side passes its input on (its text gates shut).
            let text = deep["transformer_blocks.\(from.0 - 1).norm1_context.linear.weight"]!.data
            XCTAssertEqual(text[(2 * d * d)..<(3 * d * d)].allSatisfy { $0 == 0 }, from.1 == 0)
        }
        // Through train-default's loader: a default-model-free flat file of fewer blocks.
        let dir = NSTemporaryDirectory() + "arcflow-deepen-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let w = TeacherWeights.random(config(1, 0), seed: 2)
        try TeacherWeights.write(w, to: "\(dir)/w.safetensors")
        XCTAssertEqual(try TeacherRun.initialWeights(config(2, 1), from: "\(dir)/w.safetensors", seed: 4),
                       TeacherWeights.deepened(w, from: config(1, 0), to: config(2, 1), seed: 4))
    }

    /// `--init-weights` of a coarser patch: the finer teacher's embedding of a patch equals the
    /// coarse embedding of that patch enlarged by pixel repetition, and its head's pixels are the
    /// coarse head's pixels averaged over each repeated block: the identity `repatched` is built on.
    func testRepatchedWeightsSeeTheEnlargedImage() throws {
        let (p, q, d) = (8, 4, 5), r = p / q
        var rng = SeededGenerator(seed: 11)
        let w8 = ["x_embedder.weight": Tensor(.f32([d, 3 * p * p]), rng.normals(d * 3 * p * p)),
                  "proj_out.weight": Tensor(.f32([3 * p * p, d]), rng.normals(3 * p * p * d)),
                  "proj_out.bias": Tensor(.f32([3 * p * p]), rng.normals(3 * p * p)),
                  "other": Tensor(.f32([2]), [1, 2])]
        let w4 = TeacherWeights.repatched(w8, from: p, to: q)
        XCTAssertEqual(w4["other"], w8["other"])
        XCTAssertEqual(w4["x_embedder.weight"]?.shape, [d, 3 * q * q])
        // A fine patch x (channel-major ch·q² + y·q + x, as patchify lays a token out) and its enlargement.
        let x = rng.normals(3 * q * q)
        let big = (0..<3).flatMap { ch in (0..<p).flatMap { y in (0..<p).map { xx in x[ch * q * q + (y / r) * q + xx / r] } } }
        func matvec(_ m: Tensor, _ v: [Float]) -> [Float] {
            let (rows, cols) = (m.shape[0], m.shape[1])
            return (0..<rows).map { i in (0..<cols).reduce(Float(0)) { $0 + m.data[i * cols + $1] * v[$1] } }
        }
        let e4 = matvec(w4["x_embedder.weight"]!, x), e8 = matvec(w8["x_embedder.weight"]!, big)
        for (a, b) in zip(e4, e8) { XCTAssertEqual(a, b, accuracy: 1e-4) }
        let h = rng.normals(d)
        let o4 = zip(matvec(w4["proj_out.weight"]!, h), w4["proj_out.bias"]!.data).map(+)
        let o8 = zip(matvec(w8["proj_out.weight"]!, h), w8["proj_out.bias"]!.data).map(+)
        for ch in 0..<3 {
            for y in 0..<q {
                for xx in 0..<q {
                    let block = (0..<r).flatMap { dy in (0..<r).map { dx in o8[ch * p * p + (r * y + dy) * p + r * xx + dx] } }
                    XCTAssertEqual(o4[ch * q * q + y * q + xx], block.reduce(0, +) / Float(r * r), accuracy: 1e-4)
                }
            }
        }
    }
}
