import ArcFlowGraphs
import Foundation
import IR
import Runtime
import XCTest

final class AdapterAverageTests: XCTestCase {
    let module = "transformer_blocks.0.ff.net.0.proj"
    let (inFeatures, outFeatures) = (5, 4)

    /// An adapter folder with K = 2, every dense key (small shapes: the loader does not check
    /// them against a model) and one LoRA module of rank `rank`, α given as a tensor if set.
    func writeAdapter(_ dir: String, rank: Int, alpha: Float?, seed: UInt64, components: Int = 2, shift: Double = 1,
                      timestepRatio: String? = nil) throws -> [String: [Float]] {
        var rng = SeededGenerator(seed: seed)
        var values: [String: [Float]] = [:]
        var records: [TensorRecord] = []
        func add(_ name: String, _ shape: [Int]) {
            let v = rng.normals(shape.reduce(1, *))
            values[name] = v
            records.append(TensorRecord(name: name, dtype: .f32, shape: shape, payload: .floats(v)))
        }
        for key in ArcFlowAdapter.denseKeys.sorted() { add(key, key.hasSuffix(".bias") ? [3] : [3, 2]) }
        add("\(module).lora_A.weight", [rank, inFeatures])
        add("\(module).lora_B.weight", [outFeatures, rank])
        if let alpha { records.append(TensorRecord(name: "\(module).alpha", dtype: .f32, shape: [], payload: .floats([alpha]))) }
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try writeSafeTensors(records, to: "\(dir)/diffusion_pytorch_model.safetensors")
        let ratio = timestepRatio.map { ", \"arcflow_timestep_ratio\": \($0)" } ?? ""
        try writeAtomically("{\"_class_name\": \"ArcFluxTransformer2DModel\", \"num_gaussians\": \(components), \"arcflow_shift\": \(shift)\(ratio)}",
                            to: "\(dir)/config.json")
        return values
    }

    /// ΔW = scale · B · A, out × in.
    func delta(a: [Float], b: [Float], rank: Int, scale: Float) -> [Float] {
        (0..<outFeatures * inFeatures).map { e in
            let (o, i) = (e / inFeatures, e % inFeatures)
            return scale * (0..<rank).reduce(Float(0)) { $0 + b[o * rank + $1] * a[$1 * inFeatures + i] }
        }
    }

    func testAverageIsTheMeanOfTheUpdatesAndOfTheDenseTensors() throws {
        let root = NSTemporaryDirectory() + "adapter-average-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: root) }
        // Ranks 2 and 3; the second with α = 6 (scale 2): the scale must be folded into its B.
        let x = try writeAdapter("\(root)/x", rank: 2, alpha: nil, seed: 1)
        let y = try writeAdapter("\(root)/y", rank: 3, alpha: 6, seed: 2)
        let records = try ArcFlowAdapter.average([try ArcFlowAdapter.load("\(root)/x"), try ArcFlowAdapter.load("\(root)/y")])
        let out = Dictionary(uniqueKeysWithValues: records.map { r -> (String, (shape: [Int], values: [Float])) in
            guard case .floats(let v) = r.payload else { fatalError("f32 payloads expected") }
            return (r.name, (r.shape, v))
        })
        XCTAssertEqual(Set(out.keys), Set(ArcFlowAdapter.denseKeys).union(["\(module).lora_A.weight", "\(module).lora_B.weight"]))
        for key in ArcFlowAdapter.denseKeys {
            let mean = zip(x[key]!, y[key]!).map { ($0 + $1) / 2 }
            XCTAssertEqual(out[key]!.values, mean, key)
        }
        let a = out["\(module).lora_A.weight"]!, b = out["\(module).lora_B.weight"]!
        XCTAssertEqual(a.shape, [5, inFeatures])
        XCTAssertEqual(b.shape, [outFeatures, 5])
        let got = delta(a: a.values, b: b.values, rank: 5, scale: 1)
        let dx = delta(a: x["\(module).lora_A.weight"]!, b: x["\(module).lora_B.weight"]!, rank: 2, scale: 1)
        let dy = delta(a: y["\(module).lora_A.weight"]!, b: y["\(module).lora_B.weight"]!, rank: 3, scale: 2)
        for (g, e) in zip(got, zip(dx, dy).map { ($0 + $1) / 2 }) { XCTAssertEqual(g, e, accuracy: 1e-5 * max(1, abs(e))) }

        // Written (f32 here), it loads as an adapter of rank 5 and scale 1 (no α tensor).
        _ = try ArcFlowAdapter.writeAverage(of: ["\(root)/x", "\(root)/y"], to: "\(root)/avg", dtype: .f32)
        let loaded = try ArcFlowAdapter.load("\(root)/avg")
        XCTAssertEqual(loaded.components, 2)
        XCTAssertNil(loaded.lora[module]?.alpha)
        XCTAssertEqual(try loaded.loraScale(module, rank: 5), 1)
        XCTAssertEqual(try loaded.store.tensor("\(module).lora_B.weight").data, b.values)
    }

    func testAdaptersOfAnotherConfigAreRefused() throws {
        let root = NSTemporaryDirectory() + "adapter-average-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: root) }
        _ = try writeAdapter("\(root)/x", rank: 2, alpha: nil, seed: 1)
        _ = try writeAdapter("\(root)/k3", rank: 2, alpha: nil, seed: 2, components: 3)
        XCTAssertThrowsError(try ArcFlowAdapter.writeAverage(of: ["\(root)/x", "\(root)/k3"], to: "\(root)/avg")) { error in
            XCTAssertTrue((error as? ArcError)?.message.contains("K = 3") ?? false, "\(error)")
        }
        _ = try writeAdapter("\(root)/shift3", rank: 2, alpha: nil, seed: 3, shift: 3)
        XCTAssertThrowsError(try ArcFlowAdapter.writeAverage(of: ["\(root)/x", "\(root)/shift3"], to: "\(root)/avg")) { error in
            XCTAssertTrue((error as? ArcError)?.message.contains("arcflow_shift") ?? false, "\(error)")
        }
        _ = try writeAdapter("\(root)/r06", rank: 2, alpha: nil, seed: 4, timestepRatio: "0.6")
        XCTAssertEqual(try ArcFlowAdapter.load("\(root)/r06").timestepRatio, 0.6)
        XCTAssertNil(try ArcFlowAdapter.load("\(root)/x").timestepRatio, "absent: the reference's 1")
        XCTAssertThrowsError(try ArcFlowAdapter.writeAverage(of: ["\(root)/x", "\(root)/r06"], to: "\(root)/avg")) { error in
            XCTAssertTrue((error as? ArcError)?.message.contains("arcflow_timestep_ratio") ?? false, "\(error)")
        }
        for bad in ["0", "-1", "\"1\""] {
            _ = try writeAdapter("\(root)/bad", rank: 2, alpha: nil, seed: 5, timestepRatio: bad)
            XCTAssertThrowsError(try ArcFlowAdapter.load("\(root)/bad")) { error in
                XCTAssertTrue("\(error)".contains("'arcflow_timestep_ratio' must be a positive number, got \(bad)"), "\(error)")
            }
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(root)/avg"), "nothing is written for refused inputs")
    }
}
