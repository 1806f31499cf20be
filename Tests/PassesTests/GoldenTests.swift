// Golden pass tests in the FileCheck spirit: each Golden/<name>.ir holds `// RUN: <passes>`,
// optionally `// OPTIONS: key=value ...` (pass options, e.g. autodiff.loss=y), the input graph,
// `// CHECK:`, and the exact expected output.

import Foundation
import IR
import Passes
import XCTest

final class GoldenTests: XCTestCase {
    static let directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Golden")

    func testGoldenFiles() throws {
        let files = try FileManager.default.contentsOfDirectory(atPath: Self.directory.path).filter { $0.hasSuffix(".ir") }.sorted()
        XCTAssertGreaterThanOrEqual(files.count, 6)
        for file in files {
            let text = try String(contentsOf: Self.directory.appendingPathComponent(file), encoding: .utf8)
            guard let run = text.split(separator: "\n").first, run.hasPrefix("// RUN: "),
                  let check = text.range(of: "// CHECK:\n") else {
                XCTFail("\(file): needs a '// RUN: passes' first line and a '// CHECK:' line"); continue
            }
            var options = PipelineOptions()
            options.passes = run.dropFirst("// RUN: ".count).split(separator: ",").map(String.init)
            for line in text.split(separator: "\n") where line.hasPrefix("// OPTIONS: ") {
                for kv in line.dropFirst("// OPTIONS: ".count).split(separator: " ") {
                    let parts = kv.split(separator: "=", maxSplits: 1).map(String.init)
                    options.context.options[parts[0]] = parts.count > 1 ? parts[1] : ""
                }
            }
            let input = try Parser.parseVerified(String(text[..<check.lowerBound]))
            let expected = String(text[check.upperBound...])
            let (output, _) = try runPipeline(input, options)
            XCTAssertEqual(Printer.print(output), expected, "\(file): output differs from CHECK")
            // The expected text is itself valid IR that prints back identically.
            XCTAssertEqual(Printer.print(try Parser.parseVerified(expected)), expected, "\(file): CHECK does not round-trip")
        }
    }

    /// Every pass leaves an already-optimized graph alone (the pipeline is idempotent).
    func testPipelineIsIdempotent() throws {
        let text = try String(contentsOf: Self.directory.appendingPathComponent("fuse-elementwise.ir"), encoding: .utf8)
        let input = try Parser.parseVerified(String(text[..<text.range(of: "// CHECK:")!.lowerBound]))
        let (once, _) = try runPipeline(input, PipelineOptions())
        var again = PipelineOptions()
        again.passes = defaultPipeline.filter { $0 != "plan-memory" }
        let (twice, timings) = try runPipeline(once, again)
        XCTAssertEqual(Printer.print(twice), Printer.print(once))
        XCTAssertTrue(timings.allSatisfy { !$0.changed }, "\(timings.filter(\.changed).map(\.name)) changed an optimized graph")
    }

    func testUnknownPassIsAnError() {
        var options = PipelineOptions()
        options.passes = ["cse", "no-such-pass"]
        XCTAssertThrowsError(try runPipeline(Module(Graph(name: "g")), options)) { e in
            XCTAssertTrue("\(e)".contains("unknown pass 'no-such-pass'"), "\(e)")
        }
    }
}
