// The fake score of distribution-matching distillation (DMD; not the reference's recipe): a copy
// of the teacher that keeps learning to denoise the student's current images, so that
// x̂0_fake − x̂0_teacher at a noised student image says how the student's distribution differs
// from the teacher's there (DistillRecipe.dmd).

import Foundation
import IR
import Runtime
import Training

public final class FakeScore {
    public let session: TrainingSession
    let forward: PolicyRunner
    let lr: Double
    let steps: Int

    /// Compiles the fake's forward graph and train step (AdamW 0.9/0.999, no decay, clip 1, no
    /// EMA), its weights starting at the teacher's.
    public init(_ c: TeacherConfig, teacher: WeightStore, batch: Int, lr: Double, steps: Int,
                compile: (Graph, [String: String]) throws -> Executable) throws {
        self.lr = lr; self.steps = steps
        forward = PolicyRunner(try compile(try DistillGraphs.fakeScore(c, teacher: teacher, batch: batch), [:]), batch: batch)
        let optimizer = OptimizerConfig(adamW: AdamW(beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0), maxGradNorm: 1)
        let step = try OptimizerStep.build(lossGraph: try DistillGraphs.fakeLoss(c, teacher: teacher, batch: batch), loss: "loss",
                                           parameters: DistillGraphs.fakeTrainable(c).map { TrainableParameter($0) }, optimizer: optimizer)
        session = try TrainingSession(step: step, executable: try compile(step.graph, ["train_step": step.hash]), initial: teacher)
    }

    /// The fake's x0 prediction at tokens x [B, N, 4C], σ [B], ids [B, L].
    public func predictX0(_ x: [Float], sigma: [Double], ids: [Float]) throws -> [Float] {
        try forward.outputs(["x": x, "sigma": sigma.map(Float.init), "input_ids": ids]) { try session.buffer($0) }["x0"]!
    }

    /// `steps` AdamW steps of the flow-matching loss on the student's images x0 [B, N, 4C], each
    /// at σ ~ U(σ_max/10, σ_max) (where the fake is queried) and fresh noise from `rng`. Returns
    /// the last loss.
    @discardableResult
    public func train(x0: [Float], ids: [Float], sigmaMax: Double, rng: inout SeededGenerator) throws -> Float {
        let b = forward.batch
        var loss: Float = 0
        for _ in 0..<steps {
            let sigma = rng.noiseLevels(b, upTo: sigmaMax)
            try session.setBatch(["x0": x0, "noise": rng.normals(x0.count), "sigma": sigma, "input_ids": ids])
            loss = try session.run(lr: lr).loss
        }
        return loss
    }
}
