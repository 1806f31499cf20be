// generate: run a compiled FLUX sampler from prompt embeddings and noise (or a seed) to latents.

import Foundation
import Codegen
import IR
import Runtime

let generateSpec = CommandSpec(
    name: "generate",
    usage: "generate --model OUT --embeddings E.safetensors (--noise N.safetensors | --seed S) --output-latents L.safetensors [--threads N]",
    summary: "Run a compiled FLUX sampler (arcflow compile --transformer …): prompt embeddings and noise in, final latents out.",
    options: [
        OptionSpec(names: ["--model"], value: "OUT", help: "compiled FLUX model folder"),
        OptionSpec(names: ["--embeddings"], value: "E.safetensors", help: "prompt_embeds [1, T, joint_attention_dim], pooled_prompt_embeds [1, pooled_projection_dim]"),
        OptionSpec(names: ["--noise"], value: "N.safetensors", help: "noise [1, C, H/8, W/8] (unpacked latent layout)"),
        OptionSpec(names: ["--seed"], value: "S", help: "draw the noise from N(0, 1) with this seed instead (reproducible on any machine)"),
        OptionSpec(names: ["--output-latents"], value: "L.safetensors", help: "where to write latents [1, C, H/8, W/8]"),
        threadsOption,
    ])

func generateCommand(_ argv: [String]) throws {
    let args = try parseArguments(argv, generateSpec, maxPositional: 0)
    let embeddingsPath = try args.required("--embeddings", generateSpec)
    let outPath = try args.required("--output-latents", generateSpec)
    if args.has("--noise") == args.has("--seed") { throw UsageError("give exactly one of --noise and --seed", generateSpec) }
    let model = try loadModel(args, generateSpec)
    let m = model.manifest
    guard m.model["family"] == "flux", let nfe = Int(m.model["nfe"] ?? "") else {
        throw ArcError("\(try args.required("--model", generateSpec)) is not a compiled FLUX sampler; use `arcflow run` for IR graphs")
    }
    func binding(_ name: String) -> Binding { model.executable.inputs.first { $0.name == name }! }

    /// Reads `name` from `file`, converting 16-bit floats to f32, with the expected shape in errors.
    func read(_ file: SafeTensorsStore, _ path: String, _ name: String) throws -> Tensor {
        let want = binding(name).type
        guard let t = file.type(of: name) else {
            throw ArcError("\(path) has no tensor '\(name)' (expected f32\(want.shape)); it has: \(file.names.joined(separator: ", "))")
        }
        guard t.shape == want.shape else {
            throw ArcError("\(path): '\(name)' has shape \(t.shape), expected \(want.shape) (the model was compiled for \(m.model["height"] ?? "?")×\(m.model["width"] ?? "?") pixels and \(m.model["text_tokens"] ?? "?") text tokens)")
        }
        let raw = try file.tensor(name)
        return Tensor(want, raw.data)
    }
    let embeddings = try SafeTensorsStore(path: embeddingsPath)
    var inputs = ["prompt_embeds": try read(embeddings, embeddingsPath, "prompt_embeds"),
                  "pooled_prompt_embeds": try read(embeddings, embeddingsPath, "pooled_prompt_embeds")]
    if let noisePath = args.value("--noise") {
        inputs["noise"] = try read(try SafeTensorsStore(path: noisePath), noisePath, "noise")
    } else {
        let seed = try args.int("--seed", generateSpec, min: 0)!
        var rng = SeededGenerator(seed: UInt64(seed))
        let t = binding("noise").type
        inputs["noise"] = Tensor(t, rng.normals(t.count))
    }
    stderrLine("arcflow: \(m.model["sampler"] ?? "") sampler, \(nfe) transformer evaluation\(nfe == 1 ? "" : "s")…")
    let start = monotonicSeconds()
    let out = try model.executable.run(inputs)
    let seconds = monotonicSeconds() - start
    let latents = out["latents"]!
    try writeSafeTensors([TensorRecord(name: "latents", dtype: .f32, shape: latents.shape, payload: .floats(latents.data))],
                         metadata: ["sampler": m.model["sampler"] ?? "", "nfe": String(nfe)], to: outPath)
    print(String(format: "generated %@ in %.3f s (%.3f s per NFE) → %@", "\(latents.type)", seconds, seconds / Double(nfe), outPath))
}
