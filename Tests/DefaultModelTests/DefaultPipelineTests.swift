// The embedded default's compile path: the pixel codec against the teacher's patchify, and the
// FLUX sampler built from an exported folder (x0 prediction, sin-cos positions, CFG) against
// TeacherGraphs' own sampler.

@testable import ArcFlowGraphs
@testable import DefaultModel
import Foundation
import Generation
import Imaging
import IR
import Runtime
import ShapesWorld
import TestSupport
import XCTest

final class DefaultPipelineTests: XCTestCase {
    /// FLUX's pack of the codec's latent is the teacher's patchify of the image, exactly, for
    /// both patch sizes in use; the Swift index map agrees with the graph; decode inverts encode.
    func testCodecPackEqualsPatchify() throws {
        for c in [TeacherConfig.standard(batch: 1), TeacherConfig.tiny(batch: 1)] {
            let codec = try PixelCodec(side: TeacherConfig.side, patch: c.patch)
            XCTAssertEqual(codec.latentChannels, c.flux.latentChannels)
            let b = GraphBuilder(name: "codec")
            let image = b.input("image", .f32(codec.imageShape))
            let net = FluxNetwork(builder: b, config: c.flux, base: TensorStore(), adapter: nil, textTokens: 1,
                                  latentHeight: codec.latentShape[2], latentWidth: codec.latentShape[3])
            let latent = codec.encode(b, image)
            b.output("packed", net.pack(latent))
            b.output("patches", TeacherGraphs.patchify(image, c))
            b.output("latent", latent)
            b.output("roundtrip", codec.decode(b, latent))
            var rng = SeededGenerator(seed: UInt64(c.patch))
            let x = Tensor(.f32(codec.imageShape), rng.normals(3 * 64 * 64))
            let out = try Interpreter.run(try b.finish(), inputs: ["image": x]) { k, _ in throw ArcError("no weight \(k)") }
            XCTAssertEqual(out["packed"]!.data, out["patches"]!.data, "patch \(c.patch)")
            XCTAssertEqual(out["latent"]!.data, codec.encode(x.data), "patch \(c.patch): Swift index map")
            XCTAssertEqual(out["roundtrip"]!.data, x.data)
            XCTAssertEqual(codec.decode(codec.encode(x.data)), x.data)
        }
        XCTAssertThrowsError(try PixelCodec(side: 64, patch: 6))
    }

    /// A tiny random teacher exported as a default-model folder, compiled as the teacher variant
    /// (3 Euler steps, CFG 4) by the FLUX compile path, against TeacherGraphs' CFG sampler run by
    /// the interpreter on the same (f16-rounded) weights, noise, caption and schedule.
    func testCompilePathMatchesTeacherSampler() throws {
        let c = TeacherConfig.tiny(batch: 1)
        let dir = try makeTemporaryDirectory("default-model")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try DefaultModelExport.write(TeacherWeights.random(c, seed: 21), config: c, trainedSteps: "0", to: dir)
        let folder = try DefaultModelFolder.load(dir)
        XCTAssertEqual(folder.transformer.config.prediction, .x0)
        XCTAssertEqual(folder.transformer.config.imagePositions, .sincos2d)

        let (steps, g) = (3, 4.0)
        let pipeline = try DefaultPipeline.pipeline(folder, .teacher(steps: steps, guidance: g), threads: 1, cacheRoot: testCacheRoot)
        XCTAssertTrue(pipeline.takesNegative)
        let prompt = "a small blue square at the top left"
        let noise = pipeline.noise(seed: 7)
        let latents = try pipeline.sample(try pipeline.encode(prompt), noise: noise)

        // The reference: the weights as the folder holds them (f16) in f32, TeacherGraphs' graph.
        var trained: [String: Tensor] = [:]
        for store in [folder.transformer.store, folder.textWeights as WeightStore] {
            for k in store.names { let t = try store.tensor(k); trained[k] = Tensor(.f32(t.shape), t.data) }
        }
        let weights = TeacherGraphs.store(c, trained: TensorStore(trained))
        let graph = try TeacherGraphs.sampler(c, weights: weights, count: 1, steps: steps)
        let sigmas = Schedule.eulerSigmas(steps: steps, shift: 1).map(Float.init)
        let reference = try Interpreter.run(graph, inputs: [
            "noise": Tensor(.f32([1, 3, 64, 64]), folder.codec.decode(noise.data)),
            "input_ids": Tensor(.f32([1, WorldVocabulary.length]), try WorldVocabulary.encode(prompt).map(Float.init)),
            "sigmas": Tensor(.f32([steps + 1]), sigmas), "guidance_scale": Tensor(.f32([1]), [Float(g)]),
        ]) { key, _ in try weights.tensor(key) }["images"]!
        let got = Tensor(.f32([1, 3, 64, 64]), folder.codec.decode(latents.data))
        let err = relativeL2(got, reference)
        print("compile path vs TeacherGraphs' sampler (3 steps, CFG 4): relative L2 \(err), max \(maxErrors(got, reference))")
        XCTAssertLessThan(err, 1e-4, "compile path vs TeacherGraphs: relative L2 \(err)")
        // Guidance matters here: without it the result is far off, so the check above can fail.
        let unguided = try Interpreter.run(graph, inputs: [
            "noise": Tensor(.f32([1, 3, 64, 64]), folder.codec.decode(noise.data)),
            "input_ids": Tensor(.f32([1, WorldVocabulary.length]), try WorldVocabulary.encode(prompt).map(Float.init)),
            "sigmas": Tensor(.f32([steps + 1]), sigmas), "guidance_scale": Tensor(.f32([1]), [1]),
        ]) { key, _ in try weights.tensor(key) }["images"]!
        XCTAssertGreaterThan(relativeL2(unguided, reference), 100 * max(err, 1e-7))
    }

    /// The report's fixed prompt set and its measures.
    func testReportPromptsAndMeasures() {
        let p = DefaultReport.prompts(perCategory: 5)
        XCTAssertEqual(p.map(\.category), [String](repeating: "one object", count: 5) + [String](repeating: "two objects", count: 5)
                       + [String](repeating: "held-out pairs", count: 5))
        XCTAssertTrue(p.prefix(5).allSatisfy { $0.prompt.objects.count == 1 && !$0.prompt.containsHeldOutPair })
        XCTAssertTrue(p[5..<10].allSatisfy { $0.prompt.objects.count == 2 && !$0.prompt.containsHeldOutPair })
        XCTAssertTrue(p.suffix(5).allSatisfy { $0.prompt.containsHeldOutPair })
        XCTAssertEqual(p.map(\.prompt), DefaultReport.prompts(perCategory: 5).map(\.prompt), "fixed")
        let a = ShapesWorld.render(p[0].prompt, seed: 1), b = ShapesWorld.render(p[1].prompt, seed: 1)
        XCTAssertEqual(DefaultReport.meanAbsoluteError(a, a), 0)
        XCTAssertGreaterThan(DefaultReport.meanAbsoluteError(a, b), 0)
        let g = DefaultReport.grid([[a, nil, b]], scale: 3, gap: 2)
        XCTAssertEqual([g.width, g.height], [2 + 3 * (192 + 2), 2 + 194])
        XCTAssertEqual(g[2 + 3 * 10 + 1, 2 + 3 * 20 + 2, 0], a[10, 20, 0], "nearest ×3")
    }

    /// The report's failure table and verdicts.csv, on renders (pass) and blank images (count).
    func testReportFailuresAndVerdicts() {
        let p = Array(DefaultReport.prompts(perCategory: 1))
        let renders = p.enumerated().map { ShapesWorld.render($1.prompt, seed: UInt64($0)) }
        let blank = Image8(width: 64, height: 64, channels: 3)
        func column(_ name: String, _ images: [Image8]) -> DefaultReport.Column {
            var c = DefaultReport.Column(name: name, nfe: "2")
            for (image, item) in zip(images, p) {
                c.verdicts.append(ShapesWorld.judge(image, item.prompt)); c.images.append(image); c.seconds.append(0.1)
            }
            return c
        }
        // The teacher fails the last prompt, the student the first; with a recoloured second object
        // the "student" also fails the two-object prompt on identity.
        let teacher = column("teacher", [renders[0], renders[1], blank])
        let (a, b) = (p[1].prompt.objects[0], p[1].prompt.objects[1])
        let other = Prompt.Colour.allCases.first { $0 != a.colour && $0 != b.colour }!
        let wrong = try! Prompt(a, p[1].prompt.relation!, Prompt.Object(other, b.shape))
        let student = column("student", [blank, ShapesWorld.render(wrong, seed: 1), renders[2]])
        XCTAssertEqual(teacher.passed, [true, true, false])
        XCTAssertEqual(student.failures, [.count, .identity, nil])
        let md = DefaultReport.markdown([teacher, student], prompts: p, seed: 0, threads: 1)
        XCTAssertTrue(md.contains("| model | fails | count | identity | relation | size | position | passes where the teacher fails | fails where the teacher passes |"), md)
        XCTAssertTrue(md.contains("| teacher | 1 | 1 | 0 | 0 | 0 | 0 | — | — |"), md)
        XCTAssertTrue(md.contains("| student | 2 | 1 | 1 | 0 | 0 | 0 | 1/1 | 2/2 |"), md)
        // By form (the held-out prompt lands in the column of its own object count), then by the
        // shapes each prompt names, counted here prompt by prompt.
        let heldOutTwo = p[2].prompt.objects.count == 2
        XCTAssertTrue(md.contains("| model | one object, seen pairs | one object, held-out pair | two objects, seen pairs | two objects, held-out pair "
                                  + "| with a circle | with a square | with a triangle |"), md)
        func byShape(_ passed: [Bool]) -> String {
            Prompt.Shape.allCases.map { shape -> String in
                let idx = p.indices.filter { p[$0].prompt.objects.contains { $0.shape == shape } }
                let n = idx.filter { passed[$0] }.count
                return idx.isEmpty ? "—" : String(format: "%.2f (%d/%d)", Double(n) / Double(idx.count), n, idx.count)
            }.joined(separator: " | ")
        }
        XCTAssertTrue(md.contains((heldOutTwo ? "| teacher | 1.00 (1/1) | — | 1.00 (1/1) | 0.00 (0/1) | " : "| teacher | 1.00 (1/1) | 0.00 (0/1) | 1.00 (1/1) | — | ")
                                  + byShape(teacher.passed) + " |"), md)
        XCTAssertTrue(md.contains((heldOutTwo ? "| student | 0.00 (0/1) | — | 0.00 (0/1) | 1.00 (1/1) | " : "| student | 0.00 (0/1) | 1.00 (1/1) | 0.00 (0/1) | — | ")
                                  + byShape(student.passed) + " |"), md)
        let csv = DefaultReport.verdictsCSV([teacher, student], prompts: p, seed: 5).split(separator: "\n").map(String.init)
        XCTAssertEqual(csv.count, 4)
        XCTAssertEqual(csv[0], "index,category,prompt,seed,teacher,teacher reason,student,student reason,student error")
        XCTAssertTrue(csv[1].hasPrefix("0,one object,\(p[0].prompt),5,pass,"), csv[1])
        XCTAssertTrue(csv[1].contains(",count,\"expected 1 object(s), found 0: none\","), csv[1])
        XCTAssertTrue(csv[3].hasPrefix("2,held-out pairs,\(p[2].prompt),7,count,\"expected 2 object(s), found 0: none\",pass,"), csv[3])
    }

    /// Our config keys: unknown values are errors naming the key; the exported config round-trips.
    func testConfigKeys() throws {
        var c = TeacherConfig.tiny().flux
        c.prediction = .x0
        c.imagePositions = .sincos2d
        XCTAssertEqual(try FluxConfig(json: c.json, path: "config.json"), c)
        for (key, value) in [("arcflow_prediction", "epsilon"), ("arcflow_image_positions", "learned")] {
            var j = c.json
            j[key] = value
            XCTAssertThrowsError(try FluxConfig(json: j, path: "config.json")) { e in
                XCTAssertTrue((e as? ArcError)?.message.contains("'\(key)'") ?? false, "\(e)")
            }
        }
    }

    /// The position table is one definition: TeacherGraphs reads FluxNetwork's, and a non-square
    /// grid gives row and column their own halves.
    func testPositionTable() {
        let c = TeacherConfig.standard(batch: 1)
        XCTAssertEqual(TeacherGraphs.positionTable(c), FluxNetwork.sinCosPositions(gridH: 8, gridW: 8, width: 192))
        let t = FluxNetwork.sinCosPositions(gridH: 2, gridW: 3, width: 8)
        // Token (1, 2): row half sin(1), cos(1) at k = 0; column half sin(2), cos(2).
        let row = Array(t[(1 * 3 + 2) * 8..<(1 * 3 + 3) * 8])
        XCTAssertEqual(row[0], Float(sin(1.0)), accuracy: 1e-6)
        XCTAssertEqual(row[2], Float(cos(1.0)), accuracy: 1e-6)
        XCTAssertEqual(row[4], Float(sin(2.0)), accuracy: 1e-6)
        XCTAssertEqual(row[6], Float(cos(2.0)), accuracy: 1e-6)
    }
}
