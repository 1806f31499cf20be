// Where weights come from: safetensors files (memory-mapped, zero-copy) or host tensors.

import Foundation
import IR

/// A source of named tensors. `raw` gives bytes in the tensor's stored dtype; the pointer
/// stays valid as long as the store lives.
public protocol WeightStore: AnyObject {
    func type(of name: String) -> TensorType?
    func raw(_ name: String) throws -> UnsafeRawPointer
    var names: [String] { get }
    /// For messages: "W.safetensors".
    var label: String { get }
    /// Says `name` will not be read for a while: a store that maps a file may hand its pages
    /// back to the kernel (they are read again from the file if it is). Pointers stay valid.
    func evict(_ name: String)
}

extension WeightStore {
    /// Most stores hold their tensors in memory: nothing to hand back.
    public func evict(_ name: String) {}

    /// A weight as a host tensor (values as f32).
    public func tensor(_ name: String) throws -> Tensor {
        guard let t = type(of: name) else { throw ArcError("\(label): no tensor named '\(name)'") }
        let p = try raw(name)
        return Tensor(t, decodeFloats(p, t))
    }

    /// Checks that `name` exists with exactly `expected`; errors name the key, file and both types.
    public func validate(_ name: String, _ expected: TensorType) throws {
        guard let t = type(of: name) else {
            throw ArcError("missing weight '\(name)' (expected \(expected)) in \(label)")
        }
        if t != expected { throw ArcError("weight '\(name)' in \(label) is \(t), expected \(expected)") }
    }
}

/// Decodes `type.count` elements of `type.dtype` at `p` to f32.
public func decodeFloats(_ p: UnsafeRawPointer, _ type: TensorType) -> [Float] {
    let n = type.count
    switch type.dtype {
    case .f32:
        return [Float](unsafeUninitializedCapacity: n) { buf, count in
            memcpy(buf.baseAddress!, p, n * 4); count = n
        }
    case .bf16:
        let h = p.assumingMemoryBound(to: UInt16.self)
        return (0..<n).map { floatFromBF16(h[$0]) }
    case .f16:
        let h = p.assumingMemoryBound(to: UInt16.self)
        return (0..<n).map { floatFromF16(h[$0]) }
    case .i8:
        let b = p.assumingMemoryBound(to: Int8.self)
        return (0..<n).map { Float(b[$0]) }
    }
}

/// Encodes f32 values into bytes of `dtype` (round-to-nearest-even).
public func encodeFloats(_ values: [Float], _ dtype: DType) -> [UInt8] {
    switch dtype {
    case .f32:
        return values.withUnsafeBytes { Array($0) }
    case .bf16, .f16:
        let bits = values.map { dtype == .bf16 ? bf16Bits($0) : f16Bits($0) }
        return bits.withUnsafeBytes { Array($0) }
    case .i8:
        return values.map { UInt8(bitPattern: Int8(roundToStorage($0, .i8))) }
    }
}

/// Weights from one or more safetensors files, memory-mapped. A later file overrides an
/// earlier one for the same name (how adapters replace base tensors).
public final class SafeTensorsStore: WeightStore {
    public let files: [SafeTensorsFile]
    private var index: [String: (file: SafeTensorsFile, info: SafeTensorInfo)] = [:]
    /// Copies of tensors whose mapped bytes are not aligned for their dtype.
    private var aligned: [String: UnsafeMutableRawPointer] = [:]
    public let label: String

    public init(paths: [String]) throws {
        files = try paths.map { try SafeTensorsFile(path: $0) }
        label = paths.count == 1 ? paths[0] : "\(paths.count) files in \((paths.first.map { ($0 as NSString).deletingLastPathComponent }) ?? ".")"
        for f in files { for (name, info) in f.tensors { index[name] = (f, info) } }
    }

    public convenience init(path: String) throws { try self.init(paths: [path]) }

    deinit { for p in aligned.values { free(p) } }

    public var names: [String] { index.keys.sorted() }

    public func type(of name: String) -> TensorType? { index[name]?.info.type }

    public func raw(_ name: String) throws -> UnsafeRawPointer {
        guard let (file, info) = index[name] else { throw ArcError("\(label): no tensor named '\(name)'") }
        let bytes = try file.bytes(name)
        guard let base = bytes.baseAddress else { return UnsafeRawPointer(bitPattern: 64)! }
        if Int(bitPattern: base) % info.dtype.byteSize == 0 { return base }
        if let p = aligned[name] { return UnsafeRawPointer(p) }
        var p: UnsafeMutableRawPointer?
        posix_memalign(&p, 64, max(info.byteCount, 1))
        memcpy(p!, base, info.byteCount)
        aligned[name] = p!
        return UnsafeRawPointer(p!)
    }

    /// Drops the tensor's mapped pages from this process (the checkpoint stays in the page
    /// cache): a compile streaming a checkpoint through does not keep it resident.
    public func evict(_ name: String) {
        guard let (file, _) = index[name], aligned[name] == nil else { return }
        file.evict(name)
    }
}

/// Weights held in memory, stored in their declared dtype (tests, prologue outputs).
public final class TensorStore: WeightStore {
    private var storage: [String: (type: TensorType, bytes: UnsafeMutableRawPointer)] = [:]
    public let label: String

    public init(_ tensors: [String: Tensor] = [:], label: String = "in-memory weights") {
        self.label = label
        for (k, t) in tensors { set(k, t) }
    }

    deinit { for v in storage.values { free(v.bytes) } }

    /// Adds every tensor of `source` as f32 (16-bit values widen exactly): for graphs that read
    /// f32 weights from an f16 or bf16 file.
    public func addWidened(_ source: WeightStore) throws {
        for name in source.names { let t = try source.tensor(name); set(name, Tensor(.f32(t.shape), t.data)) }
    }

    public func set(_ name: String, _ t: Tensor) {
        let bytes = encodeFloats(t.data, t.type.dtype)
        bytes.withUnsafeBytes { set(name, type: t.type, bytes: $0.baseAddress, count: $0.count) }
    }

    /// Stores a copy of `count` bytes already encoded in `type.dtype`.
    public func set(_ name: String, type: TensorType, bytes: UnsafeRawPointer?, count: Int) {
        if let old = storage[name] { free(old.bytes) }
        var p: UnsafeMutableRawPointer?
        posix_memalign(&p, 64, max(count, 64))
        if count > 0, let b = bytes { memcpy(p!, b, count) }
        storage[name] = (type, p!)
    }

    public var names: [String] { storage.keys.sorted() }
    public func type(of name: String) -> TensorType? { storage[name]?.type }

    public func raw(_ name: String) throws -> UnsafeRawPointer {
        guard let v = storage[name] else { throw ArcError("\(label): no tensor named '\(name)'") }
        return UnsafeRawPointer(v.bytes)
    }
}

/// Looks names up in `primary` first, then `fallback` (prologue outputs over stored weights).
public final class LayeredStore: WeightStore {
    let primary: WeightStore, fallback: WeightStore
    public init(_ primary: WeightStore, over fallback: WeightStore) { self.primary = primary; self.fallback = fallback }
    public var label: String { fallback.label }
    public var names: [String] { Array(Set(primary.names + fallback.names)).sorted() }
    public func type(of name: String) -> TensorType? { primary.type(of: name) ?? fallback.type(of: name) }
    public func raw(_ name: String) throws -> UnsafeRawPointer {
        primary.type(of: name) != nil ? try primary.raw(name) : try fallback.raw(name)
    }
    public func evict(_ name: String) { primary.type(of: name) != nil ? primary.evict(name) : fallback.evict(name) }
}
