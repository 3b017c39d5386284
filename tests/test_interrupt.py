"""Interruption: SIGINT / SIGKILL at a random (seeded) moment of the real CLI leaves no file
under a final name and no corrupt manifest, and the next run resumes and completes."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import sigint_default

REPO = Path(__file__).resolve().parents[1]
RNG = random.Random(7)


def _smol(tmp_path: Path, smol_f16: Path, smol_imatrix: Path) -> Path:
    d = tmp_path / "smol"
    d.mkdir()
    (d / "r.toml").write_text((REPO / "recipes" / "smollm2-135m.toml").read_text())
    (d / "smollm2-135m-f16.gguf").symlink_to(smol_f16)
    (d / "smollm2-135m.imatrix").symlink_to(smol_imatrix)
    return d / "r.toml"


def _start(args: list[str], cwd: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "quantforge", *args], cwd=cwd, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, preexec_fn=sigint_default,
    )  # fmt: skip


def _wait_for(pred: object, timeout: float = 60.0) -> None:
    t0 = time.monotonic()
    while not pred():  # type: ignore[operator]
        assert time.monotonic() - t0 < timeout, "the run never reached the point to interrupt"
        time.sleep(0.05)


def _quantizing(out: Path) -> bool:
    # llama-quantize has started converting tensors (its log names them as it goes).
    logs = list(out.glob("*.gguf.log"))
    return bool(logs) and "/ 272]" in logs[0].read_text(errors="replace")


def _final_ggufs(out: Path) -> list[Path]:
    return [p for p in out.glob("*.gguf")]


def _manifests_parse(out: Path) -> None:
    from quantforge.manifest import read_manifest

    for m in out.glob("*.manifest.json"):
        read_manifest(m)  # raises on a half-written one
    for p in out.rglob("*.json"):
        json.loads(p.read_text())


def test_build_sigint_leaves_nothing_final(tmp_path: Path, smol_f16: Path, smol_imatrix: Path) -> None:
    recipe = _smol(tmp_path, smol_f16, smol_imatrix)
    out = tmp_path / "out"
    proc = _start(["build", str(recipe), "--quant", "IQ4_KS", "-o", str(out), "--no-progress"], tmp_path)
    _wait_for(lambda: _quantizing(out))
    time.sleep(RNG.uniform(0.0, 2.0))
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()
    lines = err.decode().strip().splitlines()
    assert lines[-1].startswith("quantforge: error:") and "Traceback" not in err.decode()
    assert _final_ggufs(out) == []
    assert list(out.glob("*.partial")) == []
    _manifests_parse(out)
    assert not list(out.glob("*.manifest.json"))


def test_build_sigkill_then_rerun_resumes(tmp_path: Path, smol_f16: Path, smol_imatrix: Path) -> None:
    recipe = _smol(tmp_path, smol_f16, smol_imatrix)
    out = tmp_path / "out"
    args = ["build", str(recipe), "--quant", "IQ4_KS", "-o", str(out), "--no-progress"]
    proc = _start(args, tmp_path)
    _wait_for(lambda: _quantizing(out))
    time.sleep(RNG.uniform(0.0, 3.0))
    os.killpg(proc.pid, signal.SIGKILL)  # quantforge and llama-quantize die at once
    proc.communicate(timeout=30)
    assert _final_ggufs(out) == []  # only *.partial may be left behind
    _manifests_parse(out)
    rerun = _start(args, tmp_path)
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err.decode()
    finals = _final_ggufs(out)
    assert [p.name for p in finals] == ["SmolLM2-135M-Instruct-IQ4_KS.gguf"]
    assert list(out.glob("*.partial")) == [], "the rerun must clean stale partials"
    _manifests_parse(out)
    from quantforge.manifest import read_manifest

    man = read_manifest(finals[0])
    assert man.files[0].bytes == finals[0].stat().st_size == man.planned_file_bytes


def test_publish_dry_run_sigkill_then_rerun(tmp_path: Path, smol_f16: Path, ik_quantize: Path) -> None:
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import TEST_CACHE
    from support.publish_ladder import build_ladder

    recipe, _ = build_ladder(TEST_CACHE, smol_f16, ik_quantize)
    stage = tmp_path / "stage"
    args = ["publish", str(recipe), "--repo", "org/Smol-GGUF", "--dry-run", "--staging", str(stage)]
    proc = _start(args, tmp_path)
    # Staging is quick (GGUFs are hard-linked): kill at a random moment of the whole run.
    time.sleep(RNG.uniform(0.2, 1.5))
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:  # it had already finished: the state must then be complete
        pass
    proc.communicate(timeout=30)
    assert not stage.exists() or (stage / "repo" / "README.md").is_file(), "staging appears only complete"
    rerun = _start([*args, "--force"], tmp_path)
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err.decode()
    assert (stage / "repo" / "README.md").is_file()
    assert not (tmp_path / "stage.partial").exists()
    _manifests_parse(stage)


@pytest.mark.parametrize("fault,code", [("crash", 1), ("kill", 1)])
def test_child_failure_leaves_nothing_final(tmp_path: Path, smol_f16: Path, smol_imatrix: Path, ik_quantize: Path,
                                            fault: str, code: int) -> None:  # fmt: skip
    recipe = _smol(tmp_path, smol_f16, smol_imatrix)
    out = tmp_path / "out"
    env_args = ["build", str(recipe), "--quant", "IQ4_KS", "-o", str(out), "--no-progress",
                "--bin-dir", str(REPO / "tests" / "support" / "faulty_bin")]  # fmt: skip
    os.environ["QF_REAL_QUANTIZE"], os.environ["QF_FAULT"] = str(ik_quantize), fault
    try:
        proc = _start(env_args, tmp_path)
        _, err = proc.communicate(timeout=120)
    finally:
        del os.environ["QF_REAL_QUANTIZE"], os.environ["QF_FAULT"]
    assert proc.returncode == code, err.decode()
    assert len(err.decode().strip().splitlines()) == 1
    assert _final_ggufs(out) == [] and list(out.glob("*.partial")) == []
    assert (out / "SmolLM2-135M-Instruct-IQ4_KS.gguf.log").is_file()


# -- imatrix (mainline llama-imatrix) and eval (bundled KLD): the same guarantees -----------

# Long enough (~5-10 s on 2 cores) that a signal sent 0-1 s after "computing over" lands mid-run.
INTERRUPT_CHUNKS = ["--chunks", "32", "--ctx", "128"]


def _imatrix_setup(
    tmp_path: Path, smol_f16: Path, shared_dir: Path, chunks: list[str] = INTERRUPT_CHUNKS
) -> tuple[list[str], Path]:
    d = tmp_path / "smol"
    d.mkdir()
    (d / "r.toml").write_text((REPO / "recipes" / "smollm2-135m.toml").read_text())
    (d / "smollm2-135m-f16.gguf").symlink_to(smol_f16)
    out = tmp_path / "out" / "smol.imatrix"
    corpus = shared_dir / "fixtures" / "ik" / "corpus.txt"
    args = ["imatrix", str(d / "r.toml"), "--corpus", str(corpus), *chunks, "-o", str(out), "--no-progress",
            "--threads", "2"]  # fmt: skip
    return args, out


def _imatrix_computing(out: Path) -> bool:
    log = out.with_name(out.name + ".log")
    return log.is_file() and "computing over" in log.read_text(errors="replace")


def test_imatrix_sigint_leaves_nothing_final(tmp_path: Path, smol_f16: Path, shared_dir: Path,
                                             mainline_bin_dir: Path) -> None:
    args, out = _imatrix_setup(tmp_path, smol_f16, shared_dir)
    proc = _start(args, tmp_path)
    _wait_for(lambda: _imatrix_computing(out))
    time.sleep(RNG.uniform(0.0, 1.0))
    assert proc.poll() is None, "the run ended before the signal: the test would prove nothing"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()
    assert err.decode().strip().splitlines()[-1].startswith("quantforge: error:") and "Traceback" not in err.decode()
    assert not out.exists()
    assert sorted(p.name for p in out.parent.iterdir()) == ["smol.imatrix.log"]  # the partial is removed


def test_imatrix_sigkill_then_rerun_completes(tmp_path: Path, smol_f16: Path, shared_dir: Path,
                                              mainline_bin_dir: Path) -> None:
    from quantforge.imatrix import read_imatrix

    args, out = _imatrix_setup(tmp_path, smol_f16, shared_dir)
    proc = _start(args, tmp_path)
    _wait_for(lambda: _imatrix_computing(out))
    time.sleep(RNG.uniform(0.0, 1.0))
    assert proc.poll() is None, "the run ended before the signal: the test would prove nothing"
    os.killpg(proc.pid, signal.SIGKILL)  # quantforge and llama-imatrix die at once
    proc.communicate(timeout=30)
    assert not out.exists(), "llama-imatrix writes under a temporary name only"
    rerun = _start(args, tmp_path)
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err.decode()
    info = read_imatrix(out)
    # mainline --output-format dat (an ik recipe): 32 chunks of 128 tokens, every weight but token_embd
    assert (info.format, info.chunk_count, info.entries_count, info.dataset) == ("dat", 32, 210, "corpus.txt")
    assert sorted(p.name for p in out.parent.iterdir()) == ["smol.imatrix", "smol.imatrix.log"]


def _eval_setup(tmp_path: Path, smol_f16: Path, ik_quantize: Path, shared_dir: Path) -> tuple[list[str], Path, Path]:
    from conftest import TEST_CACHE
    from support.publish_ladder import build_ladder

    _, outs = build_ladder(TEST_CACHE, smol_f16, ik_quantize)
    src = outs["IQ4_KS"]
    d = tmp_path / "q"
    d.mkdir()
    model = d / src.name
    os.link(src, model)
    man = Path(str(model) + ".manifest.json")
    man.write_bytes(Path(str(src) + ".manifest.json").read_bytes())
    from quantforge.manifest import update_manifest

    update_manifest(man, eval=None)
    cache = tmp_path / "cache"
    corpus = shared_dir / "fixtures" / "ik" / "corpus.txt"
    args = ["eval", "--model", str(model), "--base", str(smol_f16), "--kld", "--corpus", str(corpus),
            "--ctx", "128", "--chunks", "8", "--threads", "2", "--json"]  # fmt: skip
    return args, man, cache


def _start_env(args: list[str], cwd: Path, **env: str) -> subprocess.Popen[bytes]:
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return _start(args, cwd)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _check_eval_state(man: Path, cache: Path) -> None:
    """No half-written logits (every final one is complete and carries its key), a parsable manifest
    whose eval section, when present, is complete."""
    from quantforge.evaluate import _util
    from quantforge.manifest import read_manifest

    for p in (cache / "kld-base").glob("*.logits") if (cache / "kld-base").is_dir() else []:
        _util.read_logits_header(p)  # raises on a truncated file
        assert _util.read_key(p) is not None, f"{p.name} is under its final name without its key"
    for p in (cache / "kld-base").glob("*.json") if (cache / "kld-base").is_dir() else []:
        json.loads(p.read_text())
    ev = read_manifest(man).eval
    assert ev is None or ev["latest"]["kld"]["mean"] > 0


def _base_partial(cache: Path) -> bool:
    return bool(list((cache / "kld-base").glob("*.logits.partial"))) if (cache / "kld-base").is_dir() else False


def test_eval_sigint_leaves_nothing_final(tmp_path: Path, smol_f16: Path, ik_quantize: Path,
                                          shared_dir: Path) -> None:
    args, man, cache = _eval_setup(tmp_path, smol_f16, ik_quantize, shared_dir)
    proc = _start_env(args, tmp_path, QUANTFORGE_CACHE=str(cache))
    _wait_for(lambda: _base_partial(cache))  # the base logits are being written
    time.sleep(RNG.uniform(0.0, 2.0))
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("quantforge: error: interrupted"), lines
    assert sorted(p.name for p in (cache / "kld-base").iterdir()) == []  # partial removed, nothing final
    _check_eval_state(man, cache)


def test_eval_sigkill_then_rerun_completes(tmp_path: Path, smol_f16: Path, ik_quantize: Path,
                                           shared_dir: Path) -> None:
    from quantforge.evaluate import _util
    from quantforge.manifest import read_manifest

    args, man, cache = _eval_setup(tmp_path, smol_f16, ik_quantize, shared_dir)
    proc = _start_env(args, tmp_path, QUANTFORGE_CACHE=str(cache))
    _wait_for(lambda: _base_partial(cache))
    # anywhere from the base logits to the quant's pass and the manifest update
    time.sleep(RNG.uniform(0.0, 12.0))
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:  # it had already finished: the state must then be complete
        pass
    proc.communicate(timeout=30)
    _check_eval_state(man, cache)
    # base logits that were complete (and keyed) before the kill are reused, not computed again
    kept = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (cache / "kld-base").glob("*.logits")} \
        if (cache / "kld-base").is_dir() else {}
    rerun = _start_env(args, tmp_path, QUANTFORGE_CACHE=str(cache))
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err.decode()
    res = json.loads(out)
    _check_eval_state(man, cache)
    (logits,) = (cache / "kld-base").glob("*.logits")
    assert _util.read_logits_header(logits) == (128, 49152, 8)
    for p, stamp in kept.items():
        assert (p.stat().st_ino, p.stat().st_mtime_ns) == stamp, "verified base logits were recomputed"
    latest = read_manifest(man).eval["latest"]
    assert latest["kld"]["mean"] == res["kld"]["mean"] and latest["chunks"] == 8 == res["chunks"]


# -- base, ladders, staging: the same guarantees, and nothing verified is done twice ------------


def _quantize_runs(log: Path) -> int:
    return sum(1 for ln in log.read_text(errors="replace").splitlines()
               if ln.startswith("# quantforge 20") and "llama-quantize" in ln) if log.is_file() else 0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_base_interrupted_then_rerun_is_byte_identical(tmp_path: Path, sig: signal.Signals) -> None:
    from quantforge.acquire import SMOLLM2_F16_SHA256
    from quantforge.fsutil import sha256_file

    out = tmp_path / "base.gguf"
    proc = _start(["base", str(out)], tmp_path)
    _wait_for(lambda: out.with_name(out.name + ".partial").exists())
    time.sleep(RNG.uniform(0.0, 1.5))
    if proc.poll() is None:
        (os.killpg(proc.pid, sig) if sig == signal.SIGKILL else proc.send_signal(sig))
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 130:
        assert err.decode().strip().splitlines() == [
            f"quantforge: error: {out}: Ctrl-C: the base was not written (its partial file was removed) "
            "(run the same command again)"]
        assert not out.with_name(out.name + ".partial").exists()
    assert not out.exists() or sha256_file(out) == SMOLLM2_F16_SHA256  # nothing half-written under the name
    rerun = _start(["base", str(out), "--force"], tmp_path)
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err.decode()
    assert sha256_file(out) == SMOLLM2_F16_SHA256
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.gguf"]


def test_a_ladder_killed_at_a_random_moment_keeps_every_verified_variant(tmp_path: Path, smol_f16: Path,
                                                                       smol_imatrix: Path) -> None:
    recipe = _smol(tmp_path, smol_f16, smol_imatrix)
    out = tmp_path / "out"
    args = ["build", str(recipe), "--quant", "IQ2_KS", "--quant", "IQ4_KS", "-o", str(out), "--no-progress"]
    first_log = out / "SmolLM2-135M-Instruct-IQ2_KS.gguf.log"
    second_log = out / "SmolLM2-135M-Instruct-IQ4_KS.gguf.log"
    proc = _start(args, tmp_path)
    # anywhere from the end of the first variant's quantizing to the middle of the second's
    _wait_for(lambda: "/ 272]" in (first_log.read_text(errors="replace") if first_log.is_file() else ""), 120)
    _wait_for(lambda: second_log.is_file() or proc.poll() is not None, 300)
    time.sleep(RNG.uniform(0.0, 3.0))
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.communicate(timeout=30)
    _manifests_parse(out)
    done_before = {p.name: p.stat().st_ino for p in out.glob("*.gguf")}
    rerun = _start(args, tmp_path)
    _, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err.decode()
    from quantforge.manifest import read_manifest

    for name in ("SmolLM2-135M-Instruct-IQ2_KS.gguf", "SmolLM2-135M-Instruct-IQ4_KS.gguf"):
        final = out / name
        man = read_manifest(final)
        assert man.files[0].bytes == final.stat().st_size == man.planned_file_bytes
        if name in done_before:  # verified before the kill: kept, never quantized again
            assert final.stat().st_ino == done_before[name]
            assert _quantize_runs(out / (name + ".log")) == 1
    assert _quantize_runs(first_log) == 1  # the first variant was done before the kill
    assert not list(out.glob("*.partial")) and not list(out.glob("*.pending"))


def test_publish_staging_sigint_leaves_a_complete_staging_or_none(tmp_path: Path, smol_f16: Path,
                                                                  ik_quantize: Path) -> None:
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import TEST_CACHE
    from support.publish_ladder import build_ladder

    recipe, _ = build_ladder(TEST_CACHE, smol_f16, ik_quantize)
    stage = tmp_path / "stage"
    args = ["publish", str(recipe), "--repo", "org/Smol-GGUF", "--dry-run", "--staging", str(stage)]
    proc = _start(args, tmp_path)
    time.sleep(RNG.uniform(0.5, 2.5))
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode in (0, 130), err.decode()
    if proc.returncode == 130:
        assert len(err.decode().strip().splitlines()) == 1 and "Traceback" not in err.decode()
    assert not stage.exists() or (stage / "repo" / "README.md").is_file()
    assert not (tmp_path / "stage.partial").exists()
    rerun = _start([*args, "--force"], tmp_path)
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err.decode()
    assert (stage / "repo" / "README.md").is_file() and (stage / "upload-plan.json").is_file()
