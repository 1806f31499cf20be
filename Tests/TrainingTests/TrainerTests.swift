// The driver on a linear regression whose gradient graph is written by hand: loss falls, resume
// is bit-exact, runs are deterministic, bad resume state is refused, Ctrl-C stops cleanly.

import Foundation
import IR
import Runtime
import TestSupport
import Training
import XCTest
import ArcFlowGraphs

/// loss = mean((x·W + b − target)²) and its exact gradients: ∂W = c·xᵀr, ∂b = c·Σ_rows r, c = 2/(B·O).
func linearRegressionGradients(batch: Int = 16, inputs: Int = 8, outputs: Int = 4) throws -> Graph {
    let b = GraphBuilder(name: "linear_regression")
    let x = b.input("x", .f32([batch, inputs])), target = b.input("target", .f32([batch, outputs]))
    let w = b.weight("w", .f32([inputs, outputs])), bias = b.weight("b", .f32([outputs]))
    let r = b.matmul(x, w) + bias - target
    b.output("loss", b.reduce(.reduce_mean, r * r, axes: [0, 1]))
    let c = 2 / Float(batch * outputs)
    b.output("grad:w", b.matmul(x, r, transposeA: true) * c)
    b.output("grad:b", b.reduce(.reduce_sum, r, axes: [0]) * c)
    return try b.finish()
}

final class TrainerTests: XCTestCase {
    var dir = ""
    override func setUpWithError() throws { dir = try makeTemporaryDirectory("trainer") }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(atPath: dir) }

    let initial = TensorStore(["w": Tensor(.f32([8, 4]), (0..<32).map { Float($0 % 5) * 0.05 - 0.1 }), "b": Tensor(.f32([4]), [0, 0, 0, 0])])

    func dataFile() throws -> String {
        let path = "\(dir)/data.safetensors"
        if !FileManager.default.fileExists(atPath: path) {
            let d = ExampleGraphs.mlpRegressionData(rows: 256, seed: 1)
            try writeSafeTensors(d.sorted { $0.key < $1.key }.map { TensorRecord(name: $0.key, dtype: .f32, shape: $0.value.shape, payload: .floats($0.value.data)) }, to: path)
        }
        return path
    }

    func makeTrainer(steps: Int, out: String, weightDecay: Double = 0.01, batches: BatchProvider? = nil) throws -> Trainer {
        let opt = OptimizerConfig(adamW: AdamW(weightDecay: weightDecay), maxGradNorm: 1)
        let step = try OptimizerStep.apply(to: try linearRegressionGradients(), parameters: [TrainableParameter("w", ema: true), TrainableParameter("b", lrScale: 0.5)], optimizer: opt)
        let session = try compileSession(step, initial)
        let provider = try batches ?? SafeTensorsBatches(path: try dataFile(), inputs: session.dataTypes, seed: 42)
        let config = TrainConfig(steps: steps, schedule: LRSchedule(lr: 0.03, warmupSteps: 5, warmupStartFactor: 0.1), emaBeta: 0.9,
                                 saveEvery: 4, seed: 42, threads: 2, progress: false)
        return Trainer(session: session, batches: provider, config: config, directory: out)
    }

    func stateBytes(_ t: Trainer) throws -> [[UInt8]] { try t.session.step.stateNames.map { try t.session.bytes($0) } }

    func testLossFalls() throws {
        let t = try makeTrainer(steps: 150, out: "\(dir)/run")
        XCTAssertTrue(try t.run())
        let losses = t.history.map(\.loss)
        let first = losses.prefix(15).reduce(0, +) / 15, last = losses.suffix(15).reduce(0, +) / 15
        XCTAssertLessThan(last, 0.5 * first, "loss did not fall: first 10% mean \(first), last 10% mean \(last)")
        let csv = try String(contentsOfFile: "\(dir)/run/train.csv", encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(csv.first, "step,loss,lr,grad_norm,seconds")
        XCTAssertEqual(csv.count, 151)
        let png = try Data(contentsOf: URL(fileURLWithPath: "\(dir)/run/loss.png"))
        XCTAssertEqual(Array(png.prefix(4)), [0x89, 0x50, 0x4E, 0x47])
    }

    /// 20 steps straight vs 10, a fresh process-like session resumed from the file, then 10 more.
    func testResumeIsBitExactAndRunsAreDeterministic() throws {
        let a = try makeTrainer(steps: 20, out: "\(dir)/a")
        try a.run()
        let again = try makeTrainer(steps: 20, out: "\(dir)/a2")
        try again.run()
        XCTAssertEqual(try stateBytes(a), try stateBytes(again), "two runs with the same seed differ")

        let b1 = try makeTrainer(steps: 10, out: "\(dir)/b")
        try b1.run()
        XCTAssertEqual(b1.session.stepCount, 10)
        let b2 = try makeTrainer(steps: 20, out: "\(dir)/b")
        try b2.resume(from: "\(dir)/b/state.safetensors")
        XCTAssertEqual(b2.session.stepCount, 10)
        XCTAssertEqual(b2.history.count, 10, "the log of the first run is read back")
        try b2.run()
        XCTAssertEqual(try stateBytes(a), try stateBytes(b2), "10 + resume 10 differs from 20")
        XCTAssertEqual(a.history.map(\.loss), b2.history.map(\.loss))
        let other = try makeTrainer(steps: 20, out: "\(dir)/c", batches: ClosureBatches { _ in try SafeTensorsBatches(path: try self.dataFile(), inputs: ["x": .f32([16, 8]), "target": .f32([16, 4])], seed: 43).batch(step: 0) })
        try other.run()
        XCTAssertNotEqual(try stateBytes(a), try stateBytes(other), "the data did not matter")
    }

    /// A fresh run in a folder holding a saved one is refused before it writes anything.
    func testFreshRunDoesNotOverwriteASavedOne() throws {
        let first = try makeTrainer(steps: 4, out: "\(dir)/f")
        try first.run()
        let saved = try Data(contentsOf: URL(fileURLWithPath: "\(dir)/f/state.safetensors"))
        XCTAssertThrowsError(try makeTrainer(steps: 8, out: "\(dir)/f").run()) {
            XCTAssertTrue(($0 as? ArcError)?.message.contains("holds a saved run") ?? false, "\($0)")
        }
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: "\(dir)/f/state.safetensors")), saved)
    }

    func testBadResumeStateIsRefused() throws {
        let t = try makeTrainer(steps: 4, out: "\(dir)/s")
        try t.run()
        let good = "\(dir)/s/state.safetensors"
        let file = try SafeTensorsFile(path: good)
        func rewrite(_ path: String, drop: String? = nil, reshape: String? = nil) throws {
            let records = try file.names.filter { $0 != drop }.map { n -> TensorRecord in
                let info = try file.info(n)
                let bytes = Array(try file.bytes(n))
                return n == reshape ? TensorRecord(name: n, dtype: .f32, shape: [info.elementCount], payload: .raw(bytes))
                                    : TensorRecord(name: n, dtype: info.dtype, shape: info.shape, payload: .raw(bytes))
            }
            try writeSafeTensors(records, metadata: file.metadata, to: path)
        }
        func expectError(_ path: String, _ needle: String, weightDecay: Double = 0.01, line: UInt = #line) throws {
            let fresh = try makeTrainer(steps: 8, out: "\(dir)/r", weightDecay: weightDecay)
            let before = try stateBytes(fresh)
            XCTAssertThrowsError(try fresh.resume(from: path), line: line) { e in
                let m = (e as? ArcError)?.message ?? "\(e)"
                XCTAssertTrue(m.contains(needle), "'\(needle)' not in: \(m)", line: line)
                XCTAssertFalse(m.contains("\n"), "not one line: \(m)", line: line)
            }
            XCTAssertEqual(try stateBytes(fresh), before, "a refused resume changed the state", line: line)
        }
        try rewrite("\(dir)/missing.safetensors", drop: "adam_v/w")
        try expectError("\(dir)/missing.safetensors", "missing state tensor 'adam_v/w'")
        try rewrite("\(dir)/shape.safetensors", reshape: "adam_m/w")
        try expectError("\(dir)/shape.safetensors", "state tensor 'adam_m/w' is f32[32], expected f32[8,4]")
        try expectError(good, "different train-step graph", weightDecay: 0.02)
        let bytes = try Data(contentsOf: URL(fileURLWithPath: good))
        try bytes.prefix(bytes.count / 2).write(to: URL(fileURLWithPath: "\(dir)/truncated.safetensors"))
        try expectError("\(dir)/truncated.safetensors", "truncated.safetensors")
        try expectError("\(dir)/data.safetensors", "is not an arcflow training state")
    }

    /// Ctrl-C during step 5: the step finishes, the state is saved at 5, `run` returns false.
    func testInterruptStopsAfterTheStepAndSaves() throws {
        let data = try SafeTensorsBatches(path: try dataFile(), inputs: ["x": .f32([16, 8]), "target": .f32([16, 4])], seed: 42)
        let t = try makeTrainer(steps: 50, out: "\(dir)/i", batches: ClosureBatches { step in
            if step == 4 { raise(SIGINT) }
            return try data.batch(step: step)
        })
        XCTAssertFalse(try t.run())
        XCTAssertEqual(t.session.stepCount, 5)
        XCTAssertEqual(try SafeTensorsFile(path: "\(dir)/i/state.safetensors").metadata["step"], "5")
    }

    func testScheduleAndSampler() throws {
        let s = LRSchedule(lr: 1, warmupSteps: 4, warmupStartFactor: 0.2, cosine: true, minFactor: 0.1, totalSteps: 14)
        XCTAssertEqual(s.rate(step: 0), 0.2, accuracy: 1e-12)
        XCTAssertEqual(s.rate(step: 2), 0.6, accuracy: 1e-12)
        XCTAssertEqual(s.rate(step: 4), 1, accuracy: 1e-12)
        XCTAssertEqual(s.rate(step: 9), 0.55, accuracy: 1e-12)
        XCTAssertEqual(s.rate(step: 14), 0.1, accuracy: 1e-12)
        XCTAssertEqual(LRSchedule(lr: 2, warmupSteps: 3).rate(step: 100), 2)
        let late = LRSchedule(lr: 1, warmupSteps: 4, cosine: true, minFactor: 0.1, totalSteps: 20, decayStart: 10)
        XCTAssertEqual(late.rate(step: 7), 1, accuracy: 1e-12)
        XCTAssertEqual(late.rate(step: 10), 1, accuracy: 1e-12)
        XCTAssertEqual(late.rate(step: 15), 0.55, accuracy: 1e-12)
        XCTAssertEqual(late.rate(step: 25), 0.1, accuracy: 1e-12)
        let d = try SafeTensorsBatches(path: try dataFile(), inputs: ["x": .f32([16, 8]), "target": .f32([16, 4])], seed: 9)
        XCTAssertEqual(d.indices(step: 3, count: 16), d.indices(step: 3, count: 16))
        XCTAssertNotEqual(d.indices(step: 3, count: 16), d.indices(step: 4, count: 16))
        let batch = try d.batch(step: 0), row = d.indices(step: 0, count: 1)[0]
        let all = ExampleGraphs.mlpRegressionData(rows: 256, seed: 1)
        XCTAssertEqual(Array(batch["x"]!.prefix(8)), Array(all["x"]!.data[row * 8 ..< row * 8 + 8]))
        XCTAssertEqual(Array(batch["target"]!.prefix(4)), Array(all["target"]!.data[row * 4 ..< row * 4 + 4]))
        XCTAssertThrowsError(try SafeTensorsBatches(path: try dataFile(), inputs: ["x": .f32([16, 9])], seed: 0)) { e in
            XCTAssertTrue("\(e)".contains("must be [N,9]"), "\(e)")
        }
    }

    func testLossPlotDrawsSomething() {
        let history = (1...50).map { StepRecord(step: $0, loss: $0 == 7 ? .nan : 1 / Double($0), lr: 0.1, gradNorm: 1, seconds: 0) }
        for log in [true, false] {
            let img = LossPlot.draw(history, logScale: log)
            let dark = stride(from: 0, to: img.pixels.count, by: 3).filter { img.pixels[$0] < 100 }.count
            XCTAssertGreaterThan(dark, 500, "axes, labels and curve")
        }
        _ = LossPlot.draw([])
    }
}
