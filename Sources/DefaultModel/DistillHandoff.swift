// Where a 2-NFE student loses to its teacher: the report's prompts sampled four ways from the same
// pixel noise (the teacher's 28 Euler steps, the student's 2 NFE, and each of the student's two
// segments handed to the teacher's Euler steps over the same σ range), so that the accuracy lost
// by each segment reads off one table.

import ArcFlowGraphs
import Foundation
import Imaging
import IR
import Runtime
import ShapesWorld
import Training

public enum DistillHandoff {
    /// The four columns for `perCategory` prompts of each `DefaultReport` category, with the
    /// EMA student of `run`. Noise: pixel-space N(0, 1) from `seed`, one chunk of the recipe's batch
    /// at a time (as `TeacherEvaluator`); the teacher's 28 Euler steps use the guided velocity
    /// graph of the rollout at the recipe's guidance, on the teacher's schedule, and the handoff
    /// happens at the student's knot σ(1 − S₀), which must be a point of that schedule.
    public static func run(_ run: DistillRun, perCategory n: Int, steps: Int = 28, seed: UInt64 = 1234,
                           log: (String) -> Void) throws -> (columns: [DefaultReport.Column], prompts: [(category: String, prompt: Prompt)]) {
        let rollout = run.rollout, r = rollout.recipe, b = r.batch, c = run.student.teacher
        guard r.nfe == 2 else { throw ArcError("the handoff probe needs a 2-NFE student, this one has \(r.nfe)") }
        let session = run.trainer.session
        let ema: (String) throws -> UnsafeRawPointer = { try session.buffer(TrainNames.ema($0)) }
        let sigmas = Schedule.eulerSigmas(steps: steps, shift: r.shift)
        let knot = r.warp(1 - r.segments[0])
        guard let mid = sigmas.firstIndex(where: { abs($0 - knot) < 1e-9 }) else {
            throw ArcError("the student's knot σ = \(knot) is not a point of the teacher's \(steps)-step schedule")
        }
        let prompts = DefaultReport.prompts(perCategory: n)
        let names = ["teacher (Euler, CFG \(r.guidance))", "student (2 NFE)", "student step 1 → teacher", "teacher → student step 2"]
        let nfes = ["\(steps) × 2", "2", "1 + \(steps - mid) × 2", "\(mid) × 2 + 1"]
        var columns = zip(names, nfes).map { DefaultReport.Column(name: $0, nfe: $1) }
        var rng = SeededGenerator(seed: seed)

        /// Euler steps of the guided teacher from sigmas[from] to sigmas[to].
        func teacher(_ x: inout [Float], ids: [Float], from: Int, to: Int) throws {
            for i in from..<to {
                let u = try rollout.teacherVelocity(x, sigma: [Double](repeating: sigmas[i], count: b), ids: ids)
                let step = Float(sigmas[i + 1] - sigmas[i])
                for e in x.indices { x[e] += u[e] * step }
            }
        }
        /// One student segment from t to t − size, in closed form (as `DistillRollout.sample`).
        func student(_ x: inout [Float], ids: [Float], t: Double, size: Double) throws {
            let sigma = r.warp(t)
            let pi = try rollout.policyAt(x, sigma: sigma, ids: ids, dropped: nil, weight: ema)
            for k in 0..<b { pi.advance(&x, sample: k, from: Double(Float(sigma)), to: r.warp(t - size)) }
        }

        let t0 = monotonicSeconds()
        var lastLog = t0
        for start in stride(from: 0, to: prompts.count, by: b) {
            let ps = prompts[start..<min(start + b, prompts.count)].map(\.prompt)
            var ids = ps.flatMap { WorldVocabulary.encode($0).map(Float.init) }
            for _ in ps.count..<b { ids += TeacherGraphs.emptyCaption.map(Float.init) }
            let noise = Tokens.patchify(rng.normals(b * 3 * TeacherConfig.side * TeacherConfig.side), count: b, patch: c.patch)
            var teacherMid = noise
            try teacher(&teacherMid, ids: ids, from: 0, to: mid)
            var teacherEnd = teacherMid
            try teacher(&teacherEnd, ids: ids, from: mid, to: steps)
            var studentMid = noise
            try student(&studentMid, ids: ids, t: 1, size: r.segments[0])
            var studentEnd = studentMid
            try student(&studentEnd, ids: ids, t: 1 - r.segments[0], size: r.segments[1])
            var handedToTeacher = studentMid
            try teacher(&handedToTeacher, ids: ids, from: mid, to: steps)
            var handedToStudent = teacherMid
            try student(&handedToStudent, ids: ids, t: 1 - r.segments[0], size: r.segments[1])
            for (j, tokens) in [teacherEnd, studentEnd, handedToTeacher, handedToStudent].enumerated() {
                let images = TeacherEvaluator.images(Tokens.unpatchify(tokens, count: b, patch: c.patch), count: ps.count)
                columns[j].images += images
                columns[j].verdicts += zip(images, ps).map { ShapesWorld.judge($0, $1) }
            }
            if monotonicSeconds() - lastLog >= 15 {
                log(String(format: "%d/%d prompts in %.0f s", min(start + b, prompts.count), prompts.count, monotonicSeconds() - t0))
                lastLog = monotonicSeconds()
            }
        }
        return (columns, prompts)
    }
}
