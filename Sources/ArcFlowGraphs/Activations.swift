// The activations a text encoder's or a VAE's config names (transformers' ACT2FN, diffusers'
// get_activation), in one place for CLIP, T5 and the VAE decoder.

import Foundation
import IR
import Runtime

/// A named activation from a config file. transformers and diffusers map the same names to the
/// same functions; only the names below are read, any other is refused by name.
public enum NamedActivation: String, CaseIterable, Equatable {
    case relu, silu, swish, gelu, geluNew = "gelu_new", geluPytorchTanh = "gelu_pytorch_tanh", geluFast = "gelu_fast"
    case quickGELU = "quick_gelu", mish, sigmoid, tanh

    /// The activation `key` of the config at `path` names; an unknown one is an error listing the
    /// known names.
    public static func parse(_ name: String, key: String, path: String) throws -> NamedActivation {
        guard let a = NamedActivation(rawValue: name) else {
            throw ArcError("\(path): \(key) '\(name)' is not supported (\(allCases.map(\.rawValue).joined(separator: ", ")))")
        }
        return a
    }

    /// relu max(x, 0); silu and swish x·σ(x); gelu exact 0.5x(1 + erf(x/√2)) (PyTorch's
    /// `nn.GELU()`); gelu_new, gelu_pytorch_tanh and gelu_fast the tanh approximation (our `gelu`
    /// op; the three differ only in how the constant √(2/π) is rounded); quick_gelu x·σ(1.702x);
    /// mish x·tanh(softplus(x)), softplus as max(x, 0) + log(1 + e^−|x|) so that it never overflows.
    public func apply(_ x: Value) -> Value {
        let b = x.builder
        switch self {
        case .relu: return b.binary(.max, x, b.scalar(0))
        case .silu, .swish: return x.apply(.silu)
        case .gelu: return 0.5 * x * (1 + (x * Float(1 / 2.0.squareRoot())).apply(.erf))
        case .geluNew, .geluPytorchTanh, .geluFast: return x.apply(.gelu)
        case .quickGELU: return x * (x * 1.702).apply(.sigmoid)
        case .mish:
            let softplus = b.binary(.max, x, b.scalar(0)) + (1 + x.apply(.abs).apply(.neg).apply(.exp)).apply(.log)
            return x * softplus.apply(.tanh)
        case .sigmoid: return x.apply(.sigmoid)
        case .tanh: return x.apply(.tanh)
        }
    }
}
