// The textual form round-trips; parse and verify errors point at the line; the interpreter
// computes what the ops mean.

import Foundation
import IR
import XCTest

final class RoundTripTests: XCTestCase {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    func assertRoundTrip(_ text: String, _ what: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let printed = Printer.print(try Parser.parseVerified(text))
        XCTAssertEqual(Printer.print(try Parser.parseVerified(printed)), printed, "\(what): print∘parse∘print differs", file: file, line: line)
    }

    func testExamplesRoundTripExactly() throws {
        for name in ["mlp.ir", "transformer_block.ir"] {
            let text = try String(contentsOf: Self.root.appendingPathComponent("examples/\(name)"), encoding: .utf8)
            XCTAssertEqual(Printer.print(try Parser.parseVerified(text)), text, "\(name) is not in printed form")
        }
    }

    func testEveryAttributeAndPayloadKind() throws {
        let text = """
        graph @all attributes {arena_bytes = 128, note = "a \\"quoted\\" string"} {
          %x = input "x with space" : f32[2,3]
          %h = input "h" : bf16[2,3]
          %s = constant -inf : f32[]
          %d = constant [1.0, -2.5e-07, nan, 3.4028235e+38] : f32[4]
          %e = constant [] : f32[0]
          %0 = convert %h : f32[2,3]
          %1 = add %x, %0 {flag, list = [], n = -3, off = false, tag = 1.5} : f32[2,3]
          %2 = fusion %1 {kernel = "k"} : f32[2,3] {
            %in0 = input "0" : f32[2,3]
            %0 = exp %in0 : f32[2,3]
            output "0" %0
          }
          output "y" %2
          output "d" %d
          output "e" %e
        }

        """
        XCTAssertEqual(Printer.print(try Parser.parseVerified(text)), text)
    }

    func testBuiltGraphsRoundTrip() throws {
        let b = GraphBuilder(name: "built")
        let x = b.input("x", .f32([2, 4, 3, 8]))
        let w = b.weight("model.layer.0.weight", .f32([8, 8]))
        let y = b.matmul(x, w, transposeB: true) * 0.125 + 1
        let z = b.attention(y, y, y, scale: 1 / 8.0.squareRoot())
        b.output("z", b.softmax(b.reduce(.reduce_mean, z, axes: [2, 3], keepDims: true), axis: 1))
        try assertRoundTrip(Printer.print(try b.finish()), "built graph")
    }
}

final class DiagnosticsTests: XCTestCase {
    func message(_ text: String) -> String {
        do { _ = try Parser.parseVerified(text); return "" } catch { return "\(error)" }
    }

    func testParseErrorsCarryLineAndColumn() {
        XCTAssertEqual(message("graph @g {\n  %x = input \"x\" : f32[2\n}"), "3:1: expected ']', found '}'")
        XCTAssertEqual(message("graph @g {\n  %x = frobnicate %y : f32[2]\n}"), "2:8: unknown op 'frobnicate'")
        XCTAssertEqual(message("graph @g {\n  %y = exp %x : f32[2]\n}"), "2:12: use of undefined value %x")
        XCTAssertEqual(message("graph g {}"), "1:7: expected a graph name '@name', found 'g'")
        XCTAssertEqual(message(""), "1:1: expected 'graph @name {', found end of input")
        XCTAssertEqual(message("graph @g {\n %a = input \"a\" : f32[1]\n %a = exp %a : f32[1]\n}"), "3:2: value %a defined twice")
    }

    func testVerifierNamesTheOpAndLine() {
        XCTAssertEqual(message("""
        graph @g {
          %a = input "a" : f32[4,8]
          %b = input "b" : f32[4,8]
          %c = matmul %a, %b : f32[4,8]
          output "c" %c
        }
        """), "line 4: matmul %c in @g: contraction sizes differ: f32[4,8] · f32[4,8] (8 vs 4)")
        XCTAssertEqual(message("""
        graph @g {
          %a = input "a" : f32[4,8]
          %b = input "b" : f32[8]
          %c = add %a, %b : f32[4,8]
          output "c" %c
        }
        """), "line 4: add %c in @g: operand shapes differ: f32[4,8] and f32[8]; broadcast explicitly")
        XCTAssertEqual(message("""
        graph @g {
          %a = input "a" : f32[4,8]
          %c = exp %a : f32[4,9]
          output "c" %c
        }
        """), "line 3: exp %c in @g: result type is f32[4,8], but f32[4,9] is declared")
        XCTAssertEqual(message("graph @g {\n  %a = input \"a\" : f32[4]\n}"), "graph @g has no outputs")
        // One key for an input and a weight: a gradient or a binding by that name would be ambiguous.
        XCTAssertEqual(message("""
        graph @g {
          %a = input "x" : f32[4]
          %w = weight "x" : f32[4]
          %c = mul %a, %w : f32[4]
          output "c" %c
        }
        """), "line 3: weight %w in @g: \"x\" names both an input and a weight")
    }

    func testBuilderRecordsErrorsInsteadOfTrapping() {
        let b = GraphBuilder(name: "bad")
        let x = b.input("x", .f32([2, 3]))
        b.output("y", b.matmul(x, x))
        XCTAssertThrowsError(try b.finish()) { e in
            XCTAssertTrue("\(e)".hasPrefix("matmul (value 1 of @bad): contraction sizes differ"), "\(e)")
        }
    }
}

final class InterpreterTests: XCTestCase {
    func run(_ b: GraphBuilder, _ inputs: [String: Tensor]) throws -> [String: Tensor] {
        try Interpreter.run(try b.finish(), inputs: inputs) { k, _ in throw ArcError("no weight \(k)") }
    }

    func testElementwiseValues() throws {
        let b = GraphBuilder(name: "e")
        let x = b.input("x", .f32([3]))
        for op in [OpCode.gelu, .silu, .sigmoid, .expm1] { b.output(op.rawValue, x.apply(op)) }
        let out = try run(b, ["x": Tensor(.f32([3]), [-1, 1e-8, 1])])
        // GELU (tanh form) at ±1; SiLU; sigmoid; expm1 keeps tiny arguments exact.
        XCTAssertEqual(out["gelu"]!.data[2], 0.841192, accuracy: 1e-6)
        XCTAssertEqual(out["gelu"]!.data[0], -0.158808, accuracy: 1e-6)
        XCTAssertEqual(out["silu"]!.data[2], 0.731059, accuracy: 1e-6)
        XCTAssertEqual(out["sigmoid"]!.data[0], 0.268941, accuracy: 1e-6)
        XCTAssertEqual(out["expm1"]!.data[1], 1e-8)
    }

    func testSoftmaxNormsAndReductions() throws {
        let b = GraphBuilder(name: "s")
        let x = b.input("x", .f32([2, 3]))
        b.output("softmax", b.softmax(x, axis: 0))
        b.output("logsoftmax", b.logSoftmax(x, axis: 1))
        b.output("ln", b.layerNorm(x, eps: 0))
        b.output("rms", b.rmsNorm(x, eps: 0))
        b.output("max", b.reduce(.reduce_max, x, axes: [1]))
        b.output("mean", b.reduce(.reduce_mean, x, axes: [0, 1]))
        let out = try run(b, ["x": Tensor(.f32([2, 3]), [1, 2, 3, 3, 2, 1])])
        XCTAssertEqual(out["softmax"]!.data[0] + out["softmax"]!.data[3], 1, accuracy: 1e-7)
        XCTAssertEqual(out["softmax"]!.data[1], 0.5, accuracy: 1e-7)
        XCTAssertEqual(out["logsoftmax"]!.data[2], -0.407606, accuracy: 1e-6)
        XCTAssertEqual(out["ln"]!.data[0], -1.224745, accuracy: 1e-6)
        XCTAssertEqual(out["rms"]!.data[2], 3 / (14.0 / 3).squareRoot(), accuracy: 1e-6)
        XCTAssertEqual(out["max"]!.data, [3, 3])
        XCTAssertEqual(out["mean"]!.data, [2])
    }

    func testRopeRotatesAdjacentPairs() throws {
        let b = GraphBuilder(name: "r")
        let x = b.input("x", .f32([1, 1, 1, 4]))
        b.output("y", b.rope(x, cos: b.constant([0, 0, 1, 1], shape: [1, 4]), sin: b.constant([1, 1, 0, 0], shape: [1, 4])))
        // Pair (x0, x1) rotated by 90°: (−x1, x0); pair (x2, x3) by 0°.
        XCTAssertEqual(try run(b, ["x": Tensor(.f32([1, 1, 1, 4]), [1, 2, 3, 4])])["y"]!.data, [-2, 1, 3, 4])
    }

    func testAttentionAveragesValuesByScore() throws {
        let b = GraphBuilder(name: "a")
        let q = b.input("q", .f32([1, 1, 1, 2])), k = b.input("k", .f32([1, 2, 1, 2])), v = b.input("v", .f32([1, 2, 1, 2]))
        b.output("o", b.attention(q, k, v, scale: 1))
        let out = try run(b, ["q": Tensor(.f32([1, 1, 1, 2]), [1, 0]), "k": Tensor(.f32([1, 2, 1, 2]), [1, 0, 0, 0]),
                              "v": Tensor(.f32([1, 2, 1, 2]), [10, 0, 0, 10])])
        let w = Float(1 / (1 + exp(-1.0)))   // softmax([1, 0])[0]
        XCTAssertEqual(out["o"]!.data[0], 10 * w, accuracy: 1e-5)
        XCTAssertEqual(out["o"]!.data[1], 10 * (1 - w), accuracy: 1e-5)
    }

    func testHalfConversionsRoundToNearestEven() {
        XCTAssertEqual(bf16Bits(1.00390625), 0x3F80)     // exactly halfway: to even
        XCTAssertEqual(bf16Bits(1.01171875), 0x3F82)     // halfway, odd below: up
        XCTAssertEqual(f16Bits(65520), 0x7C00)           // rounds to inf
        XCTAssertEqual(floatFromF16(0x0001), 5.9604645e-8)
        XCTAssertEqual(roundToStorage(0.1, .bf16), 0.10009765625)
    }
}
