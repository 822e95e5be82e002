"""Inside the python grader's sandbox: confine this process, then run the untrusted ``grade(sample, item)``.

Started by ``openft.graders.sandbox`` as ``python -I -S sandbox_runner.py PARENT_PID`` with an empty environment,
its working directory a fresh temporary folder (the "box"), in a session of its own, the request
``{"source", "sample", "item", "box", "limits"}`` on stdin. Standard library only: openft is not importable here
(``-S`` leaves site-packages off ``sys.path``), and the grader gets the standard library and nothing else.

Layers, each applied before any user code runs (the kernel ones cannot be undone by the grader):

1. ``PR_SET_PDEATHSIG``: the process dies with the process that started it.
2. rlimits: CPU seconds, address space, file size, open files, no core dumps, and ``RLIMIT_NPROC`` 0 (no new
   processes; the kernel does not apply that one to uid 0, hence layer 6).
3. A network namespace of its own (``unshare(CLONE_NEWNET)``, in a new user namespace when not root): no
   interface but a loopback that is down.
4. ``PR_SET_NO_NEW_PRIVS`` and every capability dropped (bounding, ambient, effective, permitted).
5. Landlock (Linux ≥ 5.13): read and execute only beneath the standard library and the system library folders,
   read and write only beneath the box; TCP bind/connect denied (ABI ≥ 4); signals to, and abstract unix sockets
   of, processes outside the sandbox denied (ABI ≥ 6).
6. seccomp (x86_64 and aarch64): fork, vfork, clone, clone3, execve, execveat, socket, socketpair, kill, tkill,
   tgkill, ptrace, io_uring and a few more fail with EPERM.
7. An audit hook (PEP 578): refuses opening files outside the box and the standard library, sockets, processes,
   signals, ctypes, sqlite3, building code objects and gc introspection with a readable PermissionError. It
   is the only file and network barrier where layers 3, 5 and 6 are unavailable, and PEP 578 hooks are not a
   security boundary on their own.

Layers 3, 5 and 6 are skipped, with a note on stderr, where the kernel refuses them; see openft.graders.sandbox
for what that means.
"""

import json
import os
import resource
import struct
import sys

MAX_DETAILS = 2000


def main() -> None:
    request = json.loads(sys.stdin.buffer.read())
    result = os.dup(1)
    os.dup2(2, 1)  # the grader's prints go to stderr; the one result line goes to the saved stdout
    try:
        notes = confine(request["box"], request["limits"], int(sys.argv[1]))
        install_audit_hook(request["box"], readable_roots())
    except Exception as exc:  # noqa: BLE001 - a sandbox that is not in place must not run the grader
        os.write(result, json.dumps({"server_error": f"sandbox_setup_failed: {type(exc).__name__}: {exc}"}).encode())
        return
    print("sandbox:", ", ".join(notes), file=sys.stderr, flush=True)
    outcome = run_grader(request["source"], request["sample"], request["item"])
    os.write(result, json.dumps(outcome).encode())


def run_grader(source: str, sample: dict, item: dict) -> dict:
    """``{"score": float}`` or ``{"runtime_error": "TypeName: message (line N)"}``."""
    try:
        namespace = {"__name__": "grader", "__builtins__": __builtins__}
        exec(compile(source, "grader.py", "exec"), namespace)
        grade = namespace.get("grade")
        if not callable(grade):
            return {"runtime_error": "the source does not define grade(sample, item)"}
        score = grade(sample, item)
    except BaseException as exc:  # noqa: BLE001 - SystemExit and KeyboardInterrupt are grader failures too
        return {"runtime_error": _describe(exc)}
    if isinstance(score, bool) or not isinstance(score, (int, float)):
        return {"runtime_error": f"grade() returned {type(score).__name__}, not a number"}
    try:
        score = float(score)
    except BaseException as exc:  # noqa: BLE001 - 10**400 overflows; a subclass's __float__ may raise anything
        return {"runtime_error": f"grade() returned a number that is not a float: {_describe(exc)}"}
    if score != score or score in (float("inf"), float("-inf")):
        return {"runtime_error": f"grade() returned {score}, not a finite number"}
    return {"score": score}


def _describe(exc: BaseException) -> str:
    line, tb = None, exc.__traceback__
    while tb is not None:  # the innermost frame of the grader's own source
        if tb.tb_frame.f_code.co_filename == "grader.py":
            line = tb.tb_lineno
        tb = tb.tb_next
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return (text + (f" (line {line})" if line else ""))[:MAX_DETAILS]


def readable_roots() -> list[str]:
    """The standard library and the folders of shared libraries its extension modules link against."""
    roots = [os.path.dirname(os.path.realpath(os.__file__))]
    for folder in ("/lib", "/lib64", "/usr/lib", "/usr/lib64"):
        real = os.path.realpath(folder)
        if os.path.isdir(real) and real not in roots:
            roots.append(real)
    return roots


# ---- kernel layers ------------------------------------------------------------------------------------------------

PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, PR_CAP_AMBIENT = 1, 24, 38, 22, 47
CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000


def confine(box: str, limits: dict, parent: int) -> list[str]:
    """Apply layers 1 to 6 to this process; returns what was applied, for the log."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    notes = []
    libc.prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)  # the parent is already gone
    _rlimits(limits)
    notes.append("network namespace" if _unshare_network(libc) else "NO network namespace")
    _drop_privileges(libc, ctypes)
    abi = _landlock(libc, ctypes, box, readable_roots())
    notes.append(f"landlock ABI {abi}" if abi else "NO landlock")
    notes.append("seccomp" if _seccomp(libc, ctypes) else "NO seccomp")
    for name in [m for m in sys.modules if m == "ctypes" or m.startswith(("ctypes.", "_ctypes"))]:
        del sys.modules[name]  # a re-import is then an audited event, which the hook refuses
    return notes


def _rlimits(limits: dict) -> None:
    cpu = int(limits["cpu_seconds"])
    for which, value in ((resource.RLIMIT_CPU, (cpu, cpu + 1)),
                         (resource.RLIMIT_AS, (limits["memory_bytes"],) * 2),
                         (resource.RLIMIT_FSIZE, (limits["file_bytes"],) * 2),
                         (resource.RLIMIT_NOFILE, (64, 64)),
                         (resource.RLIMIT_CORE, (0, 0)),
                         (resource.RLIMIT_NPROC, (0, 0))):
        resource.setrlimit(which, value)


def _unshare_network(libc) -> bool:
    flags = CLONE_NEWNET if os.geteuid() == 0 else CLONE_NEWUSER | CLONE_NEWNET
    return libc.unshare(flags) == 0


def _drop_privileges(libc, ctypes) -> None:
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS failed")
    libc.prctl(PR_CAP_AMBIENT, 4, 0, 0, 0)  # PR_CAP_AMBIENT_CLEAR_ALL
    for cap in range(64):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and ctypes.get_errno() == 22:
            break  # EINVAL: past the last capability this kernel knows
    header = struct.pack("Ii", 0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    if libc.capset(header, bytes(24)) != 0:  # effective, permitted, inheritable: all empty
        raise OSError(ctypes.get_errno(), "capset failed")


def _landlock(libc, ctypes, box: str, readable: list[str]) -> int:
    """Confine the file system (and TCP, and signals) with Landlock; returns its ABI, 0 where there is none."""
    long = ctypes.c_long
    abi = libc.syscall(long(444), None, long(0), long(1))  # landlock_create_ruleset(NULL, 0, VERSION)
    if abi < 1:
        return 0
    fs = (1 << 13) - 1 | (1 << 13 if abi >= 2 else 0) | (1 << 14 if abi >= 3 else 0) | (1 << 15 if abi >= 5 else 0)
    net, scoped = (0b11 if abi >= 4 else 0), (0b11 if abi >= 6 else 0)  # TCP bind+connect; abstract sockets+signals
    attr = struct.pack("QQQ", fs, net, scoped)[:8 if abi < 4 else 16 if abi < 6 else 24]  # the size this ABI knows
    ruleset = libc.syscall(long(444), attr, long(len(attr)), long(0))
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset failed")
    read = 1 | 4 | 8  # EXECUTE, READ_FILE, READ_DIR
    for path, access in [(p, read) for p in readable] + [(box, fs)]:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        rule = struct.pack("=Qi", access, fd)  # struct landlock_path_beneath_attr (packed)
        ok = libc.syscall(long(445), long(ruleset), long(1), rule, long(0)) == 0
        os.close(fd)
        if not ok:
            raise OSError(ctypes.get_errno(), f"landlock_add_rule failed for {path}")
    if libc.syscall(long(446), long(ruleset), long(0)) != 0:
        raise OSError(ctypes.get_errno(), "landlock_restrict_self failed")
    os.close(ruleset)
    return abi


# (audit arch, syscalls refused): process creation, sockets, signals, tracing, io_uring, namespaces, mounts, keys
SECCOMP = {
    "x86_64": (0xC000003E, (57, 58, 56, 435, 59, 322, 41, 53, 62, 200, 234, 129, 297, 424, 434, 101, 310, 311,
                            425, 426, 427, 272, 308, 165, 166, 321, 298, 323, 248, 249, 250)),
    "aarch64": (0xC00000B7, (220, 435, 221, 281, 198, 199, 129, 130, 131, 138, 240, 424, 434, 117, 270, 271,
                             425, 426, 427, 97, 268, 40, 39, 280, 241, 282, 217, 218, 219)),
}


def _seccomp(libc, ctypes) -> bool:
    machine = os.uname().machine
    if machine not in SECCOMP:
        return False
    arch, denied = SECCOMP[machine]
    ld, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06
    n = len(denied)
    # [arch check, load nr, x32 check, one jeq per syscall, allow, deny]; jumps count from the next instruction
    program = [(ld, 0, 0, 4), (jeq, 0, n + 3, arch), (ld, 0, 0, 0),
               (jge, n + 1, 0, 0x40000000 if machine == "x86_64" else 0xFFFFFFFF)]
    program += [(jeq, n - i, 0, nr) for i, nr in enumerate(denied)]
    program += [(ret, 0, 0, 0x7FFF0000), (ret, 0, 0, 0x00050000 | 1)]  # ALLOW; ERRNO(EPERM)
    code = b"".join(struct.pack("HBBI", *insn) for insn in program)
    buffer = ctypes.create_string_buffer(code, len(code))
    fprog = struct.pack("HxxxxxxP", len(program), ctypes.addressof(buffer))
    return libc.prctl(PR_SET_SECCOMP, 2, fprog, 0, 0) == 0


# ---- the audit hook -------------------------------------------------------------------------------------------------

REFUSED = ("socket.", "subprocess.", "os.system", "os.exec", "os.spawn", "os.posix_spawn", "os.fork", "os.forkpty",
           "os.kill", "os.killpg", "signal.pthread_kill", "ctypes.", "sqlite3.", "resource.setrlimit",
           "resource.prlimit", "code.__new__", "gc.get_", "os.symlink", "os.link", "os.chdir",
           "webbrowser.", "urllib.", "http.", "ftplib.", "smtplib.", "imaplib.", "poplib.", "nntplib.", "telnetlib.")
REFUSED_IMPORTS = ("ctypes", "_ctypes", "_posixsubprocess", "_sqlite3", "sqlite3", "_dbm", "_gdbm", "dbm")
PATH_EVENTS = ("open", "os.listdir", "os.scandir", "os.mkdir", "os.remove", "os.rmdir", "os.rename", "os.truncate",
               "os.chmod", "os.chown", "os.utime", "shutil.rmtree")


def install_audit_hook(box: str, readable: list[str]) -> None:
    """Layer 7. The hook looks up no global or builtin name when it runs (everything it uses is bound as a default
    argument here), so a grader cannot re-point it by patching ``os.path`` or ``builtins`` from the inside."""
    box = os.path.realpath(box)

    def normal(path, _str=str, _bytes=bytes, _isinstance=isinstance, _box=box):
        if _isinstance(path, _bytes):
            path = path.decode("utf-8", "surrogateescape")
        path = _str(path)
        if not path.startswith("/"):
            path = _box + "/" + path  # the working directory is the box (os.chdir is refused)
        parts = []
        for part in path.split("/"):
            if part == "..":
                parts = parts[:-1]
            elif part != "" and part != ".":
                parts.append(part)
        return "/" + "/".join(parts)

    def beneath(path, folders):
        for folder in folders:
            if path == folder or path.startswith(folder + "/"):
                return True
        return False

    def hook(event, args, _refused=REFUSED, _imports=REFUSED_IMPORTS, _paths=PATH_EVENTS, _int=int, _str=str,
             _len=len, _isinstance=isinstance, _box=(box,), _roots=tuple(readable), _error=PermissionError,
             _normal=normal, _beneath=beneath, _reads=("open", "os.listdir", "os.scandir")):
        if event.startswith(_refused):
            raise _error(f"{event} is not allowed in the python grader sandbox")
        if event == "import" and args[0].split(".")[0] in _imports:
            raise _error(f"import {args[0]} is not allowed in the python grader sandbox")
        if event not in _paths or not args or args[0] is None or _isinstance(args[0], _int):
            return
        path = _normal(args[0])
        mode = args[1] if _len(args) > 1 and _isinstance(args[1], _str) else ""
        flags = args[2] if _len(args) > 2 and _isinstance(args[2], _int) else 0
        writing = event not in _reads or "w" in mode or "a" in mode or "x" in mode or "+" in mode or flags & 0o1103 != 0
        if not (_beneath(path, _box) or (not writing and _beneath(path, _roots))):
            raise _error(f"the python grader sandbox may not {'write' if writing else 'read'} {args[0]!r}")

    sys.addaudithook(hook)


if __name__ == "__main__":
    main()
