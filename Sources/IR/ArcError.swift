// The one error type of the project: a single line a user can act on.

/// Every failure the CLI reports is an `ArcError`: one line, no stack trace.
/// Callers add context (file, key, option) to the message where they know it. Text from input
/// files ends up in messages (tensor names, keys, prompts), so the message is escaped here to
/// stay one line (`oneLine`): every error is one line however it was built.
public struct ArcError: Error, CustomStringConvertible, Equatable {
    public var message: String
    public init(_ message: String) { self.message = oneLine(message) }
    public var description: String { message }
}
