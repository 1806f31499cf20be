// libFuzzer entry point (coverage-guided) for the two readers whose code is self-contained: the IR
// parser + verifier and the safetensors header validation. Built by build.sh with the IR sources
// and SafeTensors.swift in one module (`swiftc -sanitize=fuzzer`), not by SwiftPM.

import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// ARCFLOW_LIBFUZZER_TARGET: `ir` (default) or `safetensors`.
private let targetName = ProcessInfo.processInfo.environment["ARCFLOW_LIBFUZZER_TARGET"] ?? "ir"
/// tmpfs when there is one: rewriting a file in place on ext4 flushes it at close (30 cases/s).
private let scratch = (access("/dev/shm", W_OK) == 0 ? "/dev/shm/" : NSTemporaryDirectory()) + "arcflow-libfuzzer-\(getpid())"

/// A rejected input must give a one-line, non-empty message; anything else aborts, which libFuzzer
/// records as a crash with its input.
private func checkMessage(_ m: String) {
    if m.isEmpty || m.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F || $0.value == 0x2028 || $0.value == 0x2029 }) {
        fputs("multi-line or empty message: \(m.debugDescription)\n", stderr)
        abort()
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Data(bytes: data, count: size)
    let path = scratch + (targetName == "ir" ? ".ir" : ".safetensors")
    FileManager.default.createFile(atPath: path, contents: bytes)
    do {
        if targetName == "ir" {
            _ = Printer.print(try Parser.parseFile(path))
        } else {
            let f = try SafeTensorsFile(path: path)
            for n in f.names { _ = try f.floats(n) }
        }
    } catch let e as ArcError {
        checkMessage(e.message)
    } catch {
        fputs("not an ArcError: \(error)\n", stderr)
        abort()
    }
    return 0
}
