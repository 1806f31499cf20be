// Loop nests over an output shape with per-operand strides: the shared skeleton of
// element-wise, broadcast, copy, slice and transpose kernels.

import IR

/// How one operand is read while visiting the output in row-major order: an element offset
/// plus a stride per output dimension (0 along broadcast dimensions).
struct Access: Equatable {
    var offset: Int
    var strides: [Int]

    /// Reading a tensor of `shape` broadcast (numpy rules) to `outShape`.
    static func broadcast(from shape: [Int], to outShape: [Int]) -> Access {
        let s = rowMajorStrides(shape)
        let lead = outShape.count - shape.count
        return Access(offset: 0, strides: outShape.indices.map { d in
            d < lead || shape[d - lead] == 1 ? 0 : s[d - lead]
        })
    }
}

/// Emits `for` loops visiting every element of `shape`, with the innermost loop vectorised and
/// the outer ones parallelised. `body` receives, per access, the C expression of the element
/// offset (e.g. "b0 + j") and returns the statements of one iteration.
func emitLoopNest(shape: [Int], accesses: [Access], indent: String = "    ",
                  body: ([String]) -> String) -> String {
    // Drop unit dimensions, then merge neighbours that every access walks contiguously.
    var dims: [Int] = []
    var strides: [[Int]] = accesses.map { _ in [] }
    for (d, size) in shape.enumerated() where size != 1 {
        if let last = dims.last, accesses.indices.allSatisfy({ strides[$0].last! == accesses[$0].strides[d] * size }) {
            dims[dims.count - 1] = last * size
            for k in accesses.indices { strides[k][strides[k].count - 1] = accesses[k].strides[d] }
        } else {
            dims.append(size)
            for k in accesses.indices { strides[k].append(accesses[k].strides[d]) }
        }
    }
    let total = shape.reduce(1, *)
    if total == 0 { return "\(indent)/* empty */\n" }
    let par = total >= parallelThreshold ? "" : " if(0)"
    func term(_ v: String, _ s: Int) -> String { s == 0 ? "" : (s == 1 ? " + \(v)" : " + \(v) * \(s)L") }

    if dims.isEmpty {
        let idx = accesses.map { String($0.offset) }
        return "\(indent){\n" + body(idx).indented(indent + "    ") + "\(indent)}\n"
    }
    if dims.count == 1 {
        let idx = accesses.indices.map { k in "\(accesses[k].offset)L" + term("i", strides[k][0]) }
        return """
        \(indent)#pragma omp parallel for simd schedule(static)\(par)
        \(indent)for (long i = 0; i < \(dims[0])L; i++) {
        \(body(idx).indented(indent + "    "))\(indent)}

        """
    }
    // Outer dimensions flattened into one parallel loop; base offsets from div/mod once per row.
    let outer = dims.dropLast().reduce(1, *)
    let inner = dims.last!
    var s = "\(indent)#pragma omp parallel for schedule(static)\(par)\n"
    s += "\(indent)for (long o = 0; o < \(outer)L; o++) {\n"
    var rem = "o"
    var bases = accesses.map { "\($0.offset)L" }
    for d in stride(from: dims.count - 2, through: 0, by: -1) {
        let idxVar = "i\(d)"
        if d == 0 { s += "\(indent)    const long \(idxVar) = \(rem);\n" }
        else {
            s += "\(indent)    const long \(idxVar) = \(rem) % \(dims[d])L;\n"
            s += "\(indent)    const long q\(d) = \(rem) / \(dims[d])L;\n"
            rem = "q\(d)"
        }
        for k in accesses.indices { bases[k] += term(idxVar, strides[k][d]) }
    }
    for k in accesses.indices { s += "\(indent)    const long b\(k) = \(bases[k]);\n" }
    let idx = accesses.indices.map { k in "b\(k)" + term("j", strides[k].last!) }
    s += "\(indent)    #pragma omp simd\n"
    s += "\(indent)    for (long j = 0; j < \(inner)L; j++) {\n"
    s += body(idx).indented(indent + "        ")
    s += "\(indent)    }\n\(indent)}\n"
    return s
}

/// Below this many elements a kernel runs on one thread: waking the team costs more.
let parallelThreshold = 16384

extension String {
    func indented(_ prefix: String) -> String {
        split(separator: "\n", omittingEmptySubsequences: false).enumerated().map { i, line in
            line.isEmpty ? "" : prefix + line
        }.joined(separator: "\n").trimmingTrailingNewlines() + "\n"
    }

    func trimmingTrailingNewlines() -> String {
        var s = self
        while s.hasSuffix("\n") { s.removeLast() }
        return s
    }
}
