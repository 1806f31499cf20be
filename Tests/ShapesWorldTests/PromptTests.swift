// The prompt grammar (canonical text, parse errors), the training-prompt sampler and the tokenizer.

import IR
import XCTest
@testable import ShapesWorld

final class PromptTests: XCTestCase {
    func testCanonicalFormsParseAndPrint() throws {
        for text in ["a red circle", "a small blue square at the top left", "a large yellow triangle on the right",
                     "a green circle to the left of a white square", "a cyan triangle below a cyan circle",
                     "a purple square in the center", "an orange circle at the bottom"] {
            let p = try Prompt.parse(text)
            XCTAssertEqual(p.description, text.replacingOccurrences(of: "an orange", with: "a orange"))
        }
        let p = try Prompt.parse("a small blue square at the top left")
        XCTAssertEqual(p.objects, [Prompt.Object(.blue, .square, size: .small, position: .topLeft)])
        XCTAssertNil(p.relation)
        let q = try Prompt.parse("a green circle to the left of a white square")
        XCTAssertEqual(q.objects, [Prompt.Object(.green, .circle), Prompt.Object(.white, .square)])
        XCTAssertEqual(q.relation, .leftOf)
    }

    func testCaseAndWhitespaceAreTolerated() throws {
        XCTAssertEqual(try Prompt.parse("  An RED \t Circle   at  the TOP\n").description, "a red circle at the top")
    }

    func testEverySampledPromptRoundTrips() throws {
        var s = PromptSampler(seed: 5, includeHeldOut: true)
        for _ in 0..<2000 {
            let p = s.next()
            XCTAssertEqual(try Prompt.parse(p.description), p)
        }
    }

    private func message(_ text: String) -> String {
        do {
            _ = try Prompt.parse(text)
            return "no error"
        } catch let e as ArcError {
            return e.message
        } catch {
            return "\(error)"
        }
    }

    func testErrorsNameTheFirstUnreadableWordAndWhatWasExpected() {
        let colours = "red, green, blue, yellow, purple, orange, cyan, white"
        let cases: [(String, String)] = [
            // unknown word
            ("a red hexagon", "word 3 'hexagon' is not a shape; expected one of: circle, square, triangle"),
            ("a red circle near a blue square",
             "word 4 'near' is not a position or relation; expected one of: on, at, in, to, above, below, or the end of the prompt"),
            ("a red circle at the middle", "word 6 'middle' is not a continuation of 'at the'; expected one of: top, bottom"),
            ("a red circle at the top centre",
             "word 7 'centre' is not a continuation of 'at the top'; expected one of: left, right, or the end of the prompt"),
            // wrong order
            ("a circle red", "word 2 'circle' is not a size or colour; expected one of: small, large, \(colours)"),
            ("red circle", "word 1 'red' is not an article; expected one of: a, an"),
            ("a red small circle", "word 3 'small' is not a shape; expected one of: circle, square, triangle"),
            // missing shape, ended early
            ("a red", "prompt ended after 'red'; expected a shape: circle, square, triangle"),
            ("a red on the left", "word 3 'on' is not a shape; expected one of: circle, square, triangle"),
            ("a", "prompt ended after 'a'; expected a size or colour: small, large, \(colours)"),
            ("a red circle on the", "prompt ended after 'the'; expected a continuation of 'on the': left, right"),
            ("a red circle above a", "prompt ended after 'a'; expected a colour: \(colours)"),
            ("", "prompt is empty; expected an article: a, an"),
            // forms mixed up
            ("a small red circle to the left of a blue square",
             "word 5 'to' is not a position; expected one of: on, at, in, or the end of the prompt (two-object prompts have no sizes)"),
            ("a red circle to the left of a small blue square",
             "word 9 'small' is not a colour; expected one of: \(colours) (two-object prompts have no sizes)"),
            ("a red circle on the left above a blue square",
             "word 7 'above' is after the end of the prompt; expected nothing after 'left' (two-object prompts have no positions)"),
            ("a red circle above a blue square please", "word 8 'please' is after the end of the prompt; expected nothing after 'square'"),
            // identical objects
            ("a red circle above a red circle", "both objects are red circles; the two objects must differ in colour or shape"),
        ]
        for (text, expected) in cases {
            XCTAssertEqual(message(text), "prompt \"\(text)\": \(expected)")
        }
        // Same colour or same shape alone is fine.
        XCTAssertNoThrow(try Prompt.parse("a red circle above a red square"))
        XCTAssertNoThrow(try Prompt.parse("a red circle above a blue circle"))
    }

    /// Shape weights: equal ones draw what the uniform pick draws; (1, 1, 2) about half
    /// triangles (before held-out pairs are redrawn); a zero weight never draws its shape.
    func testSamplerShapeWeights() {
        var plain = PromptSampler(seed: 7), equal = PromptSampler(seed: 7)
        equal.shapeWeights = [1, 1, 1]
        XCTAssertEqual(plain.next(2000), equal.next(2000))
        var skewed = PromptSampler(seed: 7, includeHeldOut: true)
        skewed.shapeWeights = [1, 1, 2]
        var counts = [Prompt.Shape: Int]()
        for p in skewed.next(5000) { for o in p.objects { counts[o.shape, default: 0] += 1 } }
        let total = Double(counts.values.reduce(0, +))
        XCTAssertEqual(Double(counts[.triangle] ?? 0) / total, 0.5, accuracy: 0.03, "\(counts)")
        XCTAssertEqual(Double(counts[.circle] ?? 0) / total, 0.25, accuracy: 0.03, "\(counts)")
        var onlyTriangles = PromptSampler(seed: 7)
        onlyTriangles.shapeWeights = [0, 0, 1]
        onlyTriangles.twoObjects = 0
        for p in onlyTriangles.next(500) {
            XCTAssertEqual(p.objects[0].shape, .triangle, "\(p)")
            XCTAssertNotEqual(p.objects[0].colour, .green, "\(p)")
        }
    }

    func testSamplerNeverDrawsHeldOutPairsUnlessAsked() {
        var s = PromptSampler(seed: 1)
        var words = Set<String>()
        var forms = [0, 0]
        var sized = 0, placed = 0
        for _ in 0..<10_000 {
            let p = s.next()
            for o in p.objects {
                XCTAssertFalse(o.colour == .green && o.shape == .triangle, "\(p)")
                XCTAssertFalse(o.colour == .orange && o.shape == .square, "\(p)")
                if o.size != nil { sized += 1 }
                if o.position != nil { placed += 1 }
            }
            forms[p.objects.count - 1] += 1
            words.formUnion(p.description.split(separator: " ").map(String.init))
        }
        // The whole grammar is drawn: every word, both forms, with and without size and position.
        XCTAssertEqual(words, Set(WorldVocabulary.words.dropFirst(3)))
        XCTAssertGreaterThan(forms[0], 4000)
        XCTAssertGreaterThan(forms[1], 3000)
        XCTAssertGreaterThan(sized, 2000)
        XCTAssertGreaterThan(placed, 2500)
        XCTAssertLessThan(sized + placed, 2 * forms[0])

        var all = PromptSampler(seed: 1, includeHeldOut: true)
        let heldOut = (0..<10_000).filter { _ in all.next().containsHeldOutPair }.count
        XCTAssertGreaterThan(heldOut, 500)
    }

    func testVocabularyEncodesEveryPromptToFixedLength() throws {
        XCTAssertEqual(WorldVocabulary.words[0...3], ["<pad>", "<bos>", "<eos>", "a"])
        XCTAssertEqual(Set(WorldVocabulary.words).count, WorldVocabulary.count)
        XCTAssertEqual(WorldVocabulary.count, 30)
        XCTAssertEqual(WorldVocabulary.length, 12)
        let longest = try WorldVocabulary.encode("a green circle to the left of a white square")
        XCTAssertEqual(longest.count, 12)
        XCTAssertEqual(longest.first, WorldVocabulary.bos)
        XCTAssertEqual(longest.last, WorldVocabulary.eos)
        XCTAssertEqual(try WorldVocabulary.encode("An RED circle"), try WorldVocabulary.encode("a red circle"))
        XCTAssertEqual(try WorldVocabulary.encode("a red circle"),
                       [1, 3, WorldVocabulary.id("red")!, WorldVocabulary.id("circle")!, 2, 0, 0, 0, 0, 0, 0, 0])
        var s = PromptSampler(seed: 9, includeHeldOut: true)
        for _ in 0..<1000 {
            let p = s.next()
            let ids = WorldVocabulary.encode(p)
            XCTAssertEqual(ids.count, WorldVocabulary.length)
            XCTAssertEqual(WorldVocabulary.decode(ids), p.description)
        }
        XCTAssertThrowsError(try WorldVocabulary.encode("a red hexagon"))
    }
}
