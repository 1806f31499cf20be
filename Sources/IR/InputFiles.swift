// Reading files other people made: one-line messages that say what is wrong with the file.

import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Makes text from an input safe to put in a one-line message: control characters, line and
/// paragraph separators and DEL are written as escapes (`\n`, `\t`, `\x0c`, `\u{2028}`), so a
/// tensor name, prompt or JSON key holding them can never split an error over two lines or move
/// the terminal's cursor. Backslashes are left alone, so escaping twice changes nothing.
public func oneLine(_ text: String) -> String {
    guard text.unicodeScalars.contains(where: needsEscape) else { return text }
    var out = ""
    out.reserveCapacity(text.utf8.count + 8)
    for s in text.unicodeScalars {
        guard needsEscape(s) else { out.unicodeScalars.append(s); continue }
        switch s {
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        default:
            out += s.value < 0x100 ? "\\x" + hex2(UInt8(s.value)) : "\\u{" + String(s.value, radix: 16) + "}"
        }
    }
    return out
}

/// C0 and C1 controls, DEL, and the Unicode line/paragraph separators (all of `isNewline`).
@inline(__always) private func needsEscape(_ s: Unicode.Scalar) -> Bool {
    let v = s.value
    return v < 0x20 || (v >= 0x7F && v < 0xA0) || v == 0x2028 || v == 0x2029
}

private func hex2(_ b: UInt8) -> String {
    let digits = Array("0123456789abcdef")
    return String([digits[Int(b >> 4)], digits[Int(b & 15)]])
}

/// Reads a whole input file, refusing anything larger than `limit` bytes before allocating.
/// Messages say which of these it is: not found, a folder, not readable (with the reason), too large.
public func readInputFile(_ path: String, limit: Int, what: String = "file") throws -> Data {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else {
        let e = errno
        switch e {
        case ENOENT, ENOTDIR: throw ArcError("cannot read \(path): no such file")
        case EACCES, EPERM: throw ArcError("cannot read \(path): permission denied")
        default: throw ArcError("cannot read \(path): \(String(cString: strerror(e)))")
        }
    }
    defer { close(fd) }
    var st = stat()
    guard fstat(fd, &st) == 0 else { throw ArcError("cannot read \(path): \(String(cString: strerror(errno)))") }
    let kind = st.st_mode & S_IFMT
    if kind == S_IFDIR { throw ArcError("cannot read \(path): it is a folder, not a \(what)") }
    if kind == S_IFREG && Int(st.st_size) > limit {
        throw ArcError("cannot read \(path): \(st.st_size) bytes is too large for a \(what) (limit \(limit) bytes)")
    }
    // Pipes and character devices have no size: read in chunks, still under the limit.
    var data = Data()
    var chunk = [UInt8](repeating: 0, count: 1 << 16)
    while true {
        let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n < 0 {
            if errno == EINTR { continue }
            let e = errno
            throw ArcError(e == EISDIR ? "cannot read \(path): it is a folder, not a \(what)" : "cannot read \(path): \(String(cString: strerror(e)))")
        }
        if n == 0 { break }
        guard data.count + n <= limit else {
            throw ArcError("cannot read \(path): more than \(limit) bytes is too large for a \(what)")
        }
        data.append(contentsOf: chunk[0..<n])
    }
    return data
}

/// Decodes UTF-8 input text; invalid bytes are "not text", with the first bad byte and its offset
/// (the file was readable, it is just not text).
public func decodeInputText(_ data: Data, path: String, what: String = "text") throws -> String {
    if let s = String(validating: data, as: UTF8.self) { return s }
    // Find the first invalid byte: the shortest prefix that stops validating, minus its valid part.
    let bytes = [UInt8](data)
    var i = 0
    while i < bytes.count {
        var ok = 0
        for n in 1...min(4, bytes.count - i) where String(validating: bytes[i..<(i + n)], as: UTF8.self) != nil { ok = n; break }
        if ok == 0 { break }
        i += ok
    }
    let b = i < bytes.count ? bytes[i] : 0
    throw ArcError("\(path) is not \(what): invalid UTF-8 byte 0x\(hex2(b)) at offset \(i)")
}

/// The largest text input read whole (IR, JSON, prompt files): far above any real one (the IR of
/// FLUX.1-dev is a few MB, the largest tokenizer.json tens of MB), far below the memory of a machine.
public let maxInputTextBytes = 256 << 20

/// Reads a UTF-8 text file other people made (IR, prompts): not found, not readable, too large
/// and not text are told apart.
public func readInputText(_ path: String, what: String = "text") throws -> String {
    try decodeInputText(readInputFile(path, limit: maxInputTextBytes), path: path, what: what)
}
