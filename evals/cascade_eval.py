"""A cascade chosen on dev and applied unchanged on test: qwen2.5-coder-0.5b, then qwen2.5-coder-1.5b.

1. `finprog cascade-sweep` over the two models' dev runs (each alone, solve's defaults,
   dev_200's first 100) with the rule `executes+logprob`: the threshold with the highest
   dev EmAcc, the cheapest of equals (evals/cascade/dev/).
2. That rule, unchanged, in a live `finprog solve --cascade` on test_100
   (evals/studies/test-retrieved/runs/cascade_..., a cell of that study), and the same sweep over the two models' test
   runs as a check that the live cascade and the offline routing agree (evals/cascade/test/).

    python evals/cascade_eval.py    # after the context-dev study and the test-retrieved study made the single runs

Run from the repository root with FINPROG_DATA_DIR=../shared/finqa.
"""

from __future__ import annotations

import os
from pathlib import Path

from finprog.cli import main as finprog
from finprog.sweep import sweep

HERE = Path(os.path.relpath(Path(__file__).resolve().parent))  # relative, so records name no machine's folders
MODELS = ("qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b")
RULE = "executes+logprob"
DEV = [HERE / "studies" / "context-dev" / "runs" / f"{m}_retrieved5-1shot-gold2077_first100" for m in MODELS]
TEST = [HERE / "studies" / "test-retrieved" / "runs" / f"{m}_program-constrained" for m in MODELS]
CASCADE = HERE / "studies" / "test-retrieved" / "runs" / "cascade_qwen2.5-coder-0.5b+1.5b_program-constrained"


def main() -> None:
    every, _ = sweep(DEV, RULE, target=1.0)
    target = max(point["accuracy"] for point in every["points"])
    chosen, _ = sweep(DEV, RULE, target=target, out=HERE / "cascade" / "dev")
    rule = chosen["chosen"]["rule"]
    print(f"dev: best cascade EmAcc {target:.0%}, reached most cheaply by {rule}", flush=True)
    resume = ["--resume"] if (CASCADE / "run.json").exists() else []
    finprog(["solve", "--cascade", *MODELS, "--accept", rule, "--data", "test_100", "--exemplars", "train_2077",
             "--gold-exemplars", "--out", str(CASCADE), *resume])
    finprog(["cascade-sweep", *map(str, TEST), "--rule", RULE, "--target", f"{target}", "--out",
             str(HERE / "cascade" / "test")])


if __name__ == "__main__":
    main()
