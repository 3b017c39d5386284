"""Nothing lost: inputs are never outputs, a verified output is never quantized twice, one run per folder.

Every test drives the real CLI with the real ``llama-quantize`` on SmolLM2. Faults are injected
at one file operation of the real program (``tests/support/faultpoint.py``): a SIGKILL, a Ctrl-C
or a full disk exactly between renaming a verified output into place and writing its manifest.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import sigint_default

from quantforge.cli import main

REPO = Path(__file__).resolve().parents[1]
OUT_NAME = "SmolLM2-135M-Instruct-IQ4_KS.gguf"


def _smol(tmp_path: Path, smol_f16: Path, smol_imatrix: Path, *, base_name: str = "smollm2-135m-f16.gguf") -> Path:
    d = tmp_path / "smol"
    d.mkdir(exist_ok=True)
    (d / "r.toml").write_text((REPO / "recipes" / "smollm2-135m.toml").read_text().replace(
        "smollm2-135m-f16.gguf", base_name))
    (d / "smollm2-135m.imatrix").symlink_to(smol_imatrix)
    return d / "r.toml"


def _start(args: list[str], cwd: Path, *, fault: list[str] | None = None) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}"}
    cmd = [sys.executable, "-m", "support.faultpoint", *fault, "--", *args] if fault else \
        [sys.executable, "-m", "quantforge", *args]
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True, preexec_fn=sigint_default)


def _run(args: list[str], cwd: Path, *, fault: list[str] | None = None, timeout: float = 300) -> tuple[int, str, str]:
    proc = _start(args, cwd, fault=fault)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out.decode(), err.decode()


def _quantize_runs(log: Path) -> int:
    """How many times llama-quantize was started for this output (the runner logs each start)."""
    return sum(1 for ln in log.read_text(errors="replace").splitlines()
               if ln.startswith("# quantforge 20") and "llama-quantize" in ln)


# -- inputs are never outputs ----------------------------------------------------------------


@pytest.mark.parametrize("force", [False, True])
def test_a_base_at_the_output_name_is_never_deleted(tmp_path: Path, smol_f16: Path, smol_imatrix: Path,
                                                    capsys: pytest.CaptureFixture[str], force: bool) -> None:
    out = tmp_path / "smol"
    recipe = _smol(tmp_path, smol_f16, smol_imatrix, base_name=OUT_NAME)
    base = out / OUT_NAME
    os.link(smol_f16, base) if smol_f16.stat().st_dev == base.parent.stat().st_dev else base.write_bytes(
        smol_f16.read_bytes())
    size = base.stat().st_size
    rc = main(["build", str(recipe), "--quant", "IQ4_KS", "--no-progress", *(["--force"] if force else [])])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, err
    assert err == [f"quantforge: error: --out: the output {base} is the base model (build into another folder "
                   "(--out DIR) or give the variant another name: an input is never overwritten, even with --force)"]
    assert base.stat().st_size == size and base.read_bytes()[:4] == b"GGUF"
    assert sorted(p.name for p in out.iterdir()) == sorted([OUT_NAME, "r.toml", "smollm2-135m.imatrix"])


def test_a_hard_link_of_the_base_at_the_output_name_is_refused_too(tmp_path: Path, smol_f16: Path,
                                                                   smol_imatrix: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    recipe = _smol(tmp_path, smol_f16, smol_imatrix, base_name="base.gguf")
    base = recipe.parent / "base.gguf"
    base.write_bytes(smol_f16.read_bytes())
    out = tmp_path / "out"
    out.mkdir()
    os.link(base, out / OUT_NAME)  # the same inode under the output's name
    assert main(["build", str(recipe), "--quant", "IQ4_KS", "-o", str(out), "--force", "--no-progress"]) == 2
    assert f"is the base model (a hard link of {base})" in capsys.readouterr().err
    assert base.stat().st_nlink == 2 and base.read_bytes()[:4] == b"GGUF"


def test_a_variant_named_like_a_path_cannot_leave_the_output_folder(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    text = (REPO / "recipes" / "smollm2-135m.toml").read_text()
    for evil, why in (("../../x", "contains '/', a path separator"), ("a/b", "contains '/', a path separator"),
                      ("..", "is '..', which names a folder"), ("a\\\\b", "contains '\\\\', a path separator"),
                      ("x\\u0000y", "contains a NUL character"), ("x\\ty", "contains the control character"),
                      ("A" * 101, "is 101 bytes long (at most 100)")):
        r = tmp_path / "r.toml"
        r.write_text(text.replace('name = "IQ4_KS"', f'name = "{evil}"', 1))
        assert main(["recipe", "show", str(r)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and ".name: name '" in err[0] and why in err[0], (evil, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.toml"]


# -- the window between a verified output and its manifest -----------------------------------


def _build_args(recipe: Path, out: Path) -> list[str]:
    return ["build", str(recipe), "--quant", "IQ4_KS", "-o", str(out), "--no-progress"]


@pytest.mark.parametrize("kind", ["sigkill", "enospc", "raise-sigint", "sigint"])
def test_a_commit_cut_short_is_completed_without_quantizing_again(tmp_path: Path, smol_f16: Path,
                                                                 smol_imatrix: Path, kind: str) -> None:
    from quantforge.manifest import read_manifest

    recipe = _smol(tmp_path, smol_f16, smol_imatrix)
    (recipe.parent / "smollm2-135m-f16.gguf").symlink_to(smol_f16)
    out = tmp_path / "out"
    args = _build_args(recipe, out)
    rc, _, err = _run(args, tmp_path, fault=[kind, ".manifest.json"])
    lines = err.strip().splitlines()
    final = out / OUT_NAME
    if kind == "sigkill":
        assert rc == -signal.SIGKILL
    elif kind == "enospc":
        assert rc == 1 and len(lines) == 1, err
        assert lines[0].startswith(f"quantforge: error: {out / (OUT_NAME + '.manifest.json')}") or \
            "the output is complete and verified, but its manifest could not be written: no space left" in lines[0]
        assert "no space left on the device" in lines[0] and "without quantizing again" in lines[0]
    elif kind == "raise-sigint":
        assert rc == 130 and len(lines) == 1, err
        assert lines[0] == (f"quantforge: error: {out / (OUT_NAME + '.log')}: Ctrl-C: {OUT_NAME} is complete and "
                            "verified, but its manifest was not written (run the same command again: it records the "
                            "output without quantizing again)")
    else:  # a real Ctrl-C in the window is held back until the commit is complete
        assert rc == 130 and len(lines) == 1, err
        assert "Ctrl-C: stopped after IQ4_KS was built, verified and recorded" in lines[0]
    assert "Traceback" not in err
    assert not list(out.glob("*.partial"))
    inode = final.stat().st_ino
    rc, _, err = _run(args, tmp_path)
    assert rc == 0, err
    assert final.stat().st_ino == inode  # the verified output was kept, not rebuilt
    assert _quantize_runs(out / (OUT_NAME + ".log")) == 1
    man = read_manifest(final)
    assert man.files[0].bytes == final.stat().st_size == man.planned_file_bytes
    assert man.base["sha256"] and len(man.files[0].sha256) == 64
    assert not list(out.glob("*.pending")) and not list(out.glob(".*splitting"))
    rc, _, err = _run(args, tmp_path)  # and from now on it is simply skipped
    assert rc == 0 and _quantize_runs(out / (OUT_NAME + ".log")) == 1


def test_a_complete_output_without_a_manifest_is_verified_and_recorded(tmp_path: Path, smol_f16: Path,
                                                                       smol_imatrix: Path) -> None:
    """What earlier versions left after a Ctrl-C between the rename and the manifest."""
    from quantforge.manifest import manifest_path, read_manifest

    recipe = _smol(tmp_path, smol_f16, smol_imatrix)
    (recipe.parent / "smollm2-135m-f16.gguf").symlink_to(smol_f16)
    out = tmp_path / "out"
    assert _run(_build_args(recipe, out), tmp_path)[0] == 0
    final = out / OUT_NAME
    manifest_path(final).unlink()
    rc, stdout, err = _run([*_build_args(recipe, out), "--json"], tmp_path)
    assert rc == 0, err
    assert json.loads(stdout)["results"][0]["status"] == "recovered"
    assert _quantize_runs(out / (OUT_NAME + ".log")) == 1
    man = read_manifest(final)
    assert man.verification["recovered"] == "complete output without a manifest; verified against the plan"
    # a file that does not verify is still refused, and kept
    manifest_path(final).unlink()
    with open(final, "r+b") as f:
        f.seek(final.stat().st_size - 100)
        f.truncate()
    rc, _, err = _run(_build_args(recipe, out), tmp_path)
    assert rc == 1 and "already exists and is not this variant's verified build (pass --force" in err
    assert final.is_file()


# -- one run per folder --------------------------------------------------------------------------


def _quantizing(log: Path) -> bool:
    return log.is_file() and "/ 272]" in log.read_text(errors="replace")


def test_a_second_build_into_the_same_folder_is_refused_or_waits(tmp_path: Path, smol_f16: Path,
                                                                  smol_imatrix: Path) -> None:
    recipe = _smol(tmp_path, smol_f16, smol_imatrix)
    (recipe.parent / "smollm2-135m-f16.gguf").symlink_to(smol_f16)
    out = tmp_path / "out"
    args = _build_args(recipe, out)
    first = _start(args, tmp_path)
    t0 = time.monotonic()
    while not _quantizing(out / (OUT_NAME + ".log")):
        assert time.monotonic() - t0 < 120 and first.poll() is None
        time.sleep(0.05)
    rc, _, err = _run(args, tmp_path, timeout=60)
    assert rc == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0] == (f"quantforge: error: {out}: pid {first.pid} (quantforge build r.toml, since "
                        f"{json.loads((out / '.quantforge.lock').read_text())['started']}) is using this folder "
                        "(wait for it to finish (or pass --wait), or choose another folder)")
    assert list(out.glob("*.partial")), "the first build's partial output is untouched"
    waiter = _start([*args, "--wait"], tmp_path)
    assert first.wait(timeout=300) == 0
    out_w, err_w = waiter.communicate(timeout=300)
    assert waiter.returncode == 0, err_w.decode()
    assert "skipped  IQ4_KS" in out_w.decode()  # it waited, then found the variant built and verified
    assert _quantize_runs(out / (OUT_NAME + ".log")) == 1
    assert not (out / ".quantforge.lock").exists()


def test_a_lock_left_by_a_dead_run_is_taken_over(tmp_path: Path, smol_f16: Path, smol_imatrix: Path) -> None:
    recipe = _smol(tmp_path, smol_f16, smol_imatrix)
    (recipe.parent / "smollm2-135m-f16.gguf").symlink_to(smol_f16)
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    (out / ".quantforge.lock").write_text(json.dumps({"pid": dead.pid, "purpose": "quantforge build r.toml"}))
    rc, _, err = _run(_build_args(recipe, out), tmp_path)
    assert rc == 0, err
    assert (out / OUT_NAME).is_file() and not (out / ".quantforge.lock").exists()


def test_an_orphaned_llama_quantize_keeps_its_folder(tmp_path: Path, smol_f16: Path, smol_imatrix: Path,
                                                    ik_quantize: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """quantforge is SIGKILLed while a quiet llama-quantize runs (a big tensor takes minutes between two
    progress lines): the child, in its own session, keeps the folder's lock until it ends."""
    recipe = _smol(tmp_path, smol_f16, smol_imatrix)
    (recipe.parent / "smollm2-135m-f16.gguf").symlink_to(smol_f16)
    out = tmp_path / "out"
    monkeypatch.setenv("QF_REAL_QUANTIZE", str(ik_quantize))
    monkeypatch.setenv("QF_FAULT", "hang")  # the fault double prints one progress line, then goes quiet
    args = [*_build_args(recipe, out), "--bin-dir", str(REPO / "tests" / "support" / "faulty_bin")]
    first = _start(args, tmp_path)
    t0 = time.monotonic()
    while not (out / (OUT_NAME + ".partial")).is_file():
        assert time.monotonic() - t0 < 120 and first.poll() is None
        time.sleep(0.05)
    os.kill(first.pid, signal.SIGKILL)  # only quantforge: its child runs on
    first.wait()
    holders = _processes_holding(out / ".quantforge.lock")
    try:
        assert holders, "the child holds the lock"
        rc, _, err = _run(args, tmp_path, timeout=60)
        assert rc == 1, err
        assert f"pid {first.pid} (quantforge build r.toml" in err
        assert "which has exited but left a child process (llama-quantize …) running in it" in err
    finally:
        for pid in holders:
            os.kill(pid, signal.SIGKILL)
    t0 = time.monotonic()
    while _processes_holding(out / ".quantforge.lock"):
        assert time.monotonic() - t0 < 30
        time.sleep(0.05)
    monkeypatch.delenv("QF_FAULT")
    rc, _, err = _run(_build_args(recipe, out), tmp_path)  # the child is gone: the folder is free again
    assert rc == 0, err


def _processes_holding(path: Path) -> list[int]:
    """Pids with ``path`` open (from /proc/*/fd): the processes this test started and left behind."""
    pids = []
    target = str(path.resolve())
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fds = list((d / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) == target:
                    pids.append(int(d.name))
                    break
            except OSError:
                pass
    return pids
