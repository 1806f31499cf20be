// One student, two code paths: what the distillation samples and judges (its policy graph plus
// ArcPolicy's Swift closed-form integration, the teacher evaluator's CFG sampler) against what
// users run (the default-model folder compiled by the FLUX path: `arcflow generate`, with
// `--teacher`, `--baseline linear`). If these disagree, the distillation's numbers say nothing
// about the images users get.

import ArcFlowGraphs
@testable import DefaultModel
import Foundation
import Generation
import IR
import Runtime
import ShapesWorld
import TestSupport
import Training
import XCTest

final class StudentParityTests: XCTestCase {
    static let teacherConfig = TeacherConfig.tiny()

    /// Relative L2 allowed between the two paths. Both run on the same f16-rounded weights (the
    /// teacher file is written f16-rounded; the distillation side reads the exported f16 adapter),
    /// so what remains is f32 arithmetic in a different order: fused LoRA (W + BA vs x·Wᵀ +
    /// (x·Aᵀ)·Bᵀ), σ·1000 sinusoids baked as constants vs computed in the graph, the fused arc
    /// kernel vs ArcPolicy's loop. Measured ≈ 1e-7…1e-6 here; 1e-4 leaves room for other BLAS
    /// builds while a real disagreement (a σ knot, a head row, a position table) is ≥ 1e-2.
    static let tolerance = 1e-4

    /// Noise conventions. The distillation's evaluation draws its starting noise in pixel space
    /// (`TeacherEvaluator.noiseChunks`: SeededGenerator(seed).normals laid out as images
    /// [B, 3, 64, 64]); `generate --seed` draws it in latent space (`seededNoise`: the same
    /// generator laid out as the latent [1, 3p²/4, 2g, 2g]). For one seed the first image's
    /// numbers are the same, but in another arrangement, so the two starting images differ (one
    /// is a permutation of the other). Only self-consistency matters, and each path is: the
    /// evaluation gives the teacher and the students the same pixel noise, generate gives its
    /// three variants the same latent noise. PixelCodec is the bijection between the layouts
    /// (pack(encode(image)) = patchify(image)), and the parity tests below hand the
    /// distillation's pixel noise to the compiled pipeline through it.
    func testNoiseConventions() throws {
        let c = TeacherConfig.tiny(batch: 1)
        let codec = try PixelCodec(side: TeacherConfig.side, patch: c.patch)
        let evaluator = TeacherEvaluator(config: c, count: 2, chunk: 2, steps: 2)
        let pixels = evaluator.noiseChunks()[0]
        let latent = seededNoise(.f32(codec.latentShape), seed: 1234)
        let plane = 3 * TeacherConfig.side * TeacherConfig.side
        let image0 = Array(pixels[0..<plane]), image1 = Array(pixels[plane..<(2 * plane)])
        XCTAssertEqual(image0, latent.data, "the same numbers for the evaluator's seed 1234 and generate --seed 1234")
        XCTAssertNotEqual(codec.encode(image0), latent.data, "laid out in different spaces")
        XCTAssertEqual(codec.decode(codec.encode(image1)), image1)
        XCTAssertEqual(Array(Tokens.patchify(pixels, count: 2, patch: c.patch)[(c.imageTokens * c.tokenChannels)...]),
                       Tokens.patchify(image1, count: 1, patch: c.patch))
    }

    // MARK: Students

    /// A folder with the f16-rounded random teacher as a distillation's teacher file, and its
    /// default-model export (the f16 transformer and text encoder `generate` compiles).
    func teacherAndFolder(_ dir: String) throws -> (file: String, weights: [String: Tensor], folder: String) {
        let c = Self.teacherConfig
        let weights = TeacherWeights.random(c, seed: 31).mapValues { t in Tensor(t.type, t.data.map { roundToStorage($0, .f16) }) }
        let file = "\(dir)/teacher.safetensors"
        try TeacherWeights.write(weights, to: file)
        let folder = "\(dir)/shapes"
        try DefaultModelExport.write(weights, config: c, trainedSteps: "0", teacher: .init(steps: 3, guidance: 5, shift: 1), to: folder)
        return (file, weights, folder)
    }

    func distillOptions(_ dir: String, teacher: String, components: Int) -> DistillOptions {
        var o = DistillOptions(directory: dir, teacherWeights: teacher)
        o.teacher = Self.teacherConfig
        o.components = components
        o.rank = 4
        o.recipe.batch = 2
        o.recipe.decayIterations = 2
        o.recipe.seed = 3
        o.iterations = 5
        o.warmup = 1
        o.lr = 1e-2
        o.evalEvery = 0
        o.saveEvery = 0
        o.threads = 1
        o.log = { _ in }
        return o
    }

    /// The distillation's 2-NFE sampler (`DistillRollout.sample`, what `DistillEvaluator`
    /// judges) with its trained tensors read from `adapter` (f32 copies, kept alive here).
    func distilledSample(_ run: DistillRun, adapter: WeightStore, noise: [Float], ids: [Float], nfe: Int? = nil,
                         timestepRatio: Double? = nil) throws -> [Float] {
        var copies: [String: UnsafeMutableRawPointer] = [:]
        defer { copies.values.forEach { $0.deallocate() } }
        for p in Student.trainable(run.student) {
            let values = try adapter.tensor(String(p.key.dropFirst("adapter:".count))).data
            let ptr = UnsafeMutableRawPointer.allocate(byteCount: values.count * 4, alignment: 64)
            values.withUnsafeBytes { ptr.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
            copies[p.key] = ptr
        }
        return try run.rollout.sample(noise: noise, ids: ids, nfe: nfe, timestepRatio: timestepRatio) { key in
            guard let p = copies[key] else { throw ArcError("no trained tensor '\(key)'") }
            return UnsafeRawPointer(p)
        }
    }

    /// K = 3 (the ArcFlow head) and K = 1 (the linear baseline): a few distillation iterations
    /// (LoRA B, norm_out and the heads move), the EMA exported as an f16 adapter into a default
    /// folder, then from the same noise and prompts the distillation's own 2-NFE sample against
    /// the compiled student `generate` runs.
    func testDistilledStudentEqualsCompiledStudent() throws {
        let dir = try makeTemporaryDirectory("student-parity")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let c = Self.teacherConfig
        let (teacherFile, _, folderDir) = try teacherAndFolder(dir)
        let prompts = ["a small blue square at the top left", "a red circle to the left of a green triangle"]
        let ids = try prompts.flatMap { try WorldVocabulary.encode($0).map(Float.init) }
        var rng = SeededGenerator(seed: 99)
        let plane = 3 * TeacherConfig.side * TeacherConfig.side
        let pixels = rng.normals(2 * plane)

        for (k, variant, name) in [(3, DefaultVariant.arcflow, "arcflow"), (1, DefaultVariant.linear, "linear")] {
            let run = try DistillRun.prepare(distillOptions("\(dir)/run-k\(k)", teacher: teacherFile, components: k))
            try run.train()
            try DistillExport.export(stateFile: "\(dir)/run-k\(k)/state.safetensors", teacher: c, to: "\(folderDir)/\(name)")
            let exported = try ArcFlowAdapter.load("\(folderDir)/\(name)").store
            let initial = try ArcFlowAdapter.load("\(dir)/run-k\(k)/init-adapter").store
            // The distillation moved what it trains (LoRA B starts at 0).
            for key in ["transformer_blocks.0.ff.net.2.lora_B.weight", "single_transformer_blocks.0.proj_out.lora_B.weight",
                        "norm_out.linear.weight", "proj_out_means.weight"] {
                let a = try exported.tensor(key), b = try initial.tensor(key)
                XCTAssertGreaterThan(relativeL2(a, Tensor(a.type, b.data)), 1e-3, "K=\(k): \(key) trained")
            }

            let folder = try DefaultModelFolder.load(folderDir)
            let pipeline = try DefaultPipeline.pipeline(folder, variant, threads: 1, cacheRoot: testCacheRoot)
            XCTAssertEqual(pipeline.manifest.sigmas.map(Float.init), [1, 0.5, 0], "the recipe's knots at shift 1")
            let distilled = try distilledSample(run, adapter: exported, noise: Tokens.patchify(pixels, count: 2, patch: c.patch), ids: ids)
            let distilledImages = Tokens.unpatchify(distilled, count: 2, patch: c.patch)
            let untrained = try distilledSample(run, adapter: initial, noise: Tokens.patchify(pixels, count: 2, patch: c.patch), ids: ids)
            for (i, prompt) in prompts.enumerated() {
                let image = Array(pixels[(i * plane)..<((i + 1) * plane)])
                let latents = try pipeline.sample(try pipeline.encode(prompt), noise: Tensor(.f32(folder.codec.latentShape), folder.codec.encode(image)))
                let got = Tensor(.f32([1, 3, 64, 64]), folder.codec.decode(latents.data))
                let want = Tensor(.f32([1, 3, 64, 64]), Array(distilledImages[(i * plane)..<((i + 1) * plane)]))
                let err = relativeL2(got, want)
                let trainedEffect = relativeL2(Tensor(want.type, Array(Tokens.unpatchify(untrained, count: 2, patch: c.patch)[(i * plane)..<((i + 1) * plane)])), want)
                // The bytes the evaluation judges and the bytes of the user's PNG: equal up to one
                // level where a value within 1e-6 of a rounding boundary falls the other way.
                let judged = TeacherEvaluator.images(want.data, count: 1)[0].pixels, png = try pipeline.decode(latents).pixels
                let differing = zip(judged, png).filter { $0 != $1 }
                XCTAssertTrue(differing.allSatisfy { abs(Int($0) - Int($1)) <= 1 }, "K=\(k): 8-bit images within one level")
                XCTAssertLessThan(differing.count, png.count / 100, "K=\(k): 8-bit images nearly identical")
                print("K=\(k) prompt \(i): \(differing.count) of \(png.count) bytes differ; compiled vs distillation sample relative L2 \(err), max \(maxErrors(got, want)); trained vs initial adapter \(trainedEffect)")
                XCTAssertLessThan(err, Self.tolerance, "K=\(k) '\(prompt)': compiled student vs the distillation's sample")
                // The check can fail: the trained student is far (≥ 100× the tolerance) from the initial one.
                XCTAssertGreaterThan(trainedEffect, 100 * Self.tolerance, "K=\(k): training changed the sample")
            }
            // `--steps 3` / `--student-steps 3`: the student at 3 NFE, the rollout's sampler on 3
            // segments; then `--timestep-ratio 0.6`: the adapter's `arcflow_timestep_ratio` moves
            // the compiled sampler's middle knot to σ 1 − 1/1.6 = 0.375, where the rollout puts it.
            guard k == 3 else { continue }
            /// The compiled `pipeline` against the rollout's sampler with `nfe` or `ratio`, both
            /// unlike the 2-step sample above.
            func assertSamplersAgree(_ pipeline: CompiledPipeline, nfe: Int? = nil, ratio: Double? = nil, _ label: String) throws {
                let sampled = Tokens.unpatchify(try distilledSample(run, adapter: exported, noise: Tokens.patchify(pixels, count: 2, patch: c.patch), ids: ids,
                                                                    nfe: nfe, timestepRatio: ratio), count: 2, patch: c.patch)
                for (i, prompt) in prompts.enumerated() {
                    let image = Array(pixels[(i * plane)..<((i + 1) * plane)])
                    let latents = try pipeline.sample(try pipeline.encode(prompt), noise: Tensor(.f32(folder.codec.latentShape), folder.codec.encode(image)))
                    let got = Tensor(.f32([1, 3, 64, 64]), folder.codec.decode(latents.data))
                    let want = Tensor(.f32([1, 3, 64, 64]), Array(sampled[(i * plane)..<((i + 1) * plane)]))
                    let two = Tensor(.f32([1, 3, 64, 64]), Array(distilledImages[(i * plane)..<((i + 1) * plane)]))
                    XCTAssertLessThan(relativeL2(got, want), Self.tolerance, "\(label) '\(prompt)': compiled student vs the rollout's sampler")
                    XCTAssertGreaterThan(relativeL2(two, want), 100 * Self.tolerance, "\(label) differs from the 2-step sample")
                }
            }
            let three = try DefaultPipeline.pipeline(folder, variant.studentSteps(3), threads: 1, cacheRoot: testCacheRoot)
            XCTAssertEqual(three.manifest.steps, 3)
            XCTAssertEqual(three.manifest.sigmas.map(Float.init), [1, Float(2.0 / 3), Float(1.0 / 3), 0])
            try assertSamplersAgree(three, nfe: 3, "3 NFE")
            try writeAtomically(Student.configJSON(run.student, shift: 1, timestepRatio: 0.6), to: "\(folderDir)/\(name)/config.json")
            XCTAssertEqual(try ArcFlowAdapter.load("\(folderDir)/\(name)").timestepRatio, 0.6)
            let moved = try DefaultPipeline.pipeline(try DefaultModelFolder.load(folderDir), variant, threads: 1, cacheRoot: testCacheRoot)
            XCTAssertEqual(moved.manifest.sigmas.map(Float.init), [1, 0.375, 0])
            try assertSamplersAgree(moved, ratio: 0.6, "timestep ratio 0.6")
        }
        XCTAssertEqual("\(DefaultVariant.arcflow)", "ArcFlow 2-step student", "the cache key of the shipped students")
        XCTAssertEqual("\(DefaultVariant.linear.studentSteps(4))", "linear 4-step student")
    }

    // MARK: Teacher

    /// The distillation's teacher evaluator (its CFG Euler sampler, 3 steps instead of 28) against
    /// the compiled teacher of `generate --teacher` from the same pixel noise and prompts.
    func testTeacherEvaluatorEqualsCompiledTeacher() throws {
        let dir = try makeTemporaryDirectory("teacher-parity")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let c = Self.teacherConfig
        let (_, weights, folderDir) = try teacherAndFolder(dir)
        let folder = try DefaultModelFolder.load(folderDir)
        let (steps, g) = (3, 5.0)
        let evaluator = TeacherEvaluator(config: c, count: 3, chunk: 2, steps: steps, shift: folder.info.teacher.shift, guidance: g)
        let samples = try evaluator.sample(weights: TensorStore(weights), threads: 1)
        let pipeline = try DefaultPipeline.pipeline(folder, .teacher(steps: steps, guidance: g), threads: 1, cacheRoot: testCacheRoot)
        XCTAssertEqual(pipeline.manifest.sigmas, evaluator.sigmas, "one σ schedule")
        let plane = 3 * TeacherConfig.side * TeacherConfig.side
        let noise = evaluator.noiseChunks()
        for (i, prompt) in evaluator.prompts.enumerated() {
            let (chunk, row) = (i / evaluator.chunk, i % evaluator.chunk)
            let image = Array(noise[chunk][(row * plane)..<((row + 1) * plane)])
            let latents = try pipeline.sample(try pipeline.encode(prompt.description), noise: Tensor(.f32(folder.codec.latentShape), folder.codec.encode(image)))
            let got = Tensor(.f32([1, 3, 64, 64]), folder.codec.decode(latents.data))
            let want = Tensor(.f32([1, 3, 64, 64]), Array(samples[chunk][(row * plane)..<((row + 1) * plane)]))
            let err = relativeL2(got, want)
            print("teacher prompt \(i) '\(prompt)': compiled vs evaluator relative L2 \(err), max \(maxErrors(got, want))")
            XCTAssertLessThan(err, Self.tolerance, "'\(prompt)': compiled teacher vs the evaluator's sampler")
            XCTAssertGreaterThan(relativeL2(Tensor(want.type, image), want), 100 * Self.tolerance, "the sampler moved the noise")
        }
        // A σ-dependent scale (`distill-default --early-guidance`) applies at each step's start:
        // constant, it is the plain evaluator; lowered below σ 0.5, the last step differs.
        evaluator.guidanceAt = { _ in g }
        XCTAssertEqual(try evaluator.sample(weights: TensorStore(weights), threads: 1), samples)
        evaluator.guidanceAt = { $0 > 0.5 ? g : 1 }
        XCTAssertEqual(evaluator.sigmas.filter { $0 > 0 && $0 <= 0.5 }.count, 1)
        XCTAssertNotEqual(try evaluator.sample(weights: TensorStore(weights), threads: 1), samples)
    }
}
