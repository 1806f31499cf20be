// Symmetric int8 weight quantization: what the values of a weight marked by quantize-weights are.

/// One scale per group of weights: the group's largest magnitude maps to ±127 (symmetric, no
/// zero point: weights are centred, and the GEMM then needs no correction term).
@inlinable public func int8Scale(maxAbs: Float) -> Float { maxAbs / 127 }

/// The int8 code of `x` with `scale`: rounded to nearest (ties away from zero), within ±127;
/// 0 for an all-zero (or non-finite) group.
@inlinable public func int8Code(_ x: Float, scale: Float) -> Int8 {
    let r = (x / scale).rounded()
    return r.isFinite ? Int8(max(-127, min(127, r))) : 0
}

/// The values an int8-stored weight stands for, `Float(code) * scale` per element (what the
/// int8 GEMM computes with, exactly): `t` is rank 2, quantized along `axis` (the GEMM's K) in
/// groups of `group` consecutive elements (group ≥ the axis length: one scale per output channel).
public func int8Dequantized(_ t: Tensor, axis: Int, group: Int) -> Tensor {
    precondition(t.type.rank == 2 && (axis == 0 || axis == 1) && group > 0, "int8Dequantized: rank-2 tensor, axis 0 or 1, positive group")
    let (rows, cols) = (t.type.shape[0], t.type.shape[1])
    let (k, channels) = axis == 1 ? (cols, rows) : (rows, cols)
    func index(_ channel: Int, _ kk: Int) -> Int { axis == 1 ? channel * cols + kk : kk * cols + channel }
    var out = t.data
    for c in 0..<channels {
        for start in stride(from: 0, to: k, by: group) {
            let end = min(k, start + group)
            var maxAbs: Float = 0
            for kk in start..<end { maxAbs = max(maxAbs, abs(t.data[index(c, kk)])) }
            let scale = int8Scale(maxAbs: maxAbs)
            for kk in start..<end { out[index(c, kk)] = Float(int8Code(t.data[index(c, kk)], scale: scale)) * scale }
        }
    }
    return Tensor(t.type, out)
}
