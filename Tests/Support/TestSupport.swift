// Shared by the test targets: running the arcflow binary, one-line error checks, tensor distances.

import Foundation
import IR
import Runtime
import XCTest

/// A finished arcflow process.
public struct CommandResult {
    public var status: Int32
    public var out: String
    public var err: String
    public init(status: Int32, out: String, err: String) { self.status = status; self.out = out; self.err = err }
}

/// The arcflow binary built next to the test bundle.
public func arcflowExecutable() -> URL {
    var dir = URL(fileURLWithPath: CommandLine.arguments[0])
    while !FileManager.default.isExecutableFile(atPath: dir.appendingPathComponent("arcflow").path) && dir.path != "/" {
        dir.deleteLastPathComponent()
    }
    return dir.appendingPathComponent("arcflow")
}

/// Runs the arcflow binary built next to the test bundle, in `directory`, with extra environment.
/// OMP_NUM_THREADS is the physical cores unless `extra` says otherwise, so that what a command
/// prints and how many threads it runs do not depend on what else the test machine is running
/// (without it arcflow runs fewer threads beside busy CPUs and says so: `ThreadChoice`).
public func runArcflow(_ args: [String], in directory: String, environment extra: [String: String] = [:]) throws -> CommandResult {
    let p = Process()
    p.executableURL = arcflowExecutable()
    p.arguments = args
    p.currentDirectoryURL = URL(fileURLWithPath: directory)
    var environment = ProcessInfo.processInfo.environment
    environment["OMP_NUM_THREADS"] = "\(physicalCoreCount())"
    p.environment = environment.merging(extra) { _, new in new }
    let out = Pipe(), err = Pipe()
    p.standardOutput = out
    p.standardError = err
    try p.run()
    // stderr is small; read stdout to the end first, then stderr, then reap.
    let o = out.fileHandleForReading.readDataToEndOfFile(), e = err.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return CommandResult(status: p.terminationStatus, out: String(decoding: o, as: UTF8.self), err: String(decoding: e, as: UTF8.self))
}

/// A failure must be one line on stderr, exit status 1, and no crash report.
public func assertOneLineError(_ r: CommandResult, contains needle: String, file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertEqual(r.status, 1, "exit status; stderr: \(r.err)", file: file, line: line)
    XCTAssertEqual(r.err.split(separator: "\n").count, 1, "expected one line, got: \(r.err)", file: file, line: line)
    XCTAssertTrue(r.err.contains(needle), "'\(needle)' not in: \(r.err)", file: file, line: line)
    XCTAssertFalse(r.err.contains("Fatal error") || r.err.contains("Backtrace") || r.err.contains("crashed"), file: file, line: line)
}

/// A fresh temporary directory, removed by `removeTemporaryDirectory`.
public func makeTemporaryDirectory(_ prefix: String) throws -> String {
    let dir = NSTemporaryDirectory() + "\(prefix)-\(UUID().uuidString)"
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    return dir
}

/// ‖got − want‖₂ / ‖want‖₂, the error measure of every parity check.
public func relativeL2(_ got: Tensor, _ want: Tensor) -> Double {
    precondition(got.shape == want.shape, "\(got.type) vs \(want.type)")
    var num = 0.0, den = 0.0
    for i in want.data.indices where !(got.data[i].isNaN && want.data[i].isNaN) {
        let d = Double(got.data[i]) - Double(want.data[i])
        num += d * d
        den += Double(want.data[i]) * Double(want.data[i])
    }
    return den == 0 ? num.squareRoot() : (num / den).squareRoot()
}

/// The largest absolute error and the largest absolute reference value.
public func maxErrors(_ got: Tensor, _ want: Tensor) -> (error: Double, reference: Double) {
    var e = 0.0, r = 0.0
    for i in want.data.indices where !(got.data[i].isNaN && want.data[i].isNaN) {
        e = max(e, abs(Double(got.data[i]) - Double(want.data[i])))
        r = max(r, abs(Double(want.data[i])))
    }
    return (e, r)
}

/// The library cache all tests share: reruns on one machine are fast, CI starts empty.
public let testCacheRoot = NSTemporaryDirectory() + "arcflow-test-cache"

/// Printing, parsing and printing again gives identical text (every graph the tests make).
public func assertRoundTrips(_ module: Module, file: StaticString = #filePath, line: UInt = #line) {
    let text = Printer.print(module)
    // A parse error inside the assertion fails the test with the error.
    XCTAssertEqual(Printer.print(try Parser.parseVerified(text)), text, "print∘parse∘print differs", file: file, line: line)
}

/// A U8 tensor of a safetensors file (the stores read floats only): shape and bytes, from the
/// header's offsets.
public func readUInt8Tensor(_ path: String, _ key: String) throws -> (shape: [Int], data: [UInt8]) {
    let bytes = try Data(contentsOf: URL(fileURLWithPath: path))
    let n = bytes.prefix(8).enumerated().reduce(0) { $0 | (Int($1.element) << (8 * $1.offset)) }
    let header = try JSONSerialization.jsonObject(with: bytes.subdata(in: 8..<(8 + n))) as! [String: Any]
    guard let entry = header[key] as? [String: Any], entry["dtype"] as? String == "U8" else {
        throw ArcError("\(path): no U8 tensor '\(key)'")
    }
    let offsets = entry["data_offsets"] as! [Int]
    return (entry["shape"] as! [Int], [UInt8](bytes.subdata(in: (8 + n + offsets[0])..<(8 + n + offsets[1]))))
}

/// Fraction of channels off by more than one level, and the largest difference.
public func compareRGB8(_ got: [UInt8], _ want: [UInt8]) -> (offByMoreThan1: Double, maxDiff: Int) {
    precondition(got.count == want.count)
    var bad = 0, worst = 0
    for i in got.indices {
        let d = abs(Int(got[i]) - Int(want[i]))
        worst = max(worst, d)
        if d > 1 { bad += 1 }
    }
    return (Double(bad) / Double(got.count), worst)
}

/// A safetensors file of raw entries (name, dtype tag such as "I64" or "F64", shape, little-endian
/// bytes) and metadata: what writeSafeTensors does not write (dtypes arcflow reads only as masks
/// or refuses), as PyTorch's save_file would.
public func writeRawSafeTensors(_ entries: [(name: String, dtype: String, shape: [Int], bytes: Data)],
                                metadata: [String: String] = [:], to path: String) throws {
    var header: [String: Any] = metadata.isEmpty ? [:] : ["__metadata__": metadata]
    var offset = 0
    for e in entries {
        header[e.name] = ["dtype": e.dtype, "shape": e.shape, "data_offsets": [offset, offset + e.bytes.count]] as [String: Any]
        offset += e.bytes.count
    }
    var json = try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys])
    while json.count % 8 != 0 { json.append(0x20) }
    var file = Data()
    withUnsafeBytes(of: UInt64(json.count).littleEndian) { file.append(contentsOf: $0) }
    file.append(json)
    for e in entries { file.append(e.bytes) }
    try file.write(to: URL(fileURLWithPath: path))
}

