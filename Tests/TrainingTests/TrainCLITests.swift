// `arcflow train` end to end on the mlp-regression example (needs autodiff): loss falls, 20 steps
// equal 10 + resume 10 byte for byte, same seed gives the same weights, bad resume state fails.

import Foundation
import TestSupport
import XCTest

final class TrainCLITests: XCTestCase {
    var dir = ""
    override func setUpWithError() throws {
        dir = try makeTemporaryDirectory("train-cli")
        let ex = try runArcflow(["example", "mlp-regression", "--batch", "16", "--data", "data.safetensors", "--rows", "512"], in: dir)
        XCTAssertEqual(ex.status, 0, ex.err)
        try ex.out.write(toFile: "\(dir)/mlp.ir", atomically: true, encoding: .utf8)
        XCTAssertEqual(try runArcflow(["random-weights", "mlp.ir", "-o", "w.safetensors", "--seed", "3"], in: dir).status, 0)
    }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(atPath: dir) }

    func train(_ out: String, steps: Int, seed: Int = 7, _ extra: [String] = []) throws -> CommandResult {
        try runArcflow(["train", "mlp.ir", "--weights", "w.safetensors", "--data", "data.safetensors", "--loss", "loss",
                        "--steps", String(steps), "--lr", "0.03", "--warmup", "5", "--clip", "1", "--ema", "0.9",
                        "--save-every", "5", "--threads", "2", "--seed", String(seed), "--quiet", "-o", out] + extra, in: dir,
                       environment: ["ARCFLOW_CACHE_DIR": testCacheRoot])
    }

    func bytes(_ path: String) throws -> Data { try Data(contentsOf: URL(fileURLWithPath: "\(dir)/\(path)")) }

    func testTrainLossFallsAndResumesBitExactly() throws {
        let long = try train("long", steps: 200)
        XCTAssertEqual(long.status, 0, long.err)
        let rows = try String(contentsOfFile: "\(dir)/long/train.csv", encoding: .utf8).split(separator: "\n").dropFirst()
        let losses = rows.map { Double($0.split(separator: ",")[1])! }
        XCTAssertEqual(losses.count, 200)
        let first = losses.prefix(20).reduce(0, +) / 20, last = losses.suffix(20).reduce(0, +) / 20
        XCTAssertLessThan(last, 0.5 * first, "loss did not fall: \(first) → \(last)")
        for f in ["state.safetensors", "weights.safetensors", "ema.safetensors", "loss.png"] {
            XCTAssertTrue(FileManager.default.fileExists(atPath: "\(dir)/long/\(f)"), f)
        }

        XCTAssertEqual(try train("a", steps: 20).status, 0)
        XCTAssertEqual(try train("a2", steps: 20).status, 0)
        XCTAssertEqual(try bytes("a/weights.safetensors"), try bytes("a2/weights.safetensors"), "same seed, different weights")
        XCTAssertEqual(try train("b", steps: 10).status, 0)
        // Starting over in b would overwrite its run: refused, and the resume below still matches.
        assertOneLineError(try train("b", steps: 20), contains: "holds a saved run")
        let resumed = try train("b", steps: 20, ["--resume", "b/state.safetensors"])
        XCTAssertEqual(resumed.status, 0, resumed.err)
        XCTAssertEqual(try bytes("a/weights.safetensors"), try bytes("b/weights.safetensors"), "10 + resume 10 differs from 20")
        XCTAssertEqual(try bytes("a/state.safetensors"), try bytes("b/state.safetensors"))

        let other = try train("c", steps: 20, seed: 8)
        XCTAssertEqual(other.status, 0, other.err)
        XCTAssertNotEqual(try bytes("a/weights.safetensors"), try bytes("c/weights.safetensors"))

        assertOneLineError(try train("d", steps: 20, ["--weight-decay", "0.5", "--resume", "a/state.safetensors"]), contains: "different train-step graph")
        try bytes("a/state.safetensors").prefix(100).write(to: URL(fileURLWithPath: "\(dir)/bad.safetensors"))
        assertOneLineError(try train("d", steps: 20, ["--resume", "bad.safetensors"]), contains: "bad.safetensors")
        assertOneLineError(try train("d", steps: 20, ["--batch", "8"]), contains: "--batch 8 does not match graph input")
    }

    func testHelp() throws {
        let r = try runArcflow(["train", "--help"], in: dir)
        XCTAssertEqual(r.status, 0)
        XCTAssertTrue(r.out.contains("--resume STATE.safetensors"))
    }
}
