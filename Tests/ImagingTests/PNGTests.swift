// PNG encoder: decoded by an independent inflate (Python's zlib; our own would share our bugs),
// checking chunk CRCs, the pixels after undoing the row filter, and the tEXt chunk.

import Foundation
import XCTest
@testable import Imaging

final class PNGTests: XCTestCase {
    func testKnownCRCAndAdler() {
        XCTAssertEqual(PNG.crc32(Data("IEND".utf8)), 0xAE42_6082)
        XCTAssertEqual(PNG.adler32(Array("Wikipedia".utf8)), 0x11E6_0398)
    }

    func testRoundTripThroughPythonZlib() throws {
        var img = Image8(width: 37, height: 23)
        var s: UInt32 = 7
        for i in img.pixels.indices {
            s = s &* 1_103_515_245 &+ 12345
            // Flat regions and noise, so both matches and literals are exercised.
            img.pixels[i] = i % 200 < 120 ? UInt8(i / 300 % 256) : UInt8(s >> 24)
        }
        let png = PNG.encode(img, text: [("parameters", "a red circle, seed 3")])
        XCTAssertEqual(Array(png.prefix(8)), [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A])
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("pngtest-\(getpid()).png")
        try png.write(to: url)
        defer { try? FileManager.default.removeItem(at: url) }
        // Python's zlib and struct only: decode the IDAT, undo Sub filtering, print a checksum.
        let script = """
        import sys, zlib, struct
        d = open(sys.argv[1], 'rb').read(); p = 8; idat = b''; text = {}
        while p < len(d):
            n, = struct.unpack('>I', d[p:p+4]); t = d[p+4:p+8]; body = d[p+8:p+8+n]
            assert zlib.crc32(t + body) == struct.unpack('>I', d[p+8+n:p+12+n])[0], t
            if t == b'IHDR': w, h = struct.unpack('>II', body[:8])
            if t == b'IDAT': idat += body
            if t == b'tEXt': k, v = body.split(b'\\0'); text[k] = v
            p += 12 + n
        raw = zlib.decompress(idat); out = bytearray(); st = w * 3
        for y in range(h):
            row = raw[y*(st+1):(y+1)*(st+1)]; assert row[0] == 1
            r = bytearray(row[1:])
            for i in range(3, st): r[i] = (r[i] + r[i-3]) & 255
            out += r
        print(zlib.crc32(bytes(out)), text[b'parameters'].decode())
        """
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = ["python3", "-c", script, url.path]
        let pipe = Pipe()
        p.standardOutput = pipe
        do { try p.run() } catch { throw XCTSkip("python3 not available") }
        p.waitUntilExit()
        let printed = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        XCTAssertEqual(p.terminationStatus, 0)
        let expected = PNG.crc32(Data(img.pixels))
        XCTAssertEqual(printed.trimmingCharacters(in: .whitespacesAndNewlines), "\(expected) a red circle, seed 3")
    }
}
