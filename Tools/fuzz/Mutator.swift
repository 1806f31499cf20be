// Deterministic mutations of seed files: case i of seed S is always the same bytes, so any case
// a run reports can be rebuilt alone (and a crasher bisected) without storing the inputs.

import Foundation

/// SplitMix64: tiny, fast, and the same on every machine.
struct FuzzRNG {
    var state: UInt64
    init(_ seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func below(_ n: Int) -> Int { n <= 1 ? 0 : Int(next() % UInt64(n)) }
    mutating func chance(_ percent: Int) -> Bool { below(100) < percent }
    mutating func pick<T>(_ a: [T]) -> T { a[below(a.count)] }
}

/// Integers at the edges the readers must survive: zero, one, sign flips, type limits, sizes
/// just above a file, values that overflow when multiplied by an element size.
let boundaryIntegers: [Int64] = [0, 1, -1, 2, 3, 4, 7, 8, 255, 256, 65535, 65536, 1 << 31 - 1, 1 << 31, -(1 << 31),
                                 1 << 32, 1 << 40, 1 << 48, 1 << 62, Int64.max, Int64.min, Int64.max / 2 + 1, Int64.max / 4]

/// Byte-level mutations: bit flips, byte sets, interesting bytes, deletion, insertion,
/// duplication, truncation, splicing with another seed, ASCII digit and control-byte edits.
func mutateBytes(_ input: [UInt8], _ rng: inout FuzzRNG, other: [UInt8]) -> [UInt8] {
    var b = input
    let rounds = 1 + rng.below(4)
    for _ in 0..<rounds {
        let n = b.count
        switch rng.below(12) {
        case 0 where n > 0:  // bit flip
            let i = rng.below(n); b[i] ^= UInt8(1 << rng.below(8))
        case 1 where n > 0:  // random byte
            b[rng.below(n)] = UInt8(truncatingIfNeeded: rng.next())
        case 2 where n > 0:  // interesting byte: controls, quotes, brackets, invalid UTF-8 starts
            b[rng.below(n)] = rng.pick([0, 0x0a, 0x0c, 0x0d, 0x1b, 0x7f, 0x80, 0xc0, 0xff, 0x22, 0x5c, 0x5b, 0x5d, 0x7b, 0x7d, 0x2c, 0x3a, 0x25, 0x40])
        case 3 where n > 0:  // delete a run
            let i = rng.below(n); let len = min(n - i, 1 + rng.below(16)); b.removeSubrange(i..<(i + len))
        case 4:  // insert random bytes
            let i = rng.below(n + 1); let len = 1 + rng.below(8)
            b.insert(contentsOf: (0..<len).map { _ in UInt8(truncatingIfNeeded: rng.next()) }, at: i)
        case 5 where n > 0:  // duplicate a run
            let i = rng.below(n); let len = min(n - i, 1 + rng.below(64)); b.insert(contentsOf: b[i..<(i + len)], at: rng.below(n + 1))
        case 6 where n > 0:  // truncate
            b.removeSubrange(rng.below(n)..<n)
        case 7 where !other.isEmpty:  // splice: our head, the other's tail
            let i = rng.below(n + 1), j = rng.below(other.count)
            b = Array(b[..<i]) + other[j...]
        case 8 where n > 0:  // change a number in the text to a boundary value
            let digits = b.indices.filter { b[$0] >= 0x30 && b[$0] <= 0x39 }
            guard let d = digits.isEmpty ? nil : rng.pick(digits) else { break }
            var e = d; while e < n && b[e] >= 0x30 && b[e] <= 0x39 { e += 1 }
            var s = d; while s > 0 && b[s - 1] >= 0x30 && b[s - 1] <= 0x39 { s -= 1 }
            b.replaceSubrange(s..<e, with: Array(String(rng.pick(boundaryIntegers)).utf8))
        case 9 where n > 0:  // swap two runs of lines
            let lines = b.split(separator: 0x0a, omittingEmptySubsequences: false)
            guard lines.count > 2 else { break }
            var l = lines.map(Array.init); l.swapAt(rng.below(l.count), rng.below(l.count))
            b = Array(l.joined(separator: [0x0a]))
        case 10 where n >= 8:  // overwrite 8 bytes with a little-endian boundary integer (binary headers)
            let i = rng.below(n - 7); let v = UInt64(bitPattern: rng.pick(boundaryIntegers))
            for k in 0..<8 { b[i + k] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(k))) }
        default:  // insert an interesting token
            let tokens = ["\n", "\u{0c}", "\u{1b}[2J", "\u{2028}", "\"", "\\", "null", "[]", "{}", "-", "1e309", "NaN", "%", "@", ",", "é", "\u{FEFF}"]
            b.insert(contentsOf: Array(rng.pick(tokens).utf8), at: rng.below(n + 1))
        }
    }
    return b
}

/// JSON-aware mutation: parse, replace or delete one value anywhere in the tree with a value of
/// another type or a boundary number, serialize. Reaches the readers' type and range checks,
/// which byte flips mostly miss by breaking the syntax first.
func mutateJSON(_ input: [UInt8], _ rng: inout FuzzRNG) -> [UInt8]? {
    guard input.count < 2_000_000, let root = try? JSONSerialization.jsonObject(with: Data(input), options: [.fragmentsAllowed]) else { return nil }
    let replacements: [Any] = [NSNull(), true, false, 0, -1, 1, 2, 3, Int.max, Int.min, 1 << 40, 1.5, -0.5, 1e300, "", "\u{0c}x\ny",
                               "F32", "BF16", "I64", [Any](), [1], [0, 0], [Int.max, 1], ["a"], [String: Any](), ["x": 1]]
    var nodes: [(key: String, path: [AnyHashable])] = []   // paths: keys (String) or indices (Int)
    func walk(_ v: Any, _ path: [AnyHashable], _ key: String) {
        nodes.append((key, path))
        if nodes.count > 20_000 { return }
        if let d = v as? [String: Any] { for (k, x) in d { walk(x, path + [k], key + "\u{1}" + k) } }
        else if let a = v as? [Any] { for (i, x) in a.enumerated() { walk(x, path + [i], key + "\u{1}" + String(i)) } }
    }
    walk(root, [], "")
    nodes.sort { $0.key < $1.key }   // dictionary order is not deterministic; sorted paths are
    let path = rng.pick(nodes).path
    let delete = rng.chance(20)
    let value = rng.pick(replacements)
    func edit(_ v: Any, _ rest: ArraySlice<AnyHashable>) -> Any? {
        guard let head = rest.first else { return delete ? nil : value }
        if var d = v as? [String: Any], let k = head as? String {
            d[k] = d[k].flatMap { edit($0, rest.dropFirst()) }; return d
        }
        if var a = v as? [Any], let i = head as? Int, i < a.count {
            if let e = edit(a[i], rest.dropFirst()) { a[i] = e } else { a.remove(at: i) }
            return a
        }
        return v
    }
    guard let out = edit(root, path[...]), JSONSerialization.isValidJSONObject(out) || !(out is [Any] || out is [String: Any]) ,
          let data = try? JSONSerialization.data(withJSONObject: out, options: [.fragmentsAllowed, .sortedKeys]) else { return nil }
    return [UInt8](data)
}

/// safetensors-aware mutation: rewrite one header field (dtype, a shape dimension, an offset)
/// to a boundary value, sometimes with a header length that lies.
func mutateSafeTensors(_ input: [UInt8], _ rng: inout FuzzRNG) -> [UInt8]? {
    guard input.count >= 8 else { return nil }
    let n = input.prefix(8).enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) }
    guard n <= UInt64(input.count - 8), let header = mutateJSON(Array(input[8..<(8 + Int(n))]), &rng) else { return nil }
    var length = UInt64(header.count)
    if rng.chance(15) { length = UInt64(bitPattern: rng.pick(boundaryIntegers)) }
    var out = (0..<8).map { UInt8(truncatingIfNeeded: length >> (8 * UInt64($0))) }
    out += header
    out += input[(8 + Int(n))...]
    return out
}
