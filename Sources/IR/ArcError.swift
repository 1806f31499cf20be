// The one error type of the project: a single line a user can act on.

/// Every failure the CLI reports is an `ArcError`: one line, no stack trace.
/// Callers add context (file, key, option) to the message where they know it.
public struct ArcError: Error, CustomStringConvertible, Equatable {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
