// safetensors checkpoints: a validating, memory-mapped reader and a deterministic, atomic writer.

import Codegen
import Foundation
import IR
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Where one readable (F32/F16/BF16) tensor lives in a safetensors file. `offset` is absolute
/// (from the start of the file) so callers can hand it to anything that maps or seeks the file.
public struct SafeTensorInfo: Equatable {
    public let name: String
    public let dtype: DType
    public let shape: [Int]
    public let offset: Int
    public let byteCount: Int

    public var elementCount: Int { byteCount / dtype.byteSize }
    public var type: TensorType { TensorType(dtype, shape) }
}

/// A safetensors file opened for reading. The whole file is memory-mapped read-only, so
/// opening a multi-GB checkpoint costs only the header parse; pages are read on first touch.
/// The header is validated completely at open, so every later accessor can trust offsets.
/// Views returned by `bytes` stay valid as long as this object is alive.
public final class SafeTensorsFile {
    public let path: String
    public let metadata: [String: String]
    /// Names of the readable tensors, in data-offset order (the order a sequential reader
    /// touches the file in).
    public let names: [String]
    public let tensors: [String: SafeTensorInfo]
    /// Tensors whose dtype cannot be read as floats (name → safetensors dtype tag, e.g. "I64").
    /// A checkpoint may legally carry such buffers; they are validated at open and listed here
    /// so that asking for one fails with a precise message instead of "no tensor named".
    public let unsupportedTensors: [String: String]
    private let integral: [String: (tag: String, shape: [Int], offset: Int)]

    private let base: UnsafeMutableRawPointer
    private let mappedSize: Int

    public init(path: String) throws {
        self.path = path
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw ArcError("\(path): cannot open safetensors file: \(errnoMessage())") }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw ArcError("\(path): cannot stat safetensors file: \(errnoMessage())") }
        guard (st.st_mode & S_IFMT) == S_IFREG else { throw ArcError("\(path): not a regular file") }
        let size = Int(st.st_size)
        guard size >= 8 else {
            throw ArcError("\(path): file is \(size) bytes, too short for a safetensors header (needs at least 8)")
        }
        guard let map = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0), map != MAP_FAILED else {
            throw ArcError("\(path): cannot memory-map safetensors file: \(errnoMessage())")
        }
        do {
            let header = try parseSafeTensorsHeader(UnsafeRawBufferPointer(start: map, count: size), path: path)
            metadata = header.metadata
            names = header.names
            tensors = header.tensors
            unsupportedTensors = header.unsupported
            integral = header.integral
        } catch {
            munmap(map, size)
            throw error
        }
        base = map
        mappedSize = size
    }

    deinit { munmap(base, mappedSize) }

    public func info(_ name: String) throws -> SafeTensorInfo {
        if let info = tensors[name] { return info }
        if let tag = unsupportedTensors[name] {
            throw ArcError("\(path): tensor '\(name)' has unsupported dtype \(tag) (expected F32, F16 or BF16)")
        }
        throw ArcError("\(path): no tensor named '\(name)'")
    }

    /// A mask (a bool, integer or float tensor, such as diffusers' `prompt_embeds_mask`, an int64
    /// tensor of ones and zeros) as its shape and whether each element is non-zero.
    public func nonzero(_ name: String) throws -> (shape: [Int], values: [Bool]) {
        if let t = tensors[name] { return (t.shape, try floats(name).map { $0 != 0 }) }
        guard let (tag, shape, offset) = integral[name] else { _ = try info(name); throw ArcError("\(path): no tensor named '\(name)'") }
        let size = safeTensorsElementSizes[tag]!
        let n = shape.reduce(1, *)
        let values = (0..<n).map { i in (0..<size).contains { base.load(fromByteOffset: offset + i * size + $0, as: UInt8.self) != 0 } }
        return (shape, values)
    }

    /// A zero-copy view of the tensor's raw little-endian bytes inside the mapping.
    public func bytes(_ name: String) throws -> UnsafeRawBufferPointer {
        let info = try info(name)
        return UnsafeRawBufferPointer(start: base + info.offset, count: info.byteCount)
    }

    public func floats(_ name: String) throws -> [Float] {
        let info = try info(name)
        let n = info.elementCount
        return [Float](unsafeUninitializedCapacity: n) { buf, count in
            if n > 0 { convertToF32(base + info.offset, info.dtype, n, buf.baseAddress!) }
            count = n
        }
    }

    /// Hands the pages holding the tensor back to the kernel (`MADV_DONTNEED`): they leave this
    /// process's resident set and are read again from the file on the next touch. The mapping is
    /// private and read-only, so nothing is lost; pages shared with neighbouring tensors go too
    /// and simply come back if those are read.
    public func evict(_ name: String) {
        guard let info = tensors[name], info.byteCount > 0 else { return }
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let start = info.offset / page * page
        let end = min(mappedSize, (info.offset + info.byteCount + page - 1) / page * page)
        _ = madvise(base + start, end - start, MADV_DONTNEED)
    }

    /// Converts the tensor to f32 straight into caller-owned memory (e.g. a compiled model's
    /// weight arena), avoiding the intermediate array of `floats`. `dst` must have room for
    /// `info(name).elementCount` floats.
    public func copyFloats(_ name: String, into dst: UnsafeMutablePointer<Float>) throws {
        let info = try info(name)
        convertToF32(base + info.offset, info.dtype, info.elementCount, dst)
    }
}

// MARK: - Header parsing

/// Byte sizes of every dtype tag the safetensors format defines with whole-byte elements.
private let safeTensorsElementSizes: [String: Int] = [
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "C64": 8,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1,
    "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1,
    "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
]

private func dtype(fromTag tag: String) -> DType? {
    switch tag {
    case "F32": return .f32
    case "F16": return .f16
    case "BF16": return .bf16
    case "I8": return .i8
    default: return nil
    }
}

private func tag(of dtype: DType) -> String {
    switch dtype {
    case .f32: return "F32"
    case .f16: return "F16"
    case .bf16: return "BF16"
    case .i8: return "I8"
    }
}

private let maxHeaderBytes = 100 << 20

private struct ParsedHeader {
    var metadata: [String: String] = [:]
    var names: [String] = []
    var tensors: [String: SafeTensorInfo] = [:]
    var unsupported: [String: String] = [:]
    /// Where every tensor of an integer or bool dtype lies (absolute offset), for `nonzero`.
    var integral: [String: (tag: String, shape: [Int], offset: Int)] = [:]
}

/// A JSON integer as JSONSerialization delivers it. Booleans (objCType "c") and anything
/// written with a fraction or exponent (objCType "d") are rejected, as the reference
/// implementation's u64 fields do.
private func jsonInteger(_ value: Any) -> Int? {
    guard !(value is String), let n = value as? NSNumber else { return nil }
    switch String(cString: n.objCType) {
    case "i", "s", "l", "q": return n.intValue
    case "I", "S", "L", "Q": return n.uint64Value <= UInt64(Int.max) ? Int(n.uint64Value) : nil
    default: return nil
    }
}

private func jsonIntegers(_ value: Any?) -> [Int]? {
    guard let array = value as? [Any] else { return nil }
    var out: [Int] = []
    for v in array {
        guard let i = jsonInteger(v) else { return nil }
        out.append(i)
    }
    return out
}

private func shapeText(_ shape: [Int]) -> String { "[" + shape.map(String.init).joined(separator: ",") + "]" }

private func parseSafeTensorsHeader(_ file: UnsafeRawBufferPointer, path: String) throws -> ParsedHeader {
    let declared = UInt64(littleEndian: file.loadUnaligned(as: UInt64.self))
    guard declared <= UInt64(file.count - 8) else {
        throw ArcError("\(path): header length \(declared) is larger than the file (\(file.count) bytes); truncated or not a safetensors file")
    }
    guard declared <= UInt64(maxHeaderBytes) else {
        throw ArcError("\(path): header length \(declared) exceeds the 100 MiB limit; not a safetensors file?")
    }
    let headerLength = Int(declared)
    let headerBytes = UnsafeRawBufferPointer(rebasing: file[8..<(8 + headerLength)])
    guard String(validating: headerBytes, as: UTF8.self) != nil else {
        throw ArcError("\(path): header is not valid UTF-8")
    }
    let json: Any
    do {
        json = try JSONSerialization.jsonObject(with: Data(headerBytes))
    } catch {
        throw ArcError("\(path): header is not valid JSON")
    }
    guard let object = json as? [String: Any] else { throw ArcError("\(path): header is not a JSON object") }

    let dataStart = 8 + headerLength
    let dataSize = file.count - dataStart
    var result = ParsedHeader()
    var ranges: [(name: String, begin: Int, end: Int)] = []

    for (name, value) in object {
        if name == "__metadata__" {
            guard let dict = value as? [String: Any] else {
                throw ArcError("\(path): '__metadata__' must be a JSON object of strings")
            }
            for (k, v) in dict {
                guard let s = v as? String else {
                    throw ArcError("\(path): '__metadata__' entry '\(k)' is not a string")
                }
                result.metadata[k] = s
            }
            continue
        }
        guard let entry = value as? [String: Any] else {
            throw ArcError("\(path): tensor '\(name)' is not a JSON object")
        }
        guard let tag = entry["dtype"] as? String else {
            throw ArcError("\(path): tensor '\(name)' has no string 'dtype'")
        }
        guard let elementSize = safeTensorsElementSizes[tag] else {
            throw ArcError("\(path): tensor '\(name)' has unknown dtype '\(tag)'")
        }
        guard let shape = jsonIntegers(entry["shape"]) else {
            throw ArcError("\(path): tensor '\(name)' has no 'shape' array of integers")
        }
        if let d = shape.first(where: { $0 < 0 }) {
            throw ArcError("\(path): tensor '\(name)' has negative dimension \(d) in shape \(shapeText(shape))")
        }
        guard let offsets = jsonIntegers(entry["data_offsets"]), offsets.count == 2 else {
            throw ArcError("\(path): tensor '\(name)' has no 'data_offsets' array of two integers")
        }
        let (begin, end) = (offsets[0], offsets[1])
        guard begin >= 0, begin <= end else {
            throw ArcError("\(path): tensor '\(name)' has data_offsets [\(begin),\(end)]: begin must be between 0 and end")
        }
        guard end <= dataSize else {
            throw ArcError("\(path): tensor '\(name)' ends at byte \(end) of the data section, which has only \(dataSize) bytes (truncated file?)")
        }
        var needed = elementSize
        var overflow = false
        for d in shape where !overflow { (needed, overflow) = needed.multipliedReportingOverflow(by: d) }
        let typeText = tag.lowercased() + shapeText(shape)
        guard !overflow, end - begin == needed else {
            throw ArcError("\(path): tensor '\(name)' has \(end - begin) bytes but \(typeText) needs \(overflow ? "more than Int.max" : String(needed))")
        }
        ranges.append((name, begin, end))
        if let dtype = dtype(fromTag: tag) {
            result.tensors[name] = SafeTensorInfo(name: name, dtype: dtype, shape: shape,
                                                  offset: dataStart + begin, byteCount: needed)
        } else {
            result.unsupported[name] = tag
            if tag.hasPrefix("I") || tag.hasPrefix("U") || tag == "BOOL" { result.integral[name] = (tag, shape, dataStart + begin) }
        }
    }

    // Sorted by position; ties (zero-size tensors) by name, so `names` is deterministic.
    ranges.sort {
        ($0.begin, $0.end) != ($1.begin, $1.end) ? ($0.begin, $0.end) < ($1.begin, $1.end)
            : $0.name.utf8.lexicographicallyPrecedes($1.name.utf8)
    }
    var furthest: (name: String, begin: Int, end: Int)?  // the non-empty range reaching furthest so far
    for r in ranges where r.end > r.begin {
        if let p = furthest, r.begin < p.end {
            throw ArcError("\(path): tensors '\(p.name)' [\(p.begin),\(p.end)] and '\(r.name)' [\(r.begin),\(r.end)] overlap")
        }
        if r.end > (furthest?.end ?? 0) { furthest = r }
    }
    result.names = ranges.map(\.name).filter { result.tensors[$0] != nil }
    return result
}

// MARK: - Conversion to f32

/// Widens stored elements to f32. Runs over every weight of a checkpoint, so it is a tight
/// loop over raw pointers; loads are unaligned because the header length fixes the data
/// section's alignment and writers other than ours need not pad it.
private func convertToF32(_ src: UnsafeRawPointer, _ dtype: DType, _ n: Int, _ dst: UnsafeMutablePointer<Float>) {
    switch dtype {
    case .f32:
        #if _endian(little)
        UnsafeMutableRawPointer(dst).copyMemory(from: src, byteCount: n * 4)
        #else
        for i in 0..<n { dst[i] = Float(bitPattern: UInt32(littleEndian: src.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self))) }
        #endif
    case .bf16:
        for i in 0..<n {
            let h = UInt16(littleEndian: src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))
            dst[i] = Float(bitPattern: UInt32(h) << 16)
        }
    case .i8:
        for i in 0..<n { dst[i] = Float(src.load(fromByteOffset: i, as: Int8.self)) }
    case .f16:
        for i in 0..<n {
            dst[i] = fastFloatFromF16(UInt16(littleEndian: src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)))
        }
    }
}

/// Bit-exact equivalent of `floatFromF16` with a single predictable branch per element on
/// normal values (F. Giesen's magic-number method): subnormals are renormalized by one float
/// subtraction instead of a multiply and sign fix-up.
@inline(__always) private func fastFloatFromF16(_ h: UInt16) -> Float {
    let shiftedExp: UInt32 = 0x7C00 << 13
    var o = UInt32(h & 0x7FFF) << 13
    let exp = o & shiftedExp
    o &+= (127 - 15) << 23
    var magnitude: UInt32
    if exp == shiftedExp {
        magnitude = o &+ ((128 - 16) << 23)                // inf / NaN
    } else if exp == 0 {
        magnitude = (Float(bitPattern: o &+ (1 << 23)) - Float(bitPattern: 113 << 23)).bitPattern  // zero / subnormal
    } else {
        magnitude = o
    }
    magnitude |= UInt32(h & 0x8000) << 16
    return Float(bitPattern: magnitude)
}

// MARK: - Writing

/// The data of one tensor to write.
public enum TensorPayload {
    /// Values converted to the record's dtype with round-to-nearest-even (as PyTorch casts).
    case floats([Float])
    /// Bytes already encoded (little-endian) in the record's dtype, written as they are.
    case raw([UInt8])
}

public struct TensorRecord {
    public var name: String
    public var dtype: DType
    public var shape: [Int]
    public var payload: TensorPayload

    public init(name: String, dtype: DType, shape: [Int], payload: TensorPayload) {
        self.name = name
        self.dtype = dtype
        self.shape = shape
        self.payload = payload
    }
}

/// Writes `records` as a safetensors file readable by the Python `safetensors` library.
/// The output is a pure function of the arguments (data in record order, header keys sorted,
/// header padded with spaces so that the data starts at a multiple of 64 bytes: a mapped file's
/// packed weight panels then start on cache lines, as the kernels' loads expect; the format asks
/// only for a multiple of 8, and `safetensors` reads either), so files can be content-hashed and
/// compared. The file appears atomically: it is written to a temporary file in the same
/// directory, fsynced and renamed over `path`, so a crash never leaves a half-written
/// checkpoint behind.
public func writeSafeTensors(_ records: [TensorRecord], metadata: [String: String] = [:], to path: String) throws {
    // Validate everything before touching the file system.
    for r in records {
        let count = r.shape.allSatisfy { $0 >= 0 } ? r.shape.reduce(1, *) : 0
        let type = TensorType(r.dtype, r.shape)
        switch r.payload {
        case .floats(let v) where r.shape.allSatisfy({ $0 >= 0 }) && v.count != count:
            throw ArcError("\(path): tensor '\(r.name)' has \(v.count) floats but \(type) needs \(count)")
        case .raw(let b) where r.shape.allSatisfy({ $0 >= 0 }) && b.count != type.byteCount:
            throw ArcError("\(path): tensor '\(r.name)' has \(b.count) bytes but \(type) needs \(type.byteCount)")
        default: break
        }
    }
    let writer = try SafeTensorsWriter(path: path, tensors: records.map { ($0.name, $0.dtype, $0.shape) }, metadata: metadata)
    let chunk = 1 << 20
    let scratch = UnsafeMutableRawPointer.allocate(byteCount: chunk * 4, alignment: 16)
    defer { scratch.deallocate() }
    for r in records {
        switch r.payload {
        case .raw(let bytes):
            try bytes.withUnsafeBytes { try writer.append($0) }
        case .floats(let values):
            try values.withUnsafeBufferPointer { src in
                var start = 0
                while start < src.count {
                    let n = min(chunk, src.count - start)
                    let p = src.baseAddress! + start
                    switch r.dtype {
                    case .f32: for i in 0..<n { scratch.storeBytes(of: p[i].bitPattern.littleEndian, toByteOffset: 4 * i, as: UInt32.self) }
                    case .bf16: for i in 0..<n { scratch.storeBytes(of: bf16Bits(p[i]).littleEndian, toByteOffset: 2 * i, as: UInt16.self) }
                    case .f16: for i in 0..<n { scratch.storeBytes(of: f16Bits(p[i]).littleEndian, toByteOffset: 2 * i, as: UInt16.self) }
                    case .i8: for i in 0..<n { scratch.storeBytes(of: Int8(roundToStorage(p[i], .i8)), toByteOffset: i, as: Int8.self) }
                    }
                    try writer.append(UnsafeRawBufferPointer(start: scratch, count: n * r.dtype.byteSize), partial: true)
                    start += n
                }
            }
        }
    }
    try writer.commit()
}

/// A safetensors file written one tensor at a time, so that a model's weights never need to
/// be in memory together (a compile streams them: computed, packed, appended, dropped). The
/// header is written first from the names, dtypes and shapes given up front; tensors are then
/// appended in that order. Same bytes as `writeSafeTensors`, and just as atomic: a temporary
/// file renamed over `path` by `commit`, removed if the writer is dropped before.
public final class SafeTensorsWriter {
    public let path: String
    private let tmp: String
    private let dir: String
    private var fd: Int32
    private var committed = false
    private let sizes: [(name: String, bytes: Int)]
    /// Index of the tensor being written and the bytes of it written so far.
    private var current = 0, written = 0
    /// SHA-256 of every byte written, so that the caller need not read the file back (mapping a
    /// model's weights to hash them would make them resident again).
    private var hasher = SHA256()
    /// Hex SHA-256 of the file, once committed.
    public private(set) var sha256: String?

    public init(path: String, tensors: [(name: String, dtype: DType, shape: [Int])], metadata: [String: String] = [:]) throws {
        self.path = path
        var seen = Set<String>()
        var entries: [(name: String, json: String)] = []
        var offset = 0
        var sizes: [(String, Int)] = []
        for (name, dtype, shape) in tensors {
            guard name != "__metadata__" else { throw ArcError("\(path): '__metadata__' cannot be used as a tensor name") }
            guard seen.insert(name).inserted else { throw ArcError("\(path): duplicate tensor name '\(name)'") }
            if let d = shape.first(where: { $0 < 0 }) {
                throw ArcError("\(path): tensor '\(name)' has negative dimension \(d) in shape \(shapeText(shape))")
            }
            let bytes = TensorType(dtype, shape).byteCount
            entries.append((name, "{\"data_offsets\":[\(offset),\(offset + bytes)],\"dtype\":\"\(tag(of: dtype))\",\"shape\":\(shapeText(shape))}"))
            sizes.append((name, bytes))
            offset += bytes
        }
        self.sizes = sizes

        var parts: [String] = []
        if !metadata.isEmpty {
            let pairs = metadata.sorted { $0.key.utf8.lexicographicallyPrecedes($1.key.utf8) }
            parts.append("\"__metadata__\":{" + pairs.map { jsonQuoted($0.key) + ":" + jsonQuoted($0.value) }.joined(separator: ",") + "}")
        }
        for e in entries.sorted(by: { $0.name.utf8.lexicographicallyPrecedes($1.name.utf8) }) {
            parts.append(jsonQuoted(e.name) + ":" + e.json)
        }
        var headerBytes = Array(("{" + parts.joined(separator: ",") + "}").utf8)
        headerBytes += [UInt8](repeating: 0x20, count: (64 - (8 + headerBytes.count) % 64) % 64)

        // A unique temporary file next to the destination, renamed over it by `commit`.
        let slash = path.lastIndex(of: "/")
        dir = slash.map { path[..<$0].isEmpty ? "/" : String(path[..<$0]) } ?? "."
        tmp = TemporaryFiles.path(for: path)   // `.<file>.tmp.<pid>.<hex>`: a later compile removes it if we die
        fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o666)
        guard fd >= 0 else { throw ArcError("\(path): cannot create a temporary file in '\(dir)': \(errnoMessage())") }
        var prefix = UInt64(headerBytes.count).littleEndian
        try withUnsafeBytes(of: &prefix) { try writeAll($0) }
        try headerBytes.withUnsafeBytes { try writeAll($0) }
        advance()
    }

    deinit {
        if fd >= 0 { close(fd) }
        if !committed { unlink(tmp) }
    }

    /// Appends the bytes of the next tensor (all of them; with `partial`, a piece, the rest to
    /// follow). Zero-byte tensors need no append (nothing happens for an empty buffer).
    public func append(_ bytes: UnsafeRawBufferPointer, partial: Bool = false) throws {
        if bytes.isEmpty { return }
        guard current < sizes.count else { throw ArcError("\(path): more tensors appended than the \(sizes.count) declared") }
        let (name, size) = sizes[current]
        guard written + bytes.count <= size, partial || written + bytes.count == size else {
            throw ArcError("\(path): tensor '\(name)' got \(written + bytes.count) bytes, its type needs \(size)")
        }
        try writeAll(bytes)
        written += bytes.count
        if written == size { current += 1; written = 0; advance() }
    }

    /// Skips zero-byte tensors, which get no append.
    private func advance() { while current < sizes.count && sizes[current].bytes == 0 { current += 1 } }

    /// fsyncs, then renames the file into place; every declared tensor must have been appended.
    public func commit() throws {
        guard current == sizes.count else {
            throw ArcError("\(path): only \(current) of \(sizes.count) tensors written (next: '\(sizes[current].name)')")
        }
        guard fsync(fd) == 0 else { throw ArcError("\(path): fsync failed: \(errnoMessage())") }
        let closed = close(fd)
        fd = -1
        guard closed == 0 else { throw ArcError("\(path): close failed: \(errnoMessage())") }
        guard rename(tmp, path) == 0 else { throw ArcError("\(path): cannot replace file: \(errnoMessage())") }
        committed = true
        sha256 = SHA256.hex(hasher.finalize())
        // Persist the rename itself; failure here cannot un-write the file, so it is not an error.
        let dirfd = open(dir, O_RDONLY | O_CLOEXEC)
        if dirfd >= 0 { _ = fsync(dirfd); close(dirfd) }
    }

    private func writeAll(_ buffer: UnsafeRawBufferPointer) throws {
        guard let p = buffer.baseAddress else { return }
        hasher.update(buffer)
        var done = 0
        while done < buffer.count {
            let w = write(fd, p + done, buffer.count - done)
            if w < 0 {
                if errno == EINTR { continue }
                throw ArcError("\(path): write failed: \(errnoMessage())")
            }
            done += w
        }
    }
}

/// JSON string literal; non-ASCII is written as UTF-8, control characters as \u escapes.
private func jsonQuoted(_ s: String) -> String {
    var out = "\""
    for u in s.unicodeScalars {
        switch u {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        default:
            if u.value < 0x20 {
                let hex = String(u.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            } else {
                out.unicodeScalars.append(u)
            }
        }
    }
    return out + "\""
}

private func errnoMessage() -> String { String(cString: strerror(errno)) }
