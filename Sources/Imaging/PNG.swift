// 8-bit PNG encoding (RGB or grey) with tEXt chunks: the image files arcflow writes.

import Foundation

/// An 8-bit image in row-major order, `channels` interleaved bytes per pixel (1 grey, 3 RGB).
public struct Image8: Equatable {
    public var width: Int
    public var height: Int
    public var channels: Int
    public var pixels: [UInt8]

    public init(width: Int, height: Int, channels: Int = 3, pixels: [UInt8]? = nil) {
        precondition(channels == 1 || channels == 3, "PNG images here are grey or RGB")
        self.width = width
        self.height = height
        self.channels = channels
        self.pixels = pixels ?? [UInt8](repeating: 0, count: width * height * channels)
        precondition(self.pixels.count == width * height * channels, "pixel count does not match \(width)×\(height)×\(channels)")
    }

    public subscript(x: Int, y: Int, c: Int) -> UInt8 {
        get { pixels[(y * width + x) * channels + c] }
        set { pixels[(y * width + x) * channels + c] = newValue }
    }
}

public enum PNG {
    /// The PNG file bytes. `text` becomes tEXt chunks in the given order (keys are Latin-1
    /// keywords such as "parameters", the A1111 convention other tools read). Pixel rows use
    /// the Sub filter and are deflated with fixed-Huffman LZ77 (small, dependency-free).
    public static func encode(_ image: Image8, text: [(String, String)] = []) -> Data {
        var out = Data([0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A])
        var header = Data()
        header.appendBigEndian(UInt32(image.width))
        header.appendBigEndian(UInt32(image.height))
        header.append(contentsOf: [8, image.channels == 3 ? 2 : 0, 0, 0, 0])
        appendChunk(&out, "IHDR", header)
        for (key, value) in text {
            var d = Data(latin1(key).prefix(79))
            d.append(0)
            d.append(contentsOf: latin1(value))
            appendChunk(&out, "tEXt", d)
        }
        // Filter type 1 (Sub) on every row: neighbouring pixels are similar, so differences compress.
        let stride = image.width * image.channels
        var raw = [UInt8]()
        raw.reserveCapacity((stride + 1) * image.height)
        for y in 0..<image.height {
            raw.append(1)
            let row = y * stride
            for i in 0..<stride {
                let left = i >= image.channels ? image.pixels[row + i - image.channels] : 0
                raw.append(image.pixels[row + i] &- left)
            }
        }
        appendChunk(&out, "IDAT", Data(zlibCompress(raw)))
        appendChunk(&out, "IEND", Data())
        return out
    }

    /// Text chunks are Latin-1; characters outside it become '?' (tEXt cannot hold them).
    private static func latin1(_ s: String) -> [UInt8] {
        s.unicodeScalars.map { $0.value < 256 && $0.value != 0 ? UInt8($0.value) : UInt8(ascii: "?") }
    }

    private static func appendChunk(_ out: inout Data, _ type: String, _ body: Data) {
        out.appendBigEndian(UInt32(body.count))
        var typed = Data(type.utf8)
        typed.append(body)
        out.append(typed)
        out.appendBigEndian(crc32(typed))
    }

    static let crcTable: [UInt32] = (0..<256).map { n -> UInt32 in
        var c = UInt32(n)
        for _ in 0..<8 { c = c & 1 != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
        return c
    }

    public static func crc32(_ data: Data) -> UInt32 {
        var c: UInt32 = 0xFFFF_FFFF
        for b in data { c = crcTable[Int((c ^ UInt32(b)) & 0xFF)] ^ (c >> 8) }
        return c ^ 0xFFFF_FFFF
    }

    static func adler32(_ data: [UInt8]) -> UInt32 {
        var a: UInt32 = 1, b: UInt32 = 0
        var i = 0
        while i < data.count {
            let end = min(i + 5552, data.count)   // largest run before the sums can overflow
            while i < end { a += UInt32(data[i]); b += a; i += 1 }
            a %= 65521
            b %= 65521
        }
        return b << 16 | a
    }

    /// zlib stream of one final fixed-Huffman deflate block with greedy LZ77 (hash of 3 bytes,
    /// 32 KiB window). Not the smallest output, but a few times smaller than stored blocks.
    public static func zlibCompress(_ data: [UInt8]) -> [UInt8] {
        var w = BitWriter()
        w.bytes = [0x78, 0x01]
        w.write(1, 1)   // BFINAL
        w.write(1, 2)   // BTYPE = fixed Huffman
        var head = [Int](repeating: -1, count: 1 << 15)
        var prev = [Int](repeating: -1, count: data.count)
        var i = 0
        func hash(_ p: Int) -> Int { (Int(data[p]) << 10 ^ Int(data[p + 1]) << 5 ^ Int(data[p + 2])) & 0x7FFF }
        func insert(_ p: Int) {
            guard p + 2 < data.count else { return }
            let h = hash(p)
            prev[p] = head[h]
            head[h] = p
        }
        while i < data.count {
            var bestLen = 0, bestDist = 0
            if i + 2 < data.count {
                var cand = head[hash(i)], tries = 32
                while cand >= 0 && i - cand <= 32768 && tries > 0 {
                    var l = 0
                    while l < 258 && i + l < data.count && data[cand + l] == data[i + l] { l += 1 }
                    if l > bestLen { bestLen = l; bestDist = i - cand; if l == 258 { break } }
                    cand = prev[cand]
                    tries -= 1
                }
            }
            if bestLen >= 3 {
                w.writeLength(bestLen)
                w.writeDistance(bestDist)
                for p in i..<(i + bestLen) { insert(p) }
                i += bestLen
            } else {
                w.writeLiteral(Int(data[i]))
                insert(i)
                i += 1
            }
        }
        w.writeLiteral(256)  // end of block
        w.flush()
        let a = adler32(data)
        w.bytes += [UInt8(a >> 24), UInt8(a >> 16 & 0xFF), UInt8(a >> 8 & 0xFF), UInt8(a & 0xFF)]
        return w.bytes
    }
}

/// Deflate's bit order: values LSB first, Huffman codes MSB first.
private struct BitWriter {
    var bytes: [UInt8] = []
    var acc: UInt64 = 0
    var count = 0

    mutating func write(_ value: Int, _ bits: Int) {
        acc |= UInt64(value) << UInt64(count)
        count += bits
        while count >= 8 { bytes.append(UInt8(acc & 0xFF)); acc >>= 8; count -= 8 }
    }

    mutating func writeCode(_ code: Int, _ bits: Int) {
        var r = 0
        for k in 0..<bits where code >> k & 1 != 0 { r |= 1 << (bits - 1 - k) }
        write(r, bits)
    }

    /// Fixed literal/length codes (RFC 1951 §3.2.6).
    mutating func writeLiteral(_ v: Int) {
        switch v {
        case 0...143: writeCode(0x30 + v, 8)
        case 144...255: writeCode(0x190 + v - 144, 9)
        case 256...279: writeCode(v - 256, 7)
        default: writeCode(0xC0 + v - 280, 8)
        }
    }

    static let lengthBase = [3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258]
    static let lengthExtra = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0]
    static let distBase = [1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577]
    static let distExtra = [0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13]

    mutating func writeLength(_ len: Int) {
        var k = BitWriter.lengthBase.count - 1
        while BitWriter.lengthBase[k] > len { k -= 1 }
        writeLiteral(257 + k)
        write(len - BitWriter.lengthBase[k], BitWriter.lengthExtra[k])
    }

    mutating func writeDistance(_ d: Int) {
        var k = BitWriter.distBase.count - 1
        while BitWriter.distBase[k] > d { k -= 1 }
        writeCode(k, 5)
        write(d - BitWriter.distBase[k], BitWriter.distExtra[k])
    }

    mutating func flush() { if count > 0 { bytes.append(UInt8(acc & 0xFF)); acc = 0; count = 0 } }
}

extension Data {
    mutating func appendBigEndian(_ v: UInt32) {
        append(contentsOf: [UInt8(v >> 24), UInt8(v >> 16 & 0xFF), UInt8(v >> 8 & 0xFF), UInt8(v & 0xFF)])
    }
}
