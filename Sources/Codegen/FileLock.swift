// Cross-process exclusion for files on disk: an flock'd lock file, and temporary names that
// say which process made them so a later run can remove what a killed one left behind.

import Foundation
import IR

/// An exclusive advisory lock (`flock`) on a lock file, created when missing. The kernel drops
/// it when the holder exits for any reason (kill -9 included), so a dead compile never leaves a
/// lock held. The lock file itself stays: deleting it would race with a process that has just
/// opened it and would then hold a lock on a file nobody else can see.
public final class FileLock {
    private var fd: Int32
    /// Whether another process held the lock when this one asked (it then waited for it).
    public let waited: Bool

    /// Blocks until the lock on `path` is held. `onWait` is called once if it has to wait.
    public init(_ path: String, onWait: () -> Void = {}) throws {
        fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw ArcError("cannot open lock file \(path): \(String(cString: strerror(errno)))") }
        if flock(fd, LOCK_EX | LOCK_NB) == 0 {
            waited = false
            return
        }
        guard errno == EWOULDBLOCK else {
            let e = errno
            close(fd)
            throw ArcError("cannot lock \(path): \(String(cString: strerror(e)))")
        }
        onWait()
        while flock(fd, LOCK_EX) != 0 {
            guard errno == EINTR else {
                let e = errno
                close(fd)
                throw ArcError("cannot lock \(path): \(String(cString: strerror(e)))")
            }
        }
        waited = true
    }

    public func unlock() {
        guard fd >= 0 else { return }
        flock(fd, LOCK_UN)
        close(fd)
        fd = -1
    }

    deinit { unlock() }
}

/// Temporary files and folders of arcflow's atomic writes are named `.<name>.tmp.<pid>.<random>`
/// next to their destination: the pid says who owns one, so a later run can tell a live
/// writer's file from one a killed process left behind.
public enum TemporaryFiles {
    /// A fresh temporary name for `path` (same folder, so the final rename stays atomic).
    public static func path(for path: String) -> String {
        let dir = (path as NSString).deletingLastPathComponent
        let base = (path as NSString).lastPathComponent
        let r = String(UInt64.random(in: 0...UInt64.max), radix: 16)
        return "\(dir.isEmpty ? "." : dir)/.\(base).tmp.\(getpid()).\(r)"
    }

    /// The owner pid of a temporary name, nil for any other name.
    public static func owner(of name: String) -> Int32? {
        guard name.hasPrefix(".") else { return nil }
        let parts = name.split(separator: ".", omittingEmptySubsequences: false)
        // "", base…, "tmp", pid, random
        guard parts.count >= 5, parts[parts.count - 3] == "tmp", let pid = Int32(parts[parts.count - 2]), pid > 0,
              !parts[parts.count - 1].isEmpty, parts[parts.count - 1].allSatisfy(\.isHexDigit) else { return nil }
        return pid
    }

    /// Removes the temporaries in `dir` whose owner is dead, or that are older than `maxAge`
    /// seconds (a pid can be reused; no compile step takes a day). This process's own are kept
    /// (another thread may be writing them). Returns the names removed.
    @discardableResult
    public static func removeStale(in dir: String, maxAge: TimeInterval = 86_400) -> [String] {
        let fm = FileManager.default
        guard let names = try? fm.contentsOfDirectory(atPath: dir) else { return [] }
        var removed: [String] = []
        for name in names.sorted() {
            guard let pid = owner(of: name), pid != getpid() else { continue }
            let path = "\(dir)/\(name)"
            let dead = kill(pid, 0) != 0 && errno == ESRCH
            let modified = (try? fm.attributesOfItem(atPath: path)[.modificationDate] as? Date) ?? nil
            let old = modified.map { Date().timeIntervalSince($0) > maxAge } ?? false
            if (dead || old) && (try? fm.removeItem(atPath: path)) != nil { removed.append(name) }
        }
        return removed
    }
}
