"""Memory traffic of a compiled XLA program, read off its optimized HLO text.

A GPU kernel of a memory-bound program costs about the bytes it moves. After XLA's
fusion passes, each top-level fusion, custom call (a cuBLAS or Pallas/Triton kernel) or
copy is one kernel, so summing what each one reads and writes gives a floor on the
program's time (`bytes / HBM bandwidth`) and says which kernels carry it. This is an
estimate, not a measurement: caches, partial tiles and a kernel that reads an input
twice (a flash-attention tile loop does) are not modelled, and compute-bound kernels
cost more than their bytes. It needs no device: benchmarks/gpu_aot.py compiles for a GPU
that is not here and hands the text to `traffic`.

Rules, per kernel:
* reads: each operand's bytes, except that a fusion parameter used only through
  slices (`dynamic-slice`, `slice`, `gather`; a static slice's own uses followed, so
  a slice of a slice counts the inner one) counts the slices, and the buffer a fusion
  updates in place (operand 0 of a `dynamic-update-slice` that is the fusion's result)
  counts nothing;
* writes: the result's bytes, except an in-place `dynamic-update-slice` writes only its
  update;
* loops: a `while` body counts once per iteration (XLA's `known_trip_count`);
  conditionals and calls count their computations once.

A Pallas (Triton) kernel is opaque to the HLO: by default it reads all its operands and
writes all its results. A caller who knows better (a kernel that updates one column of
an aliased state) passes `kernels`: the Triton kernel's name -> a function of (operand
bytes, result bytes, operand shapes) returning (read, written).
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from typing import Callable

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from lasad_jax.sampling.hlo_check import Instr, arrays, called, nbytes, parse_hlo  # noqa: E402

# Ops that move no data of their own.
_FREE = {"parameter", "get-tuple-element", "tuple", "bitcast", "constant", "after-all",
         "opt-barrier", "optimization-barrier", "partition-id", "replica-id", "fusion-done",
         "copy-done", "all-reduce-done", "all-gather-done", "collective-permute-done"}
_SLICES = {"dynamic-slice", "slice", "gather"}
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"')
_PARAM = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=.*?\bparameter\((\d+)\)")
_HEADER = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s*\(.*\{\s*$")
_TRITON_NAME = re.compile(r'\bname = "([^"]*)"')
KernelBytes = Callable[[list[int], list[int], list[str]], tuple[int, int]]


@dataclasses.dataclass
class Kernel:
    name: str
    kind: str  # "fusion", "gemm" (a matmul fusion), a custom-call target, or the op
    shape: str  # result shape, without layouts
    runs: int  # times it runs (loop trip counts multiplied)
    read: int  # bytes read per run
    written: int  # bytes written per run
    loop: str  # the enclosing `while` instructions, outermost first ("" at top level)

    @property
    def total(self) -> int:
        return self.runs * (self.read + self.written)


class _Program:
    def __init__(self, text: str, comps: dict[str, list[Instr]] | None = None):
        self.comps = parse_hlo(text) if comps is None else comps
        self.params: dict[tuple[str, int], str] = {}
        self.entry = None
        comp = None
        for line in text.splitlines():
            m = _HEADER.match(line)
            if m:
                comp = m.group(2)
                self.entry = comp if m.group(1) else self.entry
                continue
            m = _PARAM.match(line)
            if m and comp:
                self.params[(comp, int(m.group(2)))] = m.group(1)

    def _fused(self, instr: Instr) -> list[Instr]:
        return self.comps.get(next(iter(called(instr, "calls")), ""), [])

    def reads(self, instr: Instr, symbols: dict[str, str]) -> int:
        sizes = [nbytes(symbols.get(op, "")) for op in instr.operands]
        if instr.op not in ("fusion", "fusion-start"):
            return sum(sizes)
        comp = next(iter(called(instr, "calls")), "")
        fused = self.comps.get(comp, [])
        users: dict[str, list[Instr]] = {}
        for i in fused:
            for op in i.operands:
                users.setdefault(op, []).append(i)
        root = next((i for i in fused if i.root), None)
        outputs = set(root.operands) if root is not None and root.op == "tuple" else {
            root.name if root is not None else ""}

        def touched(name: str, full: int) -> int:
            """Bytes of `name` the fusion reads: slices only, or all of it. A static
            slice is followed: a slice of a slice reads only the inner one (XLA fuses a
            column block of a fused projection's output, then one head's part of it)."""
            if name in outputs:  # the fusion writes it out: all of it is read
                return full
            got = 0
            for use in users.get(name, []):
                if use.op == "bitcast":
                    got += touched(use.name, full)
                elif use.op == "slice":
                    got += touched(use.name, nbytes(use.shape))
                elif use.op in _SLICES:
                    got += nbytes(use.shape)
                elif use.op == "dynamic-update-slice" and use.operands[0] == name:
                    # In place when it is an output; otherwise only what is sliced from it.
                    if use.name not in outputs and users.get(use.name):
                        got += touched(use.name, full)
                else:
                    return full
                if got >= full:
                    return full
            return got

        total = 0
        for index, size in enumerate(sizes):
            param = self.params.get((comp, index))
            total += touched(param, size) if param else size
        return total

    def writes(self, instr: Instr) -> int:
        if instr.op == "dynamic-update-slice":
            return 0  # an unfused in-place update: counted by its update operand's producer
        if instr.op not in ("fusion", "fusion-start"):
            return nbytes(instr.shape)
        fused = self._fused(instr)
        by_name = {i.name: i for i in fused}
        root = next((i for i in fused if i.root), None)
        if root is None:
            return nbytes(instr.shape)
        outs = [by_name.get(op) for op in root.operands] if root.op == "tuple" else [root]
        total = 0
        for out in outs:
            node = out
            while node is not None and node.op == "bitcast":
                node = by_name.get(node.operands[0])
            if node is not None and node.op == "dynamic-update-slice":
                update = by_name.get(node.operands[1])
                total += nbytes(update.shape) if update is not None else 0
            elif out is not None:
                total += nbytes(out.shape)
        return total


def _kind(instr: Instr) -> str:
    if instr.op == "custom-call":
        m = re.search(r'custom_call_target="([^"]*)"', instr.attrs)
        return m.group(1) if m else "custom-call"
    if instr.op in ("fusion", "fusion-start"):
        return "gemm" if "gemm" in instr.name or "__triton_gemm" in instr.attrs else "fusion"
    return instr.op


def traffic(hlo_text: str, kernels: dict[str, KernelBytes] | None = None,
            comps: dict[str, list[Instr]] | None = None) -> list[Kernel]:
    """Every kernel of the program in schedule order, with its bytes per run and runs;
    `kernels` gives the traffic of named Pallas kernels (module docstring). `comps`:
    `parse_hlo(hlo_text)` when the caller has it (parsing is most of the time)."""
    prog = _Program(hlo_text, comps)
    kernels_bytes = kernels or {}

    def walk(comp: str, runs: int, loops: list[str]) -> None:
        instrs = prog.comps.get(comp, [])
        symbols = {i.name: i.shape for i in instrs}
        for instr in instrs:
            if instr.op in _FREE:
                continue
            if instr.op == "while":
                m = _TRIP.search(instr.attrs)
                for body in called(instr, "body"):
                    walk(body, runs * (int(m.group(1)) if m else 1), loops + [instr.name])
                continue
            if instr.op in ("call", "conditional"):
                for sub in (called(instr, "to_apply") + called(instr, "branch_computations")
                            + called(instr, "true_computation")
                            + called(instr, "false_computation")):
                    walk(sub, runs, loops)
                continue
            read, written = prog.reads(instr, symbols), prog.writes(instr)
            m = _TRITON_NAME.search(instr.attrs) if instr.op == "custom-call" else None
            if m and m.group(1) in kernels_bytes:
                shapes = [symbols.get(op, "") for op in instr.operands]
                read, written = kernels_bytes[m.group(1)](
                    [nbytes(x) for x in shapes], [nbytes(f"{d}[{','.join(map(str, dims))}]")
                                                  for d, dims in arrays(instr.shape)], shapes)
            found.append(Kernel(instr.name, _kind(instr), instr.shape.split("{")[0], runs,
                                read, written, "/".join(loops)))

    found: list[Kernel] = []
    if prog.entry is not None:
        walk(prog.entry, 1, [])
    return found


def summary(kernels: list[Kernel], loop: bool = False) -> dict:
    """Bytes and kernel launches of a program, or (`loop=True`) per iteration of its most
    frequently run loop (a sampler's token step)."""
    if loop:
        runs = max((k.runs for k in kernels), default=1)
        kernels = [k for k in kernels if k.runs == runs]
        scale = runs
    else:
        scale = 1
    total = sum(k.total for k in kernels) / scale
    by_kind: dict[str, float] = {}
    for k in kernels:
        by_kind[k.kind] = by_kind.get(k.kind, 0) + k.total / scale
    return dict(bytes=int(total), launches=sum(k.runs for k in kernels) // scale,
                bytes_by_kind={k: int(v) for k, v in sorted(by_kind.items(),
                                                            key=lambda kv: -kv[1])})


def _table(text: str, name: str) -> str:
    """The body of one of the HLO text's source tables (`FileNames`, ...)."""
    m = re.search(rf"^{name}\n(.*?)(?:\n\n|\Z)", text, re.M | re.S)
    return m.group(1) if m else ""


def by_source(hlo_text: str, kernels: list[Kernel], package: str = "lasad_jax/") -> dict:
    """Bytes per source function: each kernel goes to the innermost function of its stack
    (JAX records one per op) whose file path contains `package`; "?" when none does
    (XLA's own copies, or ops without a recorded stack). Sorted, largest first."""
    totals: dict[str, int] = {}
    for k, key in zip(kernels, kernel_sources(hlo_text, kernels, package)):
        totals[key] = totals.get(key, 0) + k.total
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def kernel_sources(hlo_text: str, kernels: list[Kernel], package: str = "lasad_jax/",
                   comps: dict[str, list[Instr]] | None = None) -> list[str]:
    """Each kernel's source function, as `by_source` attributes it (`comps` as `traffic`)."""
    files = dict(re.findall(r'^(\d+) "(.*)"$', _table(hlo_text, "FileNames"), re.M))
    funcs = dict(re.findall(r'^(\d+) "(.*)"$', _table(hlo_text, "FunctionNames"), re.M))
    locs = {a: (files.get(f, "?"), funcs.get(g, "?")) for a, f, g in re.findall(
        r"^(\d+) \{file_name_id=(\d+) function_name_id=(\d+)",
        _table(hlo_text, "FileLocations"), re.M)}
    frames = dict((a, (loc, parent)) for a, loc, parent in re.findall(
        r"^(\d+) \{file_location_id=(\d+) parent_frame_id=(\d+)",
        _table(hlo_text, "StackFrames"), re.M))
    comps = parse_hlo(hlo_text) if comps is None else comps
    instrs = {i.name: i for c in comps.values() for i in c}

    def frame_of(instr: Instr | None) -> str | None:
        if instr is None:
            return None
        m = re.search(r"stack_frame_id=(\d+)", instr.attrs)
        if m:
            return m.group(1)
        for comp in called(instr, "calls"):  # a fusion: its ops carry the stacks
            for inner in reversed(comps.get(comp, [])):
                m = re.search(r"stack_frame_id=(\d+)", inner.attrs)
                if m:
                    return m.group(1)
        return None

    def source(frame: str | None) -> str:
        seen = set()
        while frame in frames and frame not in seen:
            seen.add(frame)
            loc, parent = frames[frame]
            path, func = locs.get(loc, ("?", "?"))
            if package in path:
                return f"{path.split(package)[-1]}:{func}"
            frame = parent
        return "?"

    return [source(frame_of(instrs.get(k.name))) for k in kernels]


def main(argv: list[str]) -> None:
    """`python benchmarks/hlo_traffic.py PROGRAM.hlo [N] [--by_source]`: the N heaviest
    kernels, or the bytes per lasad_jax source function."""
    text = open(argv[0]).read()
    kernels = traffic(text)
    numbers = [a for a in argv[1:] if a.isdigit()]
    top = int(numbers[0]) if numbers else 15
    s = summary(kernels)
    print(f"{s['bytes'] / 1e9:.3f} GB in {s['launches']} kernel launches")
    if "--by_source" in argv:
        for key, total in list(by_source(text, kernels).items())[:top]:
            print(f"{total / 1e9:9.3f} GB  {key}")
        return
    for k in sorted(kernels, key=lambda k: -k.total)[:top]:
        print(f"{k.total / 1e9:9.3f} GB  x{k.runs:<5} {k.kind:22s} {k.name:36s} {k.shape[:60]}")


if __name__ == "__main__":
    main(sys.argv[1:])
