// A monotonic clock for pass timing (no Foundation needed).
#if canImport(Glibc)
import Glibc
#endif

public func monotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
}
