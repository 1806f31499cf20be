// Weights laid out for the GEMM kernels: which matmul weights are packed into panels, in which
// storage type, and the packing itself (a weight-only transform, run once at compile time).

import IR

/// What `--weights-dtype` asks for: the packed weights' storage type.
public enum WeightsDType: String, CaseIterable {
    /// The checkpoint's own storage type (for a weight computed at compile time, e.g. LoRA fused
    /// into a bf16 base, the type of its largest source).
    case auto
    case f32, bf16, f16
    /// Symmetric int8 GEMM weights (the quantize-weights pass; gemm_int8.h); others as `auto`.
    case int8
}

/// What `--compute` asks of the GEMMs over packed panels: f32 arithmetic (exact products of the
/// stored weights), or `bf16`, the fast mode: bf16 panels times activations rounded to bf16,
/// products summed in f32 by AVX-512 BF16's vdpbf16ps (twice the f32 FMA rate), for CPUs with
/// avx512_bf16. It changes the generated C, so the library cache keys it.
public enum GEMMCompute: String, CaseIterable {
    case f32, bf16
}

/// How a weight is stored for `af_gemm_packed` (gemm.h): the matmul's right operand B (K × N as
/// the product uses it) cut into panels of `panel` columns, K rows each, zero past N, in the
/// binding's dtype. The binding's shape is the physical one, [panels, K, panel]. Within a panel
/// the columns go in strips of `strip` (one register tile's width: the whole panel with AVX-512,
/// half of it with AVX2), each strip's K rows contiguous, so a tile reads its weights as one
/// sequential stream (gemm.h, AF_GEMM_STRIP, says what that was worth).
public struct WeightPacking: Equatable, Codable {
    /// Columns per panel (AF_GEMM_NR).
    public var panel: Int
    /// Columns per strip (AF_GEMM_STRIP of the library that reads the panels; it divides `panel`).
    /// Pair and int8 panels keep whole rows (their kernels expand a K block into strips).
    public var strip: Int
    /// The weight as the graph types it (f32): [N, K] when `transposed` (x·Wᵀ), else [K, N].
    public var source: [Int]
    public var transposed: Bool
    /// Set for int8 panels (quantize-weights): elements of K per scale (K: per output channel).
    public var group: Int?
    /// bf16 panels for `--compute bf16`, stored in pairs of k: element (k, j) of a panel at
    /// (k/2)·2·panel + 2j + k%2, K padded with zeros to `paddedK` (gemm.h, dt 3). That is the
    /// operand layout of both bf16 kernels (vdpbf16ps takes a pair row as it is; AMX reads its B
    /// tiles in place), which otherwise interleave rows per K block at run time.
    public var pairs = false

    public init(panel: Int, source: [Int], transposed: Bool, group: Int? = nil, pairs: Bool = false, strip: Int? = nil) {
        (self.panel, self.source, self.transposed, self.group, self.pairs) = (panel, source, transposed, group, pairs)
        self.strip = strip ?? panel
    }

    /// Whether the panels are stored in strips (else in whole rows of `panel`).
    public var stripped: Bool { !pairs && group == nil }

    public var k: Int { transposed ? source[1] : source[0] }
    public var n: Int { transposed ? source[0] : source[1] }
    public var panels: Int { (n + panel - 1) / panel }
    /// Rows of k per panel: K, or for pair panels K rounded up to 32 (AF__GPAIRK, one AMX tile).
    public var paddedK: Int { pairs ? (k + 31) / 32 * 32 : k }
    public func physicalType(_ dtype: DType) -> TensorType {
        guard dtype == .i8, let g = group else { return TensorType(dtype, [panels, paddedK, panel]) }
        return TensorType(.i8, [panels, int8PanelBytes(k: k, group: g, panel: panel)])
    }

    private enum CodingKeys: String, CodingKey { case panel, source, transposed, group, pairs, strip }

    /// A manifest written before pair panels existed has no `pairs`: plain rows; one written before
    /// strips has no `strip`: whole rows.
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.init(panel: try c.decode(Int.self, forKey: .panel), source: try c.decode([Int].self, forKey: .source),
                  transposed: try c.decode(Bool.self, forKey: .transposed), group: try c.decodeIfPresent(Int.self, forKey: .group),
                  pairs: try c.decodeIfPresent(Bool.self, forKey: .pairs) ?? false, strip: try c.decodeIfPresent(Int.self, forKey: .strip))
    }
}

/// Columns per packed panel; must equal AF_GEMM_NR in gemm.h.
public let gemmPanelWidth = 32

/// Which weights of `graph` are packed, and as what: those that every reader uses as the right
/// operand of a matmul (itself or the GEMM head of a fusion) with A not transposed and one
/// orientation, f32 and rank 2 in the graph, and for which `storage` names a type (nil: leave it).
/// A weight also read otherwise (element-wise, reshaped, as an output) keeps its plain layout.
func packedWeights(_ graph: Graph, storage: (String) -> DType?, pairs: Bool = false) -> [ValueID: (packing: WeightPacking, dtype: DType)] {
    var transposedOf: [ValueID: Bool] = [:]
    var unpackable = Set(graph.outputs.map(\.value))
    for n in graph.nodes {
        for (k, o) in n.operands.enumerated() where graph[o].op == .weight {
            guard let t = gemmRightOperand(n, operand: k), transposedOf[o] ?? t == t else { unpackable.insert(o); continue }
            transposedOf[o] = t
        }
    }
    var result: [ValueID: (WeightPacking, DType)] = [:]
    for (w, transposed) in transposedOf where !unpackable.contains(w) {
        let node = graph[w]
        guard node.type.dtype == .f32, node.type.rank == 2, node.type.count > 0, let dtype = storage(node.key!) else { continue }
        var packing = WeightPacking(panel: gemmPanelWidth, source: node.type.shape, transposed: transposed)
        if case .string("int8")? = node.attributes["quantize"], node.int("quant_axis") == (transposed ? 1 : 0) {
            packing.group = node.int("quant_group")   // quantize-weights: int8 panels
            result[w] = (packing, .i8)
            continue
        }
        packing.pairs = pairs && dtype == .bf16
        result[w] = (packing, dtype)
    }
    return result
}

/// Whether operand `k` of `n` is a packable GEMM right operand: the `transpose_b` flag if so.
private func gemmRightOperand(_ n: Node, operand k: Int) -> Bool? {
    if n.op == .matmul {
        guard k == 1, n.operands[0] != n.operands[1], !n.flag("transpose_a") else { return nil }
        return n.flag("transpose_b")
    }
    guard n.op == .fusion, let region = n.region, n.operands.filter({ $0 == n.operands[k] }).count == 1,
          let h = region.nodes.firstIndex(where: { $0.op == .matmul }) else { return nil }
    let mm = region[h]
    guard region[mm.operands[1]].key == String(k), region[mm.operands[0]].key != String(k), !mm.flag("transpose_a") else { return nil }
    // The loop after the GEMM must not read the weight element by element.
    let readElsewhere = region.nodes.enumerated().contains { i, m in i != h && m.operands.contains(mm.operands[1]) }
    return readElsewhere ? nil : mm.flag("transpose_b")
}

/// Bytes of one int8 panel (af_i8_panel_bytes in gemm_int8.h): ceil(K / group) rows of `panel`
/// f32 scales, then K rows of `panel` int8 codes padded to 64 bytes.
public func int8PanelBytes(k: Int, group: Int, panel: Int) -> Int {
    (k + group - 1) / group * panel * 4 + (k * panel + 63) / 64 * 64
}
