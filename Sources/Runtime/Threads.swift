// How many threads the kernels run with when the user does not say.

import Foundation

/// Physical cores of this machine: distinct (package, core) pairs.
public func physicalCoreCount() -> Int {
    guard let info = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8) else {
        return ProcessInfo.processInfo.activeProcessorCount
    }
    var cores = Set<String>()
    var physical = "0"
    for line in info.split(separator: "\n") {
        let parts = line.split(separator: ":", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
        guard parts.count == 2 else { continue }
        if parts[0] == "physical id" { physical = parts[1] }
        if parts[0] == "core id" { cores.insert("\(physical):\(parts[1])") }
    }
    return cores.isEmpty ? ProcessInfo.processInfo.activeProcessorCount : cores.count
}

/// The default thread count: the physical cores, but no more than the CPUs this process may run
/// on that other processes left idle, nor than its cgroup's CPU quota allows, and at least one.
///
/// Why not always the cores: every kernel is an OpenMP fork-join region that ends at a barrier
/// (thousands per image), and a barrier waits for its slowest thread. A thread whose CPU another
/// process holds makes every barrier wait for the scheduler to hand that CPU back. Measured on
/// this project's 2-core machine with two single-threaded jobs running: the default model's
/// 28-step teacher sampled in 8.03 s with 2 threads and 0.32 s with 1. A container's CPU quota
/// (Docker's `--cpus`, a Kubernetes CPU limit) does the same to more threads than it allows: the
/// kernel stops the whole group for the rest of each 100 ms period once the quota is spent, and
/// the affinity list does not show it (every host CPU stays allowed).
public struct ThreadChoice: Equatable {
    public var threads: Int
    public var cores: Int
    /// CPUs this process may run on (its affinity list), and how many of them were busy.
    public var allowedCPUs: Int
    public var busyCPUs: Int
    /// CPUs' worth of time the cgroup CPU bandwidth limit allows (quota / period), nil: no limit.
    public var quotaCPUs: Double? = nil

    /// Why `threads` is below `cores`, for the CLI's note; nil when it is not.
    public var reason: String? {
        guard threads < cores else { return nil }
        if let q = quotaCPUs, Self.threads(quota: q) == threads, threads < allowedCPUs - busyCPUs {
            return "the CPU quota of this process's cgroup allows \(String(format: "%g", q)) CPU\(q == 1 ? "" : "s")"
        }
        if busyCPUs > 0 { return "\(busyCPUs) of \(allowedCPUs) CPUs busy with other processes" }
        return "this process may run on \(allowedCPUs) CPU\(allowedCPUs == 1 ? "" : "s")"
    }

    /// Samples /proc/stat twice, `sample` seconds apart (50 ms: five 10 ms ticks per CPU).
    public static func measure(sample: TimeInterval = 0.05) -> ThreadChoice {
        let cores = physicalCoreCount()
        let allowed = (try? String(contentsOfFile: "/proc/self/status", encoding: .utf8)).flatMap(allowedCPUs(status:))
        guard let cpus = allowed, let before = try? String(contentsOfFile: "/proc/stat", encoding: .utf8) else {
            return ThreadChoice(threads: cores, cores: cores, allowedCPUs: cores, busyCPUs: 0)
        }
        Thread.sleep(forTimeInterval: sample)
        guard let after = try? String(contentsOfFile: "/proc/stat", encoding: .utf8) else {
            return ThreadChoice(threads: cores, cores: cores, allowedCPUs: cpus.count, busyCPUs: 0)
        }
        var c = choose(cores: cores, allowed: cpus, before: cpuTimes(before), after: cpuTimes(after))
        if let cgroup = try? String(contentsOfFile: "/proc/self/cgroup", encoding: .utf8),
           let q = quotaCPUs(cgroup: cgroup, read: { try? String(contentsOfFile: $0, encoding: .utf8) }) {
            c.quotaCPUs = q
            c.threads = min(c.threads, Self.threads(quota: q))
        }
        return c
    }

    /// Threads a quota of q CPUs keeps busy without running out within a period: ⌊q⌋, at least 1.
    static func threads(quota q: Double) -> Int { max(1, Int(q)) }

    /// The tightest CPU bandwidth limit on this process's cgroups, in CPUs (quota / period), from
    /// `/proc/self/cgroup` and the files `read` returns (nil: absent): cgroup v2's `cpu.max`
    /// ("max 100000" or "150000 100000") or v1's `cpu.cfs_quota_us` (−1: none) and
    /// `cpu.cfs_period_us`, at the process's cgroup and each parent up to the mount (inside a
    /// container the listed path may be the host's while the mount's root is the container's own).
    static func quotaCPUs(cgroup: String, read: (String) -> String?) -> Double? {
        var limits: [Double] = []
        func number(_ text: String?) -> Double? { text.flatMap { Double($0.trimmingCharacters(in: .whitespacesAndNewlines)) } }
        for line in cgroup.split(separator: "\n") {
            let f = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false).map(String.init)
            guard f.count == 3 else { continue }
            let controllers = f[1].split(separator: ",")
            let mounts = f[0] == "0" && f[1].isEmpty ? ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
                : controllers.contains("cpu") ? ["/sys/fs/cgroup/\(f[1])", "/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu,cpuacct"] : []
            for mount in mounts {
                var parts = f[2].split(separator: "/").map(String.init)
                while true {
                    let dir = ([mount] + parts).joined(separator: "/")
                    if let max = read("\(dir)/cpu.max") {
                        let v = max.split(whereSeparator: \.isWhitespace)
                        if v.count == 2, let q = Double(v[0]), let p = Double(v[1]), q > 0, p > 0 { limits.append(q / p) }
                    } else if let q = number(read("\(dir)/cpu.cfs_quota_us")), let p = number(read("\(dir)/cpu.cfs_period_us")), q > 0, p > 0 {
                        limits.append(q / p)
                    }
                    if parts.isEmpty { break }
                    parts.removeLast()
                }
            }
        }
        return limits.min()
    }

    /// A CPU counts as busy when it was idle for less than half of the ticks between the two
    /// readings (idle + iowait against every state, steal included); one without ticks is idle.
    static func choose(cores: Int, allowed: Set<Int>, before: [Int: (idle: Int, total: Int)],
                       after: [Int: (idle: Int, total: Int)]) -> ThreadChoice {
        let busy = allowed.filter { cpu in
            guard let a = before[cpu], let b = after[cpu] else { return false }
            let total = b.total - a.total, idle = b.idle - a.idle
            return total > 0 && 2 * idle < total
        }.count
        let threads = max(1, min(cores, allowed.count - busy))
        return ThreadChoice(threads: threads, cores: cores, allowedCPUs: allowed.count, busyCPUs: busy)
    }

    /// Per-CPU (idle, total) ticks from /proc/stat's `cpuN user nice system idle iowait irq
    /// softirq steal …` lines (guest time is already part of user).
    static func cpuTimes(_ stat: String) -> [Int: (idle: Int, total: Int)] {
        var times: [Int: (idle: Int, total: Int)] = [:]
        for line in stat.split(separator: "\n") where line.hasPrefix("cpu") {
            let f = line.split(separator: " ")
            guard let cpu = Int(f[0].dropFirst(3)), f.count >= 6 else { continue }
            let v = f.dropFirst().prefix(8).compactMap { Int($0) }
            times[cpu] = (idle: v[3] + v[4], total: v.reduce(0, +))
        }
        return times
    }

    /// The CPUs of `Cpus_allowed_list:` in /proc/self/status ("0-3,8-11").
    static func allowedCPUs(status: String) -> Set<Int>? {
        guard let line = status.split(separator: "\n").first(where: { $0.hasPrefix("Cpus_allowed_list:") }) else { return nil }
        var cpus = Set<Int>()
        for range in line.dropFirst("Cpus_allowed_list:".count).trimmingCharacters(in: .whitespaces).split(separator: ",") {
            let ends = range.split(separator: "-").compactMap { Int($0) }
            guard let lo = ends.first, let hi = ends.last, lo <= hi else { return nil }
            cpus.formUnion(lo...hi)
        }
        return cpus.isEmpty ? nil : cpus
    }
}
