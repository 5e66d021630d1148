"""Prepare `gpu_carry/` for `evals/gpu_check.py` on a GPU machine without network access; print how to run it there.

The machine this is for (as last read) has Python 3.12, torch 2.11 (CUDA 13.0),
transformers 5.17, peft, accelerate, tokenizers, safetensors, sympy, tqdm, matplotlib, pytest
and hypothesis, and none of finprog's other dependencies; one call to it carries at most
64 MiB, the checkout included. `gpu_carry/` (ignored by git) gets:
- `wheels/`: cp312 manylinux wheels of the versions installed here for transformers, peft,
  accelerate, bitsandbytes, llguidance, lark and rank-bm25, and huggingface-hub 1.x (transformers
  needs at least 1.31; 2.x needs packages the machine lacks). bitsandbytes ships binaries for
  every CUDA and ROCm release (43 MB packed): only the CPU one and those for `--cuda` stay;
- `finqa/`: the FinQA files the check reads (dev questions, training examples).

The trained adapters under `evals/adapters/` and `finprog/adapters/` together are larger than the
limit and the check needs none of them (it names its own checkpoints), so they stay behind: the script
prints the git commands that untrack them for the call and track them again after it (the files never
leave the disk).

    python evals/gpu_wheels.py [--cuda 13] > evals/gpu_wheels.txt   # pip's own output goes to stderr
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

from finprog.data import DataValidationError, resolve_data
from finprog.provenance import header

REPO = Path(__file__).resolve().parents[1]
CARRY = "gpu_carry"
LIMIT = 64 * 2**20  # what one call to the GPU machine carries, checkout included
THERE = ("torch", "transformers", "accelerate", "peft", "sympy", "tqdm", "matplotlib")  # finprog's needs it has
CARRIED = ("transformers", "peft", "accelerate", "bitsandbytes", "llguidance", "lark", "rank-bm25")  # pinned as here
EXTRA = ("huggingface-hub>=1.31,<2",)
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_24_x86_64", "manylinux_2_28_x86_64",
             "manylinux_2_31_x86_64")
DATA = ("dev_200", "train_100")
LEFT_BEHIND = ("evals/adapters", "finprog/adapters")


def download(folder: Path) -> None:
    requirements = [f"{name}=={metadata.version(name)}" for name in CARRIED] + list(EXTRA)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
               "--implementation", "cp", "--progress-bar", "off", "-d", str(folder)]
    command += [arg for platform in PLATFORMS for arg in ("--platform", platform)] + requirements
    subprocess.run(command, check=True, stdout=sys.stderr)  # pip's progress is not the report


def slim_bitsandbytes(folder: Path, cuda: str) -> None:
    """Rewrite the bitsandbytes wheel without the binaries for other CUDA releases, ROCm and XPU (RECORD to match)."""
    (wheel,) = folder.glob("bitsandbytes-*.whl")
    keep = re.compile(rf"bitsandbytes/libbitsandbytes_(cpu|cuda{cuda}\d*)\.so")

    def kept(name: str) -> bool:
        return not name.startswith("bitsandbytes/libbitsandbytes_") or bool(keep.fullmatch(name))

    slim = wheel.with_suffix(".slim")
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as target:
        for info in source.infolist():
            if not kept(info.filename):
                continue
            data = source.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines(keepends=True)
                data = "".join(line for line in lines if kept(line.split(",", 1)[0])).encode()
            target.writestr(info, data)
    slim.replace(wheel)


def copy_data(folder: Path) -> None:
    folder.mkdir(parents=True)
    for name in DATA:
        shutil.copy(resolve_data(name)[0], folder / f"{name}.json")


def travelling_files() -> list[str]:
    """What a call sends besides the carried folder: tracked files and untracked files git does not ignore."""
    listed = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout.split("\0")
    return [name for name in listed if name and (REPO / name).is_file()]


def left_behind(name: str) -> bool:
    return name.startswith(tuple(folder + "/" for folder in LEFT_BEHIND))


def checkout_bytes() -> int:
    """What travels besides the carried folder once LEFT_BEHIND is untracked."""
    return sum((REPO / name).stat().st_size for name in travelling_files() if not left_behind(name))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cuda", default="13", help="CUDA major version of torch on the GPU machine (default: 13)")
    args = parser.parse_args()

    carry = REPO / CARRY
    shutil.rmtree(carry, ignore_errors=True)
    try:
        copy_data(carry / "finqa")
    except DataValidationError as error:
        print(f"error: {error} (set FINPROG_DATA_DIR to the folder of the FinQA files)", file=sys.stderr)
        return 2
    download(carry / "wheels")
    slim_bitsandbytes(carry / "wheels", args.cuda)

    print(header())
    carried = sorted(path for path in carry.rglob("*") if path.is_file())
    for path in carried:
        print(f"{path.stat().st_size / 2**20:7.2f} MiB  {path.relative_to(REPO)}")
    carried_bytes = sum(path.stat().st_size for path in carried)
    total = carried_bytes + checkout_bytes()
    behind = sum((REPO / name).stat().st_size for name in travelling_files() if left_behind(name))
    folders = " ".join(LEFT_BEHIND)
    excluded = "".join(f"/{folder}/\\n" for folder in LEFT_BEHIND)
    unexcluded = "; ".join(f"\\#^/{folder}/$#d" for folder in LEFT_BEHIND)
    print(f"{CARRY}/: {carried_bytes / 2**20:.1f} MiB; with the checkout, {folders} "
          f"({behind / 2**20:.1f} MiB) left behind: {total / 2**20:.1f} MiB of {LIMIT / 2**20:.0f} MiB")
    print(f"\nbefore the call, untrack {folders} (git status shows their files as staged deletions meanwhile):\n"
          f"git rm -r -q --cached {folders} && printf '{excluded}' >> .git/info/exclude\n"
          f"after the call, track them again:\n"
          f"git reset -q -- {folders} && sed -i '{unexcluded}' .git/info/exclude\n")
    print(f"carry: [\"{CARRY}\"]\ncommand (the report and a log land in $OUT):\n"
          f"set -o pipefail; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir "
          f"--target /tmp/site {CARRY}/wheels/*.whl && export PYTHONPATH=/tmp/site:$PWD "
          f"FINPROG_DATA_DIR=$PWD/{CARRY}/finqa PYTHONUNBUFFERED=1 && "
          f"python3 evals/gpu_check.py --out $OUT 2>&1 | tee $OUT/gpu_check.log")
    return 0 if total <= LIMIT else 1


if __name__ == "__main__":
    sys.exit(main())
