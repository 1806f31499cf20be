// `arcflow grad` as a process: compiled gradients agree with the interpreter's (--interpret),
// the dump shows the gradient graph, and mistakes are one-line errors.

import Foundation
import IR
import Runtime
import TestSupport
import XCTest

final class GradCLITests: XCTestCase {
    var dir = ""

    override func setUpWithError() throws { dir = try makeTemporaryDirectory("arcflow-grad") }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    @discardableResult
    func arcflow(_ args: [String]) throws -> CommandResult {
        try runArcflow(args, in: dir, environment: ["ARCFLOW_CACHE_DIR": dir + "/cache"])
    }

    let ir = """
    graph @net {
      %x = input "x" : f32[3,5]
      %fc.weight = weight "fc.weight" : f32[4,5]
      %fc.bias = weight "fc.bias" : f32[4]
      %norm.weight = weight "norm.weight" : f32[4]
      %0 = matmul %x, %fc.weight {transpose_b} : f32[3,4]
      %1 = broadcast %fc.bias : f32[3,4]
      %2 = add %0, %1 : f32[3,4]
      %3 = gelu %2 : f32[3,4]
      %4 = rms_norm %3, %norm.weight {eps = 1.0e-5} : f32[3,4]
      %5 = softmax %4 {axis = 1} : f32[3,4]
      %6 = mul %5, %4 : f32[3,4]
      %c = greater %6, %4 : f32[3,4]
      output "y" %6
      output "c" %c
    }

    """

    func prepare() throws {
        try ir.write(toFile: "\(dir)/net.ir", atomically: true, encoding: .utf8)
        XCTAssertEqual(try arcflow(["random-weights", "net.ir", "-o", "w.safetensors", "--seed", "1"]).status, 0)
        XCTAssertEqual(try arcflow(["random-inputs", "net.ir", "-o", "in.safetensors", "--seed", "2"]).status, 0)
    }

    func testCompiledGradientsMatchInterpreter() throws {
        try prepare()
        let base = ["grad", "net.ir", "--weights", "w.safetensors", "--inputs", "in.safetensors", "--loss", "y"]
        let c = try arcflow(base + ["-o", "g.safetensors", "--dump-ir", "ir", "--threads", "2"])
        XCTAssertEqual(c.status, 0, c.err)
        XCTAssertTrue(c.out.contains("compiled"), c.out)
        let i = try arcflow(base + ["-o", "gi.safetensors", "--interpret"])
        XCTAssertEqual(i.status, 0, i.err)
        let got = try SafeTensorsStore(path: "\(dir)/g.safetensors"), want = try SafeTensorsStore(path: "\(dir)/gi.safetensors")
        XCTAssertEqual(got.names, ["fc.bias", "fc.weight", "loss", "norm.weight"])
        XCTAssertEqual(try got.tensor("loss").type, .f32([]))
        for name in want.names {
            XCTAssertLessThan(relativeL2(try got.tensor(name), try want.tensor(name)), 1e-5, name)
        }
        let dumps = try FileManager.default.contentsOfDirectory(atPath: "\(dir)/ir").sorted()
        XCTAssertEqual(Array(dumps.prefix(2)), ["000_input.ir", "001_autodiff.ir"])
        let gradIR = try String(contentsOfFile: "\(dir)/ir/001_autodiff.ir", encoding: .utf8)
        XCTAssertTrue(gradIR.contains("output \"grad:fc.weight\""), gradIR)

        // The pass from dump-ir, options given as pass options.
        let d = try arcflow(["dump-ir", "net.ir", "--passes", "autodiff", "--pass-option", "autodiff.loss=y", "--pass-option", "autodiff.wrt=x"])
        XCTAssertEqual(d.status, 0, d.err)
        XCTAssertTrue(d.out.contains("output \"grad:x\""), d.out)

        // Inputs too, by name.
        let x = try arcflow(base + ["-o", "gx.safetensors", "--wrt", "x,fc.bias"])
        XCTAssertEqual(x.status, 0, x.err)
        XCTAssertEqual(try SafeTensorsStore(path: "\(dir)/gx.safetensors").names, ["fc.bias", "loss", "x"])
        XCTAssertEqual(try SafeTensorsStore(path: "\(dir)/gx.safetensors").tensor("fc.bias"), try got.tensor("fc.bias"))
    }

    func testErrors() throws {
        try prepare()
        let base = ["grad", "net.ir", "--weights", "w.safetensors", "--inputs", "in.safetensors", "-o", "g.safetensors"]
        assertOneLineError(try arcflow(base + ["--loss", "nope"]), contains: "no output named 'nope' to use as the loss (outputs: y, c)")
        assertOneLineError(try arcflow(base + ["--loss", "y", "--wrt", "fc.weights"]),
                           contains: "wrt 'fc.weights' names no weight or input (weights: fc.weight, fc.bias, norm.weight; inputs: x)")
        assertOneLineError(try arcflow(base + ["--loss", "c", "--wrt", "x"]), contains: "loss 'c' is the output of greater %c at line 13")
        // c = greater(...) feeding a product: the only path from fc.bias to the loss goes through it.
        let blocked = ir.replacingOccurrences(of: "output \"y\" %6", with: "%7 = mul %c, %x2 : f32[3,4]\n  output \"y\" %7")
            .replacingOccurrences(of: "%x = input \"x\" : f32[3,5]", with: "%x = input \"x\" : f32[3,5]\n  %x2 = input \"x2\" : f32[3,4]")
        try blocked.write(toFile: "\(dir)/blocked.ir", atomically: true, encoding: .utf8)
        XCTAssertEqual(try arcflow(["random-inputs", "blocked.ir", "-o", "in2.safetensors"]).status, 0)
        assertOneLineError(try arcflow(["grad", "blocked.ir", "--weights", "w.safetensors", "--inputs", "in2.safetensors", "-o", "g.safetensors",
                                        "--loss", "y", "--wrt", "fc.bias"]),
                           contains: "'fc.bias' has no differentiable path to loss 'y': greater %c at line 14 is not differentiable")
        let missing = try arcflow(["grad", "net.ir", "--weights", "w.safetensors", "--inputs", "in.safetensors", "-o", "g.safetensors"])
        XCTAssertEqual(missing.status, 2)
        XCTAssertTrue(missing.err.contains("missing required option --loss"), missing.err)
        let help = try arcflow(["grad", "--help"])
        XCTAssertEqual(help.status, 0)
        XCTAssertTrue(help.out.hasPrefix("usage: arcflow grad"), help.out)
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(dir)/g.safetensors"))
    }
}
