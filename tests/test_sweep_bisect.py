"""`quantforge sweep bisect` on a git repository made here, whose build step writes a wrapper around the
real bundled engine (``python -m quantforge.evaluate.bundled_bench`` over ik libllama) and slows it
down at a known commit; one commit in between does not build."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import sigint_default

from quantforge.cli import main

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("taskset") is None or len(os.sched_getaffinity(0)) < 1,
                                reason="needs taskset (util-linux)")

# The bench runs pinned to one core. The "regression" is extra work on that core: two busy loops
# share it with the bench from commit c4 on (about a third of the speed, on an idle or a busy machine:
# the scheduler moves other load to the free core).
GOOD_BUILD = """#!/bin/sh
set -e
mkdir -p out
cat > out/bench <<EOF
#!/bin/sh
exec taskset -c 0 "{py}" -m quantforge.evaluate.bundled_bench "\\$@"
EOF
chmod +x out/bench
"""
SLOW_BUILD = """#!/bin/sh
set -e
mkdir -p out
cat > out/bench <<EOF
#!/bin/sh
taskset -c 0 sh -c 'while :; do :; done' qf-busy-loop & a=\\$!
taskset -c 0 sh -c 'while :; do :; done' qf-busy-loop & b=\\$!
taskset -c 0 "{py}" -m quantforge.evaluate.bundled_bench "\\$@"; rc=\\$?
kill \\$a \\$b
exit \\$rc
EOF
chmod +x out/bench
"""
BROKEN_BUILD = """#!/bin/sh
echo "error: half-finished refactoring" >&2
exit 1
"""


def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org",
           "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.org"}
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          env=env).stdout.strip()


def _commit(repo: Path, message: str, build: str | None = None, note: str | None = None) -> str:
    if build is not None:
        (repo / "build.sh").write_text(build.format(py=sys.executable))
    if note is not None:
        (repo / "NOTES").write_text(note)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", message)
    return _git(repo, "rev-parse", "HEAD")


@pytest.fixture()
def repo(tmp_path: Path) -> tuple[Path, list[str]]:
    r = tmp_path / "engine"
    r.mkdir()
    _git(r, "init", "-q", "-b", "main")
    (r / ".gitignore").write_text("out/\n")
    shas = [
        _commit(r, "c0: the good build", GOOD_BUILD, "0"),
        _commit(r, "c1: notes", note="1"),
        _commit(r, "c2: start a refactoring (does not build)", BROKEN_BUILD),
        _commit(r, "c3: finish the refactoring", GOOD_BUILD),
        _commit(r, "c4: the slow one", SLOW_BUILD),
        _commit(r, "c5: later work", note="5"),
    ]
    return r, shas


@pytest.fixture(scope="module")
def q8(smol_f16: Path, ik_quantize: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dst = tmp_path_factory.mktemp("bisect") / "smol-Q8_0.gguf"
    subprocess.run([str(ik_quantize), str(smol_f16), str(dst), "Q8_0", "2"], check=True, capture_output=True)
    return dst


def test_bisect_names_the_slow_commit_and_skips_the_broken_build(
        repo: tuple[Path, list[str]], q8: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    r, shas = repo
    out = tmp_path / "bisect"
    rc = main(["sweep", "bisect", "--repo", str(r), "--good", shas[0], "--bad", shas[5], "--build",
               "sh build.sh",
               "--command", f"out/bench -m {q8} -c 256 -ub 64 -n 8 -t 1", "--metric", "pp", "-o", str(out),
               "--json"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    rep = json.loads(cap.out)
    assert rep["first_bad"] == shas[4] and rep["first_bad_subject"] == "c4: the slow one"
    steps = {s["commit"]: s for s in rep["steps"]}
    # git bisect tries c2 first (the midpoint): it does not build, so it is skipped
    assert steps[shas[2]]["verdict"] == "skip" and steps[shas[2]]["reason"].startswith("the build failed "
                                                                                       "(exit status 1)")
    assert steps[shas[4]]["verdict"] == "bad" and steps[shas[3]]["verdict"] == "good"
    assert [s["commit"] for s in rep["steps"]] == [s for s in shas if s in steps]  # in commit order
    good_ref, bad_ref = rep["references"]
    assert (good_ref["commit"], bad_ref["commit"]) == (shas[0], shas[5])
    assert bad_ref["change_pct"] < -40 and bad_ref["ci_high_pct"] < 0
    assert rep["threshold_source"] == "half the measured drop"
    assert rep["threshold_pct"] == pytest.approx(-bad_ref["change_pct"] / 2)
    assert steps[shas[4]]["change_pct"] < -rep["threshold_pct"] < steps[shas[3]]["change_pct"]
    for s in rep["steps"]:
        if s["verdict"] != "skip":
            assert s["runs"] >= 3 and Path(s["result"]).is_file()
    assert Path(steps[shas[2]]["build_log"]).read_text().strip() == "error: half-finished refactoring"
    png, svg = (Path(p) for p in rep["plot"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and b"<svg" in svg.read_bytes()[:2000]
    assert json.loads((out / "report.json").read_text()) == rep
    assert f"{shas[4]} is the first bad commit" in (out / "bisect-run.log").read_text()
    # the repository is back where it was: on main, no bisect in progress, no leftover state
    assert _git(r, "symbolic-ref", "--short", "HEAD") == "main"
    assert _git(r, "rev-parse", "HEAD") == shas[5]
    assert not (r / ".git" / "BISECT_LOG").exists()
    assert "bisect: BAD is " in cap.err
    # a second bisect into the same folder needs --force
    rc = main(["sweep", "bisect", "--repo", str(r), "--good", shas[0], "--bad", shas[5], "--build",
               "sh build.sh",
               "--command", "out/bench", "-o", str(out)])
    assert rc == 2 and capsys.readouterr().err.strip() == (
        f"quantforge: error: {out}: the output folder holds an earlier bisect (pass --force to "
        "replace it, or "
        "choose another --out-dir)")


def test_bisect_refuses_what_it_cannot_bisect(repo: tuple[Path, list[str]], q8: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    r, shas = repo
    bench = f"out/bench -m {q8} -c 128 -ub 64 -n 4 -t 1"
    base = ["sweep", "bisect", "--repo", str(r), "--build", "sh build.sh", "--command", bench, "-o",
            str(tmp_path / "o")]
    cases = [
        (["--good", shas[5], "--bad", shas[0]], 2, "is not an ancestor of --bad"),
        (["--good", "no-such-rev", "--bad", shas[5]], 2, "--good: unknown revision 'no-such-rev'"),
        (["--good", shas[0], "--bad", shas[2]], 1, "the BAD revision"),  # c2 does not build
        # no regression there. The two references are measured one after the other (each is built in
        # place, as a real engine is), so a load change between the blocks shows in the comparison: 10 %
        # on a busy 2-core machine; the user's --threshold says what counts (c4 is ~3x slower)
        (["--good", shas[0], "--bad", shas[1], "--threshold", "25"], 1, "is not measurably slower than GOOD"),
    ]
    for extra, code, text in cases:
        rc = main([*base, *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == code and err[-1].startswith("quantforge: error: ") and text in err[-1], err
        assert _git(r, "symbolic-ref", "--short",
                    "HEAD") == "main" and not (r / ".git" / "BISECT_START").exists()
    (r / "build.sh").write_text("changed\n")
    rc = main([*base, "--good", shas[0], "--bad", shas[5]])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.endswith("the repository has uncommitted changes: bisecting checks out other "
                                    "commits "
                                    "(commit or stash them first)")


def _processes_with(text: str) -> list[str]:
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmd:
                found.append(cmd)
    return found


def test_ctrl_c_stops_the_whole_bisect_and_resets_the_repository(repo: tuple[Path, list[str]], q8: Path,
                                                                 tmp_path: Path) -> None:
    r, shas = repo
    out = tmp_path / "bisect"
    proc = subprocess.Popen(
        [sys.executable, "-m", "quantforge", "sweep", "bisect", "--repo", str(r), "--good", shas[0], "--bad",
         shas[5],
         "--build", "sh build.sh", "--command", f"out/bench -m {q8} -c 256 -ub 64 -n 8 -t 1", "-o", str(out)],
        env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True, preexec_fn=sigint_default)
    t0 = time.monotonic()
    while not (out / "state.json").exists():  # the references are measured: git bisect run starts
        assert proc.poll() is None and time.monotonic() - t0 < 120, proc.communicate()
        time.sleep(0.1)
    time.sleep(3.0)  # inside a step: c2 fails to build at once, c3 is being measured
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal: the foreground process group
    _, err = proc.communicate(timeout=60)
    text = err.decode()
    assert proc.returncode == 130, text
    assert text.strip().splitlines()[-1] == ("quantforge: error: interrupted; the repository was reset to "
                                             "where it was")
    assert "Traceback" not in text
    assert _git(r, "symbolic-ref", "--short", "HEAD") == "main" and _git(r, "rev-parse", "HEAD") == shas[5]
    assert not (r / ".git" / "BISECT_START").exists() and not (r / ".git" / "BISECT_LOG").exists()
    time.sleep(0.5)
    assert _processes_with(str(q8)) == [] and _processes_with(f"bisect step {out}") == []
    assert _processes_with("qf-busy-loop") == []


def test_step_oracle_needs_the_whole_interval_on_one_side() -> None:
    from quantforge.evaluate.bisect import _classify

    assert _classify(-30.0, -35.0, -25.0, 20.0) == "bad"
    assert _classify(-1.0, -4.0, 2.0, 20.0) == "good"
    assert _classify(-18.0, -26.0, -10.0, 20.0) is None  # reaches the threshold: measure again
    assert _classify(-30.0, None, None, 20.0) is None  # no interval: measure again
