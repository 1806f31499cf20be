// SHA-256: NIST test vectors and incremental updates across block boundaries.

import IR
import XCTest

final class SHA256Tests: XCTestCase {
    func testNISTVectors() {
        XCTAssertEqual(SHA256.hash(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        XCTAssertEqual(SHA256.hash("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        XCTAssertEqual(SHA256.hash("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
                       "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
        XCTAssertEqual(SHA256.hash(String(repeating: "a", count: 1_000_000)),
                       "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
    }

    func testDigestShapeAndHex() {
        var h = SHA256()
        h.update("abc")
        let digest = h.finalize()
        XCTAssertEqual(digest.count, 32)
        XCTAssertEqual(SHA256.hex(digest), SHA256.hash("abc"))
        XCTAssertEqual(SHA256.hex([0x00, 0x0f, 0xa0, 0xff]), "000fa0ff")
        // finalize does not consume the hasher: more data continues the same stream.
        XCTAssertEqual(h.finalize(), digest)
        h.update("def")
        XCTAssertEqual(SHA256.hex(h.finalize()), SHA256.hash("abcdef"))
    }

    func testRawBufferAndByteArrayAgree() {
        let bytes = (0..<1000).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 3) }
        let viaBuffer = bytes.withUnsafeBytes { SHA256.hash($0) }
        var h = SHA256()
        h.update(bytes)
        XCTAssertEqual(viaBuffer, SHA256.hex(h.finalize()))
    }

    func testIncrementalUpdatesAtAwkwardBoundaries() {
        let bytes = (0..<1000).map { UInt8(truncatingIfNeeded: $0 &* 131 &+ 17) }
        let whole = bytes.withUnsafeBytes { SHA256.hash($0) }
        for size in [1, 63, 64, 65] {
            var h = SHA256()
            var i = 0
            while i < bytes.count {
                h.update(Array(bytes[i..<min(i + size, bytes.count)]))
                i += size
            }
            XCTAssertEqual(SHA256.hex(h.finalize()), whole, "chunk size \(size)")
        }
        // Mixed chunk sizes, including empty updates, crossing the padding boundary (55/56 bytes).
        for length in [55, 56, 63, 64, 65, 119, 120, 128] {
            let prefix = Array(bytes[0..<length])
            var h = SHA256()
            h.update([])
            h.update(Array(prefix[0..<1]))
            h.update(Array(prefix[1..<(length / 2)]))
            h.update([])
            h.update(Array(prefix[(length / 2)...]))
            XCTAssertEqual(SHA256.hex(h.finalize()), prefix.withUnsafeBytes { SHA256.hash($0) }, "length \(length)")
        }
    }

    func testKnownDigestsAroundPaddingBoundary() {
        // Reference values from Python hashlib.
        XCTAssertEqual(SHA256.hash(String(repeating: "a", count: 55)),
                       "9f4390f8d30c2dd92ec9f095b65e2b9ae9b0a925a5258e241c9f1e910f734318")
        XCTAssertEqual(SHA256.hash(String(repeating: "a", count: 56)),
                       "b35439a4ac6f0948b6d6f9e3c6af0f5f590ce20f1bde7090ef7970686ec6738a")
        XCTAssertEqual(SHA256.hash(String(repeating: "a", count: 64)),
                       "ffe054fe7ae0cb6dc65c3af9b61d5209f439851db43d0ba5997337df154668eb")
    }
}
