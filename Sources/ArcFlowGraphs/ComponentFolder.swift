// What every model folder reader shares: config.json fields with file/key errors, the safetensors
// files of a folder (one file or HF index-listed shards), and binding checked weights into a graph.

import Foundation
import IR
import Runtime

/// A parsed config.json; accessors throw one-line errors naming the file and the key.
public struct ConfigFile {
    public let path: String
    public let json: [String: Any]

    public init(path: String) throws {
        guard FileManager.default.fileExists(atPath: path) else { throw ArcError("missing \(path)") }
        self.path = path
        json = try readJSONObject(path)
    }

    public init(path: String, json: [String: Any]) {
        self.path = path
        self.json = json
    }

    /// A JSON integer; must be positive unless `allowZero`.
    public func int(_ key: String, allowZero: Bool = false) throws -> Int {
        guard let raw = json[key], !(raw is NSNull) else { throw ArcError("\(path): missing key '\(key)'") }
        guard let v = jsonInt(raw) else { throw ArcError("\(path): '\(key)' must be an integer") }
        guard v > 0 || (allowZero && v == 0) else { throw ArcError("\(path): '\(key)' must be positive, got \(v)") }
        guard v <= maxConfigInteger else { throw ArcError("\(path): '\(key)' must be at most \(maxConfigInteger), got \(v)") }
        return v
    }

    public func int(_ key: String, default d: Int) throws -> Int { has(key) ? try int(key) : d }

    public func double(_ key: String) throws -> Double {
        guard let raw = json[key], !(raw is NSNull) else { throw ArcError("\(path): missing key '\(key)'") }
        guard let v = raw as? Double else { throw ArcError("\(path): '\(key)' must be a number") }
        return v
    }

    /// nil when the key is absent or JSON null.
    public func optionalDouble(_ key: String) throws -> Double? { has(key) ? try double(key) : nil }

    public func string(_ key: String) throws -> String {
        guard let raw = json[key], !(raw is NSNull) else { throw ArcError("\(path): missing key '\(key)'") }
        guard let s = raw as? String else { throw ArcError("\(path): '\(key)' must be a string") }
        return s
    }

    public func bool(_ key: String, default d: Bool) throws -> Bool {
        guard has(key) else { return d }
        guard let v = json[key] as? Bool else { throw ArcError("\(path): '\(key)' must be true or false") }
        return v
    }

    public func ints(_ key: String) throws -> [Int] {
        guard let raw = json[key], !(raw is NSNull) else { throw ArcError("\(path): missing key '\(key)'") }
        guard let list = raw as? [Any], case let a = list.compactMap(jsonInt), a.count == list.count, !a.isEmpty,
              a.allSatisfy({ $0 > 0 && $0 <= maxConfigInteger }) else {
            throw ArcError("\(path): '\(key)' must be a non-empty list of positive integers")
        }
        return a
    }

    public func has(_ key: String) -> Bool { json[key] != nil && !(json[key] is NSNull) }
}

/// The largest integer a config.json may hold for a size or count (2^24): far above any model's
/// (vocabularies of 256k, widths of 12k), small enough that products of three never overflow.
public let maxConfigInteger = 1 << 24

/// A JSON integer, and only that: Foundation hands `true` over as an NSNumber that `as? Int`
/// reads as 1, so `"num_layers": true` would be a one-layer model (and a bucket count of `true`
/// a division by zero). Booleans (objCType "c") and fractions are refused.
public func jsonInt(_ raw: Any?) -> Int? {
    guard let raw, !(raw is String), let n = raw as? NSNumber else { return nil }
    switch String(cString: n.objCType) {
    case "i", "s", "l", "q": return n.intValue
    case "I", "S", "L", "Q": return n.uint64Value <= UInt64(Int.max) ? Int(n.uint64Value) : nil
    case "d", "f": return n.doubleValue.rounded() == n.doubleValue && abs(n.doubleValue) < 0x1p62 ? Int(n.doubleValue) : nil
    default: return nil
    }
}

/// The safetensors files of a model folder: `<stem>.safetensors`, or the shards listed by
/// `<stem>.safetensors.index.json` (HF layout: `{"weight_map": {tensor: file}}`); transformers
/// folders use the stem `model`, diffusers folders `diffusion_pytorch_model`. Shards are
/// memory-mapped, nothing is read until a tensor is used.
public func openWeightFolder(_ dir: String, stem: String) throws -> SafeTensorsStore {
    let fm = FileManager.default
    let index = "\(dir)/\(stem).safetensors.index.json"
    if fm.fileExists(atPath: index) {
        guard let map = try readJSONObject(index)["weight_map"] as? [String: String] else {
            throw ArcError("\(index) has no 'weight_map'")
        }
        let files = Array(Set(map.values)).sorted()
        for f in files where !fm.fileExists(atPath: "\(dir)/\(f)") {
            throw ArcError("missing shard \(dir)/\(f) (listed in \((index as NSString).lastPathComponent))")
        }
        return try SafeTensorsStore(paths: files.map { "\(dir)/\($0)" })
    }
    if fm.fileExists(atPath: "\(dir)/\(stem).safetensors") {
        return try SafeTensorsStore(path: "\(dir)/\(stem).safetensors")
    }
    // save_pretrained(variant: "fp16") names its files stem.fp16.safetensors (or -00001-of-…):
    // say so, rather than let the folder look empty.
    let variants = ((try? fm.contentsOfDirectory(atPath: dir)) ?? []).filter { $0.hasPrefix(stem + ".") && $0.hasSuffix(".safetensors") }.sorted()
    let hint = variants.isEmpty ? "" : "; it has \(variants.prefix(3).joined(separator: ", "))\(variants.count > 3 ? ", …" : ""): weights saved "
        + "under a variant name (save_pretrained(variant=…)); drop the variant from the file names (and the index's) to use them"
    throw ArcError("\(dir) has neither \(stem).safetensors nor \(stem).safetensors.index.json\(hint)")
}

/// A directory that must exist; the error names what it should hold.
func requireDirectory(_ dir: String, holding what: String) throws {
    var isDir: ObjCBool = false
    guard FileManager.default.fileExists(atPath: dir, isDirectory: &isDir), isDir.boolValue else {
        throw ArcError("missing folder \(dir) (expected \(what))")
    }
}

/// A graph ready for `ModelCompiler.build` or `Interpreter.run`: the module and every weight it
/// names (checkpoint tensors plus any tables computed at build time).
public struct ComponentProgram {
    public var module: Module
    public var weights: WeightStore

    /// Runs the graph with the reference interpreter (the oracle; slow, for tests and small models).
    public func interpret(_ inputs: [String: Tensor]) throws -> [String: Tensor] {
        let store = weights
        return try Interpreter.run(module, inputs: inputs) { key, _ in try store.tensor(key) }
    }
}

/// Binds checkpoint tensors into a graph: checks each against the shape the config implies
/// (errors name the file, key and expected shape), declares it in its stored dtype and converts
/// it to f32 where it is read, once per key.
final class WeightBinder {
    let b: GraphBuilder
    let store: WeightStore
    private var cache: [String: Value] = [:]

    init(_ b: GraphBuilder, _ store: WeightStore) {
        self.b = b
        self.store = store
    }

    func weight(_ key: String, _ shape: [Int]) throws -> Value {
        if let v = cache[key] { return v }
        guard let t = store.type(of: key) else {
            throw ArcError("\(store.label): missing tensor '\(key)' (expected shape \(shape))")
        }
        guard t.shape == shape else {
            throw ArcError("\(store.label): tensor '\(key)' has shape \(t.shape), expected \(shape) for this config")
        }
        let v = b.convert(b.weight(key, t), to: .f32)
        cache[key] = v
        return v
    }

    /// nn.Linear over the last axis: x·Wᵀ (+ b), W stored [out, in].
    func linear(_ x: Value, _ module: String, out: Int, in inputs: Int, bias: Bool = true) throws -> Value {
        let y = b.matmul(x, try weight("\(module).weight", [out, inputs]), transposeB: true)
        return bias ? y + (try weight("\(module).bias", [out])) : y
    }

    func layerNorm(_ x: Value, _ module: String, width: Int, eps: Double) throws -> Value {
        b.layerNorm(x, scale: try weight("\(module).weight", [width]), bias: try weight("\(module).bias", [width]), eps: eps)
    }

    /// nn.Conv2d with bias, square kernel, "same" padding k/2 (every conv of the VAE decoder).
    func conv(_ x: Value, _ module: String, out: Int, kernel k: Int) throws -> Value {
        let w = try weight("\(module).weight", [out, x.shape[1], k, k])
        let bias = try weight("\(module).bias", [out]).reshaped([out, 1, 1])
        return b.conv2d(x, w, padding: k / 2) + bias
    }

    func groupNorm(_ x: Value, _ module: String, groups: Int, eps: Double) throws -> Value {
        let c = x.shape[1]
        return b.groupNorm(x, scale: try weight("\(module).weight", [c]), bias: try weight("\(module).bias", [c]), groups: groups, eps: eps)
    }
}
