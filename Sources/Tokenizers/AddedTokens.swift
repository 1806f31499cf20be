// Splitting text on added/special tokens before the model sees it (both HF tokenizer kinds do).

/// A text piece for the model, or an added token whose id is already known.
enum Piece: Equatable { case text(String), token(Int) }

/// The added tokens of a tokenizer (`<|endoftext|>`, `</s>`, `<extra_id_0>`…): HF matches them in
/// the raw text first, leftmost and then longest, so a prompt that spells one gets its id directly
/// instead of going through the model.
struct AddedTokens {
    struct Token { let content: [Unicode.Scalar]; let id: Int; let lstrip: Bool; let rstrip: Bool; let singleWord: Bool }
    private var byFirst: [Unicode.Scalar: [Token]] = [:]

    mutating func add(_ content: String, id: Int, lstrip: Bool = false, rstrip: Bool = false, singleWord: Bool = false) {
        let scalars = Array(content.unicodeScalars)
        guard let first = scalars.first else { return }
        byFirst[first, default: []].removeAll { $0.content == scalars }
        byFirst[first, default: []].append(Token(content: scalars, id: id, lstrip: lstrip, rstrip: rstrip, singleWord: singleWord))
    }

    /// A word character as tokenizers' `single_word` test sees it (the regex class \w: letters,
    /// marks, decimal digits, connector punctuation, joiners), checked by hand against tokenizers.
    static func isWordCharacter(_ c: Unicode.Scalar) -> Bool {
        let p = c.properties
        if p.isAlphabetic || p.isJoinControl { return true }
        switch p.generalCategory {
        case .nonspacingMark, .spacingMark, .enclosingMark, .decimalNumber, .connectorPunctuation: return true
        default: return false
        }
    }

    /// Pieces in order; `lstrip`/`rstrip` tokens eat the whitespace beside them, empty texts vanish.
    /// A `single_word` token's match counts only between non-word characters; otherwise it stays
    /// text and the search goes on after it (tokenizers drops the match, it does not try another).
    func split(_ text: String) -> [Piece] {
        if byFirst.isEmpty { return text.isEmpty ? [] : [.text(text)] }
        let s = Array(text.unicodeScalars)
        var pieces: [Piece] = [], start = 0, i = 0
        func flush(_ end: Int) {
            if end > start { pieces.append(.text(String(String.UnicodeScalarView(s[start..<end])))) }
        }
        while i < s.count {
            var best: Token?
            for t in byFirst[s[i]] ?? [] where t.content.count > (best?.content.count ?? 0)
                && i + t.content.count <= s.count && s[i..<(i + t.content.count)].elementsEqual(t.content) {
                best = t
            }
            guard let t = best else { i += 1; continue }
            let end0 = i + t.content.count
            if t.singleWord && ((i > 0 && Self.isWordCharacter(s[i - 1])) || (end0 < s.count && Self.isWordCharacter(s[end0]))) {
                i = end0
                continue
            }
            var end = i
            if t.lstrip { while end > start && s[end - 1].properties.isWhitespace { end -= 1 } }
            flush(end)
            pieces.append(.token(t.id))
            i += t.content.count
            if t.rstrip { while i < s.count && s[i].properties.isWhitespace { i += 1 } }
            start = i
        }
        flush(s.count)
        return pieces
    }
}
