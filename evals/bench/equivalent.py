"""Worst cases of the symbolic program comparison (`dsl.equivalent`): seconds per comparison, and sympy's alone.

Each case is a program within the grammar's limits (32 steps, 4,000 characters),
compared with itself (identical formulas) and with a variant whose last step is
another operation (formulas that differ). sympy alone (building and simplifying the
formula, the comparison before the operand limit) is timed once per case up to a cap.

    python evals/bench/equivalent.py > evals/bench/equivalent.txt
"""

from __future__ import annotations

import signal
import time

from finprog import dsl
from finprog.provenance import header

SIMPLIFY_CAP_S = 10


def tower(op: str, steps: int) -> str:
    """`divide(14, 19)`, then `op(#i, #i)` for each step, then `greater(#last, 19)` (the shape of a yes/no answer)."""
    body = [f"{op}(#{i}, #{i})" for i in range(steps)]
    return ", ".join(["divide(14, 19)", *body, f"greater(#{steps}, 19)"])


def chain(ops: list[str], steps: int, operands: int = 16) -> str:
    """Each step combines the step before with a new operand, the reference first and second in turn."""
    text = [f"{ops[0]}(1, 2)"]
    for i in range(1, steps):
        args = [f"#{i - 1}", str(i % operands + 3)]
        text.append(f"{ops[i % len(ops)]}({', '.join(args[:: -1 if i % 2 else 1])})")
    return ", ".join(text)


def fan_in(steps: int) -> str:
    """Every step adds the two steps before it (Fibonacci: the last formula has ~2 million operands)."""
    return ", ".join(["add(1, 2)", "multiply(#0, 3)"] + [f"add(#{i - 1}, #{i - 2})" for i in range(2, steps)])


def wide(steps: int) -> str:
    """Sixteen operands, then every step multiplies its two halves' sums together (each step used once)."""
    first = [f"add({2 * i + 1}, {2 * i + 2})" for i in range(16)]
    rest = [f"multiply(#{2 * i}, #{2 * i + 1})" for i in range(steps - 16)]
    return ", ".join(first + rest)


CASES = {
    "exp tower, 30 steps (the reported hang)": tower("exp", 30),
    "exp tower, 10 steps": tower("exp", 10),
    "multiply tower, 30 steps": tower("multiply", 30),
    "divide tower, 30 steps": tower("divide", 30),
    "fan-in: add(#i-1, #i-2), 32 steps": fan_in(32),
    "wide: 16 sums multiplied pairwise, 31 steps": wide(31),
    "continued fraction, 32 steps": chain(["add", "divide"], 32),
    f"continued fraction, {dsl.MAX_SIMPLIFIED_OPERANDS - 1} steps (at the limit)":
        chain(["add", "divide"], dsl.MAX_SIMPLIFIED_OPERANDS - 1),
    "exp/subtract/divide chain, 32 steps": chain(["exp", "subtract", "divide"], 32),
    "multiply/add chain, 32 steps": chain(["multiply", "add"], 32),
}


def variant(program: dsl.Program) -> dsl.Program:
    """The same program with its last step's operation changed (add <-> subtract, else -> add)."""
    last = program.steps[-1]
    op = {"add": "subtract", "greater": "greater"}.get(last.op, "add")
    if op == last.op:  # a greater step: swap its arguments instead
        last = dsl.Step(op, last.second, last.first)
    return dsl.Program(program.steps[:-1] + (dsl.Step(op, last.first, last.second),))


def seconds(call) -> tuple[float, object]:
    start = time.perf_counter()
    result = call()
    return time.perf_counter() - start, result


class _Timeout(Exception):
    pass


def simplify_alone(program: dsl.Program) -> str:
    """Seconds sympy takes to build and simplify the program's formula, or '>CAP' when it runs past the cap."""
    symbols = dsl.operand_symbols(program)

    def stop(*_):
        raise _Timeout

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(SIMPLIFY_CAP_S)
    try:
        took, _ = seconds(lambda: dsl.symbolic(program, symbols))
        return f"{took:.2f}"
    except _Timeout:
        return f">{SIMPLIFY_CAP_S}"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def main() -> None:
    dsl.equivalent(dsl.parse("add(1, 2)"), dsl.parse("add(2, 1)"))  # import sympy once, as a long run does
    print(header())
    print(f"# dsl.equivalent, operand limit {dsl.MAX_SIMPLIFIED_OPERANDS}; sympy alone capped at {SIMPLIFY_CAP_S} s")
    print(f"{'case':<48}{'steps':>6}{'chars':>7}{'operands':>12}{'same s':>9}{'other s':>9}{'sympy s':>10}")
    worst = 0.0
    for name, text in CASES.items():
        program = dsl.parse(text)
        same, equal = seconds(lambda: dsl.equivalent(program, program))
        other, differs = seconds(lambda: dsl.equivalent(program, variant(program)))
        assert equal and not differs, name
        worst = max(worst, same, other)
        print(f"{name:<48}{len(program.steps):>6}{len(text):>7}{dsl.operand_count(program):>12}"
              f"{same:>9.3f}{other:>9.3f}{simplify_alone(program):>10}", flush=True)
    print(f"\nslowest comparison: {worst:.3f} s")


if __name__ == "__main__":
    main()
