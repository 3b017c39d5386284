"""Tensor inventories from local GGUFs (single and split), from hf:// over HTTP range requests
(a real range-capable server on 127.0.0.1 driven by the real huggingface_hub client), and the
``quantforge inventory`` command."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from quantforge.cli import main
from quantforge.errors import InventoryError
from quantforge.gguf_header import read_header
from quantforge.inventory import TensorEntry, TensorInventory, load_inventory
from tests.support import cached_quant, write_split
from tests.support.range_server import COMMIT, RangeServer

SMOL_HPARAMS = {
    "block_count": 30,
    "context_length": 8192,
    "embedding_length": 576,
    "feed_forward_length": 1536,
    "attention.head_count": 9,
    "attention.head_count_kv": 3,
    "rope.freq_base": 100000.0,
    "attention.layer_norm_rms_epsilon": pytest.approx(1e-5, rel=1e-6),
    "vocab_size": 49152,
    "rope.dimension_count": 64,
}


def test_local_smol_f16(smol_f16: Path) -> None:
    inv = load_inventory(smol_f16)
    assert inv.source == str(smol_f16)
    assert inv.arch == "llama"
    assert inv.layout is None
    assert inv.hparams == SMOL_HPARAMS
    assert len(inv.tensors) == 272
    assert inv.tensors[0] == TensorEntry(name="token_embd.weight", shape=(576, 49152), dtype="f16", shard=0)
    assert inv.tensors[1] == TensorEntry(name="blk.0.attn_norm.weight", shape=(576,), dtype="f32", shard=0)
    assert inv.tensors[-1] == TensorEntry(name="output_norm.weight", shape=(576,), dtype="f32", shard=0)
    assert sum(t.dtype == "f32" for t in inv.tensors) == 61
    assert inv.n_params == 134_515_008
    assert inv.metadata_bytes == 1_785_664
    assert inv.n_shards == 1 and inv.bytes_fetched is None
    assert inv.kv is not None and len(inv.kv) == 33
    assert inv.kv_value("general.file_type") == 1
    assert inv.kv_value("tokenizer.ggml.tokens")[:3] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


@pytest.fixture(scope="module")
def smol_iq4_k(ik_quantize: Path, smol_f16: Path, smol_imatrix: Path) -> Path:
    return cached_quant(ik_quantize, smol_f16, "IQ4_K", imatrix=smol_imatrix)


def test_local_ik_quant_names_ik_types(smol_iq4_k: Path, ik_fixtures: Path) -> None:
    inv = load_inventory(smol_iq4_k, engine="ik")
    listing = [line.split() for line in (ik_fixtures / "tensors-smol-IQ4_K.txt").read_text().splitlines()]
    assert [(t.name, t.dtype,
             "x".join(map(str, t.shape))) for t in inv.tensors] == [tuple(r[:3]) for r in listing]
    assert {t.dtype for t in inv.tensors} == {"f32", "q5_0", "q6_0", "q8_0", "iq4_k"}


@pytest.fixture(scope="module")
def split_set(smol_iq4_k: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    d = tmp_path_factory.mktemp("split")
    return write_split(smol_iq4_k, d / "smol-IQ4_K", 3)


def _without_shards(inv: TensorInventory) -> list[tuple[str, tuple[int, ...], str]]:
    return [(t.name, t.shape, t.dtype) for t in inv.tensors]


def test_local_split_set_from_any_shard(split_set: list[Path], smol_iq4_k: Path) -> None:
    single = load_inventory(smol_iq4_k)
    for shard in (split_set[0], split_set[2]):
        inv = load_inventory(shard)
        assert inv.n_shards == 3
        assert _without_shards(inv) == _without_shards(single)
        assert [t.shard for t in inv.tensors] == [0] * 91 + [1] * 91 + [2] * 90
        assert inv.hparams == single.hparams
        assert inv.kv_value("split.count") == 3
        assert inv.metadata_bytes == read_header(split_set[0]).data_offset


def test_split_set_missing_shard(split_set: list[Path], tmp_path: Path) -> None:
    for p in split_set:
        shutil.copy(p, tmp_path / p.name)
    (tmp_path / split_set[1].name).unlink()
    with pytest.raises(InventoryError) as e:
        load_inventory(tmp_path / split_set[0].name)
    assert e.value.message == "shard smol-IQ4_K-00002-of-00003.gguf of the split set is missing"


def test_split_shard_from_another_set(split_set: list[Path], tmp_path: Path) -> None:
    for p in split_set:
        shutil.copy(p, tmp_path / p.name)
    shutil.copy(split_set[0], tmp_path / split_set[1].name)  # shard 1 under shard 2's name
    with pytest.raises(InventoryError, match="shard says it is 1 of 3, expected 2 of 3"):
        load_inventory(tmp_path / split_set[0].name)


CUSTOM_Q = "ffn_down=q6_K,attn_.*=iq4_ks,ffn_(gate|up)=iq3_k,token_embd=q8_0"


def test_mainline_gguf_split_of_the_fixtures_custom_quant(
    mainline_bin_dir: Path, ik_quantize: Path, smol_f16: Path, smol_imatrix: Path, ik_fixtures: Path,
    tmp_path: Path,
) -> None:
    # The fixtures' quantize-c-custom and gguf-split commands; the real llama-gguf-split (mainline)
    # writes the shards, and they have the recorded byte sizes.
    custom = cached_quant(ik_quantize, smol_f16, "IQ4_K", imatrix=smol_imatrix, extra=("--custom-q",
                                                                                       CUSTOM_Q))
    proc = subprocess.run(
        [str(mainline_bin_dir / "llama-gguf-split"), "--split", "--split-max-size", "40M", str(custom),
         str(tmp_path / "smol-custom")],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    shards = sorted(tmp_path.glob("smol-custom-*-of-*.gguf"))
    sizes = {line.split()[-1]: int(line.split()[4])
             for line in (ik_fixtures / "sizes.txt").read_text().splitlines()}
    assert [p.stat().st_size for p in shards] == [sizes[f"split/{p.name}"] for p in shards] == [
        41_474_624, 39_304_448, 17_791_232]
    inv = load_inventory(shards[1], engine="ik")
    assert inv.n_shards == 3
    listing = [line.split() for line in (ik_fixtures / "tensors-smol-custom.txt").read_text().splitlines()]
    assert [(t.name, t.dtype,
             "x".join(map(str, t.shape))) for t in inv.tensors] == [tuple(r[:3]) for r in listing]
    assert _without_shards(inv) == _without_shards(load_inventory(custom, engine="ik"))
    assert [sum(t.shard == k for t in inv.tensors) for k in range(3)] == [
        len(read_header(p).tensors) for p in shards]


def test_shipped_id_dispatches_to_synth() -> None:
    inv = load_inventory("deepseek-ai/DeepSeek-R1-0528", engine="ik")
    assert inv.arch == "deepseek2" and inv.layout == "ik" and len(inv.tensors) == 1147
    assert inv.kv is None


# --- remote: hf:// through HTTP range requests -------------------------------------------------


@pytest.fixture()
def hub(monkeypatch: pytest.MonkeyPatch, smol_f16: Path, split_set: list[Path]) -> Iterator[RangeServer]:
    import huggingface_hub.constants

    files = {"smol-f16.gguf": smol_f16, **{f"split/{p.name}": p for p in split_set}}
    with RangeServer({"qf-test/smol": files,
                      "qf-test/broken": {"split/" + split_set[0].name: split_set[0]}}) as srv:
        monkeypatch.setenv("HF_ENDPOINT", srv.url)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        # huggingface_hub reads HF_HUB_OFFLINE once at import (conftest set it to 1).
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        yield srv


def test_remote_single_file_fetches_only_the_header(hub: RangeServer, smol_f16: Path) -> None:
    inv = load_inventory("hf://qf-test/smol/smol-f16.gguf")
    local = load_inventory(smol_f16)
    assert inv.model_dump(exclude={"source", "bytes_fetched"}) == local.model_dump(exclude={"source",
                                                                                            "bytes_fetched"})
    assert inv.source == "hf://qf-test/smol/smol-f16.gguf"
    # 64 KiB, then doubling: 2 MiB for a 1,785,664-byte header, all of it counted by the server.
    assert inv.bytes_fetched == 2_097_152 == hub.bytes_sent
    assert inv.bytes_fetched < 2 * local.metadata_bytes  # type: ignore[operator]
    ranges = [r for m, _, r in hub.requests if m == "GET"]
    assert ranges[0] == "bytes=0-65535" and len(ranges) == 6
    assert [m for m, _, _ in hub.requests].count("HEAD") == 1


def test_remote_split_set_at_a_revision(hub: RangeServer, split_set: list[Path], smol_iq4_k: Path) -> None:
    inv = load_inventory(f"hf://qf-test/smol@main/split/{split_set[1].name}")
    local = load_inventory(split_set[0])
    assert _without_shards(inv) == _without_shards(load_inventory(smol_iq4_k))
    assert [t.shard for t in inv.tensors] == [t.shard for t in local.tensors]
    assert inv.n_shards == 3
    header_total = sum(read_header(p).data_offset for p in split_set)
    assert inv.bytes_fetched == hub.bytes_sent - _api_bytes(hub)
    assert inv.bytes_fetched < 2 * header_total
    # The listing pinned every shard to the repository's commit.
    resolves = [p for m, p, _ in hub.requests if "/resolve/" in p]
    assert all(f"/resolve/{COMMIT}/split/" in p for p in resolves)


def _api_bytes(hub: RangeServer) -> int:
    info = {"id": "qf-test/smol", "modelId": "qf-test/smol", "sha": COMMIT, "private": False,
            "siblings": [{"rfilename": f} for f in sorted(hub.repos["qf-test/smol"])]}
    return len(json.dumps(info).encode()) * sum(1 for _, p, _ in hub.requests if p.startswith("/api/"))


@pytest.mark.parametrize(
    ("url", "line"),
    [
        ("hf://qf-test/nope/smol-f16.gguf",
         "hf://qf-test/nope/smol-f16.gguf: repository not found (or private) "
         "(check the org/repo spelling; for a private repo set HF_TOKEN)"),
        ("hf://qf-test/smol/none.gguf",
         "hf://qf-test/smol/none.gguf: file not found in the repository "
         "(check the path; `hf download --dry-run` lists the files)"),
        ("hf://qf-test/smol@v9/smol-f16.gguf",
         "hf://qf-test/smol@v9/smol-f16.gguf: revision not found (check the @revision (branch, tag or "
         "commit))"),
        ("hf://qf-test/broken/split/smol-IQ4_K-00001-of-00003.gguf",
         "hf://qf-test/broken/split/smol-IQ4_K-00001-of-00003.gguf: shard "
         "split/smol-IQ4_K-00002-of-00003.gguf "
         "of the split set is missing from qf-test/broken "
         "(the upload is incomplete; pick another revision or repository)"),
        ("hf://qf-test/smol",
         "hf://qf-test/smol: malformed hf:// source "
         "(write hf://org/repo/path/to/file.gguf (optionally hf://org/repo@revision/...))"),
    ],
)
def test_remote_errors_one_line(hub: RangeServer, capsys: pytest.CaptureFixture[str], url: str,
                                line: str) -> None:
    assert main(["inventory", url]) == 2
    assert capsys.readouterr().err == f"quantforge: error: {line}\n"


def test_remote_offline_mode(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert main(["inventory", "hf://qf-test/smol/smol-f16.gguf"]) == 2
    assert capsys.readouterr().err == (
        "quantforge: error: hf://qf-test/smol/smol-f16.gguf: offline mode is on (HF_HUB_OFFLINE=1) "
        "(unset HF_HUB_OFFLINE, or give a local .gguf path)\n"
    )


def test_remote_unreachable(monkeypatch: pytest.MonkeyPatch, smol_f16: Path) -> None:
    import huggingface_hub.constants

    with RangeServer({"qf-test/smol": {"smol-f16.gguf": smol_f16}}) as srv:
        url = srv.url
    monkeypatch.setenv("HF_ENDPOINT", url)  # the server is closed: connection refused
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(InventoryError) as e:
        load_inventory("hf://qf-test/smol/smol-f16.gguf")
    assert e.value.message.startswith("cannot reach the Hub")
    assert e.value.hint == "check the network connection or HF_ENDPOINT"


def test_remote_server_without_ranges_is_refused(monkeypatch: pytest.MonkeyPatch, smol_f16: Path) -> None:
    import huggingface_hub.constants

    with RangeServer({"qf-test/smol": {"smol-f16.gguf": smol_f16}}, honour_ranges=False) as srv:
        monkeypatch.setenv("HF_ENDPOINT", srv.url)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        with pytest.raises(InventoryError, match=r"the server ignored the byte range request \(HTTP 200\)"):
            load_inventory("hf://qf-test/smol/smol-f16.gguf")


# --- the CLI -------------------------------------------------------------------------------------


def test_cli_human_view_collapses_layers(smol_f16: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inventory", str(smol_f16)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{smol_f16}: llama"
    assert "attention.head_count=9" in out[1] and "vocab_size=49152" in out[1]
    assert out[3].split() == ["token_embd.weight", "[576,", "49152]", "f16", "54.00", "MiB"]
    assert out[5].split() == ["blk.*.ffn_down.weight", "×30", "[1536,", "576]", "f16", "layers", "0-29",
                              "50.62", "MiB"]
    assert len(out) == 3 + 11 + 3
    assert out[-2] == "272 tensors, 134,515,008 parameters, 256.63 MiB of tensor data, 1,785,664 header bytes"
    assert out[-1] == "fork: either (no type id or metadata specific to ik_llama.cpp or llama.cpp)"


def test_cli_json(smol_iq4_k: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inventory", str(smol_iq4_k), "--engine", "ik", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["arch"] == "llama" and d["layout"] is None and d["n_tensors"] == 272
    assert d["n_params"] == 134_515_008
    assert d["tensors"][2] == {"name": "blk.0.ffn_down.weight", "shape": [1536, 576], "dtype": "iq4_k",
                               "shard": 0,
                               "bytes": 497_664}
    # Tensor bytes + header + per-tensor padding = the file: 102,095,136 bytes (sizes.txt).
    assert (d["tensor_bytes"] + d["metadata_bytes"] <= 102_095_136 < d["tensor_bytes"] + d["metadata_bytes"]
            + 272 * 32)
    assert "bytes_fetched" not in d


def test_cli_json_remote_reports_bytes_fetched(hub: RangeServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inventory", "hf://qf-test/smol/smol-f16.gguf", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["bytes_fetched"] == 2_097_152
    assert main(["inventory", "hf://qf-test/smol/smol-f16.gguf"]) == 0
    assert capsys.readouterr().out.splitlines()[-2].endswith("; fetched 2,097,152 bytes")


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_cli_bad_inputs_exit_2_one_line(
    tmp_path: Path, smol_f16: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import struct

    with open(smol_f16, "rb") as f:
        head = f.read(5000)
    cases = {
        str(tmp_path / "missing.gguf"): f"{tmp_path / 'missing.gguf'}: no such file (check the path)",
        str(_write(tmp_path / "zip.gguf", b"PK\x03\x04rest")):
            f"{tmp_path / 'zip.gguf'}: not a GGUF file (magic b'PK\\x03\\x04') (give a .gguf model file)",
        str(_write(tmp_path / "cut.gguf", head[:1234])):
            f"{tmp_path / 'cut.gguf'}: truncated GGUF header at byte 1107: file ends inside KV 24 "
            "(tokenizer.ggml.tokens) (49152 items need at least 393216 bytes, 127 are left) "
            "(the file is incomplete; download it again)",
        str(_write(tmp_path / "absurd.gguf", b"GGUF" + struct.pack("<IQQ", 3, 1 << 50, 1) + b"\0" * 100)):
            f"{tmp_path / 'absurd.gguf'}: absurd GGUF header: the tensor count is 1125899906842624 (limit "
            "1048576)",
    }
    for source, line in cases.items():
        assert main(["inventory", source]) == 2, source
        assert capsys.readouterr().err == f"quantforge: error: {line}\n"
    assert main(["inventory", str(smol_f16), "--engine", "vllm"]) == 2
    assert capsys.readouterr().err == (
        "quantforge: error: --engine: unknown engine 'vllm' (use --engine ik or --engine mainline)\n"
    )


def test_remote_private_repo_needs_hf_token(
    monkeypatch: pytest.MonkeyPatch, smol_f16: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import huggingface_hub.constants

    with RangeServer({"qf-test/priv": {"smol-f16.gguf": smol_f16}},
                     private={"qf-test/priv": "hf_qf_test"}) as srv:
        monkeypatch.setenv("HF_ENDPOINT", srv.url)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        assert main(["inventory", "hf://qf-test/priv/smol-f16.gguf"]) == 2
        assert capsys.readouterr().err == (
            "quantforge: error: hf://qf-test/priv/smol-f16.gguf: access denied (HTTP 401) "
            "(set HF_TOKEN to a token that can read this repository)\n"
        )
        # The real client sends HF_TOKEN as a bearer token on the HEAD and on every range request.
        monkeypatch.setenv("HF_TOKEN", "hf_qf_test")
        assert len(load_inventory("hf://qf-test/priv/smol-f16.gguf").tensors) == 272


def test_cli_shipped_id_marks_the_header_estimate(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inventory", "deepseek-ai/DeepSeek-R1-0528", "--engine", "ik"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "deepseek-ai/DeepSeek-R1-0528: deepseek2, layout ik"
    assert any(line.split()[:4] == ["blk.*.ffn_down_exps.weight", "×58", "[2048,", "7168,"] for line in out)
    assert out[-1].startswith("1147 tensors, 672,049,829,376 parameters, ")
    assert out[-1].endswith(" header bytes (estimated)")


def test_vocab_size_from_the_token_list_when_the_key_is_absent(smol_f16: Path) -> None:
    from quantforge.gguf_header import read_header
    from quantforge.inventory import extract_hparams

    h = read_header(smol_f16)
    kv = {k: v for k, v in h.kv.items() if k != "llama.vocab_size"}
    assert extract_hparams(h.model_copy(update={"kv": kv}), "llama", [])["vocab_size"] == 49152
