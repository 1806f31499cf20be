// Messages about input files: one line whatever the input holds, and file-level failures that
// say what is wrong (regressions for the two defects the fuzzing issue reported).

import Foundation
@testable import IR
import XCTest

final class InputFileTests: XCTestCase {
    func testControlCharactersAreEscapedInEveryArcError() {
        XCTAssertEqual(ArcError("tensor 'a\nb\u{0c}c\td\r\u{1b}[2J\u{7f}\u{85}\u{2028}'").message,
                       #"tensor 'a\nb\x0cc\td\r\x1b[2J\x7f\x85\u{2028}'"#)
        XCTAssertEqual(oneLine(oneLine("a\nb")), #"a\nb"#, "escaping twice changes nothing")
        XCTAssertEqual(oneLine("ünï 東京 \\n"), "ünï 東京 \\n", "printable text and backslashes are kept")
    }

    func testNotUTF8IsNotTextAndNamesTheByte() throws {
        let dir = NSTemporaryDirectory() + "arcflow-input-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let p = "\(dir)/c.ir"
        try Data(Array("graph @g {\n  %x = input \"".utf8) + [0xE2, 0x28, 0xA1]).write(to: URL(fileURLWithPath: p))
        XCTAssertThrowsError(try Parser.parseFile(p)) {
            XCTAssertEqual(($0 as! ArcError).message, "\(p) is not IR text: invalid UTF-8 byte 0xe2 at offset 25")
        }
        XCTAssertThrowsError(try Parser.parseFile("\(dir)/none.ir")) {
            XCTAssertEqual(($0 as! ArcError).message, "cannot read \(dir)/none.ir: no such file")
        }
        XCTAssertThrowsError(try Parser.parseFile(dir)) {
            XCTAssertEqual(($0 as! ArcError).message, "cannot read \(dir): it is a folder, not a file")
        }
        XCTAssertThrowsError(try readInputFile(p, limit: 10)) {
            XCTAssertEqual(($0 as! ArcError).message, "cannot read \(p): 28 bytes is too large for a file (limit 10 bytes)")
        }
        if getuid() != 0 {
            chmod(p, 0)
            XCTAssertThrowsError(try Parser.parseFile(p)) { XCTAssertEqual(($0 as! ArcError).message, "cannot read \(p): permission denied") }
        }
    }

    func testOversizedTensorTypesAreErrorsNotTraps() {
        for t in ["f32[4611686018427387904,4]", "f32[65536,65536,65536]", "bf16[9223372036854775807]"] {
            let text = "graph @g {\n  %a = input \"a\" : \(t)\n  output \"y\" %a\n}\n"
            XCTAssertThrowsError(try Parser.parseVerified(text)) {
                XCTAssertTrue(($0 as! ArcError).message.contains("larger than the 2^48-byte limit"), "\($0)")
            }
        }
    }
}
