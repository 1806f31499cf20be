// arcflow-fuzz: deterministic mutation fuzzing of every reader of files other people made.
//
//   arcflow-fuzz list
//   arcflow-fuzz run TARGET [--cases N] [--seconds S] [--seed K] [--batch B] [--root DIR]
//   arcflow-fuzz replay TARGET FILE...      (crashers: FILE is named <member, / as __>.<hash>)
//
// `run` copies Tests/Fuzz/corpus/TARGET and what the target prepares into a work folder, then
// runs batches of cases in child processes (`child`), so a crash (a Swift trap) or a hang (a case
// over 10 s: SIGALRM) kills only the child; the parent reads the child's last case from a
// progress file, saves that input under Tests/Fuzz/crashers/TARGET/ and carries on after it.

import Foundation
import IR
#if canImport(Glibc)
import Glibc
#endif

setvbuf(stdout, nil, _IOLBF, 0)
let caseTimeout: UInt32 = 10

func fail(_ s: String) -> Never { FileHandle.standardError.write("arcflow-fuzz: \(s)\n".data(using: .utf8)!); exit(2) }

func option(_ args: [String], _ name: String) -> String? {
    guard let i = args.firstIndex(of: name), i + 1 < args.count else { return nil }
    return args[i + 1]
}

func target(_ name: String) -> FuzzTarget {
    guard let t = fuzzTargets.first(where: { $0.name == name }) else {
        fail("unknown target '\(name)' (known: \(fuzzTargets.map(\.name).joined(separator: ", ")))")
    }
    return t
}

/// Repository root: --root, else the folder holding Tests/Fuzz above the current directory.
func repositoryRoot(_ args: [String]) -> String {
    if let r = option(args, "--root") { return r }
    var dir = URL(fileURLWithPath: FileManager.default.currentDirectoryPath)
    while !FileManager.default.fileExists(atPath: dir.appendingPathComponent("Tests/Fuzz").path) && dir.path != "/" { dir.deleteLastPathComponent() }
    return dir.path
}

/// Every file under `dir`, relative, sorted (the order cases are drawn from).
func files(under dir: String) -> [String] {
    let e = FileManager.default.enumerator(atPath: dir)
    var out: [String] = []
    while let f = e?.nextObject() as? String {
        var isDir: ObjCBool = false
        if FileManager.default.fileExists(atPath: "\(dir)/\(f)", isDirectory: &isDir), !isDir.boolValue { out.append(f) }
    }
    return out.sorted()
}

/// The base folder of a target: its corpus plus what it prepares.
func makeBase(_ t: FuzzTarget, root: String, at base: String) throws {
    let fm = FileManager.default
    try? fm.removeItem(atPath: base)
    let corpus = "\(root)/Tests/Fuzz/corpus/\(t.name)"
    if fm.fileExists(atPath: corpus) { try fm.copyItem(atPath: corpus, toPath: base) } else { try fm.createDirectory(atPath: base, withIntermediateDirectories: true) }
    try t.prepare(base, root)
}

/// Cases are files rewritten in place thousands of times a second: on ext4 a truncate-and-rewrite
/// flushes at close (auto_da_alloc), 25× slower than the case; /dev/shm (tmpfs) does not.
func scratchRoot() -> String {
    if let d = ProcessInfo.processInfo.environment["ARCFLOW_FUZZ_TMP"], !d.isEmpty { return d.hasSuffix("/") ? d : d + "/" }
    var isDir: ObjCBool = false
    if FileManager.default.fileExists(atPath: "/dev/shm", isDirectory: &isDir), isDir.boolValue, access("/dev/shm", W_OK) == 0 { return "/dev/shm/" }
    return NSTemporaryDirectory()
}

struct Corpus {
    let members: [String]
    let originals: [String: [UInt8]]
    let origDir: String
    init(_ t: FuzzTarget, base: String) {
        members = files(under: base).filter { t.isMember($0) && !$0.hasSuffix("README.md") }
        var o: [String: [UInt8]] = [:]
        for m in members { o[m] = [UInt8](FileManager.default.contents(atPath: "\(base)/\(m)") ?? Data()) }
        originals = o
        origDir = base + ".orig"
        try? FileManager.default.createDirectory(atPath: origDir, withIntermediateDirectories: true)
        for m in members { put("\(origDir)/\(m.replacingOccurrences(of: "/", with: "__"))", o[m]!) }
    }

    /// Puts the seed back as a hard link of one kept copy: the same inode every time, so a
    /// library dlopen'ed by an earlier case is found loaded instead of mapped again per case.
    func restore(_ member: String, in base: String) {
        let path = "\(base)/\(member)", tmp = path + ".fuzz-tmp"
        unlink(tmp)
        if link("\(origDir)/\(member.replacingOccurrences(of: "/", with: "__"))", tmp) != 0 { put(tmp, originals[member]!) }
        rename(tmp, path)
    }

    /// Case i: the seeds themselves first, then mutations drawn from (seed, i) alone.
    func input(_ i: Int, seed: UInt64) -> (member: String, bytes: [UInt8]) {
        if i < members.count { return (members[i], originals[members[i]]!) }
        var rng = FuzzRNG(seed &* 0x2545_F491_4F6C_DD1D ^ UInt64(i) &* 0x9E37_79B9_7F4A_7C15)
        let member = rng.pick(members)
        let orig = originals[member]!
        if member.hasSuffix(".json"), rng.chance(40), let m = mutateJSON(orig, &rng) { return (member, m) }
        if member.hasSuffix(".safetensors"), rng.chance(40), let m = mutateSafeTensors(orig, &rng) { return (member, m) }
        let other = originals[rng.pick(members)]!
        return (member, mutateBytes(orig, &rng, other: other))
    }
}

/// What one case did. `rejected` errors must be one non-empty line.
enum Outcome { case accepted, rejected, finding(kind: String, message: String) }

func isOneLine(_ s: String) -> Bool {
    !s.isEmpty && !s.unicodeScalars.contains { $0.value < 0x20 || $0.value == 0x7F || $0.value == 0x85 || $0.value == 0x2028 || $0.value == 0x2029 }
}

func runCase(_ t: FuzzTarget, base: String, member: String, bytes: [UInt8], corpus: Corpus) -> Outcome {
    let path = "\(base)/\(member)"
    let dir = (path as NSString).deletingLastPathComponent
    // Readers may delete what they reject (the cache does): put back the member's folder whole.
    for m in corpus.members where (("\(base)/\(m)") as NSString).deletingLastPathComponent == dir && !FileManager.default.fileExists(atPath: "\(base)/\(m)") {
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        corpus.restore(m, in: base)
    }
    // A new file by rename, never a rewrite in place: an earlier case may still map the old one
    // (dlopen keeps model.so mapped; rewriting mapped text is a crash of the harness, not of arcflow).
    put(path + ".fuzz-tmp", bytes)
    rename(path + ".fuzz-tmp", path)
    defer {
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        corpus.restore(member, in: base)
    }
    do {
        try t.run(base, member)
        return .accepted
    } catch let e as ArcError {
        return isOneLine(e.message) ? .rejected : .finding(kind: "multi-line", message: e.message.debugDescription)
    } catch let v as InvariantViolation {
        return .finding(kind: "invariant", message: v.message)
    } catch {
        return .finding(kind: "foreign-error", message: "\(type(of: error)): \(error)".debugDescription)
    }
}

/// Writes a file with plain POSIX calls: Foundation's createFile writes atomically and syncs,
/// which on a busy disk costs more than the case itself.
func put(_ path: String, _ bytes: [UInt8]) {
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
    guard fd >= 0 else { return }
    bytes.withUnsafeBytes { b in
        var off = 0
        while off < b.count {
            let n = write(fd, b.baseAddress! + off, b.count - off)
            if n <= 0 { break }
            off += n
        }
    }
    close(fd)
}

func crasherName(_ member: String, _ bytes: [UInt8]) -> String {
    member.replacingOccurrences(of: "/", with: "__") + "." + String(bytes.withUnsafeBytes { SHA256.hash($0) }.prefix(12))
}

// MARK: - child: runs cases [from, to) and reports findings on stdout

func child(_ args: [String]) -> Never {
    let t = target(args[1])
    let base = option(args, "--base")!, seed = UInt64(option(args, "--seed")!)!
    let from = Int(option(args, "--from")!)!, to = Int(option(args, "--to")!)!
    let progress = open(option(args, "--progress")!, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    let corpus = Corpus(t, base: base)
    do { try t.load(base) } catch { fail("\(t.name): cannot load: \(error)") }
    var accepted = 0, rejected = 0, slowest = 0.0
    var perMember: [String: (Double, Int)] = [:], generating = 0.0
    for i in from..<to {
        // Index and counts so far, fixed width, before the case: what the parent reads after a crash.
        let line = String(format: "%012d %012d %012d\n", i, accepted, rejected)
        _ = line.withCString { pwrite(progress, $0, 39, 0) }
        let g0 = Date()
        let (member, bytes) = corpus.input(i, seed: seed)
        generating += Date().timeIntervalSince(g0)
        let start = Date()
        alarm(caseTimeout)
        let outcome = runCase(t, base: base, member: member, bytes: bytes, corpus: corpus)
        alarm(0)
        slowest = max(slowest, Date().timeIntervalSince(start))
        perMember[member, default: (0, 0)].0 += Date().timeIntervalSince(start); perMember[member, default: (0, 0)].1 += 1
        switch outcome {
        case .accepted: accepted += 1
        case .rejected: rejected += 1
        case .finding(let kind, let message):
            print("F\t\(kind)\t\(i)\t\(message)")
        }
    }
    if ProcessInfo.processInfo.environment["ARCFLOW_FUZZ_PROFILE"] != nil {   // time per member file, to size CI runs
        fputs(String(format: "generating inputs: %.2f ms each\n", generating * 1000 / Double(max(1, to - from))), stderr)
        for (m, (t, n)) in perMember.sorted(by: { $0.key < $1.key }) { fputs(String(format: "%@: %d cases, %.2f ms each\n", m, n, t * 1000 / Double(n)), stderr) }
    }
    print("S\t\(accepted)\t\(rejected)\t\(slowest)")
    exit(0)
}

// MARK: - run: batches in children, crashers saved

func runTarget(_ args: [String]) -> Int32 {
    let t = target(args[1])
    let root = repositoryRoot(args)
    let cases = Int(option(args, "--cases") ?? "") ?? 2000
    let seconds = Double(option(args, "--seconds") ?? "") ?? .infinity
    let seed = UInt64(option(args, "--seed") ?? "") ?? 1
    let batch = Int(option(args, "--batch") ?? "") ?? 5000
    let crashers = option(args, "--crashers") ?? "\(root)/Tests/Fuzz/crashers/\(t.name)"
    let work = scratchRoot() + "arcflow-fuzz-\(t.name)-\(getpid())"
    defer { try? FileManager.default.removeItem(atPath: work) }
    let base = "\(work)/base", scratch = "\(work)/case"
    do { try makeBase(t, root: root, at: base) } catch { fail("\(t.name): cannot prepare: \(error)") }
    let corpus = Corpus(t, base: base)
    guard !corpus.members.isEmpty else { fail("\(t.name): no seed files in \(root)/Tests/Fuzz/corpus/\(t.name)") }

    let start = Date()
    var next = 0, accepted = 0, rejected = 0, slowest = 0.0
    var exitCodes: [String: Int] = [:]
    var findings: [(kind: String, index: Int, message: String)] = []
    func save(_ i: Int) -> String {
        let (member, bytes) = corpus.input(i, seed: seed)
        try? FileManager.default.createDirectory(atPath: crashers, withIntermediateDirectories: true)
        let path = "\(crashers)/\(crasherName(member, bytes))"
        // Atomically, as every output; a crasher that cannot be saved still counts as a finding.
        try? Data(bytes).write(to: URL(fileURLWithPath: path), options: .atomic)
        return path
    }
    while next < cases && Date().timeIntervalSince(start) < seconds {
        let end = min(cases, next + batch)
        try? FileManager.default.removeItem(atPath: scratch)
        do { try FileManager.default.copyItem(atPath: base, toPath: scratch) } catch { fail("cannot copy \(base): \(error)") }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: Bundle.main.executablePath ?? "/proc/self/exe")
        p.arguments = ["child", t.name, "--base", scratch, "--seed", String(seed), "--from", String(next), "--to", String(end),
                       "--progress", "\(work)/progress"]
        let out = Pipe()
        p.standardOutput = out
        do { try p.run() } catch { fail("cannot start a child: \(error)") }
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        var finished = false
        for line in String(decoding: data, as: UTF8.self).split(separator: "\n") {
            let f = line.split(separator: "\t", maxSplits: 3).map(String.init)
            if f.first == "F", f.count == 4, let i = Int(f[2]) {
                findings.append((f[1], i, f[3]))
                print("\(t.name): \(f[1]) at case \(i): \(f[3]) (saved \(save(i)))")
            } else if f.first == "S", f.count == 4 {
                accepted += Int(f[1]) ?? 0; rejected += Int(f[2]) ?? 0; slowest = max(slowest, Double(f[3]) ?? 0); finished = true
            }
        }
        let code = p.terminationReason == .uncaughtSignal ? "signal \(p.terminationStatus)" : "exit \(p.terminationStatus)"
        exitCodes[code, default: 0] += 1
        if finished && p.terminationStatus == 0 && p.terminationReason == .exit { next = end; continue }
        // The child died in case i: record it, count what it finished, go on after it.
        let progress = (try? String(contentsOfFile: "\(work)/progress", encoding: .utf8)) ?? ""
        let parts = progress.split(separator: " ").compactMap { Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
        guard parts.count == 3 else { fail("\(t.name): child \(code) before its first case") }
        let kind = p.terminationReason == .uncaughtSignal && p.terminationStatus == SIGALRM ? "hang" : "crash"
        accepted += parts[1]; rejected += parts[2]
        findings.append((kind, parts[0], code))
        print("\(t.name): \(kind) (\(code)) at case \(parts[0]) (saved \(save(parts[0])))")
        next = parts[0] + 1
    }
    let run = accepted + rejected + findings.count
    let codes = exitCodes.sorted { $0.key < $1.key }.map { "\($0.key) ×\($0.value)" }.joined(separator: ", ")
    let byKind = Dictionary(grouping: findings, by: \.kind).mapValues(\.count)
    print(String(format: "%@: %d cases (seed %llu, %d seeds) in %.1f s: %d accepted, %d rejected with a one-line error; crashes %d, hangs %d, multi-line %d, other findings %d; slowest case %.0f ms; children: %@",
                 t.name, run, seed, corpus.members.count, Date().timeIntervalSince(start), accepted, rejected, byKind["crash"] ?? 0, byKind["hang"] ?? 0,
                 byKind["multi-line"] ?? 0, findings.count - (byKind["crash"] ?? 0) - (byKind["hang"] ?? 0) - (byKind["multi-line"] ?? 0),
                 slowest * 1000, codes))
    return findings.isEmpty ? 0 : 1
}

// MARK: - replay: saved crashers, in-process

func replay(_ args: [String]) -> Int32 {
    let t = target(args[1])
    let root = repositoryRoot(args)
    let work = scratchRoot() + "arcflow-fuzz-replay-\(t.name)-\(getpid())"
    defer { try? FileManager.default.removeItem(atPath: work) }
    let base = "\(work)/base"   // the kept seed copies (base.orig) then live inside `work` too
    do { try makeBase(t, root: root, at: base); try t.load(base) } catch { fail("\(t.name): cannot prepare: \(error)") }
    let corpus = Corpus(t, base: base)
    var bad = 0
    for file in args.dropFirst(2) where !file.hasPrefix("--") && file != option(args, "--root") {
        let name = (file as NSString).lastPathComponent
        let member = String(name[..<(name.lastIndex(of: ".") ?? name.endIndex)]).replacingOccurrences(of: "__", with: "/")
        guard corpus.originals[member] != nil else { print("\(name): no member \(member) in \(t.name)"); bad += 1; continue }
        let bytes = [UInt8](FileManager.default.contents(atPath: file) ?? Data())
        alarm(caseTimeout)
        switch runCase(t, base: base, member: member, bytes: bytes, corpus: corpus) {
        case .accepted: print("\(name): accepted")
        case .rejected: print("\(name): rejected with a one-line error")
        case .finding(let kind, let message): print("\(name): \(kind): \(message)"); bad += 1
        }
        alarm(0)
    }
    return bad == 0 ? 0 : 1
}

let args = Array(CommandLine.arguments.dropFirst())
switch args.first {
case "list": for t in fuzzTargets { print("\(t.name.padding(toLength: 12, withPad: " ", startingAt: 0))\(t.summary)") }
case "child" where args.count > 1: child(args)
case "run" where args.count > 1: exit(runTarget(args))
case "replay" where args.count > 1: exit(replay(args))
default: fail("usage: arcflow-fuzz list | run TARGET [--cases N] [--seconds S] [--seed K] | replay TARGET FILE...")
}
