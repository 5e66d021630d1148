"""Time parse + execute of the 400 gold programs of the FinQA samples (best of 5).

    python evals/bench/dsl.py [FINQA_DIR] > evals/bench/dsl.txt

FINQA_DIR defaults to $FINPROG_DATA_DIR, else ../shared/finqa.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from finprog import dsl
from finprog.data import load_finqa
from finprog.provenance import header

FILES = ["train_100.json", "dev_200.json", "test_100.json"]


def main() -> None:
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("FINPROG_DATA_DIR", "../shared/finqa"))
    examples = [e for name in FILES for e in load_finqa(folder / name)]
    dsl.parse("add(1, 2)")  # build the parser once, as any long-running use does

    def run() -> int:
        return sum(dsl.execute(dsl.parse(e.program), e.table) == e.exe_ans for e in examples)

    timings = []
    for _ in range(5):
        start = time.perf_counter()
        correct = run()
        timings.append(time.perf_counter() - start)
    print(header())
    print(f"programs: {len(examples)}, executed to exe_ans: {correct}")
    print(f"parse+execute, best of 5: {min(timings):.4f} s ({min(timings) / len(examples) * 1e6:.0f} us per program); "
          f"all runs: {', '.join(f'{t:.4f}' for t in timings)}")
    start = time.perf_counter()
    dsl.build_parser()
    print(f"building the LALR parser once: {time.perf_counter() - start:.4f} s")


if __name__ == "__main__":
    main()
