// quantize-weights: marks the GEMM weights of @main for symmetric int8 storage.

import IR

/// With `--weights-dtype int8` (pass option `quantize-weights.dtype=int8`), every weight of
/// `@main` that is read only as the right operand B of matmuls (A not transposed, one
/// orientation: the weights codegen packs into panels) gets `quantize = "int8"`, `quant_axis`
/// (its K axis: 1 for x·Wᵀ, 0 for x·W) and `quant_group` (elements of K per scale). From then
/// on the weight's value is `int8Dequantized` (the interpreter applies it; the compiler stores
/// the codes and scales in int8 panels and the GEMM dequantizes them in registers), so the
/// oracle and the kernel agree exactly on what is computed.
///
/// `quantize-weights.group`: `32` (default: one scale per block of 32 along K) or `channel`
/// (one per output channel). Blocks cost 4 bytes per 32 weights (1.125 bytes a weight against
/// 1.0) and measured lower error (final latents of the bf16 cfg-a sampler: 6.5e-3 against
/// 7.2e-3 relative L2 to f32; 3.8e-3 against 3.9e-3 per GEMM on random weights) at the same
/// GEMM speed within noise (README, "Compact weights").
/// Runs after lift-weights and dce (the weights @main reads are final) and before fusion
/// (matmuls are still plain nodes).
public let quantizeWeights = Pass(name: "quantize-weights",
                                  summary: "mark @main's GEMM weights for int8 storage (quantize-weights.dtype=int8; .group=32|channel)") { module, context in
    guard let dtype = context.options["quantize-weights.dtype"] else { return }
    guard dtype == "int8" else { throw ArcError("quantize-weights.dtype must be int8, got '\(dtype)'") }
    let groupOption = context.options["quantize-weights.group"] ?? "32"
    let group: Int?
    if groupOption == "channel" { group = nil } else if let g = Int(groupOption), g > 0 { group = g } else {
        throw ArcError("quantize-weights.group must be a positive number of elements or 'channel', got '\(groupOption)'")
    }
    let (marked, count) = markInt8Weights(module.main, group: group)
    module.main = marked
    if count > 0 { context.note("quantize-weights: \(count) weights of @main stored as int8 (group \(groupOption))") }
}

/// `group` nil: one scale per output channel (the group is all of K).
func markInt8Weights(_ graph: Graph, group: Int?) -> (Graph, Int) {
    var orientation: [ValueID: Bool] = [:]   // weight → transpose_b of its matmuls
    var excluded = Set(graph.outputs.map(\.value))
    for n in graph.nodes {
        for (k, o) in n.operands.enumerated() where graph[o].op == .weight {
            let asB = n.op == .matmul && k == 1 && n.operands[0] != o && !n.flag("transpose_a")
            guard asB, orientation[o] ?? n.flag("transpose_b") == n.flag("transpose_b") else { excluded.insert(o); continue }
            orientation[o] = n.flag("transpose_b")
        }
    }
    var g = graph
    var count = 0
    for (w, transposed) in orientation.sorted(by: { $0.key < $1.key }) where !excluded.contains(w) {
        let t = graph[w].type
        guard t.dtype == .f32, t.rank == 2, t.count > 0, graph[w].attributes["quantize"] == nil else { continue }
        let axis = transposed ? 1 : 0
        g.nodes[w].attributes["quantize"] = .string("int8")
        g.nodes[w].attributes["quant_axis"] = .int(axis)
        g.nodes[w].attributes["quant_group"] = .int(min(group ?? t.shape[axis], t.shape[axis]))
        count += 1
    }
    return (g, count)
}
