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
        let names = ["teacher (Euler, CFG \(r.guidanceLabel))", "student (2 NFE)", "student step 1 → teacher", "teacher → student step 2"]
        let nfes = ["\(steps) × 2", "2", "1 + \(steps - mid) × 2", "\(mid) × 2 + 1"]
        var columns = zip(names, nfes).map { DefaultReport.Column(name: $0, nfe: $1) }
        var rng = SeededGenerator(seed: seed)
        let (s0, s1) = (r.segments[0], r.segments[1])

        let t0 = monotonicSeconds()
        var lastLog = t0
        for start in stride(from: 0, to: prompts.count, by: b) {
            let ps = prompts[start..<min(start + b, prompts.count)].map(\.prompt)
            var ids = ps.flatMap { WorldVocabulary.encode($0).map(Float.init) }
            for _ in ps.count..<b { ids += TeacherGraphs.emptyCaption.map(Float.init) }
            let noise = Tokens.patchify(rng.normals(b * 3 * TeacherConfig.side * TeacherConfig.side), count: b, patch: c.patch)
            let teacherMid = try rollout.teacherSolution(noise, from: sigmas[0], to: sigmas[mid], ids: ids, steps: steps)
            let teacherEnd = try rollout.teacherSolution(teacherMid, from: sigmas[mid], to: 0, ids: ids, steps: steps)
            var studentMid = noise
            try rollout.studentSegment(&studentMid, ids: ids, t: 1, size: s0, weight: ema)
            var studentEnd = studentMid
            try rollout.studentSegment(&studentEnd, ids: ids, t: 1 - s0, size: s1, weight: ema)
            let handedToTeacher = try rollout.teacherSolution(studentMid, from: sigmas[mid], to: 0, ids: ids, steps: steps)
            var handedToStudent = teacherMid
            try rollout.studentSegment(&handedToStudent, ids: ids, t: 1 - s0, size: s1, weight: ema)
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
