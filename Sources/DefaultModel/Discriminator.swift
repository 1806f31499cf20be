// The discriminator of the adversarial term (not the reference's recipe;
// `DistillRecipe.adversarialWeight`): the frozen teacher as its feature network, read at a noised
// image (as latent adversarial diffusion distillation, LADD, reads its teacher), and small trained
// heads on the teacher's image tokens after every double block and at its end. Real images are
// the world's renders of the iteration's prompts; fake ones the student's 2-step samples.
//
// Why: π-ID, the endpoint term and SDS all regress onto averages of outcomes, and what 2-step
// students get wrong is what an average draws (README, sessions 20-24); a discriminator against
// real renders penalizes exactly a blurred edge, a doubled or missing object. Why the teacher's
// features: they already know the world and the caption (joint attention), so the heads are small
// and train in few steps, where a discriminator from scratch would need a GAN's own budget.

import ArcFlowGraphs
import Foundation
import IR
import Passes
import Runtime
import ShapesWorld
import Training

public final class Discriminator {
    public let session: TrainingSession
    let generator: PolicyRunner
    let lr: Double
    /// The last `train` loss and the mean logit on the student's images of the last `gradient`.
    public private(set) var lastLoss: Float = .nan
    public private(set) var lastFakeLogit: Float = .nan

    /// Compiles the hinge-loss train step of the heads (AdamW 0/0.99, no decay, clip 10, no EMA:
    /// GAN practice) and the generator's gradient graph, the heads drawn from `seed`.
    public init(_ c: TeacherConfig, teacher: WeightStore, batch: Int, lr: Double, seed: UInt64,
                compile: (Graph, [String: String]) throws -> Executable) throws {
        self.lr = lr
        let keys = Self.layout(c).map(\.key)
        let gradient = try gradientGraph(try Self.generatorLoss(c, teacher: teacher, batch: batch), loss: "loss", wrt: ["x"])
        generator = PolicyRunner(try compile(try DistillGraphs.promote(gradient, keys: Set(keys)), [:]), batch: batch)
        let optimizer = OptimizerConfig(adamW: AdamW(beta1: 0, beta2: 0.99, eps: 1e-8, weightDecay: 0), maxGradNorm: 10)
        let step = try OptimizerStep.build(lossGraph: try Self.loss(c, teacher: teacher, batch: batch), loss: "loss",
                                           parameters: keys.map { TrainableParameter($0) }, optimizer: optimizer)
        session = try TrainingSession(step: step, executable: try compile(step.graph, ["train_step": step.hash]),
                                      initial: LayeredStore(TensorStore(Self.initial(c, seed: seed), label: "discriminator heads"), over: teacher))
    }

    /// The heads' width: half the teacher's.
    static func hidden(_ c: TeacherConfig) -> Int { c.flux.width / 2 }

    /// Each head t (one per double block, then the trunk's output): `disc.t.fc` [H, D] + bias,
    /// `disc.t.out` [1, H] + bias, and `disc.t.text` [H, text width] (the caption's projection).
    static func layout(_ c: TeacherConfig) -> [(key: String, shape: [Int])] {
        let h = hidden(c), d = c.flux.width
        return (0...c.flux.numLayers).flatMap { t in
            [("fc.weight", [h, d]), ("fc.bias", [h]), ("out.weight", [1, h]), ("out.bias", [1]), ("text.weight", [h, c.text.width])]
                .map { (key: "disc.\(t).\($0.0)", shape: $0.1) }
        }
    }

    /// N(0, 1/fan-in) weights, zero biases; the caption projection 0.1 of that, so the heads
    /// start from the features alone.
    static func initial(_ c: TeacherConfig, seed: UInt64) -> [String: Tensor] {
        var rng = SeededGenerator(seed: seed ^ 0xD15C_0000_0000_0001)
        return Dictionary(uniqueKeysWithValues: layout(c).map { key, shape in
            let count = shape.reduce(1, *)
            guard shape.count == 2 else { return (key, Tensor(.f32(shape), [Float](repeating: 0, count: count))) }
            let scale = (key.hasSuffix("text.weight") ? 0.1 : 1) / Float(shape[1]).squareRoot()
            return (key, Tensor(.f32(shape), rng.normals(count).map { $0 * scale }))
        })
    }

    /// Logits [B] of clean tokens x [B, N, 4C] noised to (1 − σ)x + σε (ε `noise`, σ [B]) with
    /// captions `ids` [B, L]: the sum over heads of each head's mean over tokens. Head t on the
    /// teacher's tokens f: a = gelu(fc(LN(f))), token logit = out(a) + ⟨a, text(pooled caption)⟩
    /// (a projection discriminator). Why per image, not per token: most tokens are background,
    /// alike in renders and samples, and a per-token hinge would be held near 2 by them.
    static func logits(_ b: GraphBuilder, _ c: TeacherConfig, teacher: WeightStore, x: Value, noise: Value, sigma: Value, ids: Value) throws -> Value {
        let n = x.shape[0], h = hidden(c), d = c.flux.width
        let sg = sigma.reshaped([n, 1, 1])
        let text = TeacherGraphs.textEncoder(b, c.text, ids: ids)
        let features = try TeacherGraphs.features(b, TeacherGraphs.network(b, c, teacher), c, x: (1 - sg) * x + sg * noise, sigma: sigma, text: text)
        let heads = features.enumerated().map { t, f -> Value in
            func w(_ k: String, _ s: [Int]) -> Value { b.weight("disc.\(t).\(k)", .f32(s)) }
            let a = (b.matmul(b.layerNorm(f, eps: 1e-6), w("fc.weight", [h, d]), transposeB: true) + w("fc.bias", [h])).apply(.gelu)
            let caption = b.matmul(text.pooled, w("text.weight", [h, c.text.width]), transposeB: true).reshaped([n, h, 1])
            let logit = b.matmul(a, w("out.weight", [1, h]), transposeB: true) + w("out.bias", [1]) + b.matmul(a, caption)
            return b.reduce(.reduce_mean, logit, axes: [1, 2])
        }
        return heads.dropFirst().reduce(heads[0], +)
    }

    /// The heads' hinge loss: inputs `real` and `fake` [B, N, 4C], `noise` [2B, N, 4C], `sigma`
    /// [2B] (real first), `input_ids` [B, L] (the same captions for both);
    /// loss = mean(max(1 − D(real), 0)) + mean(max(1 + D(fake), 0)) over samples.
    static func loss(_ c: TeacherConfig, teacher: WeightStore, batch n: Int) throws -> Graph {
        let b = GraphBuilder(name: "distill_discriminator_loss")
        let shape = [n, c.imageTokens, c.tokenChannels]
        let real = b.input("real", .f32(shape)), fake = b.input("fake", .f32(shape))
        let noise = b.input("noise", .f32([2 * n, c.imageTokens, c.tokenChannels]))
        let sigma = b.input("sigma", .f32([2 * n]))
        let ids = b.input("input_ids", .f32([n, c.text.tokens]))
        let d = try logits(b, c, teacher: teacher, x: b.concat([real, fake], axis: 0), noise: noise, sigma: sigma, ids: b.concat([ids, ids], axis: 0))
        func hinge(_ v: Value) -> Value { b.reduce(.reduce_mean, b.binary(.max, 1 - v, b.scalar(0)), axes: [0]) }
        b.output("loss", hinge(b.slice(d, axis: 0, 0..<n)) + hinge(0 - b.slice(d, axis: 0, n..<(2 * n))))
        return try b.finish()
    }

    /// The generator's loss −mean D(x) over samples at `x` [B, N, 4C] (`noise`,
    /// `sigma` [B], `input_ids`): its gradient in x is what the student's sample is moved by.
    static func generatorLoss(_ c: TeacherConfig, teacher: WeightStore, batch n: Int) throws -> Graph {
        let b = GraphBuilder(name: "distill_discriminator_generator")
        let shape = [n, c.imageTokens, c.tokenChannels]
        let x = b.input("x", .f32(shape)), noise = b.input("noise", .f32(shape))
        let sigma = b.input("sigma", .f32([n])), ids = b.input("input_ids", .f32([n, c.text.tokens]))
        let d = try logits(b, c, teacher: teacher, x: x, noise: noise, sigma: sigma, ids: ids)
        b.output("loss", 0 - b.reduce(.reduce_mean, d, axes: [0]))
        return try b.finish()
    }

    /// ∂(−mean D)/∂x at the student's images x [B, N, 4C], noised by (`noise`, `sigma`).
    public func gradient(_ x: [Float], noise: [Float], sigma: [Float], ids: [Float]) throws -> [Float] {
        let out = try generator.outputs(["x": x, "noise": noise, "sigma": sigma, "input_ids": ids]) { try session.buffer($0) }
        lastFakeLogit = -out["loss"]![0]
        return out[gradientOutputName("x")]!
    }

    /// One AdamW step of the heads on renders `real` against the student's `fake` images (tokens),
    /// each noised to its own σ ~ U(σ_max/10, σ_max) with fresh noise from `rng`.
    public func train(real: [Float], fake: [Float], ids: [Float], sigmaMax: Double, rng: inout SeededGenerator) throws {
        let b = generator.batch
        let sigma = rng.noiseLevels(2 * b, upTo: sigmaMax)
        try session.setBatch(["real": real, "fake": fake, "noise": rng.normals(real.count + fake.count), "sigma": sigma, "input_ids": ids])
        lastLoss = try session.run(lr: lr).loss
    }
}
