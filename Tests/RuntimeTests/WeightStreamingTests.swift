// Streaming compile: weights computed, packed and written one at a time give the same model
// folder as the whole prologue run at once; the streaming safetensors writer and page eviction.

import Codegen
import Foundation
import IR
import Passes
import Runtime
import TestSupport
import XCTest

final class WeightStreamingTests: XCTestCase {
    /// A bf16 checkpoint with LoRA adapters (the FLUX case): the prologue casts and fuses in f32;
    /// linears with and without an adapter, a bias (not packed), a weight also sliced.
    func makeModel(_ dir: String) throws -> (Module, SafeTensorsStore) {
        let b = GraphBuilder(name: "streamed")
        var rng = SeededGenerator(seed: 5)
        var records: [TensorRecord] = []
        func weight(_ name: String, _ shape: [Int]) -> Value {
            records.append(TensorRecord(name: name, dtype: .bf16, shape: shape, payload: .floats(rng.normals(shape.reduce(1, *)))))
            return b.convert(b.weight(name, TensorType(.bf16, shape)), to: .f32)
        }
        let x = b.input("x", .f32([9, 45]))
        func lora(_ name: String, _ x: Value, out: Int) -> Value {
            let k = x.type.shape[1]
            let base = b.matmul(x, weight("\(name).w", [out, k]), transposeB: true)
            let down = b.matmul(x, weight("\(name).a", [4, k]), transposeB: true)
            let up = b.matmul(down, weight("\(name).b", [out, 4]), transposeB: true)
            return base + up * b.constant(0.5, shape: [9, out])
        }
        let h = (lora("l0", x, out: 70) + weight("bias", [70]).reshaped([1, 70]).broadcast(to: [9, 70])).apply(.gelu)
        let y = lora("l1", h, out: 33)
        let plain = b.matmul(h, weight("plain", [33, 70]), transposeB: true)
        let we = weight("we", [33, 70])
        b.output("y", y + plain + b.matmul(h, we, transposeB: true) + b.slice(we, start: [0, 0], end: [9, 33]))
        let path = "\(dir)/checkpoint.safetensors"
        try writeSafeTensors(records, to: path)
        return (Module(try b.finish()), try SafeTensorsStore(path: path))
    }

    func testStreamedPrologueWritesTheSameModelFolder() throws {
        let dir = try makeTemporaryDirectory("arcflow-streaming")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (module, store) = try makeModel(dir)
        let x = randomInputs(module.main)
        var outputs: [[String: Tensor]] = []
        for (name, whole) in [("whole", Int.max), ("streamed", 0)] {
            for dtype in [WeightsDType.f32, .auto] {
                var options = CompileOptions()
                options.cacheRoot = testCacheRoot
                options.weightsDType = dtype
                options.wholePrologueBytes = whole
                var log: [String] = []
                options.log = { log.append($0) }
                let compiled = try ModelCompiler.build(module, weights: store, options: options)
                XCTAssertNotNil(compiled.module.prologue)
                try ModelCompiler.write(compiled, to: "\(dir)/\(name)-\(dtype)")
                XCTAssertEqual(log.contains { $0.contains("one output at a time") }, whole == 0, "\(log)")
                // In memory (load) and from the folder: the same weights.
                let fromMemory = try compiled.load().run(x)
                let loaded = try LoadedModel.load("\(dir)/\(name)-\(dtype)")
                XCTAssertEqual(try loaded.executable.run(x), fromMemory)
                outputs.append(fromMemory)
                let packed = loaded.manifest.weights.filter { $0.packing != nil }
                // The slice of `we` is weight-only too (lifted), so `we` is read only by its GEMM here.
                XCTAssertEqual(packed.map(\.name).sorted(), ["l0.w#add", "l1.w#add", "plain#convert", "we#convert"],
                               "\(loaded.manifest.weights.map(\.name))")
                XCTAssertTrue(packed.allSatisfy { $0.dtype == (dtype == .f32 ? "f32" : "bf16") })
            }
        }
        for dtype in ["f32", "auto"] {
            let whole = try Data(contentsOf: URL(fileURLWithPath: "\(dir)/whole-\(dtype)/weights.safetensors"))
            let streamed = try Data(contentsOf: URL(fileURLWithPath: "\(dir)/streamed-\(dtype)/weights.safetensors"))
            XCTAssertEqual(whole, streamed, "weights.safetensors with --weights-dtype \(dtype)")
        }
        XCTAssertEqual(outputs[0], outputs[2])
        XCTAssertEqual(outputs[1], outputs[3])
    }

    /// A product of weights that several lifted outputs slice (Qwen-Image's modulation: one GEMM,
    /// six chunks): streamed, it is computed once and read by the slices' cones, so the cones do
    /// exactly the whole prologue's arithmetic, and write the same weights.
    func testSharedPrologueIntermediatesAreComputedOnce() throws {
        let dir = try makeTemporaryDirectory("arcflow-streaming-shared")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let b = GraphBuilder(name: "shared")
        var rng = SeededGenerator(seed: 9)
        let w = TensorRecord(name: "mod", dtype: .bf16, shape: [24, 16], payload: .floats(rng.normals(24 * 16)))
        let path = "\(dir)/checkpoint.safetensors"
        try writeSafeTensors([w], to: path)
        let x = b.input("x", .f32([2, 8]))
        let t = b.constant(0.25, shape: [1, 16])
        let m = b.matmul(t, b.convert(b.weight("mod", TensorType(.bf16, [24, 16])), to: .f32), transposeB: true).apply(.silu)
        let chunks = (0..<3).map { b.slice(m, start: [0, 8 * $0], end: [1, 8 * $0 + 8]).broadcast(to: [2, 8]) }
        b.output("y", x * chunks[0] + chunks[1] + chunks[2])
        let module = Module(try b.finish())
        var flops: [String] = [], weights: [Data] = []
        for whole in [Int.max, 0] {
            var options = CompileOptions()
            options.cacheRoot = testCacheRoot
            options.wholePrologueBytes = whole
            var log: [String] = []
            options.log = { log.append($0) }
            let compiled = try ModelCompiler.build(module, weights: try SafeTensorsStore(path: path), options: options)
            XCTAssertEqual(compiled.module.prologue?.outputs.count, 3, "the three slices are lifted")
            try ModelCompiler.write(compiled, to: "\(dir)/\(whole)")
            weights.append(try Data(contentsOf: URL(fileURLWithPath: "\(dir)/\(whole)/weights.safetensors")))
            let line = log.first { $0.hasPrefix(whole == 0 ? "prologue: " : "evaluating @prologue") } ?? "\(log)"
            if whole == 0 { XCTAssertTrue(line.contains("4 cones run") && line.contains("(1 shared"), line) }
            // The FLOP count is the word before "FLOP".
            let words = line.split(separator: " ").map(String.init)
            let at = words.firstIndex { $0.hasPrefix("FLOP") } ?? 0
            flops.append(at > 0 ? words[at - 1] : line)
        }
        XCTAssertEqual(flops[0], flops[1], "streamed cones recompute nothing")
        XCTAssertEqual(weights[0], weights[1])
    }

    /// Dropped pages come back from the file: values read after `evict` are unchanged.
    func testEvictedTensorsReadBackUnchanged() throws {
        let dir = try makeTemporaryDirectory("arcflow-evict")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let values = (0..<5000).map { Float($0) * 0.25 }
        try writeSafeTensors([TensorRecord(name: "a", dtype: .f32, shape: [5000], payload: .floats(values)),
                              TensorRecord(name: "b", dtype: .bf16, shape: [3], payload: .floats([1, 2, 3]))], to: "\(dir)/w.safetensors")
        let store = try SafeTensorsStore(path: "\(dir)/w.safetensors")
        XCTAssertEqual(try store.tensor("a").data, values)
        store.evict("a")
        store.evict("missing")
        XCTAssertEqual(try store.tensor("a").data, values)
        XCTAssertEqual(try store.tensor("b").data, [1, 2, 3])
    }

    /// The streaming writer: the same bytes as `writeSafeTensors`; wrong sizes and missing
    /// tensors are errors naming the tensor; nothing appears until `commit`.
    func testSafeTensorsWriter() throws {
        let dir = try makeTemporaryDirectory("arcflow-writer")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let records = [TensorRecord(name: "z", dtype: .f16, shape: [3], payload: .floats([1, 2, 3])),
                       TensorRecord(name: "empty", dtype: .f32, shape: [0, 4], payload: .floats([])),
                       TensorRecord(name: "a", dtype: .f32, shape: [2], payload: .floats([5, 6]))]
        try writeSafeTensors(records, metadata: ["k": "v"], to: "\(dir)/one.safetensors")
        let tensors = records.map { ($0.name, $0.dtype, $0.shape) }
        let w = try SafeTensorsWriter(path: "\(dir)/two.safetensors", tensors: tensors, metadata: ["k": "v"])
        try encodeFloats([1, 2], .f16).withUnsafeBytes { try w.append($0, partial: true) }
        try encodeFloats([3], .f16).withUnsafeBytes { try w.append($0, partial: true) }
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(dir)/two.safetensors"))
        try encodeFloats([5, 6], .f32).withUnsafeBytes { try w.append($0) }
        try w.commit()
        XCTAssertEqual(w.sha256, try sha256(ofFile: "\(dir)/one.safetensors"))
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: "\(dir)/one.safetensors")),
                       try Data(contentsOf: URL(fileURLWithPath: "\(dir)/two.safetensors")))

        do {
            let bad = try SafeTensorsWriter(path: "\(dir)/bad.safetensors", tensors: tensors)
            XCTAssertThrowsError(try encodeFloats([1, 2], .f16).withUnsafeBytes { try bad.append($0) }) {
                XCTAssertTrue("\($0)".contains("'z' got 4 bytes, its type needs 6"), "\($0)")
            }
            XCTAssertThrowsError(try bad.commit()) { XCTAssertTrue("\($0)".contains("next: 'z'"), "\($0)") }
        }
        // A writer dropped before commit leaves no file and no temporary behind.
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir).sorted(), ["one.safetensors", "two.safetensors"])
    }
}
