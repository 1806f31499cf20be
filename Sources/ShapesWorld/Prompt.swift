// The prompt language of the shapes world (docs/shapes-world.md): word classes, the canonical
// text of a prompt, and a parser whose errors name the first unreadable word.

import IR

/// A prompt of the shapes world: one object (with optional size and position) or two objects
/// and a relation (no sizes, no positions). The initialisers enforce the grammar's rules, so a
/// `Prompt` value is always a legal prompt; `description` is its canonical text.
public struct Prompt: Hashable, CustomStringConvertible, Sendable {
    public enum Colour: String, CaseIterable, Sendable {
        case red, green, blue, yellow, purple, orange, cyan, white

        var index: Int { Colour.allCases.firstIndex(of: self)! }

        /// The exact fill colour (the spec's palette).
        public var rgb: (r: UInt8, g: UInt8, b: UInt8) {
            switch self {
            case .red: return (220, 40, 40)
            case .green: return (40, 180, 70)
            case .blue: return (50, 90, 230)
            case .yellow: return (235, 215, 50)
            case .purple: return (150, 60, 200)
            case .orange: return (245, 140, 30)
            case .cyan: return (40, 200, 210)
            case .white: return (235, 235, 235)
            }
        }
    }

    public enum Shape: String, CaseIterable, Sendable { case circle, square, triangle }

    public enum Size: String, CaseIterable, Sendable { case small, large }

    /// A cell set of the 3 × 3 grid: columns and rows 0, 1, 2 are [0, 21), [21, 43), [43, 64].
    public enum Position: CaseIterable, Sendable {
        case left, right, top, bottom, center, topLeft, topRight, bottomLeft, bottomRight

        public var phrase: String {
            switch self {
            case .left: return "on the left"
            case .right: return "on the right"
            case .top: return "at the top"
            case .bottom: return "at the bottom"
            case .center: return "in the center"
            case .topLeft: return "at the top left"
            case .topRight: return "at the top right"
            case .bottomLeft: return "at the bottom left"
            case .bottomRight: return "at the bottom right"
            }
        }

        /// Columns and rows the bounding-box centre may lie in.
        public var columns: [Int] {
            switch self {
            case .left, .topLeft, .bottomLeft: return [0]
            case .right, .topRight, .bottomRight: return [2]
            case .center: return [1]
            case .top, .bottom: return [0, 1, 2]
            }
        }
        public var rows: [Int] {
            switch self {
            case .top, .topLeft, .topRight: return [0]
            case .bottom, .bottomLeft, .bottomRight: return [2]
            case .center: return [1]
            case .left, .right: return [0, 1, 2]
            }
        }
        public func contains(column: Int, row: Int) -> Bool { columns.contains(column) && rows.contains(row) }
    }

    /// "A to the left of B": A's centre at least 16 px left of B's, vertical centres within 16 px.
    public enum Relation: CaseIterable, Sendable {
        case leftOf, rightOf, above, below

        public var phrase: String {
            switch self {
            case .leftOf: return "to the left of"
            case .rightOf: return "to the right of"
            case .above: return "above"
            case .below: return "below"
            }
        }

        /// Whether centres `a` and `b` satisfy "a <relation> b".
        public func holds(_ a: (x: Double, y: Double), _ b: (x: Double, y: Double)) -> Bool {
            switch self {
            case .leftOf: return b.x - a.x >= 16 && abs(a.y - b.y) <= 16
            case .rightOf: return a.x - b.x >= 16 && abs(a.y - b.y) <= 16
            case .above: return b.y - a.y >= 16 && abs(a.x - b.x) <= 16
            case .below: return a.y - b.y >= 16 && abs(a.x - b.x) <= 16
            }
        }
    }

    public struct Object: Hashable, CustomStringConvertible, Sendable {
        public var colour: Colour
        public var shape: Shape
        public var size: Size?
        public var position: Position?

        public init(_ colour: Colour, _ shape: Shape, size: Size? = nil, position: Position? = nil) {
            self.colour = colour
            self.shape = shape
            self.size = size
            self.position = position
        }

        /// "a [size] colour shape[ position]".
        public var description: String {
            var words = ["a"]
            if let size { words.append(size.rawValue) }
            words += [colour.rawValue, shape.rawValue]
            if let position { words.append(position.phrase) }
            return words.joined(separator: " ")
        }
    }

    /// One or two objects; `relation` is non-nil exactly when there are two.
    public let objects: [Object]
    public let relation: Relation?

    public init(_ object: Object) {
        objects = [object]
        relation = nil
    }

    /// A two-object prompt; throws when an object has a size or position, or both are the same.
    public init(_ first: Object, _ relation: Relation, _ second: Object) throws {
        for o in [first, second] where o.size != nil || o.position != nil {
            throw ArcError("two-object prompts have no sizes or positions: '\(o)'")
        }
        if first.colour == second.colour && first.shape == second.shape {
            throw ArcError("both objects are \(first.colour.rawValue) \(first.shape.rawValue)s; the two objects must differ in colour or shape")
        }
        objects = [first, second]
        self.relation = relation
    }

    /// The canonical text: lower case, single spaces, article "a".
    public var description: String {
        guard let relation else { return objects[0].description }
        return "\(objects[0]) \(relation.phrase) \(objects[1])"
    }

    /// The colour-shape pairs never seen in training (the spec's held-out set).
    public static let heldOutPairs: [(Colour, Shape)] = [(.green, .triangle), (.orange, .square)]

    public var containsHeldOutPair: Bool {
        objects.contains { o in Prompt.heldOutPairs.contains { $0.0 == o.colour && $0.1 == o.shape } }
    }

    /// Parses a prompt. Case and runs of whitespace are tolerated (any whitespace separates
    /// words, leading and trailing whitespace is ignored), so typed prompts work; `description`
    /// gives the canonical form. Errors are one line naming the first word (1-based) that could
    /// not be read and what was expected there.
    public static func parse(_ text: String) throws -> Prompt {
        var r = Reader(text: text)
        let first = try r.object(allowSize: true)
        // After the first shape: a position (one object), a relation (two objects), or the end.
        guard !r.atEnd else { return Prompt(first) }
        let sized = first.size != nil
        let phrases: [(words: [String], value: Either)] =
            Position.allCases.map { ($0.phrase.split(separator: " ").map(String.init), .position($0)) }
            + (sized ? [] : Relation.allCases.map { ($0.phrase.split(separator: " ").map(String.init), .relation($0)) })
        let hint = sized && Reader.relationStarts.contains(r.peek ?? "") ? " (two-object prompts have no sizes)" : ""
        let (value, matched, continuations) = try r.phrase(phrases, what: sized ? "a position" : "a position or relation",
                                                  endAllowed: true, hint: hint)
        switch value {
        case .position(let p):
            var one = first
            one.position = p
            let after = Reader.relationStarts.contains(r.peek ?? "") ? " (two-object prompts have no positions)" : ""
            try r.expectEnd(after: matched, continuations: continuations, hint: after)
            return Prompt(one)
        case .relation(let rel):
            let second = try r.object(allowSize: false)
            try r.expectEnd(after: "", continuations: [], hint: "")
            do { return try Prompt(first, rel, second) } catch let e as ArcError {
                throw ArcError("prompt \"\(text)\": \(e.message)")
            }
        }
    }

    private enum Either { case position(Position), relation(Relation) }

    /// A cursor over the words of a prompt that builds the error messages.
    private struct Reader {
        static let relationStarts: Set<String> = Set(Relation.allCases.map { String($0.phrase.split(separator: " ")[0]) })

        let text: String
        let words: [Substring]
        var i = 0

        init(text: String) {
            self.text = text
            words = text.split(whereSeparator: { $0.isWhitespace })
        }

        var atEnd: Bool { i >= words.count }
        var peek: String? { atEnd ? nil : words[i].lowercased() }

        /// "word N 'w' is not <what>; expected one of: …" or "prompt ended after 'w'; expected <what>: …".
        func error(_ what: String, _ expected: [String], endAllowed: Bool = false, hint: String = "") -> ArcError {
            let head = "prompt \"\(text)\": "
            if atEnd {
                let after = words.isEmpty ? "prompt is empty" : "prompt ended after '\(words[i - 1])'"
                return ArcError(head + "\(after); expected \(what): \(expected.joined(separator: ", "))\(hint)")
            }
            let list = expected.joined(separator: ", ") + (endAllowed ? ", or the end of the prompt" : "")
            return ArcError(head + "word \(i + 1) '\(words[i])' is not \(what); expected one of: \(list)\(hint)")
        }

        mutating func word<T: RawRepresentable & CaseIterable>(_ type: T.Type, _ what: String, hint: String = "") throws -> T
        where T.RawValue == String {
            guard let w = peek, let v = T(rawValue: w) else {
                throw error(what, T.allCases.map(\.rawValue), hint: hint)
            }
            i += 1
            return v
        }

        /// "a|an [size] colour shape".
        mutating func object(allowSize: Bool) throws -> Object {
            guard let a = peek, a == "a" || a == "an" else { throw error("an article", ["a", "an"]) }
            i += 1
            var size: Size?
            if allowSize {
                if let w = peek, let s = Size(rawValue: w) {
                    size = s
                    i += 1
                } else if peek.flatMap(Colour.init(rawValue:)) == nil {
                    throw error("a size or colour", Size.allCases.map(\.rawValue) + Colour.allCases.map(\.rawValue))
                }
            }
            let hint = !allowSize && Size(rawValue: peek ?? "") != nil ? " (two-object prompts have no sizes)" : ""
            let colour = try word(Colour.self, "a colour", hint: hint)
            let shape = try word(Shape.self, "a shape")
            return Object(colour, shape, size: size)
        }

        /// The longest phrase among `options` starting here. Returns it and the words that could
        /// have continued it (e.g. "left", "right" after "at the top"), for the next error message.
        mutating func phrase<T>(_ options: [(words: [String], value: T)], what: String, endAllowed: Bool,
                                hint: String) throws -> (value: T, matched: String, continuations: [String]) {
            var live = options
            var matched: [String] = []
            while true {
                let k = matched.count
                let complete = live.first { $0.words.count == k }
                var next: [String] = []
                for o in live where o.words.count > k && !next.contains(o.words[k]) { next.append(o.words[k]) }
                if let w = peek, next.contains(w) {
                    i += 1
                    matched.append(w)
                    live = live.filter { $0.words.count > k && $0.words[k] == w }
                    continue
                }
                if let complete { return (complete.value, matched.joined(separator: " "), next) }
                if k == 0 { throw error(what, next, endAllowed: endAllowed, hint: hint) }
                throw error("a continuation of '\(matched.joined(separator: " "))'", next)
            }
        }

        /// Nothing may follow a complete prompt except the words in `continuations`.
        func expectEnd(after phrase: String, continuations: [String], hint: String) throws {
            guard !atEnd else { return }
            if !continuations.isEmpty {
                throw error("a continuation of '\(phrase)'", continuations, endAllowed: true, hint: hint)
            }
            throw ArcError("prompt \"\(text)\": word \(i + 1) '\(words[i])' is after the end of the prompt; expected nothing after '\(words[i - 1])'\(hint)")
        }
    }
}
