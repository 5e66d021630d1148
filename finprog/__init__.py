"""finprog: which model and technique reach a FinQA exact-match accuracy for the fewest FLOPs.

The library API, for notebooks and scripts (the README's "Use as a library" shows it
in use). Names load their module on first use, so `import finprog` imports no torch;
only solving, training and `model_config` load it. The names differ from the
submodules' (`solve_run`, not `solve`), because Python binds a submodule's name on
the package when it is imported, which would hide a function of the same name.
"""

import logging
import warnings
from importlib import import_module

__version__ = "0.1.0"

# On CPUs with AVX512-BF16, bitsandbytes tries at import to fetch a 4-bit kernel from the model hub and, offline,
# logs two warnings that read like errors; it then uses its own CPU kernels, as every measurement here does.
for _logger in ("kernels", "bitsandbytes.backends.cpu.ops"):
    logging.getLogger(_logger).setLevel(logging.ERROR)
# PEFT reads `model.is_gradient_checkpointing`, which transformers 5.25 deprecates: a warning on every adapter load
# that the user can do nothing about.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)

_EXPORTS = {  # name -> (module, attribute)
    "FinprogError": ("finprog.errors", "FinprogError"),
    "Example": ("finprog.data", "Example"),
    "load_finqa": ("finprog.data", "load_finqa"),
    "resolve_data": ("finprog.data", "resolve_data"),
    "parse": ("finprog.dsl", "parse"),
    "execute": ("finprog.dsl", "execute"),
    "evaluate_programs": ("finprog.evaluation", "evaluate_programs"),
    "load_predictions": ("finprog.evaluation", "load_predictions"),
    "score": ("finprog.evaluation", "score"),
    "SolveOptions": ("finprog.solve", "SolveOptions"),
    "solve_run": ("finprog.solve", "solve"),
    "compare_runs": ("finprog.compare", "compare_runs"),
    "format_comparison": ("finprog.compare", "format_comparison"),
    "CascadeOptions": ("finprog.cascade", "CascadeOptions"),
    "cascade_run": ("finprog.cascade", "cascade"),
    "sweep_cascade": ("finprog.sweep", "sweep"),
    "format_sweep": ("finprog.sweep", "format_sweep"),
    "TrainOptions": ("finprog.training", "TrainOptions"),
    "train": ("finprog.training", "train"),
    "export_adapter": ("finprog.export", "export_adapter"),
    "ModelShape": ("finprog.flops", "ModelShape"),
    "count_flops": ("finprog.flops", "summary"),
    "model_config": ("finprog.models", "model_config"),
    "report_runs": ("finprog.report", "report"),
    "format_table": ("finprog.report", "format_table"),
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'finprog' has no attribute {name!r}")
    module, attribute = _EXPORTS[name]
    value = getattr(import_module(module), attribute)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
