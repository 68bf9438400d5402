"""What a compiled program does, read from its traced jaxpr and its optimized HLO text (for `rho-jax compile`).

  jaxpr_flops      FLOPs of the matrix products, a scan's body times its length (XLA's own cost analysis
                   counts a loop body once, so with scanned layers it reports about one layer's worth)
  hlo_collectives  the collectives one call executes per device, a while loop's body times its trip count
"""

from __future__ import annotations

import math
import re

import jax

COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")


def _subjaxprs(value):
    core = jax.extend.core
    if isinstance(value, core.ClosedJaxpr):
        yield value.jaxpr
    elif isinstance(value, core.Jaxpr):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _subjaxprs(v)


def jaxpr_flops(jaxpr) -> float:
    """FLOPs of a jaxpr's matrix products: 2 x output elements x contracted size per dot_general, inner
    jaxprs included, a scan's body times its length, a cond's most expensive branch."""
    total = 0.0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in contract)
        inner = [jaxpr_flops(j) for v in eqn.params.values() for j in _subjaxprs(v)]
        if eqn.primitive.name == "cond":
            total += max(inner, default=0.0)
        else:
            total += eqn.params.get("length", 1) * sum(inner) if eqn.primitive.name == "scan" else sum(inner)
    return total


_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4,
                "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
_ARRAY = re.compile(r"\b([a-z]+\d*(?:e\d+m\d+\w*)?)\[([\d,]*)\]")
_INSTR = re.compile(r"^\s+(?:ROOT )?%?[\w.\-]+ = ")
_COMP = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$")


def _shape_bytes(shape: str) -> int:
    return sum(_DTYPE_BYTES.get(dt, 1) * math.prod(int(x) for x in dims.split(",") if x)
               for dt, dims in _ARRAY.findall(shape))


def _split_instruction(line: str) -> tuple[str, str, str]:
    """'  %x = SHAPE opcode(args), attrs' -> (shape, opcode, rest); SHAPE may be a nested tuple."""
    rest = _INSTR.sub("", line, count=1)
    depth = end = 0
    for end, ch in enumerate(rest):  # the shape ends at the first space outside parentheses/braces
        depth += ch in "({[" and 1 or (ch in ")}]" and -1 or 0)
        if ch == " " and depth == 0:
            break
    shape, tail = rest[:end], rest[end + 1:]
    opcode = tail.split("(", 1)[0]
    return shape, opcode, tail


def _computations(hlo: str) -> tuple[dict, str]:
    comps, entry, name = {}, "", None
    for line in hlo.splitlines():
        m = _COMP.match(line)
        if m and not line.startswith(" "):
            name = m.group(1)
            comps[name] = []
            entry = name if line.startswith("ENTRY") else entry
        elif name and _INSTR.match(line):
            comps[name].append(_split_instruction(line))
    return comps, entry


def _trip_count(cond: list) -> int:
    """A while loop's iterations from its condition: the integer its counter is compared against."""
    consts = [int(m) for _, op, tail in cond if op == "constant" for m in re.findall(r"constant\((-?\d+)\)", tail)]
    return max(consts, default=1)


def hlo_collectives(hlo: str) -> dict[str, list]:
    """{op: [count, bytes]} of the collectives one call of an optimized HLO module executes per device:
    async pairs counted once (at -start), loop bodies times their trip counts."""
    comps, entry = _computations(hlo)
    memo: dict[str, dict] = {}

    def visit(name: str) -> dict:
        if name in memo:
            return memo[name]
        memo[name] = {}  # guards recursion through malformed text
        out: dict[str, list] = {}
        for shape, op, tail in comps.get(name, []):
            base = op.removesuffix("-start")
            if base in COLLECTIVES and not op.endswith("-done"):
                nbytes = _shape_bytes(shape)
                if op.endswith("-start") and shape.startswith("("):  # (operands, results, ...): the result half
                    nbytes -= _shape_bytes(shape) // 2 if base == "all-reduce" else 0
                acc = out.setdefault(base, [0, 0])
                acc[0], acc[1] = acc[0] + 1, acc[1] + nbytes
            times = 1
            if op == "while":
                cond = re.search(r"condition=%?([\w.\-]+)", tail)
                times = _trip_count(comps.get(cond.group(1), [])) if cond else 1
            # every computation the instruction names: a loop's body, a fusion's or async wrapper's callee, ...
            for callee in {n for n in re.findall(r"%([\w.\-]+)", tail) if n in comps and n != name}:
                for k, (c, b) in visit(callee).items():
                    acc = out.setdefault(k, [0, 0])
                    acc[0], acc[1] = acc[0] + times * c, acc[1] + times * b
        memo[name] = out
        return out

    return visit(entry)
