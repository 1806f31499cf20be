// C for each kind of step: one function per kernel, specialised to its shapes.

import IR

/// One emitted kernel: the C function (named by `emitProgram`) and how the run function calls it.
struct Kernel {
    /// Function body with `KERNEL_NAME` in place of the name; identical texts share one function.
    var text: String
    /// Short readable label, e.g. `gelu_add_4096x3072`.
    var label: String
    /// C types of the parameters, in call order ("const float *restrict", ...).
    var parameters: [String]
    var flops: Double = 0
    var isGEMM = false
}

/// C element type of a dtype in memory.
func cType(_ d: DType) -> String { d == .f32 ? "float" : d == .i8 ? "int8_t" : "uint16_t" }

func shapeLabel(_ shape: [Int]) -> String { shape.isEmpty ? "scalar" : shape.map(String.init).joined(separator: "x") }

/// C literal of an f32 value, exact (shortest round-trip decimal) or a macro for non-finite values.
func cFloat(_ v: Float) -> String {
    if v.isNaN { return "NAN" }
    if v.isInfinite { return v < 0 ? "(-INFINITY)" : "INFINITY" }
    var s = v.description
    if !s.contains(".") && !s.contains("e") { s += ".0" }
    return s + "f"
}

/// Loads element `idx` of a pointer of dtype `d` as float.
func cLoad(_ ptr: String, _ idx: String, _ d: DType) -> String {
    switch d {
    case .f32: return "\(ptr)[\(idx)]"
    case .bf16: return "af_bf16_to_f32(\(ptr)[\(idx)])"
    case .f16: return "af_f16_to_f32(\(ptr)[\(idx)])"
    case .i8: return "(float)\(ptr)[\(idx)]"
    }
}

func cStore(_ value: String, _ d: DType) -> String {
    switch d {
    case .f32: return value
    case .bf16: return "af_f32_to_bf16(\(value))"
    case .f16: return "af_f32_to_f16(\(value))"
    case .i8: return "(int8_t)fmaxf(-128.0f, fminf(127.0f, roundf(\(value))))"
    }
}

/// The C expression of an element-wise op on float operands.
func cElementwise(_ op: OpCode, _ a: [String], resultDType: DType) -> String {
    switch op {
    case .neg: return "-\(a[0])"
    case .abs: return "fabsf(\(a[0]))"
    case .exp: return "af_exp(\(a[0]))"
    case .expm1: return "af_expm1(\(a[0]))"
    case .log: return "logf(\(a[0]))"
    case .sqrt: return "sqrtf(\(a[0]))"
    case .rsqrt: return "1.0f / sqrtf(\(a[0]))"
    case .tanh: return "af_tanh(\(a[0]))"
    case .sigmoid: return "af_sigmoid(\(a[0]))"
    case .silu: return "af_silu(\(a[0]))"
    case .gelu: return "af_gelu_tanh(\(a[0]))"
    case .erf: return "erff(\(a[0]))"
    case .sin: return "sinf(\(a[0]))"
    case .cos: return "cosf(\(a[0]))"
    case .convert:
        // Values stay float in registers; rounding to the storage type happens here so that a
        // convert in the middle of a chain rounds exactly like the interpreter.
        switch resultDType {
        case .f32: return a[0]
        case .bf16: return "af_bf16_to_f32(af_f32_to_bf16(\(a[0])))"
        case .f16: return "af_f16_to_f32(af_f32_to_f16(\(a[0])))"
        case .i8: return "fmaxf(-128.0f, fminf(127.0f, roundf(\(a[0]))))"
        }
    case .add: return "\(a[0]) + \(a[1])"
    case .sub: return "\(a[0]) - \(a[1])"
    case .mul: return "\(a[0]) * \(a[1])"
    case .div: return "\(a[0]) / \(a[1])"
    case .max: return "fmaxf(\(a[0]), \(a[1]))"
    case .min: return "fminf(\(a[0]), \(a[1]))"
    case .pow: return "powf(\(a[0]), \(a[1]))"
    case .greater: return "(\(a[0]) > \(a[1]) ? 1.0f : 0.0f)"
    case .greater_equal: return "(\(a[0]) >= \(a[1]) ? 1.0f : 0.0f)"
    case .select: return "(\(a[0]) != 0.0f ? \(a[1]) : \(a[2]))"
    default: fatalError("\(op) is not element-wise")
    }
}

enum KernelEmitter {
    /// The kernel(s) computing `node` from its operand types. A fusion headed by a GEMM yields
    /// two kernels (the GEMM, then the epilogue in place) so a GEMM-only baseline can skip the
    /// second. `inPlace` names the operand whose buffer the output shares (no `restrict` then).
    /// `compute` applies to GEMMs over bf16 panels and to plain attention (`--compute`).
    static func kernels(for node: Node, operandTypes: [TensorType], inPlace: Int?, packed: [Int: WeightPacking] = [:],
                        compute: GEMMCompute = .f32, written: Set<Int> = []) throws -> [Kernel] {
        switch node.op {
        case .fusion:
            return try fusion(node, operandTypes, inPlace: inPlace, packed: packed, compute: compute)
        case _ where node.op.isElementwise || node.op == .broadcast:
            // An unfused element-wise op is a one-op fusion.
            return try fusion(singleOpFusion(node, operandTypes), operandTypes, inPlace: inPlace, packed: [:])
        case .matmul:
            var gemm = matmul(node, operandTypes, packing: packed[1], compute: compute)
            gemm.label = "matmul_\(gemm.label)"   // as a fusion's GEMM is labelled: profiles name the op
            return [gemm]
        case .conv2d:
            return [conv2d(node, operandTypes)]
        case .reduce_sum, .reduce_max, .reduce_mean:
            let axes = node.ints("axes")!
            let (outer, n, inner) = Interpreter.split(operandTypes[0].shape, axes: axes.first!...axes.last!)
            let fn = "af_" + node.op.rawValue
            return [simpleCall(label: "\(node.op.rawValue)_\(shapeLabel(operandTypes[0].shape))", node: node, operandTypes,
                               call: "\(fn)(in0, out, \(outer)L, \(n)L, \(inner)L);")]
        case .softmax, .log_softmax:
            let axis = node.int("axis")!
            let (outer, n, inner) = Interpreter.split(operandTypes[0].shape, axes: axis...axis)
            return [simpleCall(label: "\(node.op.rawValue)_\(shapeLabel(node.type.shape))", node: node, operandTypes,
                               call: "af_\(node.op.rawValue)(in0, out, \(outer)L, \(n)L, \(inner)L);")]
        case .layer_norm, .rms_norm:
            let n = node.type.shape.last!
            let rows = n == 0 ? 0 : node.type.count / n
            let gamma = operandTypes.count > 1 ? "in1" : "NULL"
            let eps = cFloat(Float(node.float("eps")!))
            let call = node.op == .layer_norm
                ? "af_layer_norm(in0, out, \(gamma), \(operandTypes.count > 2 ? "in2" : "NULL"), \(rows)L, \(n)L, \(eps));"
                : "af_rms_norm(in0, out, \(gamma), \(rows)L, \(n)L, \(eps));"
            return [simpleCall(label: "\(node.op.rawValue)_\(shapeLabel(node.type.shape))", node: node, operandTypes, call: call)]
        case .group_norm:
            let (n, c) = (node.type.shape[0], node.type.shape[1])
            let spatial = node.type.shape.dropFirst(2).reduce(1, *)
            let call = "af_group_norm(in0, out, in1, in2, \(n)L, \(c)L, \(spatial)L, \(node.int("groups")!)L, \(cFloat(Float(node.float("eps")!))));"
            return [simpleCall(label: "group_norm_\(shapeLabel(node.type.shape))", node: node, operandTypes, call: call)]
        case .gather:
            // Rows are copied in their storage type (the result has the table's dtype).
            let table = operandTypes[0]
            let width = table.shape.dropFirst().reduce(1, *)
            let call = "af_gather_rows(in0, in1, out, \(operandTypes[1].count)L, \(table.shape[0])L, \(width)L * (long)sizeof(\(cType(table.dtype))));"
            return [simpleCall(label: "gather_\(shapeLabel(node.type.shape))", node: node, operandTypes, call: call)]
        case .transpose:
            let perm = node.ints("perm")!
            let src = rowMajorStrides(operandTypes[0].shape)
            return [copy(label: "transpose_\(shapeLabel(node.type.shape))", node: node, operandTypes,
                         access: Access(offset: 0, strides: perm.map { src[$0] }))]
        case .slice:
            let start = node.ints("start")!
            let src = rowMajorStrides(operandTypes[0].shape)
            let offset = zip(start, src).map(*).reduce(0, +)
            return [copy(label: "slice_\(shapeLabel(node.type.shape))", node: node, operandTypes,
                         access: Access(offset: offset, strides: src))]
        case .concat:
            return [concat(node, operandTypes, written: written)]
        case .rope:
            return [rope(node, operandTypes)]
        case .attention:
            let (b, sq, h, d) = (node.type.shape[0], node.type.shape[1], node.type.shape[2], node.type.shape[3])
            let sk = operandTypes[1].shape[1]
            let scale = cFloat(Float(node.float("scale")!)), causal = node.flag("causal")
            // Plain attention under `--compute bf16` multiplies bf16 pairs too (attention.h).
            let plain = operandTypes.count == 3 && !causal, bf16 = plain && compute == .bf16
            let call = plain
                ? "af_attention\(bf16 ? "_bf16" : "")(in0, in1, in2, out, \(b)L, \(sq)L, \(sk)L, \(h)L, \(d)L, \(scale));"
                : "af_attention_ex(in0, in1, in2, \(operandTypes.count > 3 ? "in3" : "NULL"), out, \(b)L, \(sq)L, \(sk)L, \(h)L, \(d)L, \(scale), \(causal ? 1 : 0));"
            let label = "attention\(bf16 ? "_bf16" : "")\(operandTypes.count > 3 ? "_bias" : "")\(causal ? "_causal" : "")_\(b)x\(sq)x\(sk)x\(h)x\(d)"
            var k = simpleCall(label: label, node: node, operandTypes, call: call)
            // A causal query i sees i + 1 keys: sq·(sq + 1)/2 query-key pairs instead of sq·sk.
            k.flops = 4.0 * Double(b * h * d) * (causal ? Double(sq * (sq + 1)) / 2 : Double(sq * sk))
            return [k]
        case .attention_grad:
            // Operands q, k, v, [bias], out, dout; see af_attention_grad in Prelude/autodiff.h.
            let (b, sq, h, d) = (operandTypes[0].shape[0], operandTypes[0].shape[1], operandTypes[0].shape[2], operandTypes[0].shape[3])
            let sk = operandTypes[1].shape[1]
            let hasBias = operandTypes.count == 6
            let (o, g) = (hasBias ? "in4" : "in3", hasBias ? "in5" : "in4")
            let part = node.attributes["part"]?.stringValue ?? "qkv"
            let fn = part == "bias" ? "af_attention_bias_grad" : "af_attention_grad"
            var k = simpleCall(label: "\(fn.dropFirst(3))_\(b)x\(sq)x\(sk)x\(h)x\(d)", node: node, operandTypes,
                               call: "\(fn)(in0, in1, in2, \(hasBias ? "in3" : "NULL"), \(o), \(g), out, \(b)L, \(sq)L, \(sk)L, \(h)L, \(d)L, "
                                   + "\(cFloat(Float(node.float("scale")!))), \(node.flag("causal") ? 1 : 0));")
            k.flops = (part == "bias" ? 8.0 : 16.0) * Double(b * h * sq * sk * d) * (node.flag("causal") ? 0.5 : 1)
            return [k]
        case .scatter_add:
            let width = node.type.shape.dropFirst().reduce(1, *)
            return [simpleCall(label: "scatter_add_\(shapeLabel(node.type.shape))", node: node, operandTypes,
                               call: "af_scatter_add(in0, in1, out, \(operandTypes[1].count)L, \(node.type.shape[0])L, \(width)L);")]
        case .constant:
            return [constant(node)]
        case .arc_step:
            return [arcStep(node, operandTypes)]
        default:
            throw ArcError("codegen: no kernel for \(node.op.rawValue)")
        }
    }

    private static func parameters(_ operandTypes: [TensorType], _ out: TensorType, inPlace: Int?) -> [String] {
        operandTypes.enumerated().map { k, t in
            "const \(cType(t.dtype)) *\(k == inPlace ? "" : "restrict ")in\(k)"
        } + ["\(cType(out.dtype)) *\(inPlace == nil ? "restrict " : "")out"]
    }

    private static func function(_ params: [String], _ body: String) -> String {
        "void KERNEL_NAME(\(params.joined(separator: ", "))) {\n\(body)}\n"
    }

    private static func simpleCall(label: String, node: Node, _ operandTypes: [TensorType], call: String) -> Kernel {
        let params = parameters(operandTypes, node.type, inPlace: nil)
        return Kernel(text: function(params, "    \(call)\n"), label: label, parameters: params)
    }

    // MARK: Element-wise fusion

    static func singleOpFusion(_ node: Node, _ operandTypes: [TensorType]) -> Node {
        var region = Graph(name: "region")
        for (k, t) in operandTypes.enumerated() { region.nodes.append(Node(op: .input, type: t, key: String(k))) }
        region.nodes.append(Node(op: node.op, operands: Array(0..<operandTypes.count), type: node.type, attributes: node.attributes))
        region.outputs = [GraphOutput(name: "0", value: operandTypes.count)]
        return Node(op: .fusion, operands: node.operands, type: node.type, attributes: ["kernel": .string(node.op.rawValue)], region: region)
    }

    private static func fusion(_ node: Node, _ operandTypes: [TensorType], inPlace: Int?, packed: [Int: WeightPacking],
                               compute: GEMMCompute = .f32) throws -> [Kernel] {
        let region = node.region!
        let out = node.type
        let label = "\(node.attributes["kernel"]?.stringValue ?? "fused")_\(shapeLabel(out.shape))"
        var kernels: [Kernel] = []

        // A GEMM (or convolution) head writes the output buffer first; the loop below then
        // reads it back in place.
        let head = region.nodes.firstIndex { $0.op.isFusionHead }
        if let h = head {
            let mm = region[h]
            let a = region[mm.operands[0]].key.flatMap(Int.init)!, b = region[mm.operands[1]].key.flatMap(Int.init)!
            if mm.op == .conv2d {
                kernels.append(conv2d(mm, operandTypes, xParam: a, wParam: b))
            } else if let p = packed[b], out.dtype == .f32, let e = packedEpilogue(region, head: h, n: p.n) {
                // The packed GEMM's store does the whole fusion: no loop after it.
                var gemm = matmul(mm, operandTypes, aParam: a, bParam: b, packing: p, epilogue: e, compute: compute)
                gemm.label = "\(node.attributes["kernel"]?.stringValue ?? "matmul")_\(gemm.label)"
                return [gemm]
            } else {
                var gemm = matmul(mm, operandTypes, aParam: a, bParam: b, packing: packed[b], compute: compute)
                gemm.label = "matmul_\(gemm.label)"
                kernels.append(gemm)
            }
        }

        // Accesses: the output (index 0), then every input read directly or through a broadcast.
        var accesses = [Access.broadcast(from: out.shape, to: out.shape)]
        var accessOf: [ValueID: Int] = [:]
        let readByLoop = Set(region.nodes.filter { !$0.op.isFusionHead }.flatMap(\.operands))
        for (id, n) in region.nodes.enumerated() {
            if n.op == .input {
                // Inputs read element by element (a GEMM head's operands are read by the GEMM).
                if readByLoop.contains(id) && n.type.shape == out.shape {
                    accessOf[id] = accesses.count
                    accesses.append(Access.broadcast(from: n.type.shape, to: out.shape))
                }
            } else if n.op == .broadcast {
                accessOf[id] = accesses.count
                accesses.append(Access.broadcast(from: region[n.operands[0]].type.shape, to: out.shape))
            }
        }
        let params = parameters(operandTypes, out, inPlace: head != nil ? nil : inPlace)
        let loop = emitLoopNest(shape: out.shape, accesses: accesses) { idx in
            var s = ""
            var names = [String](repeating: "", count: region.nodes.count)
            for (id, n) in region.nodes.enumerated() {
                let t = "t\(id)"
                switch n.op {
                case .input:
                    if let a = accessOf[id] {
                        s += "const float \(t) = \(cLoad("in" + n.key!, idx[a], n.type.dtype));\n"
                    } else { continue } // only read through a broadcast
                case .broadcast:
                    let src = region[n.operands[0]]
                    s += "const float \(t) = \(cLoad("in" + src.key!, idx[accessOf[id]!], src.type.dtype));\n"
                case .constant:
                    guard case .splat(let v)? = n.constant else { fatalError("dense constant inside a fusion") }
                    s += "const float \(t) = \(cFloat(v));\n"
                case .matmul, .conv2d:
                    s += "const float \(t) = out[\(idx[0])];\n"
                default:
                    s += "const float \(t) = \(cElementwise(n.op, n.operands.map { names[$0] }, resultDType: n.type.dtype));\n"
                }
                names[id] = t
            }
            s += "out[\(idx[0])] = \(cStore(names[region.outputs[0].value], out.dtype));\n"
            return s
        }
        kernels.append(Kernel(text: function(params, loop), label: label, parameters: params))
        return kernels
    }

    // MARK: GEMM

    /// The fusions a packed GEMM finishes in its store (`af_gemm_packed`): out = act(mm + bias)
    /// with bias a region input of shape [N] broadcast over the rows, and act GELU (tanh form),
    /// SiLU or none, nothing else. Returns the bias operand and the AF_GEMM_ACT_* code.
    static func packedEpilogue(_ region: Graph, head h: ValueID, n: Int) -> (bias: Int?, act: Int)? {
        guard region.outputs.count == 1 else { return nil }
        var v = region.outputs[0].value
        var act = 0, expected = 1
        if region[v].op == .gelu || region[v].op == .silu {
            act = region[v].op == .gelu ? 1 : 2
            v = region[v].operands[0]
            expected += 1
        }
        var bias: Int?
        if region[v].op == .add {
            let ops = region[v].operands
            guard ops.count == 2, ops.contains(h), let other = ops.first(where: { $0 != h }), region[other].op == .broadcast,
                  let src = region[other].operands.first, region[src].op == .input, region[src].type.shape == [n],
                  region[src].type.dtype == .f32, let k = region[src].key.flatMap(Int.init) else { return nil }
            bias = k
            v = h
            expected += 2
        }
        let computed = region.nodes.filter { $0.op != .input }.count
        return v == h && computed == expected ? (bias, act) : nil
    }

    /// Rows from which a product with an unpacked f32 B runs on our GEMM (af_gemm_f32): its
    /// per-call copy of B into panels costs O(N·K), a few percent of the O(M·N·K) GEMM here.
    static let unpackedGEMMMinRows = 512

    /// `out = op(a)·op(b)` through OpenBLAS: one sgemm when the batch folds into M, a loop over
    /// the batch otherwise (parallel over the batch, BLAS single-threaded, when each GEMM is small),
    /// and sgemv when M = 1 (OpenBLAS 0.3.21's sgemm is several times slower there).
    static func matmul(_ node: Node, _ operandTypes: [TensorType], aParam: Int = 0, bParam: Int = 1,
                       packing: WeightPacking? = nil, epilogue: (bias: Int?, act: Int) = (nil, 0), compute: GEMMCompute = .f32) -> Kernel {
        let ta = node.flag("transpose_a"), tb = node.flag("transpose_b")
        let aT = operandTypes[aParam], bT = operandTypes[bParam]
        let out = node.type
        let m = out.shape[out.rank - 2], n = out.shape[out.rank - 1]
        let k = ta ? aT.shape[aT.rank - 2] : aT.shape[aT.rank - 1]
        let batch = out.shape.dropLast(2).reduce(1, *)
        if let p = packing {
            // A weight packed into panels (packedWeights: B is rank 2 and A not transposed, so the
            // batch folds into M): our own GEMM, whatever the storage type. bf16 panels with
            // `--compute bf16`: dt 3, A rounded to bf16 and vdpbf16ps (gemm.h, af__gemm_tile_dp).
            let dt = bT.dtype == .f32 ? 0 : bT.dtype == .bf16 ? (compute == .bf16 ? 3 : 1) : 2
            precondition(!ta && p.k == k && p.n == n, "packed GEMM operand does not match \(node.op.rawValue)")
            let bias = epilogue.bias.map { "in\($0)" } ?? "NULL"
            var call = "    af_gemm_packed(in\(aParam), \(k)L, in\(bParam), \(dt), \(bias), \(epilogue.act), out, \(n)L, \(batch * m)L, \(n)L, \(k)L);\n"
            if let g = p.group {   // int8 panels (gemm_int8.h), groups of g along K
                call = "    af_gemm_packed_int8(in\(aParam), \(k)L, in\(bParam), \(g)L, \(bias), \(epilogue.act), out, \(n)L, \(batch * m)L, \(n)L, \(k)L);\n"
            }
            let params = operandTypes.enumerated().map { i, t in "const \(cType(t.dtype)) *restrict in\(i)" } + ["float *restrict out"]
            return Kernel(text: function(params, call), label: "\(batch > 1 ? "\(batch)x" : "")\(m)x\(n)x\(k)_packed_\(bT.dtype.rawValue)",
                          parameters: params, flops: 2.0 * Double(batch * m * n * k), isGEMM: true)
        }
        let bBatched = bT.rank > 2
        let foldBatch = !bBatched && !ta
        let (gm, gbatch) = foldBatch ? (m * batch, 1) : (m, batch)
        if foldBatch, gm >= unpackedGEMMMinRows, n >= 16, k >= 16, aT.dtype == .f32, bT.dtype == .f32 {
            // Our GEMM with B copied into panels per call (gemm.h af_gemm_f32): the training step's
            // forward and input-gradient GEMMs (weights are inputs there), and any other
            // tall product with a B that is not a packed weight.
            let params = operandTypes.enumerated().map { i, t in "const \(cType(t.dtype)) *restrict in\(i)" } + ["float *restrict out"]
            let call = "    af_gemm_f32(in\(aParam), in\(bParam), \(tb ? 1 : 0), out, \(gm)L, \(n)L, \(k)L);\n"
            return Kernel(text: function(params, call), label: "\(batch > 1 ? "\(batch)x" : "")\(m)x\(n)x\(k)\(tb ? "_tb" : "")_own",
                          parameters: params, flops: 2.0 * Double(batch * m * n * k), isGEMM: true)
        }
        let lda = ta ? m : k, ldb = tb ? k : n
        let opA = ta ? "CblasTrans" : "CblasNoTrans", opB = tb ? "CblasTrans" : "CblasNoTrans"
        let a = "in\(aParam)", b = "in\(bParam)"

        func call(_ aOff: String, _ bOff: String, _ cOff: String) -> String {
            if gm == 1 {
                // y[n] = op(B)ᵀ·a: B is [n,k] (transposed) or [k,n].
                return tb
                    ? "cblas_sgemv(CblasRowMajor, CblasNoTrans, \(n), \(k), 1.0f, \(b)\(bOff), \(k), \(a)\(aOff), \(ta ? m : 1), 0.0f, out\(cOff), 1);"
                    : "cblas_sgemv(CblasRowMajor, CblasTrans, \(k), \(n), 1.0f, \(b)\(bOff), \(n), \(a)\(aOff), \(ta ? m : 1), 0.0f, out\(cOff), 1);"
            }
            return "cblas_sgemm(CblasRowMajor, \(opA), \(opB), \(gm), \(n), \(k), 1.0f, \(a)\(aOff), \(lda), \(b)\(bOff), \(ldb), 0.0f, out\(cOff), \(n));"
        }
        var body: String
        if gbatch == 1 {
            body = "    \(call("", "", ""))\n"
        } else {
            let perGEMM = 2.0 * Double(gm * n * k)
            let parallel = perGEMM < 8e6 ? "    #pragma omp parallel for schedule(static)\n" : ""
            body = parallel + """
                for (long p = 0; p < \(gbatch)L; p++) {
                    \(call(" + p * \(m * k)L", bBatched ? " + p * \(k * n)L" : "", " + p * \(m * n)L"))
                }

            """
        }
        if gm * n == 0 { body = "    /* empty */\n" }
        else if k == 0 { body = "    memset(out, 0, sizeof(float) * \(batch * m * n)L);\n" }
        let params = operandTypes.enumerated().map { i, t in "const \(cType(t.dtype)) *restrict in\(i)" } + ["float *restrict out"]
        return Kernel(text: function(params, body), label: "\(batch > 1 ? "\(batch)x" : "")\(m)x\(n)x\(k)\(ta ? "_ta" : "")\(tb ? "_tb" : "")",
                      parameters: params, flops: 2.0 * Double(batch * m * n * k), isGEMM: true)
    }

    /// NCHW convolution through `af_conv2d` (im2col tiles feeding cblas_sgemm; 1×1 convolutions
    /// are one GEMM on x). Counted as a GEMM: the bench baseline runs it whole, im2col included.
    static func conv2d(_ node: Node, _ operandTypes: [TensorType], xParam: Int = 0, wParam: Int = 1) -> Kernel {
        let x = operandTypes[xParam].shape, w = operandTypes[wParam].shape
        let stride = node.ints("stride") ?? [1, 1], pad = node.ints("padding") ?? [0, 0], dil = node.ints("dilation") ?? [1, 1]
        let args = (x + [w[0], w[2], w[3]] + stride + pad + dil).map { "\($0)L" }.joined(separator: ", ")
        let body = "    af_conv2d(in\(xParam), in\(wParam), out, \(args));\n"
        let params = operandTypes.enumerated().map { i, t in "const \(cType(t.dtype)) *restrict in\(i)" } + ["float *restrict out"]
        let label = "conv2d_\(shapeLabel(x))_\(w[0])x\(w[2])x\(w[3])\(stride == [1, 1] ? "" : "_s\(stride[0])x\(stride[1])")\(pad == [0, 0] ? "" : "_p\(pad[0])x\(pad[1])")\(dil == [1, 1] ? "" : "_d\(dil[0])x\(dil[1])")"
        let flops = 2.0 * Double(node.type.count) * Double(w[1] * w[2] * w[3])
        return Kernel(text: function(params, body), label: label, parameters: params, flops: flops, isGEMM: true)
    }

    // MARK: Data movement

    private static func copy(label: String, node: Node, _ operandTypes: [TensorType], access: Access) -> Kernel {
        let params = parameters(operandTypes, node.type, inPlace: nil)
        let loop = emitLoopNest(shape: node.type.shape, accesses: [Access.broadcast(from: node.type.shape, to: node.type.shape), access]) { idx in
            "out[\(idx[0])] = in0[\(idx[1])];\n"
        }
        return Kernel(text: function(params, loop), label: label, parameters: params)
    }

    /// Each operand is a block of rows of the output viewed as [outer, total·inner]. Operands in
    /// `written` are already in place (their producers wrote them there: plan-memory's views).
    private static func concat(_ node: Node, _ operandTypes: [TensorType], written: Set<Int>) -> Kernel {
        let axis = node.int("axis")!
        let out = node.type
        let outer = out.shape[..<axis].reduce(1, *), inner = out.shape[(axis + 1)...].reduce(1, *)
        let row = out.shape[axis] * inner
        let elem = "sizeof(\(cType(out.dtype)))"
        var body = "    #pragma omp parallel for schedule(static)\(out.count >= parallelThreshold ? "" : " if(0)")\n"
        body += "    for (long o = 0; o < \(outer)L; o++) {\n"
        var offset = 0
        for (k, t) in operandTypes.enumerated() {
            let chunk = t.shape[axis] * inner
            if chunk > 0 && !written.contains(k) {
                body += "        memcpy(out + o * \(row)L + \(offset)L, in\(k) + o * \(chunk)L, \(elem) * \(chunk)L);\n"
            }
            offset += chunk
        }
        body += "    }\n"
        let params = parameters(operandTypes, out, inPlace: nil)
        return Kernel(text: function(params, body), label: "concat_\(shapeLabel(out.shape))", parameters: params)
    }

    /// Rotates adjacent channel pairs of x[L, S, H, D] by per-(position, channel) cos/sin tables.
    private static func rope(_ node: Node, _ operandTypes: [TensorType]) -> Kernel {
        let x = node.type
        let r = x.rank
        let (s, h, d) = (x.shape[r - 3], x.shape[r - 2], x.shape[r - 1])
        let lead = x.count / max(s * h * d, 1)
        let body = """
            #pragma omp parallel for collapse(2) schedule(static)\(x.count >= parallelThreshold ? "" : " if(0)")
            for (long l = 0; l < \(lead)L; l++) {
                for (long s = 0; s < \(s)L; s++) {
                    const float *c = in1 + s * \(d)L, *sn = in2 + s * \(d)L;
                    for (long h = 0; h < \(h)L; h++) {
                        const long base = ((l * \(s)L + s) * \(h)L + h) * \(d)L;
                        #pragma omp simd
                        for (long i = 0; i < \(d)L; i += 2) {
                            const float x0 = in0[base + i], x1 = in0[base + i + 1];
                            out[base + i] = x0 * c[i] - x1 * sn[i];
                            out[base + i + 1] = x1 * c[i + 1] + x0 * sn[i + 1];
                        }
                    }
                }
            }

        """
        let params = parameters(operandTypes, x, inPlace: nil)
        return Kernel(text: function(params, body), label: "rope_\(shapeLabel(x.shape))", parameters: params)
    }

    /// One ArcFlow step: per token and sub-position, softmax of the K log-weights, φ of the K−1
    /// rates times Δ, then per channel x − Δ·Σ_k w_k·φ_k·μ_k. Δ and K are compile-time constants.
    private static func arcStep(_ node: Node, _ operandTypes: [TensorType]) -> Kernel {
        let x = node.type
        let k = node.int("components")!, p = node.int("positions")!
        let f = x.shape.last!
        let rows = f == 0 ? 0 : x.count / f
        let delta = cFloat(Float(node.float("delta")!))
        let body = """
            #pragma omp parallel for schedule(static)\(x.count >= parallelThreshold / 4 ? "" : " if(0)")
            for (long t = 0; t < \(rows)L; t++) {
                for (long j = 0; j < \(p)L; j++) {
                    float w[\(k)];
                    float m = -INFINITY, s = 0.0f;
                    for (long c = 0; c < \(k)L; c++) m = fmaxf(m, in2[(t * \(k)L + c) * \(p)L + j]);
                    for (long c = 0; c < \(k)L; c++) { w[c] = af_exp(in2[(t * \(k)L + c) * \(p)L + j] - m); s += w[c]; }
                    w[0] /= s;
                    for (long c = 1; c < \(k)L; c++) {
                        /* φ(z) = expm1(z')/z', z' = sgn(z)·max(|z|, 1e-4): the reference's clamp. */
                        const float z = in3[(t * \(k - 1)L + c - 1) * \(p)L + j] * \(delta);
                        const float zc = z >= 0.0f ? fmaxf(z, 1e-4f) : fminf(z, -1e-4f);
                        w[c] = w[c] / s * (af_expm1(zc) / zc);
                    }
                    for (long ch = 0; ch < \(f / p)L; ch++) {
                        float v = 0.0f;
                        for (long c = 0; c < \(k)L; c++) v += w[c] * in1[t * \(k * f)L + c * \(f)L + ch * \(p)L + j];
                        out[t * \(f)L + ch * \(p)L + j] = in0[t * \(f)L + ch * \(p)L + j] - \(delta) * v;
                    }
                }
            }

        """
        let params = parameters(operandTypes, x, inPlace: nil)
        return Kernel(text: function(params, body), label: "arc_step_\(shapeLabel(x.shape))", parameters: params)
    }

    /// Standalone constants (operands of GEMMs or norms) are filled into the arena each run:
    /// they are small (fold-constants caps them) and this keeps the run function the only writer.
    private static func constant(_ node: Node) -> Kernel {
        let count = node.type.count
        let body: String
        switch node.constant! {
        case .splat(let v):
            body = "    for (long i = 0; i < \(count)L; i++) out[i] = \(cFloat(v));\n"
        case .dense(let d):
            let values = d.map(cFloat).joined(separator: ", ")
            body = "    static const float data[\(max(count, 1))] = {\(values.isEmpty ? "0" : values)};\n    memcpy(out, data, sizeof(float) * \(count)L);\n"
        }
        let params = ["float *restrict out"]
        return Kernel(text: function(params, body), label: "constant_\(shapeLabel(node.type.shape))", parameters: params)
    }
}
