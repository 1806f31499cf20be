// tokenize, encode, decode: one stage of a compiled pipeline at a time, for inspection and scripts.

import Foundation
import Generation
import IR
import Imaging
import Runtime

let tokenizeSpec = CommandSpec(
    name: "tokenize", usage: "tokenize --model OUT --prompt TEXT",
    summary: "Print the padded CLIP and T5 token ids of a prompt as JSON: {\"clip\": [...], \"t5\": [...]}.",
    options: [
        OptionSpec(names: ["--model"], value: "OUT", help: "compiled pipeline folder"),
        OptionSpec(names: ["--prompt"], value: "TEXT", help: "the prompt (may be empty)"),
    ])

func tokenizeCommand(_ argv: [String]) throws {
    let args = try parseArguments(argv, tokenizeSpec, maxPositional: 0)
    let pipeline = try loadPipeline(args, tokenizeSpec)
    let t = try pipeline.tokenize(try args.required("--prompt", tokenizeSpec))
    if let w = t.world { return print("{\"world\": [\(w.map(String.init).joined(separator: ", "))]}") }
    print("{\"clip\": [\(t.clip.map(String.init).joined(separator: ", "))], \"t5\": [\(t.t5.map(String.init).joined(separator: ", "))]}")
}

let encodeSpec = CommandSpec(
    name: "encode", usage: "encode --model OUT --prompt TEXT -o E.safetensors [--threads N]",
    summary: "Run the text encoders: write prompt_embeds and pooled_prompt_embeds (what generate --embeddings takes).",
    options: [
        OptionSpec(names: ["--model"], value: "OUT", help: "compiled pipeline folder"),
        OptionSpec(names: ["--prompt"], value: "TEXT", help: "the prompt (may be empty)"),
        OptionSpec(names: ["-o", "--output"], value: "E.safetensors", help: "where to write the embeddings"),
        threadsOption,
    ])

func encodeCommand(_ argv: [String]) throws {
    let args = try parseArguments(argv, encodeSpec, maxPositional: 0)
    let out = try args.required("--output", encodeSpec)
    let pipeline = try loadPipeline(args, encodeSpec)
    let e = try pipeline.encode(try args.required("--prompt", encodeSpec))
    try writeSafeTensors([
        TensorRecord(name: "prompt_embeds", dtype: .f32, shape: e.promptEmbeds.shape, payload: .floats(e.promptEmbeds.data)),
        TensorRecord(name: "pooled_prompt_embeds", dtype: .f32, shape: e.pooledPromptEmbeds.shape, payload: .floats(e.pooledPromptEmbeds.data)),
    ], to: out)
    print("wrote prompt_embeds \(e.promptEmbeds.type) and pooled_prompt_embeds \(e.pooledPromptEmbeds.type) to \(out)")
}

let decodeSpec = CommandSpec(
    name: "decode", usage: "decode --model OUT --latents L.safetensors -o IMG.png [--threads N]",
    summary: "Run the VAE decoder on latents [1, C, H/8, W/8] (sampler space) and write an 8-bit RGB PNG.",
    options: [
        OptionSpec(names: ["--model"], value: "OUT", help: "compiled pipeline folder"),
        OptionSpec(names: ["--latents"], value: "L.safetensors", help: "tensor 'latents' [1, C, H/8, W/8]"),
        OptionSpec(names: ["-o", "--output"], value: "IMG.png", help: "PNG to write"),
        threadsOption,
    ])

func decodeCommand(_ argv: [String]) throws {
    let args = try parseArguments(argv, decodeSpec, maxPositional: 0)
    let out = try args.required("--output", decodeSpec)
    let path = try args.required("--latents", decodeSpec)
    try checkWritableParent(out)
    let pipeline = try loadPipeline(args, decodeSpec)
    let m = pipeline.manifest
    let latents = try readTensor(path, "latents", want: pipeline.noiseType, hint: "the pipeline was compiled for \(m.width)×\(m.height) pixels (width × height)")
    let image = try pipeline.decode(latents)
    try writeAtomically(PNG.encode(image, text: [("parameters", "decoded from \((path as NSString).lastPathComponent), Size: \(m.width)x\(m.height), Model hash: \(m.modelHash.prefix(10)), Generator: arcflow")]), to: out)
    print("wrote \(out) (\(image.width)×\(image.height))")
}

/// The compiled pipeline named by `--model`, with `--threads` (when the command has it) applied.
func loadPipeline(_ args: ParsedArguments, _ spec: CommandSpec) throws -> CompiledPipeline {
    try CompiledPipeline(folder: try args.required("--model", spec), threads: try threadCount(args, spec))
}
