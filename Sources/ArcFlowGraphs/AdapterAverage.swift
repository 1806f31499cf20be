// The uniform average of ArcFlow adapters ("model soup"): several fine-tunes from one start
// averaged in weight space, which tends to generalise at least as well as the runs it averages.

import Foundation
import IR
import Runtime

extension ArcFlowAdapter {
    /// The tensors of the uniform average of `adapters` (one config: the same K, keys and shapes
    /// but for the LoRA ranks). The dense tensors (`norm_out`, the heads) are averaged. Each
    /// module's update ΔW = s·B·A is averaged exactly rather than by averaging A and B apart
    /// (whose product is not the mean of the products): the pairs are concatenated along the
    /// rank, A's rows stacked and B's columns side by side with B scaled by s/n, so the result
    /// has the summed rank and scale 1 (α = r, no `.alpha` tensors), and applies unchanged.
    /// The records are stored as `dtype` (the values are computed in f32 either way).
    public static func average(_ adapters: [ArcFlowAdapter], dtype: DType = .f32) throws -> [TensorRecord] {
        guard let first = adapters.first else { throw ArcError("average: no adapters") }
        let n = Float(adapters.count)
        for a in adapters.dropFirst() {
            guard a.components == first.components else {
                throw ArcError("average: \(a.directory) has K = \(a.components), \(first.directory) K = \(first.components)")
            }
            // The output takes the first input's config.json: a student distilled for another
            // σ schedule or prediction is another model, not a neighbour to average with.
            guard a.shift == first.shift, a.timestepRatio == first.timestepRatio, a.prediction == first.prediction else {
                throw ArcError("average: \(a.directory) and \(first.directory) differ in config.json's arcflow_shift, arcflow_timestep_ratio or arcflow_prediction")
            }
            guard a.dense == first.dense, Set(a.lora.keys) == Set(first.lora.keys) else {
                throw ArcError("average: \(a.directory) and \(first.directory) hold different tensors (other LoRA targets or head)")
            }
        }
        var records: [TensorRecord] = []
        for key in first.dense.sorted() {
            let ts = try adapters.map { try $0.store.tensor(key) }
            for (a, t) in zip(adapters, ts) where t.type.shape != ts[0].type.shape {
                throw ArcError("average: '\(key)' is \(t.type.shape) in \(a.directory), \(ts[0].type.shape) in \(first.directory)")
            }
            var sum = [Float](repeating: 0, count: ts[0].data.count)
            for t in ts { for i in sum.indices { sum[i] += t.data[i] } }
            records.append(TensorRecord(name: key, dtype: dtype, shape: ts[0].type.shape, payload: .floats(sum.map { $0 / n })))
        }
        for module in first.lora.keys.sorted() {
            var aRows: [Float] = [], bParts: [(rank: Int, values: [Float])] = []
            var inFeatures = -1, outFeatures = -1
            for adapter in adapters {
                let pair = adapter.lora[module]!
                let a = try adapter.store.tensor(pair.a), b = try adapter.store.tensor(pair.b)
                guard a.type.rank == 2, b.type.rank == 2, b.type.shape[1] == a.type.shape[0] else {
                    throw ArcError("average: \(adapter.directory): '\(module)' has lora_A \(a.type.shape) and lora_B \(b.type.shape)")
                }
                if inFeatures < 0 { (inFeatures, outFeatures) = (a.type.shape[1], b.type.shape[0]) }
                guard a.type.shape[1] == inFeatures, b.type.shape[0] == outFeatures else {
                    throw ArcError("average: '\(module)' is \(b.type.shape[0])×\(a.type.shape[1]) in \(adapter.directory), \(outFeatures)×\(inFeatures) in \(first.directory)")
                }
                let r = a.type.shape[0], s = try adapter.loraScale(module, rank: r) / n
                aRows += a.data
                bParts.append((r, b.data.map { $0 * s }))
            }
            let rank = bParts.reduce(0) { $0 + $1.rank }
            var b = [Float](repeating: 0, count: outFeatures * rank)
            var column = 0
            for part in bParts {
                for o in 0..<outFeatures { for j in 0..<part.rank { b[o * rank + column + j] = part.values[o * part.rank + j] } }
                column += part.rank
            }
            records.append(TensorRecord(name: module + ".lora_A.weight", dtype: dtype, shape: [rank, inFeatures], payload: .floats(aRows)))
            records.append(TensorRecord(name: module + ".lora_B.weight", dtype: dtype, shape: [outFeatures, rank], payload: .floats(b)))
        }
        return records
    }

    /// Writes the average of the adapter folders `inputs` to `output` in `dtype` (f16 as shipped):
    /// the safetensors file (metadata policy_config ArcFlow) and the first input's config.json,
    /// each atomically.
    public static func writeAverage(of inputs: [String], to output: String, dtype: DType = .f16) throws -> [TensorRecord] {
        let adapters = try inputs.map { try ArcFlowAdapter.load($0) }
        let records = try average(adapters, dtype: dtype)
        try FileManager.default.createDirectory(atPath: output, withIntermediateDirectories: true)
        try writeSafeTensors(records, metadata: ["policy_config": "{\"type\": \"ArcFlow\"}"], to: "\(output)/diffusion_pytorch_model.safetensors")
        try writeAtomically(try Data(contentsOf: URL(fileURLWithPath: "\(inputs[0])/config.json")), to: "\(output)/config.json")
        return records
    }
}
