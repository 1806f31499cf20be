// sentencepiece's compiled normalizer (`precompiled_charsmap`), applied as HF tokenizers applies it.
import Foundation

/// The blob is a little-endian u32 byte size of a darts-clone double-array trie, the trie's u32
/// units, then a pool of NUL-terminated replacement strings the trie's values point into.
/// We read it as stored instead of approximating it with NFKC: nmt_nfkc also maps whitespace and
/// control characters, and a model's charsmap may carry custom rules.
public struct Precompiled {
    private let units: [UInt32]
    private let pool: [UInt8]

    public init?(base64: String) {
        guard let data = Data(base64Encoded: base64) else { return nil }
        let bytes = [UInt8](data)
        guard bytes.count >= 4 else { return nil }
        let trieBytes = Int(UInt32(bytes[0]) | UInt32(bytes[1]) << 8 | UInt32(bytes[2]) << 16 | UInt32(bytes[3]) << 24)
        guard trieBytes % 4 == 0, 4 + trieBytes <= bytes.count else { return nil }
        units = stride(from: 4, to: 4 + trieBytes, by: 4).map {
            UInt32(bytes[$0]) | UInt32(bytes[$0 + 1]) << 8 | UInt32(bytes[$0 + 2]) << 16 | UInt32(bytes[$0 + 3]) << 24
        }
        pool = Array(bytes[(4 + trieBytes)...])
        guard !units.isEmpty, String(bytes: pool, encoding: .utf8) != nil else { return nil }
    }

    /// The replacement of the *shortest* key that prefixes `key` (spm_precompiled's `transform`
    /// takes the first common-prefix result), or nil. Darts-clone unit layout: bit 8 = has leaf,
    /// label = low byte (and bit 31), offset = bits 10… shifted by 8 more when bit 9 is set.
    private func transform(_ key: ArraySlice<UInt8>) -> [UInt8]? {
        func offset(_ u: UInt32) -> Int { Int((u >> 10) << ((u & (1 << 9)) >> 6)) }
        var pos = offset(units[0])
        for c in key {
            if c == 0 { break }
            pos ^= Int(c)
            guard pos < units.count else { return nil }
            let unit = units[pos]
            if unit & ((1 << 31) | 0xFF) != UInt32(c) { return nil }
            pos ^= offset(unit)
            guard pos < units.count else { return nil }
            if (unit >> 8) & 1 == 1 {
                let start = Int(units[pos] & ((1 << 31) - 1))
                guard start <= pool.count else { return nil }
                let end = pool[start...].firstIndex(of: 0) ?? pool.count
                return Array(pool[start..<end])
            }
        }
        return nil
    }

    /// HF's Precompiled normalizer: per extended grapheme cluster, the whole cluster's mapping
    /// when it is shorter than 6 UTF-8 bytes and has one; otherwise each character's mapping, or
    /// the character itself.
    public func normalize(_ text: String) -> String {
        var out: [UInt8] = []
        out.reserveCapacity(text.utf8.count)
        for grapheme in text {
            let bytes = Array(grapheme.utf8)
            if bytes.count < 6, let norm = transform(bytes[...]) { out += norm; continue }
            for scalar in grapheme.unicodeScalars {
                let part = Array(String(scalar).utf8)
                out += transform(part[...]) ?? part
            }
        }
        return String(decoding: out, as: UTF8.self)
    }
}
