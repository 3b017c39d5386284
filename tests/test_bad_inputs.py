"""The bad-input catalogue (tests/bad_inputs/*.toml): every case through the real CLI.

Each case must end within its time bound with its exit code (2 bad input, 1 runtime failure,
130 interrupted), exactly one line on stderr matching its regex, no traceback; every file it was
given must be left byte for byte (except those it names in ``changes``), nothing may be written
outside its folder; with ``--debug`` the exception propagates instead.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "bad_inputs"))
from catalogue import (  # noqa: E402
    AREAS,
    DOC,
    Case,
    built_folder,
    fill,
    load_cases,
    materialise,
    render_doc,
    smol_folder,
)

from quantforge.cli import main  # noqa: E402
from quantforge.errors import QuantforgeError  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CASES = load_cases()


class _Hung(Exception):
    pass


@pytest.fixture(scope="module")
def real_quantize() -> Path:
    import ik_llama_cpp

    return Path(ik_llama_cpp.__file__).parent / "bin" / "llama-quantize"


@pytest.fixture(scope="module")
def built_iq2(smol_f16: Path, ik_quantize: Path) -> Path:
    from conftest import TEST_CACHE
    from support.publish_ladder import build_ladder

    _, outputs = build_ladder(TEST_CACHE, smol_f16.resolve(), ik_quantize)
    return outputs["IQ2_KS"]


def _snapshot(root: Path) -> dict[str, Any]:
    """What a case was given: content hashes of regular files, targets of links, kinds of the rest."""
    out: dict[str, Any] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_file():
                with open(p, "rb") as f:
                    out[rel] = ("file", hashlib.sha256(f.read()).hexdigest())
            elif p.is_dir():
                out[rel] = ("dir",)
            else:
                out[rel] = ("special", p.stat().st_mode)
    return out


def _values(case_dir: Path, smol_f16: Path, smol_imatrix: Path, real_quantize: Path, hub: str) -> dict[str, str]:
    return {
        "case_dir": str(case_dir),
        "repo": str(REPO),
        "smol_f16": str(smol_f16),
        "smol_imatrix": str(smol_imatrix),
        "faulty_bin": str(REPO / "tests" / "support" / "faulty_bin"),
        "faults": str(REPO / "tests" / "support" / "faults"),
        "real_quantize": str(real_quantize),
        "smol": str(case_dir / "smol"),
        "built": str(case_dir / "built"),
        "hub": hub,
    }


def _hub(case: Case, tmp_path: Path, values: dict[str, str]) -> Any:
    from support.hub_server import Commit, HubStandIn, Repo, RepoFile

    server = HubStandIn(tmp_path / "hub").start()
    for repo_id, files in case.hub.get("files", {}).items() if case.hub else ():
        entries = {}
        for name, src in files.items():
            data = Path(fill(src, values)).read_bytes()
            sha = hashlib.sha256(data).hexdigest()
            server.blob_path(sha).write_bytes(data)
            entries[name] = RepoFile(name, len(data), sha, None)
        server.repos[repo_id] = Repo(repo_id, private=False, files=entries,
                                     commits=[Commit("c0ffee" + "0" * 34, "init", "", sorted(entries))])
    server.answers = dict(case.hub.get("answers", {})) if case.hub else {}
    return server


def _holder(folder: Path) -> subprocess.Popen[bytes]:
    """Another live process holding ``folder``'s lock (as a concurrent quantforge run would)."""
    code = ("import sys, time; from quantforge.lock import folder_lock\n"
            "with folder_lock(sys.argv[1], purpose='quantforge build other.toml'):\n"
            "    print('held', flush=True); time.sleep(600)\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, env=env)
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"held"
    return proc


def _when(case_dir: Path, spec: dict[str, Any]) -> bool:
    hits = glob.glob(str(case_dir / spec["when"]))
    if "contains" not in spec:
        return bool(hits)
    return any(spec["contains"] in Path(h).read_text(errors="replace") for h in hits if Path(h).is_file())


def _subprocess(case: Case, argv: list[str], case_dir: Path, env: dict[str, str]) -> tuple[int, str]:
    cmd = [sys.executable, "-m", "quantforge", *argv]
    if case.drop_dac and os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: an unreadable file cannot be made")
        cmd = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", *cmd]
    from support import sigint_default

    proc = subprocess.Popen(cmd, cwd=case_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True, preexec_fn=sigint_default)
    t0 = time.monotonic()
    try:
        if case.signal:
            while not _when(case_dir, case.signal):
                if proc.poll() is not None or time.monotonic() - t0 > case.timeout:
                    _, err = proc.communicate()
                    pytest.fail(f"the run ended or hung before the moment to interrupt: {err.decode()[-2000:]}")
                time.sleep(0.02)
            time.sleep(float(case.signal.get("after", 0)))
            assert proc.poll() is None, "the run ended before the signal: the case would prove nothing"
            proc.send_signal(getattr(signal, f"SIG{case.signal['name']}"))
        _, err = proc.communicate(timeout=max(1.0, case.timeout - (time.monotonic() - t0)))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise _Hung(f"{case.id} ran longer than {case.timeout} s") from None
    return proc.returncode, err.decode(errors="replace")


@pytest.fixture()
def run_case(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
             smol_f16: Path, smol_imatrix: Path, real_quantize: Path, built_iq2: Path) -> Iterator[Any]:
    cleanups: list[Any] = []

    def run(case: Case, *, debug: bool) -> tuple[int, str, Path]:
        case_dir = tmp_path / "case"
        case_dir.mkdir()
        outside_before = sorted(os.listdir(tmp_path)), sorted(os.listdir(tmp_path.parent))
        hub_url = ""
        server = None
        if case.hub is not None:
            values = _values(case_dir, smol_f16, smol_imatrix, real_quantize, "")
            server = _hub(case, tmp_path, values)
            cleanups.append(server.stop)
            hub_url = server.url
            outside_before = sorted(os.listdir(tmp_path)), outside_before[1]
        values = _values(case_dir, smol_f16, smol_imatrix, real_quantize, hub_url)
        text = json.dumps([case.argv, case.files, case.env])
        if "{smol}" in text:
            smol_folder(case_dir / "smol", smol_f16=smol_f16, smol_imatrix=smol_imatrix)
        if "{built}" in text:
            built_folder(case_dir / "built", smol_f16=smol_f16, smol_imatrix=smol_imatrix, built_gguf=built_iq2)
        sockets = materialise(case, case_dir, values)
        cleanups.extend(s.close for s in sockets)
        env = {"QUANTFORGE_CACHE": str(case_dir / ".cache"), "HOME": str(case_dir / "home"),
               "HF_HOME": str(case_dir / "hf-home"),
               "QUANTFORGE_CONFIG": str(case_dir / "home" / "config.toml")}
        if server is not None:
            env.update({"HF_ENDPOINT": hub_url, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1"})
        env.update({k: fill(v, values) for k, v in case.env.items()})
        if case.hold_lock:
            holder = _holder(case_dir / case.hold_lock)
            cleanups.append(lambda: (holder.kill(), holder.wait()))
        given = _snapshot(case_dir)
        argv = [fill(a, values) for a in case.argv]
        if debug:
            argv = ["--debug", *argv]
        if case.in_process:
            from huggingface_hub import constants

            from quantforge import constants as qf_constants

            for key, value in env.items():
                monkeypatch.setenv(key, value)
            monkeypatch.setattr(qf_constants, "CACHE_DIR", Path(env["QUANTFORGE_CACHE"]))
            monkeypatch.setattr(qf_constants, "CONFIG_FILE", Path(env["QUANTFORGE_CONFIG"]))
            if server is not None:
                monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
                monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
            monkeypatch.chdir(case_dir)

            def hung(*_: object) -> None:
                raise _Hung(f"{case.id} ran longer than {case.timeout} s")

            old = signal.signal(signal.SIGALRM, hung)
            signal.setitimer(signal.ITIMER_REAL, case.timeout)
            try:
                code = main(argv)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, old)
            err = capsys.readouterr().err
        else:
            full = {**os.environ, "PYTHONPATH": str(REPO), **env}
            code, err = _subprocess(case, argv, case_dir, full)
        # nothing lost: what the case was given is still there, byte for byte
        after = _snapshot(case_dir)
        allowed = [fill(c, values) for c in case.changes]
        for rel, what in given.items():
            if any(Path(rel).match(pat) or rel.startswith(pat.rstrip("/") + "/") for pat in allowed):
                continue
            assert after.get(rel) == what, f"{case.id}: {rel} was changed or removed ({what} -> {after.get(rel)})"
        for pat in case.absent:
            assert not glob.glob(str(case_dir / fill(pat, values))), f"{case.id}: {pat} was left behind"
        # nothing written outside the case's folder
        assert (sorted(os.listdir(tmp_path)), sorted(os.listdir(tmp_path.parent))) == outside_before, \
            f"{case.id} wrote outside its folder"
        return code, err, case_dir

    yield run
    for c in reversed(cleanups):
        c()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_ends_with_one_line(case: Case, run_case: Any) -> None:
    code, err, _ = run_case(case, debug=False)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == case.exit_code, err
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("quantforge: error: "), lines[0]
    assert re.search(case.stderr_regex, lines[0]), lines[0]


@pytest.mark.parametrize("case", [c for c in CASES if c.debug], ids=[c.id for c in CASES if c.debug])
def test_bad_input_shows_the_traceback_with_debug(case: Case, run_case: Any) -> None:
    with pytest.raises(QuantforgeError) as info:
        run_case(case, debug=True)
    assert info.value.exit_code == case.exit_code
    assert re.search(case.stderr_regex, "quantforge: error: " + info.value.one_line())


def test_catalogue_is_large_and_well_formed() -> None:
    assert len(CASES) >= 200
    assert len({c.id[:3] for c in CASES}) == len(CASES), "case numbers must be unique"
    areas = {c.area for c in CASES}
    assert areas <= set(AREAS), areas - set(AREAS)
    for area in ("recipe", "target", "gguf", "imatrix", "filesystem", "environment", "hub", "interrupt"):
        assert sum(c.area == area for c in CASES) >= 5, area
    for c in CASES:
        assert c.exit_code in (1, 2, 130), c.id
        re.compile(c.stderr_regex)


def test_doc_table_is_current() -> None:
    assert DOC.read_text(encoding="utf-8") == render_doc(CASES), "run: python tests/bad_inputs/catalogue.py"
