// --weights-dtype int8 on the bf16 FLUX fixture: final latents near the f32 build, weights smaller.

import Foundation
import IR
import Runtime
import TestSupport
import XCTest

final class Int8ParityTests: XCTestCase {
    /// The 2-step ArcFlow sampler of cfg-a (bf16 base, f16 adapter, LoRA fused in f32) compiled with
    /// f32, auto and int8 weights (blocks of 32 along K, and per output channel): int8 latents
    /// within 3e-2 relative L2 of the f32 build's; int8 weight files smaller than auto's.
    func testInt8LatentsNearF32() throws {
        let dir = try makeTemporaryDirectory("arcflow-int8")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let a = "\(fixtures)/cfg-a"
        var latents: [String: Tensor] = [:], bytes: [String: Int] = [:]
        for (name, flags) in [("f32", ["--weights-dtype", "f32"]), ("auto", ["--weights-dtype", "auto"]),
                              ("int8-32", ["--weights-dtype", "int8"]),
                              ("int8-channel", ["--weights-dtype", "int8", "--pass-option", "quantize-weights.group=channel"])] {
            let env = ["ARCFLOW_CACHE_DIR": testCacheRoot]
            let c = try runArcflow(["compile", "--transformer", "\(a)/transformer", "--adapter", "\(a)/adapter-k16", "--height", "48",
                                    "--width", "80", "--text-tokens", "7", "-o", name] + flags, in: dir, environment: env)
            XCTAssertEqual(c.status, 0, c.err)
            let g = try runArcflow(["generate", "--model", name, "--embeddings", "\(a)/case.safetensors", "--noise", "\(a)/case.safetensors",
                                    "--output-latents", "\(name).safetensors"], in: dir, environment: env)
            XCTAssertEqual(g.status, 0, g.err)
            latents[name] = try SafeTensorsStore(path: "\(dir)/\(name).safetensors").tensor("latents")
            bytes[name] = (try FileManager.default.attributesOfItem(atPath: "\(dir)/\(name)/weights.safetensors")[.size] as! NSNumber).intValue
            if name.hasPrefix("int8") {
                let packed = try LoadedModel.readManifest("\(dir)/\(name)").weights.filter { $0.packing?.group != nil }
                XCTAssertFalse(packed.isEmpty)
                XCTAssertTrue(packed.allSatisfy { $0.dtype == "i8" })
            }
        }
        for name in ["auto", "int8-32", "int8-channel"] {
            let err = relativeL2(latents[name]!, latents["f32"]!)
            print("weights-dtype \(name) vs f32: final latents relative L2 \(err); weights \(bytes[name]!) bytes (f32 \(bytes["f32"]!))")
            XCTAssertLessThan(err, name == "auto" ? 5e-3 : 3e-2, name)
        }
        XCTAssertLessThan(bytes["int8-32"]!, bytes["auto"]!)
        XCTAssertLessThan(bytes["int8-channel"]!, bytes["int8-32"]!)
    }
}
