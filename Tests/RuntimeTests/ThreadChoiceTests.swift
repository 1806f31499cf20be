// The default thread count: the physical cores, fewer when other processes hold CPUs.

import Foundation
@testable import Runtime
import TestSupport
import XCTest

final class ThreadChoiceTests: XCTestCase {
    func testParsesAffinityListAndCPUTimes() {
        XCTAssertEqual(ThreadChoice.allowedCPUs(status: "Name:\tx\nCpus_allowed:\tf0f\nCpus_allowed_list:\t0-3,8-11\n"),
                       Set([0, 1, 2, 3, 8, 9, 10, 11]))
        XCTAssertEqual(ThreadChoice.allowedCPUs(status: "Cpus_allowed_list:\t5\n"), Set([5]))
        XCTAssertNil(ThreadChoice.allowedCPUs(status: "Name:\tx\n"))
        let t = ThreadChoice.cpuTimes("cpu  10 0 10 100 5 0 0 0 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\ncpu1 0 0 0 50 0 0 0 0 0 0\nintr 1 2\n")
        XCTAssertEqual(t.keys.sorted(), [0, 1], "the aggregate `cpu` line is not a CPU")
        XCTAssertEqual(t[0]!.idle, 4 + 5)
        XCTAssertEqual(t[0]!.total, 1 + 2 + 3 + 4 + 5 + 6 + 7 + 8, "guest time is part of user already")
    }

    func testBusyCPUsLowerTheCount() {
        func times(_ v: [(Int, Int)]) -> [Int: (idle: Int, total: Int)] {
            Dictionary(uniqueKeysWithValues: v.enumerated().map { ($0.offset, (idle: $0.element.0, total: $0.element.1)) })
        }
        let before = times([(0, 0), (0, 0), (0, 0), (0, 0)])
        // CPU 0 idle 1 of 5 ticks (busy), CPU 1 idle 5 of 5, CPU 2 no ticks (idle), CPU 3 idle 2 of 4 (half: idle).
        let after = times([(1, 5), (5, 5), (0, 0), (2, 4)])
        XCTAssertEqual(ThreadChoice.choose(cores: 4, allowed: [0, 1, 2, 3], before: before, after: after),
                       ThreadChoice(threads: 3, cores: 4, allowedCPUs: 4, busyCPUs: 1))
        // Only CPUs this process may run on count; never fewer than one thread, never more than the cores.
        XCTAssertEqual(ThreadChoice.choose(cores: 4, allowed: [0], before: before, after: after).threads, 1)
        XCTAssertEqual(ThreadChoice.choose(cores: 2, allowed: [1, 2, 3], before: before, after: after).threads, 2)
        let allBusy = times([(0, 5), (1, 5), (0, 6), (0, 4)])
        XCTAssertEqual(ThreadChoice.choose(cores: 4, allowed: [0, 1, 2, 3], before: before, after: allBusy).threads, 1)
    }

    /// The cgroup CPU quota: v2's cpu.max and v1's cfs files, the tightest along the path up to the
    /// mount (a container's own root when the listed path is the host's), none when unlimited.
    func testCgroupQuotaCapsTheCount() {
        func quota(_ cgroup: String, _ files: [String: String]) -> Double? { ThreadChoice.quotaCPUs(cgroup: cgroup, read: { files[$0] }) }
        XCTAssertEqual(quota("0::/kubepods/pod1/c1\n", ["/sys/fs/cgroup/kubepods/pod1/c1/cpu.max": "150000 100000\n",
                                                          "/sys/fs/cgroup/kubepods/cpu.max": "400000 100000\n"]), 1.5)
        XCTAssertEqual(quota("0::/docker/abc\n", ["/sys/fs/cgroup/cpu.max": "200000 100000\n"]), 2, "the container's root")
        XCTAssertNil(quota("0::/user.slice\n", ["/sys/fs/cgroup/user.slice/cpu.max": "max 100000\n"]))
        XCTAssertEqual(quota("4:memory:/x\n3:cpu,cpuacct:/docker/abc\n", ["/sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "100000\n",
                                                                            "/sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n"]), 1)
        XCTAssertNil(quota("1:cpu:/\n", ["/sys/fs/cgroup/cpu/cpu.cfs_quota_us": "-1\n", "/sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000\n"]))
        XCTAssertNil(quota("", [:]))
        var c = ThreadChoice(threads: 1, cores: 4, allowedCPUs: 8, busyCPUs: 0, quotaCPUs: 1.5)
        XCTAssertEqual(c.reason, "the CPU quota of this process's cgroup allows 1.5 CPUs")
        c = ThreadChoice(threads: 3, cores: 4, allowedCPUs: 4, busyCPUs: 1)
        XCTAssertEqual(c.reason, "1 of 4 CPUs busy with other processes")
        c = ThreadChoice(threads: 1, cores: 4, allowedCPUs: 1, busyCPUs: 0)
        XCTAssertEqual(c.reason, "this process may run on 1 CPU")
        XCTAssertNil(ThreadChoice(threads: 4, cores: 4, allowedCPUs: 4, busyCPUs: 0).reason)
    }

    /// With every CPU busy in a spinning process, a run without --threads (or OMP_NUM_THREADS)
    /// takes one thread and says so; --threads and OMP_NUM_THREADS still decide.
    func testRunOnBusyMachineTakesOneThreadAndSaysSo() throws {
        let dir = try makeTemporaryDirectory("arcflow-threads")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let env = ["ARCFLOW_CACHE_DIR": dir + "/cache", "OMP_NUM_THREADS": ""]   // "": unset, so arcflow measures
        let mlp = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("examples/mlp.ir").path
        for args in [["random-weights", mlp, "-o", "w.safetensors"], ["random-inputs", mlp, "-o", "in.safetensors"],
                     ["compile", mlp, "--weights", "w.safetensors", "-o", "m"]] {
            let r = try runArcflow(args, in: dir, environment: env)
            XCTAssertEqual(r.status, 0, r.err)
        }
        let spinners = try (0..<ProcessInfo.processInfo.activeProcessorCount).map { _ -> Process in
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/bin/sh")
            p.arguments = ["-c", "while :; do :; done"]
            try p.run()
            return p
        }
        defer { for p in spinners { p.terminate(); p.waitUntilExit() } }
        Thread.sleep(forTimeInterval: 0.2)
        let r = try runArcflow(["run", "--model", "m", "--inputs", "in.safetensors", "-o", "out.safetensors"], in: dir, environment: env)
        XCTAssertEqual(r.status, 0, r.err)
        if physicalCoreCount() > 1 {
            XCTAssertTrue(r.err.contains("CPUs busy with other processes: running 1 thread instead of"), r.err)
        }
        let chosen = try runArcflow(["run", "--model", "m", "--inputs", "in.safetensors", "-o", "out2.safetensors", "--threads", "2"],
                                    in: dir, environment: env)
        XCTAssertEqual(chosen.status, 0, chosen.err)
        XCTAssertFalse(chosen.err.contains("CPUs busy"), chosen.err)
        var omp = env
        omp["OMP_NUM_THREADS"] = "2"
        let fromEnv = try runArcflow(["run", "--model", "m", "--inputs", "in.safetensors", "-o", "out3.safetensors"], in: dir, environment: omp)
        XCTAssertEqual(fromEnv.status, 0, fromEnv.err)
        XCTAssertFalse(fromEnv.err.contains("CPUs busy"), fromEnv.err)
    }
}
