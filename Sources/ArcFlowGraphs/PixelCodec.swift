// The fixed bijection between an RGB image and the "latent" a FLUX graph works on, for models in
// pixel space (the embedded default): encoding is a space-to-depth, decoding its inverse.

import IR

/// Image [3, S, S] ↔ latent [3p²/4, 2g, 2g] (g = S/p tokens a side), chosen so that FLUX's
/// `pack` of the latent (2×2 sub-positions, packed channel c·4 + qy·2 + qx) is exactly the
/// patchify of the image into p×p patches (token gy·g + gx, channel ch·p² + py·p + px).
///
/// Matching the packed channel k = 4c + 2qy + qx with k = ch·p² + py·p + px (p a multiple of 4)
/// gives qx = px mod 2, qy = ⌊px/2⌋ mod 2 and c = ch·p²/4 + py·p/4 + ⌊px/4⌋: latent
/// [c, 2gy + qy, 2gx + qx] = image [ch, p·gy + py, p·gx + px]. As a view of the image
/// [3, g, p, g, p/4, 2, 2] (axes ch, gy, py, gx, a, qy, qx, with px = 4a + 2qy + qx) the latent is
/// the transpose to (ch, py, a, gy, qy, gx, qx).
public struct PixelCodec: Equatable {
    public let side: Int, patch: Int

    public init(side: Int, patch: Int) throws {
        guard patch > 0, patch % 4 == 0, side > 0, side % patch == 0 else {
            throw ArcError("pixel codec: patch \(patch) must be a positive multiple of 4 dividing the image side \(side)")
        }
        self.side = side
        self.patch = patch
    }

    public var grid: Int { side / patch }
    public var latentChannels: Int { 3 * patch * patch / 4 }
    /// The latent shape [1, C, H', W'] of one image.
    public var latentShape: [Int] { [1, latentChannels, 2 * grid, 2 * grid] }
    public var imageShape: [Int] { [1, 3, side, side] }

    /// The image axes (ch, gy, py, gx, a, qy, qx) after a leading batch axis.
    var imageView: [Int] { [1, 3, grid, patch, grid, patch / 4, 2, 2] }
    /// image view → latent view (batch, ch, py, a, gy, qy, gx, qx).
    static let toLatent = [0, 1, 3, 5, 2, 6, 4, 7]
    /// The inverse permutation.
    static let toImage = [0, 1, 4, 2, 6, 3, 5, 7]

    public func encode(_ b: GraphBuilder, _ image: Value) -> Value {
        image.reshaped(imageView).transposed(Self.toLatent).reshaped(latentShape)
    }

    public func decode(_ b: GraphBuilder, _ latents: Value) -> Value {
        let g = grid, p = patch
        return latents.reshaped([1, 3, p, p / 4, g, 2, g, 2]).transposed(Self.toImage).reshaped(imageShape)
    }

    /// The decoder stage of a pixel-space pipeline: input `latents` [1, C, H', W'], output
    /// `image` [1, 3, S, S] in about [−1, 1] (clamped when converted to 8 bits).
    public func decoderGraph() throws -> Graph {
        let b = GraphBuilder(name: "pixel_decoder")
        b.output("image", decode(b, b.input("latents", .f32(latentShape))))
        return try b.finish()
    }

    /// Index of latent element (c, y, x) in the image, flat [3, S, S]: the map in plain Swift,
    /// for tensors outside a graph.
    public func imageIndex(c: Int, y: Int, x: Int) -> Int {
        let p = patch, (a, rest) = (c % (p / 4), c / (p / 4))
        let (py, ch) = (rest % p, rest / p)
        let (gy, qy, gx, qx) = (y / 2, y % 2, x / 2, x % 2)
        return (ch * side + gy * p + py) * side + gx * p + 4 * a + 2 * qy + qx
    }

    /// Image [1, 3, S, S] → latent [1, C, H', W'].
    public func encode(_ image: [Float]) -> [Float] {
        let (c, h) = (latentChannels, 2 * grid)
        var out = [Float](repeating: 0, count: c * h * h)
        for ci in 0..<c { for y in 0..<h { for x in 0..<h { out[(ci * h + y) * h + x] = image[imageIndex(c: ci, y: y, x: x)] } } }
        return out
    }

    /// Latent [1, C, H', W'] → image [1, 3, S, S].
    public func decode(_ latents: [Float]) -> [Float] {
        let (c, h) = (latentChannels, 2 * grid)
        var out = [Float](repeating: 0, count: 3 * side * side)
        for ci in 0..<c { for y in 0..<h { for x in 0..<h { out[imageIndex(c: ci, y: y, x: x)] = latents[(ci * h + y) * h + x] } } }
        return out
    }
}
