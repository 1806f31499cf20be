// Attention kernels (attention.h) against the interpreter.
// Every op three or more shapes, including sizes that are not multiples of 8 or 16.

import IR
import Codegen
import Passes
import Runtime
import TestSupport
import XCTest

final class AttentionKernelTests: KernelTestCase {
    func testPreludeFamilyCompilesWithoutWarnings() throws {
        try assertPreludeCompilesWithoutWarnings(through: "attention.h")
    }

    func testAttention() throws {
        // Up to 1024 tokens with head sizes 32, 64, 128, plus odd sizes and Sq != Sk.
        let cases: [(b: Int, sq: Int, sk: Int, h: Int, d: Int)] = [
            (1, 1024, 1024, 2, 32), (1, 1024, 1024, 1, 64), (1, 1024, 1024, 1, 128),
            (2, 77, 77, 3, 64), (1, 130, 33, 2, 40), (1, 1, 19, 2, 24), (1, 257, 257, 1, 128),
        ]
        let b = GraphBuilder(name: "attention")
        for (k, c) in cases.enumerated() {
            let q = b.input("q\(k)", .f32([c.b, c.sq, c.h, c.d]))
            let kk = b.input("k\(k)", .f32([c.b, c.sk, c.h, c.d])), v = b.input("v\(k)", .f32([c.b, c.sk, c.h, c.d]))
            b.output("y\(k)", b.attention(q, kk, v, scale: 1 / Double(c.d).squareRoot()))
        }
        let g = try b.finish()
        try assertCompiledMatchesInterpreter(Module(g), inputs: randomInputs(g))
    }

    /// `--compute bf16`: plain attention multiplies bf16 pairs (vdpbf16ps) for both products, so
    /// the scores see only the order of their f32 sums (inputs are bf16 values) and the output
    /// the rounding of P to bf16 (relative 2^-9 per probability): within 1e-2 relative L2 of the
    /// interpreter. Odd D and Sk (an unpaired d and key), several 256-key tiles, B = 2, Sq = 1;
    /// masked attention stays f32. The x86-64-v3 build (no AVX-512 BF16) runs the f32 kernel. A
    /// CPU with AMX runs heads of a multiple of 32 on the tile unit (the same roundings), others
    /// in f32.
    func testAttentionComputeBF16() throws {
        #if arch(x86_64)
        let cases: [(b: Int, sq: Int, sk: Int, h: Int, d: Int)] = [
            (1, 320, 320, 3, 64), (2, 77, 301, 3, 7), (1, 130, 513, 2, 33), (1, 1, 19, 2, 24), (1, 100, 257, 1, 128),
        ]
        let b = GraphBuilder(name: "attention_bf16")
        for (k, c) in cases.enumerated() {
            let q = b.input("q\(k)", .f32([c.b, c.sq, c.h, c.d]))
            let kk = b.input("k\(k)", .f32([c.b, c.sk, c.h, c.d])), v = b.input("v\(k)", .f32([c.b, c.sk, c.h, c.d]))
            b.output("y\(k)", b.attention(q, kk, v, scale: 1 / Double(c.d).squareRoot()))
        }
        let q = b.input("qc", .f32([1, 40, 2, 16]))
        b.output("causal", b.attention(q, q, q, scale: 0.25, causal: true))
        let g = try b.finish()
        let inputs = randomInputs(g, transform: { roundToStorage($0, .bf16) })
        for march in ["x86-64-v3", nil] {
            if march == nil, !ModelCompiler.cpuHasAVX512BF16() { throw XCTSkip("this CPU lacks avx512_bf16") }
            var program: CProgram?
            let r = try assertCompiledMatchesInterpreter(Module(g), inputs: inputs, tolerance: 1e-2,
                                                         configure: { $0.weightsDType = .auto; $0.compute = .bf16; $0.march = march },
                                                         inspect: { program = $0.program })
            XCTAssertEqual(program!.sources.map { $0.text.components(separatedBy: "af_attention_bf16(in").count - 1 }.reduce(0, +),
                           cases.count)
            XCTAssertLessThan(r["causal"]!.relativeL2, 1e-5, "masked attention stays f32")
            if march == nil { XCTAssertGreaterThan(r["y0"]!.relativeL2, 1e-5, "the dp (or AMX) path ran: P is rounded to bf16") }
            if march == nil, ModelCompiler.cpuHasAMXBF16() {   // on AMX, heads that are not a multiple of 32 run in f32
                XCTAssertLessThan(r["y1"]!.relativeL2, 1e-5, "D = 7 in f32")
            }
        }
        #endif
    }

    func testAttentionWithBiasAndCausalMask() throws {
        // T5-style additive bias [H, Sq, Sk], CLIP-style causal mask, both; Sq = 1; up to 1024
        // tokens with D = 64; Sq != Sk with a bias; sizes that are not multiples of the 64-query
        // and 256-key tiles.
        let cases: [(b: Int, sq: Int, sk: Int, h: Int, d: Int, bias: Bool, causal: Bool)] = [
            (1, 77, 77, 3, 64, false, true), (2, 130, 130, 2, 40, true, true), (1, 1, 19, 2, 24, true, false),
            (1, 1, 1, 2, 64, true, true), (1, 1024, 1024, 1, 64, true, true), (1, 1024, 1024, 2, 64, false, true),
            (1, 300, 257, 2, 64, true, false), (1, 513, 513, 1, 32, false, true), (2, 64, 64, 1, 16, true, false),
        ]
        let b = GraphBuilder(name: "attention_masked")
        for (k, c) in cases.enumerated() {
            let q = b.input("q\(k)", .f32([c.b, c.sq, c.h, c.d]))
            let kk = b.input("k\(k)", .f32([c.b, c.sk, c.h, c.d])), v = b.input("v\(k)", .f32([c.b, c.sk, c.h, c.d]))
            let bias = c.bias ? b.input("bias\(k)", .f32([c.h, c.sq, c.sk])) : nil
            b.output("y\(k)", b.attention(q, kk, v, scale: 1 / Double(c.d).squareRoot(), bias: bias, causal: c.causal))
        }
        let g = try b.finish()
        try assertCompiledMatchesInterpreter(Module(g), inputs: randomInputs(g))
    }
}
