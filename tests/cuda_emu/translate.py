"""Rewrite a .cu file into host C++ for the CUDA emulation (cuda_emu.h).

Two rewrites:

    KERNEL<<<grid, block[, shmem[, stream]]>>>(args...)
 -> ::emu::launch("KERNEL", KERNEL, ::emu::LaunchConfig(grid, block[, shmem[, stream]]), args...)

and, after each ``__shared__`` declaration inside a function body, a call on the same line
that fills the variable with 0xFF bytes (NaN / -1) the first time a block reaches it:

    __shared__ double sh[256]; ::emu::poison_shared(&sh, sizeof(sh));

(the emulation keeps __shared__ variables as statics, so without it a block would see the
previous block's data instead of garbage, and a kernel reading shared memory it did not
write in this block could pass). Dynamic shared memory, ``extern __shared__ T name[];``,
becomes a pointer to the launch's buffer of `shmem` bytes (poisoned per block likewise):

    T* const name = reinterpret_cast<T*>(::emu::dynamic_shared());

KERNEL may be a qualified name and carry template arguments (``f<W>``, ``ns::f<1, T>``).
Inside a ``#define`` whose parameter is the kernel name, the name string is built with the
stringizing operator (``#KERNEL "<1>"``). No newline is added or removed, so line numbers
are unchanged, and a ``#line 1 "<source>"`` directive makes diagnostics point at the
original file. The kernel bodies are not touched.

Usage: python translate.py SRC.cu OUT.cpp
"""
from __future__ import annotations

import re
import sys

_IDENT = re.compile(r"[A-Za-z_0-9:]")


class TranslateError(ValueError):
    pass


def _match_back_angle(text: str, close: int) -> int:
    """Index of the '<' matching the '>' at `close` (template argument list)."""
    depth = 0
    i = close
    while i >= 0:
        ch = text[i]
        if ch == ">":
            depth += 1
        elif ch == "<":
            depth -= 1
            if depth == 0:
                return i
        elif ch in ";{}":
            break
        i -= 1
    raise TranslateError(f"unbalanced template arguments before offset {close}")


def _kernel_start(text: str, end: int) -> int:
    """Start of the kernel expression that ends just before `end` (exclusive)."""
    i = end - 1
    while i >= 0 and text[i] in " \t":
        i -= 1
    if i >= 0 and text[i] == ">":
        i = _match_back_angle(text, i) - 1
        while i >= 0 and text[i] in " \t":
            i -= 1
    j = i
    while j >= 0 and _IDENT.match(text[j]):
        j -= 1
    if j == i:
        raise TranslateError(f"no kernel name before '<<<' at offset {end}")
    return j + 1


def _match_paren(text: str, open_: int) -> int:
    """Index of the ')' matching the '(' at `open_` (strings and chars respected)."""
    depth = 0
    i = open_
    n = len(text)
    while i < n:
        ch = text[i]
        if ch in "\"'":
            q = ch
            i += 1
            while i < n and text[i] != q:
                i += 2 if text[i] == "\\" else 1
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise TranslateError(f"unbalanced parentheses after offset {open_}")


def _macro_params(text: str, pos: int) -> list[str] | None:
    """Parameters of the #define whose (backslash-continued) logical line holds `pos`."""
    start = text.rfind("\n", 0, pos) + 1
    while start > 0:
        prev_end = start - 1  # the '\n' ending the previous physical line
        prev_start = text.rfind("\n", 0, prev_end) + 1
        if text[prev_start:prev_end].rstrip().endswith("\\"):
            start = prev_start
        else:
            break
    m = re.match(r"\s*#\s*define\s+\w+\(([^)]*)\)", text[start:])
    if not m:
        return None
    return [p.strip() for p in m.group(1).split(",")]


def _split_name(expr: str) -> tuple[str, str]:
    m = re.match(r"([A-Za-z_0-9:]+)\s*(.*)$", expr, re.S)
    return (m.group(1), m.group(2)) if m else (expr, "")


def _c_string(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _blank_comments_and_strings(text: str) -> str:
    """`text` with comments and string/char literals replaced by spaces (same length)."""
    out = list(text)
    i, n = 0, len(text)
    while i < n:
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
        elif text[i] in "\"'" and not (text[i] == "'" and i > 0 and text[i - 1].isalnum()):  # 1'000 separators
            q = text[i]
            j = i + 1
            while j < n and text[j] != q and text[j] != "\n":
                j += 2 if text[j] == "\\" else 1
            j = min(j + 1, n)
        else:
            i += 1
            continue
        for t in range(i, j):
            if out[t] != "\n":
                out[t] = " "
        i = j
    return "".join(out)


# a '{' that opens a namespace / linkage / type body, not code (matched on text whose string
# literals are blanked: extern "C" { reads extern     {)
_NON_CODE_BRACE = re.compile(r"(?:\bnamespace(?:\s+[\w:]+)?|\bextern|\b(?:struct|class|union|enum)\b[^;{}()]*)\s*$")
# extern __shared__ [__align__(n)] TYPE NAME[];  → groups: align, TYPE, NAME
_DYN_SHARED = re.compile(
    r"\bextern\s+__shared__\s+((?:__align__\s*\(\s*\d+\s*\)\s*)?)([^;{}()\[\]]*?)\s*\b([A-Za-z_]\w*)\s*\[\s*\]\s*;")
_SHARED_DECL = re.compile(r"__shared__\b[^;{}()]*?\b([A-Za-z_]\w*)\s*(?:\[[^;{}]*\])*\s*;")


def _instrument_shared(text: str) -> str:
    clean = _blank_comments_and_strings(text)
    # brace kinds: True = code (a function body or a block in one)
    stack: list[bool] = []
    inside = []  # (position, inside a function?) per __shared__
    targets = {m.start(): m for m in _SHARED_DECL.finditer(clean)}
    for i, ch in enumerate(clean):
        if i in targets:
            inside.append((targets[i], any(stack)))
        if ch == "{":
            head = clean[max(0, i - 200):i]
            stack.append(not _NON_CODE_BRACE.search(head))
        elif ch == "}" and stack:
            stack.pop()
    out, pos = [], 0
    for m, in_fn in inside:
        if not in_fn or re.search(r"\bextern\s*$", clean[max(0, m.start() - 20):m.start()]):
            continue
        name = m.group(1)
        out.append(text[pos:m.end()])
        out.append(f" ::emu::poison_shared(&{name}, sizeof({name}));")
        pos = m.end()
    out.append(text[pos:])
    text = "".join(out)

    def dyn(m: re.Match) -> str:
        ty = m.group(2).strip()
        return f"{ty}* const {m.group(3)} = reinterpret_cast<{ty}*>(::emu::dynamic_shared());"

    return _DYN_SHARED.sub(dyn, text)


def translate(text: str, source_name: str = "kernel.cu") -> str:
    text = _instrument_shared(text)
    out = []
    pos = 0
    count = 0
    while True:
        k = text.find("<<<", pos)
        if k < 0:
            break
        start = _kernel_start(text, k)
        if start < pos:
            raise TranslateError(f"overlapping launches near offset {k}")
        e = text.find(">>>", k + 3)
        if e < 0:
            raise TranslateError(f"'<<<' at offset {k} without '>>>'")
        cfg = text[k + 3:e]
        p = e + 3
        while p < len(text) and text[p] in " \t":
            p += 1
        if p >= len(text) or text[p] != "(":
            raise TranslateError(f"launch at offset {k}: no argument list after '>>>'")
        close = _match_paren(text, p)
        args = text[p + 1:close]
        kexpr = text[start:k].rstrip()
        ident, rest = _split_name(kexpr)
        params = _macro_params(text, k)
        if params and ident in params:
            name = "#" + ident + (" " + _c_string(rest) if rest else "")
        else:
            name = _c_string(re.sub(r"\s+", " ", kexpr))
        call = f"::emu::launch({name}, {kexpr}, ::emu::LaunchConfig({cfg})"
        if args.strip():
            call += ", " + args
        call += ")"
        out.append(text[pos:start])
        out.append(call)
        pos = close + 1
        count += 1
    out.append(text[pos:])
    result = "".join(out)
    if result.count("\n") != text.count("\n"):  # pragma: no cover - by construction
        raise TranslateError("line count changed")
    src = source_name.replace("\\", "/").replace('"', '\\"')
    return f'#include "cuda_emu.h"\n#line 1 "{src}"\n' + result


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[1], encoding="utf-8") as f:
        text = f.read()
    with open(argv[2], "w", encoding="utf-8") as f:
        f.write(translate(text, argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
