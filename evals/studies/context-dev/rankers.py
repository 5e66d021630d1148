"""The rankers some context-dev cells name and finprog does not register: FinQA's released retriever scores
(`finqa`) and a saved MiniLM cross-encoder (`minilm`, the folder in $FINPROG_MINILM, default minilm-cross)."""

import os

from finprog import retrieval
from finprog.cross_encoders import CrossEncoderRanker, ReleasedRanker

retrieval.RANKERS["finqa"] = ReleasedRanker
retrieval.RANKERS["minilm"] = lambda: CrossEncoderRanker(os.environ.get("FINPROG_MINILM", "minilm-cross"))
