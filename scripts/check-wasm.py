#!/usr/bin/env python3
"""Checks the committed example modules against the bx3 task ABI.

For every wasm_modules/*.wasm (or the files given as arguments) this checks,
with nothing but the Python standard library:
  * the `\\0asm` magic and version 1;
  * a `_start` function export (WASI preview1 command module);
  * every import is a function from `wasi_snapshot_preview1` that the bx3
    host implements (see wasm_modules/README.md).
It prints one line per module (size, imports) and exits 1 on any problem.
"""
import pathlib
import sys

HOST_WASI = {
    "args_get", "args_sizes_get", "environ_get", "environ_sizes_get",
    "fd_write", "fd_read", "fd_close", "fd_fdstat_get", "fd_seek",
    "fd_prestat_get", "fd_prestat_dir_name", "proc_exit", "random_get",
    "clock_time_get", "clock_res_get", "sched_yield",
}


class Reader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def byte(self) -> int:
        b = self.data[self.pos]
        self.pos += 1
        return b

    def uleb(self) -> int:
        result = shift = 0
        while True:
            b = self.byte()
            result |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                return result

    def name(self) -> str:
        n = self.uleb()
        s = self.data[self.pos:self.pos + n].decode("utf-8")
        self.pos += n
        return s

    def limits(self) -> None:
        flags = self.byte()
        self.uleb()
        if flags & 1:
            self.uleb()


def inspect(data: bytes):
    """Returns (imports, exports): lists of (module, name, kind) / (name, kind)."""
    if data[:4] != b"\0asm" or data[4:8] != b"\x01\0\0\0":
        raise ValueError("not a wasm v1 binary")
    r = Reader(data)
    r.pos = 8
    imports, exports = [], []
    kinds = {0: "func", 1: "table", 2: "memory", 3: "global", 4: "tag"}
    while r.pos < len(data):
        sid, size = r.byte(), r.uleb()
        end = r.pos + size
        if sid == 2:  # import section
            for _ in range(r.uleb()):
                mod, name, kind = r.name(), r.name(), r.byte()
                if kind == 0:
                    r.uleb()  # type index
                elif kind == 1:
                    r.byte()  # reftype
                    r.limits()
                elif kind == 2:
                    r.limits()
                elif kind == 3:
                    r.byte()  # valtype
                    r.byte()  # mutability
                else:
                    r.uleb()
                imports.append((mod, name, kinds.get(kind, str(kind))))
        elif sid == 7:  # export section
            for _ in range(r.uleb()):
                name, kind = r.name(), r.byte()
                r.uleb()
                exports.append((name, kinds.get(kind, str(kind))))
        r.pos = end
    return imports, exports


def main() -> int:
    root = pathlib.Path(__file__).resolve().parent.parent / "wasm_modules"
    files = [pathlib.Path(a) for a in sys.argv[1:]] or sorted(root.glob("*.wasm"))
    ok = True
    for path in files:
        data = path.read_bytes()
        problems = []
        try:
            imports, exports = inspect(data)
        except (ValueError, IndexError, UnicodeDecodeError) as e:
            imports, exports, problems = [], [], [f"unparsable: {e}"]
        if ("_start", "func") not in exports:
            problems.append("no `_start` function export")
        for mod, name, kind in imports:
            if mod != "wasi_snapshot_preview1" or kind != "func" or name not in HOST_WASI:
                problems.append(f"unsupported import {mod}.{name} ({kind})")
        names = ",".join(n for _, n, _ in imports) or "-"
        print(f"{path.name:20} {len(data):8} bytes  imports: {names}")
        for p in problems:
            print(f"  ERROR: {p}")
        ok &= not problems
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
