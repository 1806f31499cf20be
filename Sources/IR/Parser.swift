// Reads the textual IR written by Printer.swift; errors carry line:column.

public enum Parser {
    /// Parses a module (one or more graphs). Does not verify types: call `Verifier.verify`.
    public static func parse(_ text: String) throws -> Module {
        var p = ParserState(text)
        var graphs: [Graph] = []
        while !p.atEnd {
            graphs.append(try p.graph())
        }
        if graphs.isEmpty { throw ArcError("1:1: expected 'graph @name {', found end of input") }
        var seen = Set<String>()
        for g in graphs where !seen.insert(g.name).inserted { throw ArcError("graph @\(g.name) defined twice") }
        return Module(graphs: graphs)
    }

    /// Parses and verifies.
    public static func parseVerified(_ text: String) throws -> Module {
        let m = try parse(text)
        for g in m.graphs { try Verifier.verify(g) }
        return m
    }

    /// Reads, parses and verifies an IR file; every error starts with the path (and line:column
    /// where there is one). A file that is not UTF-8 is "not IR text", not "cannot read".
    public static func parseFile(_ path: String) throws -> Module {
        let text = try readInputText(path, what: "IR text")
        do { return try parseVerified(text) } catch let e as ArcError {
            // Parse errors start with line:column; verifier errors with "line N:".
            throw ArcError(e.message.first?.isNumber == true ? "\(path):\(e.message)" : "\(path): \(e.message)")
        }
    }
}

private enum Token: Equatable {
    case ident(String)      // op names, keywords, attribute keys, dtypes
    case value(String)      // %name
    case symbol(String)     // @name
    case string(String)
    case number(String)
    case punct(Character)
    case end

    var text: String {
        switch self {
        case .ident(let s): return "'\(s)'"
        case .value(let s): return "'%\(s)'"
        case .symbol(let s): return "'@\(s)'"
        case .string(let s): return quoteString(s)
        case .number(let s): return "'\(s)'"
        case .punct(let c): return "'\(c)'"
        case .end: return "end of input"
        }
    }
}

private struct ParserState {
    let chars: [Unicode.Scalar]
    var pos = 0, line = 1, col = 1
    var tok: Token = .end
    var tokLine = 1, tokCol = 1

    init(_ text: String) {
        chars = Array(text.unicodeScalars)
        advanceToken()
    }

    var atEnd: Bool { tok == .end }

    func error(_ message: String) -> ArcError { ArcError("\(tokLine):\(tokCol): \(message)") }
    func unexpected(_ what: String) -> ArcError { error("expected \(what), found \(tok.text)") }

    // MARK: Lexer

    /// Never past the end: the string-escape paths skip two characters (`\u{`) without looking,
    /// and a file may end right after `\u` (found by libFuzzer: an index-out-of-range trap).
    private mutating func bump() {
        guard pos < chars.count else { return }
        if chars[pos] == "\n" { line += 1; col = 1 } else { col += 1 }
        pos += 1
    }

    private static func isNameChar(_ c: Unicode.Scalar) -> Bool {
        (c.isASCII && c.properties.isAlphabetic) || ("0"..."9").contains(c) || c == "_" || c == "."
    }

    mutating func advanceToken() {
        // Skip blanks and // comments.
        while pos < chars.count {
            if chars[pos].properties.isWhitespace { bump() }
            else if chars[pos] == "/" && pos + 1 < chars.count && chars[pos + 1] == "/" {
                while pos < chars.count && chars[pos] != "\n" { bump() }
            } else { break }
        }
        tokLine = line; tokCol = col
        guard pos < chars.count else { tok = .end; return }
        let c = chars[pos]
        func name() -> String {
            var s = ""
            while pos < chars.count && ParserState.isNameChar(chars[pos]) { s.unicodeScalars.append(chars[pos]); bump() }
            return s
        }
        switch c {
        case "%": bump(); tok = .value(name())
        case "@": bump(); tok = .symbol(name())
        case "\"":
            bump()
            var s = ""
            while pos < chars.count && chars[pos] != "\"" {
                if chars[pos] == "\n" { break }
                if chars[pos] == "\\" && pos + 1 < chars.count {
                    bump()
                    switch chars[pos] {
                    case "n": s += "\n"
                    case "t": s += "\t"
                    case "u":
                        // \u{hex}
                        bump(); bump()
                        var hex = ""
                        while pos < chars.count && chars[pos] != "}" { hex.unicodeScalars.append(chars[pos]); bump() }
                        if let v = UInt32(hex, radix: 16), let u = Unicode.Scalar(v) { s.unicodeScalars.append(u) }
                    default: s.unicodeScalars.append(chars[pos])
                    }
                    bump()
                } else { s.unicodeScalars.append(chars[pos]); bump() }
            }
            if pos >= chars.count || chars[pos] != "\"" { tok = .punct("\""); return }
            bump()
            tok = .string(s)
        case "-", "+", "0"..."9":
            var s = ""
            s.unicodeScalars.append(c); bump()
            if (c == "-" || c == "+") && pos < chars.count && chars[pos].properties.isAlphabetic {
                tok = .number(s + name()) // -inf
                return
            }
            while pos < chars.count, ("0"..."9").contains(chars[pos]) || chars[pos] == "." || chars[pos] == "e" || chars[pos] == "E"
                    || ((chars[pos] == "-" || chars[pos] == "+") && (s.last == "e" || s.last == "E")) {
                s.unicodeScalars.append(chars[pos]); bump()
            }
            tok = .number(s)
        case _ where ParserState.isNameChar(c):
            let n = name()
            tok = (n == "inf" || n == "nan") ? .number(n) : .ident(n)
        default:
            bump()
            tok = .punct(Character(c))
        }
    }

    mutating func expect(_ c: Character) throws {
        guard tok == .punct(c) else { throw unexpected("'\(c)'") }
        advanceToken()
    }

    mutating func accept(_ c: Character) -> Bool {
        if tok == .punct(c) { advanceToken(); return true }
        return false
    }

    mutating func int() throws -> Int {
        guard case .number(let s) = tok, let v = Int(s) else { throw unexpected("an integer") }
        advanceToken()
        return v
    }

    mutating func string() throws -> String {
        guard case .string(let s) = tok else { throw unexpected("a string") }
        advanceToken()
        return s
    }

    mutating func float32() throws -> Float {
        guard case .number(let s) = tok, let v = Float(s) else { throw unexpected("a number") }
        advanceToken()
        return v
    }

    // MARK: Grammar

    mutating func graph() throws -> Graph {
        guard tok == .ident("graph") else { throw unexpected("'graph'") }
        advanceToken()
        guard case .symbol(let name) = tok, !name.isEmpty else { throw unexpected("a graph name '@name'") }
        advanceToken()
        var attrs: [String: Attribute] = [:]
        if tok == .ident("attributes") {
            advanceToken()
            attrs = try attributeDict()
        }
        var g = try block(name: name)
        g.attributes = attrs
        return g
    }

    /// `{ statements }` with its own value scope.
    mutating func block(name: String) throws -> Graph {
        try expect("{")
        var g = Graph(name: name)
        var ids: [String: ValueID] = [:]
        while !accept("}") {
            if tok == .ident("output") {
                advanceToken()
                let oname = try string()
                g.outputs.append(GraphOutput(name: oname, value: try operand(ids)))
                continue
            }
            guard case .value(let vname) = tok, !vname.isEmpty else { throw unexpected("'%name = ...', 'output' or '}'") }
            let (l, c) = (tokLine, tokCol)
            advanceToken()
            if ids[vname] != nil { throw ArcError("\(l):\(c): value %\(vname) defined twice") }
            try expect("=")
            var node = try nodeBody(ids)
            node.line = l
            node.name = vname.allSatisfy(\.isNumber) ? nil : vname
            ids[vname] = g.nodes.count
            g.nodes.append(node)
        }
        return g
    }

    mutating func operand(_ ids: [String: ValueID]) throws -> ValueID {
        guard case .value(let n) = tok else { throw unexpected("a value '%name'") }
        guard let id = ids[n] else { throw error("use of undefined value %\(n)") }
        advanceToken()
        return id
    }

    mutating func nodeBody(_ ids: [String: ValueID]) throws -> Node {
        guard case .ident(let opName) = tok else { throw unexpected("an op name") }
        guard let op = OpCode(rawValue: opName) else { throw error("unknown op '\(opName)'") }
        advanceToken()
        var key: String?
        var constant: ConstantData?
        var operands: [ValueID] = []
        var attrs: [String: Attribute] = [:]
        switch op {
        case .input, .weight:
            key = try string()
        case .constant:
            if accept("[") {
                var data: [Float] = []
                if !accept("]") {
                    repeat { data.append(try float32()) } while accept(",")
                    try expect("]")
                }
                constant = .dense(data)
            } else {
                constant = .splat(try float32())
            }
        default:
            if case .value = tok {
                repeat { operands.append(try operand(ids)) } while accept(",")
            }
        }
        if tok == .punct("{") { attrs = try attributeDict() }
        try expect(":")
        let type = try tensorType()
        var region: Graph?
        if tok == .punct("{") {
            guard op == .fusion else { throw error("only a fusion has a region") }
            region = try block(name: "region")
        }
        return Node(op: op, operands: operands, type: type, attributes: attrs, key: key, constant: constant, region: region)
    }

    mutating func tensorType() throws -> TensorType {
        guard case .ident(let d) = tok, let dtype = DType(rawValue: d) else { throw unexpected("a type like f32[2,3]") }
        advanceToken()
        try expect("[")
        var shape: [Int] = []
        if !accept("]") {
            repeat { shape.append(try int()) } while accept(",")
            try expect("]")
        }
        return TensorType(dtype, shape)
    }

    mutating func attributeDict() throws -> [String: Attribute] {
        try expect("{")
        var attrs: [String: Attribute] = [:]
        if accept("}") { return attrs }
        repeat {
            guard case .ident(let k) = tok else { throw unexpected("an attribute name") }
            advanceToken()
            if attrs[k] != nil { throw error("attribute '\(k)' given twice") }
            attrs[k] = accept("=") ? try attributeValue() : .bool(true)
        } while accept(",")
        try expect("}")
        return attrs
    }

    mutating func attributeValue() throws -> Attribute {
        switch tok {
        case .number(let s):
            advanceToken()
            if let v = Int(s) { return .int(v) }
            if let v = Double(s) { return .float(v) }
            throw error("bad number '\(s)'")
        case .string(let s):
            advanceToken()
            return .string(s)
        case .ident("true"): advanceToken(); return .bool(true)
        case .ident("false"): advanceToken(); return .bool(false)
        case .punct("["):
            advanceToken()
            var v: [Int] = []
            if !accept("]") {
                repeat { v.append(try int()) } while accept(",")
                try expect("]")
            }
            return .ints(v)
        default:
            throw unexpected("an attribute value")
        }
    }
}
