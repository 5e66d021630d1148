"""How results are written for people: FLOPs, parameters, percentages, intervals and the names of techniques.

The report's tables, its plot and the cascade sweep write numbers the same way.
"""

from __future__ import annotations

TECHNIQUE_NAMES = {
    "zero-shot": "zero-shot", "few-shot": "few-shot", "lora": "LoRA", "qlora": "QLoRA", "full": "full FT",
    "cascade": "cascade",
}


def format_flops(flops: float | None) -> str:
    """`1.23e17`: three significant digits, no exponent sign or padding; `unknown` for None."""
    if flops is None:
        return "unknown"
    if flops == 0:
        return "0"
    mantissa, exponent = f"{flops:.2e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def format_params(params: int) -> str:
    """`494M`, `1.5B`."""
    return f"{params / 1e9:.3g}B" if params >= 1e9 else f"{params / 1e6:.3g}M"


def format_percent(fraction: float) -> str:
    """`34.7%`."""
    return f"{100 * fraction:.1f}%"


def format_interval(interval: tuple[float, float]) -> str:
    """`33.0-51.8%`."""
    return f"{100 * interval[0]:.1f}-{100 * interval[1]:.1f}%"
