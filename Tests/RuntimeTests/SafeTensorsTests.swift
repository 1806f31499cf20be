// safetensors reader and writer: round trips, Python-written files, and every header validation rule.

import Foundation
import IR
import Runtime
import XCTest

final class SafeTensorsTests: XCTestCase {
    private var dir: URL!

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("safetensors-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: dir)
    }

    private func path(_ name: String) -> String { dir.appendingPathComponent(name).path }

    /// Writes a file by hand: 8-byte little-endian header length, header text, data.
    private func handMade(_ name: String, header: String, data: [UInt8] = [], declaredLength: UInt64? = nil) throws -> String {
        let headerBytes = Array(header.utf8)
        var bytes = withUnsafeBytes(of: (declaredLength ?? UInt64(headerBytes.count)).littleEndian) { Array($0) }
        bytes += headerBytes + data
        let p = path(name)
        try Data(bytes).write(to: URL(fileURLWithPath: p))
        return p
    }

    private func assertOpenFails(_ p: String, _ fragments: [String], file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try SafeTensorsFile(path: p), file: file, line: line) { error in
            guard let e = error as? ArcError else { return XCTFail("not an ArcError: \(error)", file: file, line: line) }
            XCTAssertFalse(e.message.contains("\n"), "message must be one line: \(e.message)", file: file, line: line)
            for f in [p] + fragments {
                XCTAssertTrue(e.message.contains(f), "'\(e.message)' should mention '\(f)'", file: file, line: line)
            }
        }
    }

    private func assertThrows(_ body: @autoclosure () throws -> Any, _ fragments: [String],
                              file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try body(), file: file, line: line) { error in
            let message = (error as? ArcError)?.message ?? "not an ArcError: \(error)"
            for f in fragments {
                XCTAssertTrue(message.contains(f), "'\(message)' should mention '\(f)'", file: file, line: line)
            }
        }
    }

    private func bits(_ v: [Float]) -> [UInt32] { v.map(\.bitPattern) }

    private func fileBytes(_ p: String) throws -> [UInt8] { Array(try Data(contentsOf: URL(fileURLWithPath: p))) }

    // MARK: Round trips

    func testRoundTripAllDTypes() throws {
        let values: [Float] = [0, -0.0, 1, -1, .pi, 0.1, 1.0009765625 + 1e-7, 65519, 65520, 1e-7, 5.9604645e-8,
                               2.9802322e-8, 8.940697e-8, Float.leastNormalMagnitude / 4, .infinity, -.infinity, 1e30, -123456.789]
        let p = path("all.safetensors")
        try writeSafeTensors([
            TensorRecord(name: "a32", dtype: .f32, shape: [3, 6], payload: .floats(values)),
            TensorRecord(name: "a16", dtype: .f16, shape: [18], payload: .floats(values)),
            TensorRecord(name: "abf", dtype: .bf16, shape: [2, 9], payload: .floats(values)),
        ], to: p)
        let f = try SafeTensorsFile(path: p)
        XCTAssertEqual(f.names, ["a32", "a16", "abf"])
        XCTAssertEqual(f.metadata, [:])
        XCTAssertEqual(bits(try f.floats("a32")), bits(values))
        XCTAssertEqual(bits(try f.floats("a16")), bits(values.map { floatFromF16(f16Bits($0)) }))
        XCTAssertEqual(bits(try f.floats("abf")), bits(values.map { floatFromBF16(bf16Bits($0)) }))

        let a16 = try f.info("a16")
        XCTAssertEqual(a16.dtype, .f16)
        XCTAssertEqual(a16.shape, [18])
        XCTAssertEqual(a16.byteCount, 36)
        XCTAssertEqual(a16.elementCount, 18)
        XCTAssertEqual(a16.type, TensorType(.f16, [18]))
        XCTAssertEqual(a16.offset, try f.info("a32").offset + 72)
        let raw = try f.bytes("a16")
        XCTAssertEqual(raw.count, 36)
        XCTAssertEqual(raw.load(fromByteOffset: 2, as: UInt16.self), 0x8000)  // -0 stays negative
        XCTAssertEqual(raw.load(fromByteOffset: 16, as: UInt16.self), 0x7C00) // 65520 rounds up to inf

        var out = [Float](repeating: .nan, count: 18)
        try out.withUnsafeMutableBufferPointer { try f.copyFloats("abf", into: $0.baseAddress!) }
        XCTAssertEqual(bits(out), bits(try f.floats("abf")))
    }

    func testRawPayloadAndEveryF16BitPattern() throws {
        let patterns = (0...0xFFFF).map { UInt16($0) }
        let raw = patterns.flatMap { [UInt8($0 & 0xFF), UInt8($0 >> 8)] }
        let p = path("f16.safetensors")
        try writeSafeTensors([TensorRecord(name: "all", dtype: .f16, shape: [256, 256], payload: .raw(raw))], to: p)
        let f = try SafeTensorsFile(path: p)
        XCTAssertEqual(bits(try f.floats("all")), bits(patterns.map(floatFromF16)))
        XCTAssertEqual(Array(try f.bytes("all")), raw)
    }

    func testMetadataRoundTripAndDeterminism() throws {
        let metadata = ["format": "pt", "quote\"back\\slash": "new\nline\ttab\u{1}", "ünï": "código ✓", "": "empty key"]
        let records = [
            TensorRecord(name: "z.last", dtype: .f32, shape: [2], payload: .floats([1, 2])),
            TensorRecord(name: "A \"odd\" name", dtype: .bf16, shape: [1], payload: .floats([3])),
        ]
        let p1 = path("m1.safetensors"), p2 = path("m2.safetensors")
        try writeSafeTensors(records, metadata: metadata, to: p1)
        try writeSafeTensors(records, metadata: metadata, to: p2)
        XCTAssertEqual(try fileBytes(p1), try fileBytes(p2))

        let bytes = try fileBytes(p1)
        let headerLength = Int(bytes[0..<8].reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) })
        XCTAssertEqual(headerLength % 8, 0)
        XCTAssertEqual((8 + headerLength) % 64, 0, "the data section starts on a 64-byte boundary")
        let header = String(decoding: bytes[8..<(8 + headerLength)], as: UTF8.self)
        XCTAssertTrue(header.hasPrefix("{\"__metadata__\":{\"\":\"empty key\",\"format\":\"pt\""), header)
        XCTAssertTrue(header.contains("\"A \\\"odd\\\" name\":{\"data_offsets\":[8,10],\"dtype\":\"BF16\",\"shape\":[1]}"), header)

        let f = try SafeTensorsFile(path: p1)
        XCTAssertEqual(f.metadata, metadata)
        XCTAssertEqual(f.names, ["z.last", "A \"odd\" name"])
        XCTAssertEqual(try f.floats("A \"odd\" name"), [3])
    }

    func testZeroSizeAndScalarTensors() throws {
        let p = path("zero.safetensors")
        try writeSafeTensors([
            TensorRecord(name: "empty", dtype: .f32, shape: [0, 3], payload: .floats([])),
            TensorRecord(name: "scalar", dtype: .f16, shape: [], payload: .floats([2.5])),
            TensorRecord(name: "empty2", dtype: .bf16, shape: [4, 0], payload: .raw([])),
        ], to: p)
        let f = try SafeTensorsFile(path: p)
        XCTAssertEqual(try f.floats("empty"), [])
        XCTAssertEqual(try f.floats("empty2"), [])
        XCTAssertEqual(try f.bytes("empty").count, 0)
        XCTAssertEqual(try f.info("empty").shape, [0, 3])
        XCTAssertEqual(try f.floats("scalar"), [2.5])
        XCTAssertEqual(try f.info("scalar").shape, [])
        XCTAssertEqual(Set(f.names), ["empty", "scalar", "empty2"])

        let none = path("none.safetensors")
        try writeSafeTensors([], to: none)
        let g = try SafeTensorsFile(path: none)
        XCTAssertEqual(g.names, [])
        XCTAssertEqual(try fileBytes(none).count, 64, "8 + \"{}\" padded so that the (empty) data starts at 64")
    }

    /// Bytes produced by Python `safetensors.numpy.save` 0.8.0 (f32, f16 and an I64 buffer,
    /// metadata {"format": "pt"}), kept verbatim so the reader is checked against the real layout.
    func testReadsFileWrittenByPythonLibrary() throws {
        let hex = "d8000000000000007b225f5f6d657461646174615f5f223a7b22666f726d6174223a227074227d2c227374657073223a7b226474797065223a22493634222c227368617065223a5b325d2c22646174615f6f666673657473223a5b302c31365d7d2c22776569676874223a7b226474797065223a22463332222c227368617065223a5b322c335d2c22646174615f6f666673657473223a5b31362c34305d7d2c2262696173223a7b226474797065223a22463136222c227368617065223a5b325d2c22646174615f6f666673657473223a5b34302c34345d7d7d2020202020200700000000000000ffffffffffffffff0000c03f000000c00000803e00004040000000800000c842003800bc"
        var bytes: [UInt8] = []
        var i = hex.startIndex
        while i < hex.endIndex {
            let j = hex.index(i, offsetBy: 2)
            bytes.append(UInt8(hex[i..<j], radix: 16)!)
            i = j
        }
        let p = path("python.safetensors")
        try Data(bytes).write(to: URL(fileURLWithPath: p))
        let f = try SafeTensorsFile(path: p)
        XCTAssertEqual(f.metadata, ["format": "pt"])
        XCTAssertEqual(f.names, ["weight", "bias"])
        XCTAssertEqual(f.unsupportedTensors, ["steps": "I64"])
        XCTAssertEqual(f.tensors["weight"], try f.info("weight"))
        XCTAssertEqual(try f.info("weight").shape, [2, 3])
        XCTAssertEqual(try f.info("weight").offset, 8 + 216 + 16)
        XCTAssertEqual(bits(try f.floats("weight")), bits([1.5, -2.0, 0.25, 3.0, -0.0, 100.0]))
        XCTAssertEqual(try f.floats("bias"), [0.5, -1.0])
        for call in [{ _ = try f.info("steps") }, { _ = try f.bytes("steps") }, { _ = try f.floats("steps") }] {
            assertThrows(try call(), [p, "tensor 'steps' has unsupported dtype I64 (expected F32, F16 or BF16)"])
        }
        assertThrows(try f.floats("nope"), ["\(p): no tensor named 'nope'"])
    }

    func testUnalignedDataSection() throws {
        // Writers need not pad the header; an odd length puts every tensor off alignment.
        let header = #"{"b":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]},"f":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}} "#
        XCTAssertEqual(header.utf8.count % 2, 1)
        let p = try handMade("unaligned.safetensors", header: header, data: [0x80, 0x3F, 0x00, 0xC0, 0x00, 0x00, 0x20, 0x41])
        let f = try SafeTensorsFile(path: p)
        XCTAssertEqual(try f.floats("b"), [1, -2])
        XCTAssertEqual(try f.floats("f"), [10])
    }

    // MARK: Header validation

    func testRejectsTruncatedFile() throws {
        let p = path("short.safetensors")
        try Data([1, 2, 3]).write(to: URL(fileURLWithPath: p))
        assertOpenFails(p, ["3 bytes", "too short"])
        assertOpenFails(path("missing.safetensors"), ["cannot open"])
    }

    func testRejectsHeaderLengthBeyondFile() throws {
        let p = try handMade("lying.safetensors", header: "{}", declaredLength: 4096)
        assertOpenFails(p, ["header length 4096", "larger than the file"])
    }

    func testRejectsHeaderLengthOver100MiB() throws {
        let p = path("huge.safetensors")
        let declared = UInt64(101 << 20)
        try Data(withUnsafeBytes(of: declared.littleEndian) { Array($0) }).write(to: URL(fileURLWithPath: p))
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: p))
        try handle.truncate(atOffset: declared + 64)  // sparse: costs no disk
        try handle.close()
        assertOpenFails(p, ["header length \(declared)", "100 MiB"])
    }

    func testRejectsBadJSON() throws {
        assertOpenFails(try handMade("nojson.safetensors", header: "{\"a\": [1,"), ["not valid JSON"])
        assertOpenFails(try handMade("array.safetensors", header: "[1, 2]"), ["not a JSON object"])
        let p = path("utf8.safetensors")
        try Data([2, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFE]).write(to: URL(fileURLWithPath: p))
        assertOpenFails(p, ["UTF-8"])
    }

    func testRejectsMalformedEntries() throws {
        let cases: [(String, [String])] = [
            (#"{"x":[1]}"#, ["'x'", "not a JSON object"]),
            (#"{"x":{"shape":[1],"data_offsets":[0,4]}}"#, ["'x'", "dtype"]),
            (#"{"x":{"dtype":4,"shape":[1],"data_offsets":[0,4]}}"#, ["'x'", "dtype"]),
            (#"{"x":{"dtype":"F4","shape":[1],"data_offsets":[0,4]}}"#, ["'x'", "unknown dtype 'F4'"]),
            (#"{"x":{"dtype":"F32","data_offsets":[0,4]}}"#, ["'x'", "shape"]),
            (#"{"x":{"dtype":"F32","shape":"1","data_offsets":[0,4]}}"#, ["'x'", "shape"]),
            (#"{"x":{"dtype":"F32","shape":[1.0],"data_offsets":[0,4]}}"#, ["'x'", "shape"]),
            (#"{"x":{"dtype":"F32","shape":[true],"data_offsets":[0,4]}}"#, ["'x'", "shape"]),
            (#"{"x":{"dtype":"F32","shape":[1]}}"#, ["'x'", "data_offsets"]),
            (#"{"x":{"dtype":"F32","shape":[1],"data_offsets":[0]}}"#, ["'x'", "data_offsets"]),
            (#"{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4.5]}}"#, ["'x'", "data_offsets"]),
            (#"{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,18446744073709551615]}}"#, ["'x'", "data_offsets"]),
        ]
        for (i, (header, fragments)) in cases.enumerated() {
            assertOpenFails(try handMade("entry\(i).safetensors", header: header, data: [UInt8](repeating: 0, count: 4)), fragments)
        }
    }

    func testRejectsNegativeDimension() throws {
        let p = try handMade("neg.safetensors", header: #"{"x":{"dtype":"F32","shape":[2,-1],"data_offsets":[0,0]}}"#)
        assertOpenFails(p, ["'x'", "negative dimension -1"])
    }

    func testRejectsBeginAfterEnd() throws {
        let p = try handMade("order.safetensors", header: #"{"x":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}}"#,
                             data: [UInt8](repeating: 0, count: 8))
        assertOpenFails(p, ["'x'", "[8,4]"])
    }

    func testRejectsEndPastData() throws {
        let p = try handMade("past.safetensors", header: #"{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
                             data: [0, 0, 0, 0])
        assertOpenFails(p, ["'x'", "ends at byte 8", "only 4 bytes"])
    }

    func testRejectsWrongByteLength() throws {
        let p = try handMade("len.safetensors", header: #"{"x":{"dtype":"F32","shape":[2,3],"data_offsets":[0,12]}}"#,
                             data: [UInt8](repeating: 0, count: 12))
        assertOpenFails(p, ["tensor 'x' has 12 bytes but f32[2,3] needs 24"])
        let q = try handMade("len64.safetensors", header: #"{"k":{"dtype":"I64","shape":[2],"data_offsets":[0,12]}}"#,
                             data: [UInt8](repeating: 0, count: 12))
        assertOpenFails(q, ["tensor 'k' has 12 bytes but i64[2] needs 16"])
    }

    func testRejectsOverlappingTensors() throws {
        let header = #"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}"#
        assertOpenFails(try handMade("overlap.safetensors", header: header, data: [UInt8](repeating: 0, count: 16)),
                        ["'a' [0,16]", "'b' [8,16]", "overlap"])
        // Zero-size tensors occupy no bytes, so they may sit anywhere, even inside another tensor.
        let fine = #"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"z":{"dtype":"F32","shape":[0],"data_offsets":[8,8]}}"#
        XCTAssertEqual(try SafeTensorsFile(path: try handMade("ok.safetensors", header: fine, data: [UInt8](repeating: 0, count: 16))).names,
                       ["a", "z"])
    }

    func testRejectsBadMetadata() throws {
        assertOpenFails(try handMade("meta1.safetensors", header: #"{"__metadata__":{"epoch":3}}"#), ["__metadata__", "'epoch'"])
        assertOpenFails(try handMade("meta2.safetensors", header: #"{"__metadata__":["a"]}"#), ["__metadata__"])
    }

    // MARK: Writer errors and atomicity

    func testWriterRejectsBadRecords() throws {
        let p = path("bad.safetensors")
        assertThrows(try writeSafeTensors([
            TensorRecord(name: "w", dtype: .f32, shape: [1], payload: .floats([1])),
            TensorRecord(name: "w", dtype: .f32, shape: [1], payload: .floats([2])),
        ], to: p), [p, "duplicate tensor name 'w'"])
        assertThrows(try writeSafeTensors([TensorRecord(name: "w", dtype: .bf16, shape: [2, 3], payload: .floats([1]))], to: p),
                     [p, "tensor 'w' has 1 floats but bf16[2,3] needs 6"])
        assertThrows(try writeSafeTensors([TensorRecord(name: "w", dtype: .f16, shape: [2], payload: .raw([0, 0]))], to: p),
                     [p, "tensor 'w' has 2 bytes but f16[2] needs 4"])
        assertThrows(try writeSafeTensors([TensorRecord(name: "w", dtype: .f16, shape: [-2], payload: .raw([]))], to: p),
                     [p, "'w'", "negative dimension"])
        assertThrows(try writeSafeTensors([TensorRecord(name: "__metadata__", dtype: .f32, shape: [], payload: .floats([1]))], to: p),
                     [p, "__metadata__"])
        XCTAssertFalse(FileManager.default.fileExists(atPath: p))

        let unwritable = path("no/such/dir/out.safetensors")
        assertThrows(try writeSafeTensors([], to: unwritable), [unwritable, "cannot create a temporary file"])
    }

    func testWriterReplacesAtomicallyAndLeavesNoTemporaryFiles() throws {
        let p = path("model.safetensors")
        try writeSafeTensors([TensorRecord(name: "old", dtype: .f32, shape: [1], payload: .floats([1]))], to: p)
        try writeSafeTensors([TensorRecord(name: "new", dtype: .f16, shape: [2], payload: .floats([1, 2]))], to: p)
        XCTAssertEqual(try SafeTensorsFile(path: p).names, ["new"])
        // Renaming onto a directory fails after the data was written: the temp file must go too.
        let target = path("adir")
        try FileManager.default.createDirectory(atPath: target, withIntermediateDirectories: false)
        try FileManager.default.createDirectory(atPath: target + "/inside", withIntermediateDirectories: false)
        assertThrows(try writeSafeTensors([], to: target), [target])
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir.path).sorted(), ["adir", "model.safetensors"])
    }
}
