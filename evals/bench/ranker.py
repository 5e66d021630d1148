"""Time to rank one question's page: the shipped linear ranker against the cross-encoder of
evals/retrieval/ranker_minilm.py (`finprog.cross_encoders.CrossEncoderRanker`).

Side by side in one run, on dev_200, best of 3 passes each (`retrieval.top_facts` at k = 5,
as a prompt takes them); the cross-encoder's time includes the linear ranking it reorders.

    python evals/retrieval/ranker_minilm.py --save minilm-cross && python evals/bench/ranker.py minilm-cross \
        > evals/bench/ranker.txt

Run from the repository root with FINPROG_DATA_DIR=../shared/finqa and HF_HUB_OFFLINE=1, with the CPU to itself.
"""

from __future__ import annotations

import argparse
import time

import torch

from finprog import retrieval
from finprog.cross_encoders import CrossEncoderRanker
from finprog.data import load_finqa, resolve_data
from finprog.provenance import header


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("minilm", help="the cross-encoder `evals/retrieval/ranker_minilm.py --save DIR` saved")
    args = parser.parse_args()
    print(header())
    dev = load_finqa(resolve_data("dev_200")[0])
    rankers = {"linear": retrieval.ranker("linear"), "cross-encoder": CrossEncoderRanker(args.minilm)}
    print(f"time to rank one question's page (dev_200, {len(dev)} questions, best of 3 passes; "
          f"torch threads: {torch.get_num_threads()})")

    def seconds(rank) -> float:
        """Seconds to take the top 5 facts of every page, one after another."""
        CrossEncoderRanker.scored.cache_clear()  # time the scoring, not the cache of scored pages
        started = time.perf_counter()
        for example in dev:
            retrieval.top_facts(example, 5, rank)
        return time.perf_counter() - started

    ms = {name: min(seconds(rank) for _ in range(3)) / len(dev) * 1e3 for name, rank in rankers.items()}
    for name, value in ms.items():
        print(f"{name:<14}{value:>8.2f} ms per question")
    print(f"ratio: the cross-encoder takes {ms['cross-encoder'] / ms['linear']:.0f}x the linear ranker's time")


if __name__ == "__main__":
    main()
