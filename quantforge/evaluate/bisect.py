"""Bisect a speed regression: ``git bisect run`` with the statistical verdict as the oracle.

``quantforge sweep bisect --repo PATH --good REV --bad REV --build 'CMD' --command 'BENCH CMD'``:

1. builds and measures GOOD and BAD (``repeat`` runs each) and checks that BAD really is slower
   (a regression verdict, at least ``threshold`` %; the default threshold is half the measured
   drop, so a commit is called bad when it is closer to BAD than to GOOD);
2. runs ``git bisect start BAD GOOD`` and ``git bisect run`` with this module as the step
   (``python -m quantforge.evaluate.bisect step STATE``), which builds the commit (a failed
   build exits 125: git skips the commit), measures it, and compares it with GOOD: bad when the
   whole confidence interval of the change lies below ``-threshold``, good when it lies above,
   otherwise more runs (up to ``max_repeat``) and then the point estimate, said in the step;
3. ends with ``git bisect reset`` whatever happens (Ctrl-C included), and reports the first bad
   commit, every step's effect and interval, and a plot.

Commands are argument lists (no shell; use ``sh -c '…'`` for pipes or ``&&``) run in the
repository's top folder, as ``git bisect run`` runs them. Every step's build log, tool output
and result are kept in the output folder.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from quantforge import runner
from quantforge.errors import BuildError, EvalError, InputError, Interrupted, QuantforgeError, ToolError
from quantforge.evaluate import _util
from quantforge.evaluate.models import Metric, SweepResult
from quantforge.evaluate.plots import plot_bisect
from quantforge.evaluate.stats import compare, summarize
from quantforge.evaluate.tables import read_table
from quantforge.fsutil import atomic_write_text

SKIP = 125  # git bisect run: this commit cannot be tested
StepVerdict = Literal["good", "bad", "skip"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class BisectStep(_Frozen):
    """One commit git bisect asked about (or a reference), and what the oracle said."""

    commit: str
    subject: str
    role: Literal["good reference", "bad reference", "step"]
    verdict: StepVerdict
    reason: str
    change_pct: float | None = None  # vs the GOOD reference, of the bisected metric
    ci_low_pct: float | None = None
    ci_high_pct: float | None = None
    runs: int = 0
    result: str | None = None  # sweep result JSON of this commit
    build_log: str | None = None
    wall_s: float = 0.0


class BisectReport(_Frozen):
    repo: str
    good: str
    bad: str
    metric: Metric
    threshold_pct: float
    threshold_source: Literal["given", "half the measured drop"]
    build: list[str]
    command: list[str]
    references: tuple[BisectStep, ...]
    steps: tuple[BisectStep, ...]
    first_bad: str | None
    first_bad_subject: str | None = None
    candidates: tuple[str, ...] = ()  # when skipped commits leave several possible first bad commits
    out_dir: str
    plot: tuple[str, ...] = ()
    git_log: str = ""


class _State(_Frozen):
    repo: str
    out_dir: str
    build: list[str]
    command: list[str]
    metric: Metric
    threshold_pct: float
    repeat: int
    max_repeat: int
    timeout: float | None
    good_result: str
    alpha: float
    min_effect_pct: float


# ---------------------------------------------------------------- processes


#: Set in the step process: its children stay in the process group of ``git bisect run``, which the
#: driver stops as a whole on Ctrl-C (a child in a session of its own would outlive it).
_IN_STEP = False


def _run(argv: Sequence[str], *, cwd: Path, timeout: float | None,
         log: Path | None = None) -> tuple[int, str]:
    """Run a command in its own process group; (exit status, stdout+stderr). Ctrl-C stops it."""
    try:
        done = runner.capture(argv, cwd=cwd, timeout=timeout, own_group=not _IN_STEP)
    except FileNotFoundError:
        return 127, f"{argv[0]}: command not found"
    except PermissionError:
        return 126, f"{argv[0]}: not executable"
    out = done.output
    if done.timed_out:
        out += f"\n[quantforge: killed after {timeout:.0f} s]\n"
    if log is not None:
        log.write_text(out)
    return (124 if done.timed_out else done.returncode), out


def _git_run(repo: Path, *args: str) -> runner.Finished:
    return runner.capture(["git", "-C", str(repo), *args], merge=False, own_group=not _IN_STEP)


def _git(repo: Path, *args: str, check: bool = True) -> str:
    done = _git_run(repo, *args)
    if check and done.returncode != 0:
        msg = (done.stderr.strip() or done.output.strip()).splitlines()
        raise InputError(f"git {' '.join(args[:2])} failed: {msg[-1] if msg else done.returncode}",
                         where=str(repo),
                         hint="check the repository and the revisions")
    return done.output.strip()


# ---------------------------------------------------------------- measuring one commit


def _measure(state: _State, commit: str, *, runs: int, tag: str,
             prior: SweepResult | None = None) -> SweepResult:
    """``runs`` more runs of the bench command at the checked-out commit (added to ``prior``)."""
    out_dir = Path(state.out_dir)
    logs = out_dir / "logs"
    have = list(prior.runs) if prior else []
    settings, build, sysinfo = (dict(prior.settings), prior.build, prior.system_info) if prior else ({}, None,
                                                                                                     None)
    fmt = prior.source_format if prior else None
    start = len(have)
    for i in range(start, start + runs):
        log = logs / f"{commit[:12]}-{tag}-run{i + 1}.log"
        rc, out = _run(state.command, cwd=Path(state.repo), timeout=state.timeout, log=log)
        if rc != 0:
            raise EvalError(f"the bench command failed with exit status {rc}", where=str(log),
                            hint=out.strip().splitlines()[-1][:200] if out.strip() else None)
        try:
            table = read_table(out, source=str(log))
        except InputError as exc:
            raise EvalError(exc.message, where=exc.where, hint=exc.hint) from exc
        have += list(table.runs)
        settings = settings or table.settings
        build = build or table.build
        sysinfo = sysinfo or table.system_info
        fmt = table.format
    first = have[0]
    return SweepResult(label=commit[:12],
                       engine="ik" if (fmt or "").startswith("sweep-bench") else "mainline",
                       source_format=fmt,
                       command=list(state.command), ctx=first[-1].n_kv + first[-1].pp,
                       ubatch=max(r.pp for r in first),
                       tg=max(r.tg for r in first), runs=tuple(have), summary=summarize(have),
                       created=_util.now_iso(), settings=settings, build=build, system_info=sysinfo,
                       engine_commit=commit)


def _effect(good: SweepResult, cand: SweepResult, state: _State) -> tuple[float, float | None, float | None,
                                                                          str]:
    rep = compare(good, cand, alpha=state.alpha, min_effect_pct=state.min_effect_pct)
    head = next(s for s in rep.summary if s.metric == state.metric)
    return head.change_pct, head.ci_low_pct, head.ci_high_pct, head.method


def _classify(change: float, lo: float | None, hi: float | None, threshold: float) -> StepVerdict | None:
    """bad: the whole interval below -threshold; good: the whole interval above; None: undecided."""
    thr = -abs(threshold)
    if lo is not None and hi is not None:
        if hi < thr:
            return "bad"
        if lo > thr:
            return "good"
        return None
    return None


def _build(state: _State, commit: str) -> tuple[int, Path, float]:
    log = Path(state.out_dir) / "logs" / f"{commit[:12]}-build.log"
    t0 = time.perf_counter()
    rc, _ = _run(state.build, cwd=Path(state.repo), timeout=state.timeout, log=log)
    return rc, log, time.perf_counter() - t0


def _step(state: _State, commit: str, subject: str) -> BisectStep:
    """Build and judge one commit (the ``git bisect run`` oracle)."""
    t0 = time.perf_counter()
    rc, log, _ = _build(state, commit)
    if rc != 0:
        return BisectStep(commit=commit, subject=subject, role="step", verdict="skip",
                          reason=f"the build failed (exit status {rc}): skipped", build_log=str(log),
                          wall_s=time.perf_counter() - t0)
    good = SweepResult.model_validate_json(Path(state.good_result).read_text())
    try:
        res = _measure(state, commit, runs=state.repeat, tag="step")
        change, lo, hi, method = _effect(good, res, state)
        verdict = _classify(change, lo, hi, state.threshold_pct)
        while verdict is None and len(res.runs) < state.max_repeat:
            res = _measure(state, commit, runs=min(state.repeat, state.max_repeat - len(res.runs)),
                           tag="step",
                           prior=res)
            change, lo, hi, method = _effect(good, res, state)
            verdict = _classify(change, lo, hi, state.threshold_pct)
        if verdict is None:
            verdict = "bad" if change < -abs(state.threshold_pct) else "good"
            reason = (f"inconclusive after {len(res.runs)} runs (interval {_fmt_ci(lo, hi)} reaches the "
                      f"-{state.threshold_pct:.1f} % threshold): decided on the point estimate "
                      f"{change:+.1f} %")
        else:
            side = "below" if verdict == "bad" else "above"
            reason = (f"{change:+.1f} % {_fmt_ci(lo, hi)} vs GOOD, {side} -{state.threshold_pct:.1f} % "
                      f"({method})")
    except EvalError as exc:
        return BisectStep(commit=commit, subject=subject, role="step", verdict="skip",
                          reason=f"the benchmark failed: {exc.one_line()}: skipped", build_log=str(log),
                          wall_s=time.perf_counter() - t0)
    result = Path(state.out_dir) / "results" / f"{commit[:12]}.json"
    _util_write(result, res.model_dump_json(indent=2))
    return BisectStep(commit=commit, subject=subject, role="step", verdict=verdict, reason=reason,
                      change_pct=change,
                      ci_low_pct=lo, ci_high_pct=hi, runs=len(res.runs), result=str(result),
                      build_log=str(log),
                      wall_s=time.perf_counter() - t0)


def _fmt_ci(lo: float | None, hi: float | None) -> str:
    return "(no interval)" if lo is None or hi is None else f"(95 % CI {lo:+.1f} .. {hi:+.1f} %)"


def _util_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)


# ---------------------------------------------------------------- the driver


def bisect(
    repo: str | Path, *, good: str, bad: str, build: str | Sequence[str], command: str | Sequence[str],
    metric: Metric = "pp", threshold_pct: float | None = None, repeat: int = 3, max_repeat: int = 9,
    out_dir: str | Path | None = None, timeout: float | None = None, alpha: float = 0.05,
    min_effect_pct: float = 2.0,
    progress: Callable[[str], None] | None = None, force: bool = False,
) -> BisectReport:
    """Find the first commit between GOOD and BAD whose ``metric`` speed dropped (see the module doc)."""
    repo_p = Path(repo).expanduser().resolve()
    if not repo_p.is_dir():
        raise InputError("repository not found", where=str(repo_p), hint="pass --repo PATH of a git checkout")
    top = Path(_git(repo_p, "rev-parse", "--show-toplevel"))
    build_argv = _argv(build, "--build")
    bench_argv = _argv(command, "--command")
    if repeat < 1 or max_repeat < repeat:
        raise InputError(f"need 1 <= --repeat ({repeat}) <= --max-repeat ({max_repeat})", where="--repeat")
    if threshold_pct is not None and not 0 < threshold_pct < 100:
        raise InputError(f"--threshold must be a percentage between 0 and 100, not {threshold_pct}",
                         where="--threshold")
    good_sha = _rev(top, good, "--good")
    bad_sha = _rev(top, bad, "--bad")
    if good_sha == bad_sha:
        raise InputError("--good and --bad are the same commit", where="--good/--bad")
    if _git_run(top, "merge-base", "--is-ancestor", good_sha, bad_sha).returncode != 0:
        raise InputError(f"--good {good} is not an ancestor of --bad {bad}", where="--good/--bad",
                         hint="the good revision must come before the bad one")
    if _git(top, "status", "--porcelain", "--untracked-files=no"):
        raise InputError("the repository has uncommitted changes: bisecting checks out other commits",
                         where=str(top), hint="commit or stash them first")
    git_dir = Path(_git(top, "rev-parse", "--absolute-git-dir"))
    if (git_dir / "BISECT_LOG").exists() or (git_dir / "BISECT_START").exists():
        raise InputError("a git bisect is already in progress in this repository", where=str(top),
                         hint="finish it or run 'git bisect reset'")
    out = Path(out_dir) if out_dir else Path.cwd() / f"bisect-{good_sha[:8]}-{bad_sha[:8]}"
    out = out.resolve()
    if (out / "state.json").exists() or (out / "report.json").exists():
        if not force:
            raise InputError("the output folder holds an earlier bisect", where=str(out),
                             hint="pass --force to replace it, or choose another --out-dir")
        for sub in ("steps", "results", "logs"):
            shutil.rmtree(out / sub, ignore_errors=True)
        for name in ("state.json", "report.json", "bisect-run.log"):
            (out / name).unlink(missing_ok=True)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    (out / "results").mkdir(parents=True, exist_ok=True)
    state = _State(repo=str(top), out_dir=str(out), build=build_argv, command=bench_argv, metric=metric,
                   threshold_pct=threshold_pct or 0.0, repeat=repeat, max_repeat=max_repeat, timeout=timeout,
                   good_result=str(out / "results" / "good.json"), alpha=alpha, min_effect_pct=min_effect_pct)
    start_ref = _git(top, "symbolic-ref", "-q", "--short", "HEAD", check=False) or _git(top, "rev-parse",
                                                                                        "HEAD")
    say = progress or (lambda _msg: None)
    steps: list[BisectStep] = []
    try:
        refs = []
        results: dict[str, SweepResult] = {}
        for role, sha in (("good reference", good_sha), ("bad reference", bad_sha)):
            say(f"{role}: building {sha[:12]}")
            _git(top, "checkout", "-q", "--detach", sha)
            t0 = time.perf_counter()
            rc, log, _ = _build(state, sha)
            if rc != 0:
                raise BuildError(f"the {role.split()[0].upper()} revision {sha[:12]} does not build (exit "
                                 f"status {rc})",
                                 where=str(log), hint="fix --build, or pick revisions that build")
            say(f"{role}: measuring {sha[:12]} ({repeat} runs)")
            res = _measure(state, sha, runs=repeat, tag=role.split()[0])
            results[role] = res
            path = out / "results" / f"{role.split()[0]}.json"
            _util_write(path, res.model_dump_json(indent=2))
            refs.append(BisectStep(commit=sha, subject=_subject(top, sha),
                                   role=role,  # type: ignore[arg-type]
                                   verdict="good" if role.startswith("good") else "bad", reason=role,
                                   runs=len(res.runs), result=str(path), build_log=str(log),
                                   wall_s=time.perf_counter() - t0))
        change, lo, hi, method = _effect(results["good reference"], results["bad reference"], state)
        rep = compare(results["good reference"], results["bad reference"], alpha=alpha,
                      min_effect_pct=min_effect_pct)
        head = next(s for s in rep.summary if s.metric == metric)
        refs[1] = refs[1].model_copy(update={"change_pct": change, "ci_low_pct": lo, "ci_high_pct": hi,
                                             "reason": f"bad reference: {change:+.1f} % "
                                                       f"{_fmt_ci(lo, hi)} vs GOOD"})
        refs[0] = refs[0].model_copy(update={"change_pct": 0.0, "reason": "good reference"})
        source: Literal["given", "half the measured drop"] = "given"
        threshold = threshold_pct
        if threshold is None:
            threshold = abs(change) / 2
            source = "half the measured drop"
        if head.verdict != "regression" or change > -threshold:
            raise EvalError(f"BAD ({bad_sha[:12]}) is not measurably slower than GOOD ({good_sha[:12]}) in "
                            f"{metric.upper()}: {change:+.1f} % {_fmt_ci(lo, hi)}, verdict {head.verdict} "
                            f"({method})",
                            where=str(out), hint="check the revisions and the bench command, or add --repeat")
        state = state.model_copy(update={"threshold_pct": threshold})
        state_file = out / "state.json"
        _util_write(state_file, state.model_dump_json(indent=2))
        say(f"BAD is {change:+.1f} % vs GOOD; bisecting with the threshold -{threshold:.1f} %")
        _git(top, "bisect", "start", bad_sha, good_sha)
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        # its own process group: on Ctrl-C the whole bisect run (git, the step, its build/bench) is stopped
        def on_line(line: str) -> None:
            if line.startswith("quantforge-step: "):
                say(line[len("quantforge-step: "):].rstrip())

        text = runner.stream(["git", "-C", str(top), "bisect", "run", sys.executable, "-m", __name__, "step",
                              str(state_file)], on_line=on_line, env=env).output
        _util_write(out / "bisect-run.log", text)
        git_log = _git(top, "bisect", "log", check=False)
        first, candidates = _first_bad(top, text)
        for f in sorted((out / "steps").glob("*.json")) if (out / "steps").is_dir() else []:
            steps.append(BisectStep.model_validate_json(f.read_text()))
        if first is None and not candidates:
            raise EvalError("git bisect run did not name a first bad commit",
                            where=str(out / "bisect-run.log"),
                            hint=text.strip().splitlines()[-1][:200] if text.strip() else None)
    except KeyboardInterrupt:
        raise Interrupted("interrupted; the repository was reset to where it was") from None
    finally:
        if (git_dir / "BISECT_START").exists():
            _git(top, "bisect", "reset", check=False)
        _git(top, "checkout", "-q", start_ref, check=False)
    order = _git(top, "rev-list", "--reverse", f"{good_sha}..{bad_sha}").split()
    steps.sort(key=lambda s: order.index(s.commit) if s.commit in order else len(order))
    report = BisectReport(repo=str(top), good=good_sha, bad=bad_sha, metric=metric, threshold_pct=threshold,
                          threshold_source=source, build=build_argv, command=bench_argv,
                          references=tuple(refs),
                          steps=tuple(steps), first_bad=first,
                          first_bad_subject=_subject(top, first) if first else None,
                          candidates=tuple(candidates), out_dir=str(out), git_log=git_log)

    plots = plot_bisect(report, out / "bisect")
    report = report.model_copy(update={"plot": tuple(str(p) for p in plots)})
    _util_write(out / "report.json", report.model_dump_json(indent=2))
    return report


def _argv(cmd: str | Sequence[str], where: str) -> list[str]:
    try:
        argv = shlex.split(cmd) if isinstance(cmd, str) else list(cmd)
    except ValueError as exc:
        raise InputError(f"cannot split the command: {exc}", where=where, hint="check its quotes") from exc
    if not argv:
        raise InputError("empty command", where=where)
    return argv


def _rev(repo: Path, rev: str, where: str) -> str:
    done = _git_run(repo, "rev-parse", "--verify", "-q", f"{rev}^{{commit}}")
    if done.returncode != 0:
        raise InputError(f"unknown revision {rev!r}", where=where,
                         hint="pass a commit, tag or branch of the repository")
    return done.output.strip()


def _subject(repo: Path, sha: str) -> str:
    return _git(repo, "log", "-1", "--format=%s", sha, check=False)


def _first_bad(repo: Path, text: str) -> tuple[str | None, list[str]]:
    m = re.search(r"^([0-9a-f]{40}) is the first bad commit", text, re.M)
    if m:
        return m.group(1), []
    if "only 'skip'ped commits left" in text:
        cands = re.findall(r"^([0-9a-f]{40})$", text, re.M)
        return None, list(dict.fromkeys(cands))
    return None, []


# ---------------------------------------------------------------- the step (run by git bisect run)


def _step_main(state_file: str) -> int:
    global _IN_STEP
    _IN_STEP = True
    state = _State.model_validate_json(Path(state_file).read_text())
    repo = Path(state.repo)
    commit = _git(repo, "rev-parse", "HEAD")
    try:
        step = _step(state, commit, _subject(repo, commit))
    except KeyboardInterrupt:
        return 255  # makes git bisect run stop
    except QuantforgeError as exc:
        step = BisectStep(commit=commit, subject=_subject(repo, commit), role="step", verdict="skip",
                          reason=f"{exc.one_line()}: skipped")
    _util_write(Path(state.out_dir) / "steps" / f"{commit}.json", step.model_dump_json(indent=2))
    print(f"quantforge-step: {commit[:12]} {step.verdict}: {step.reason}", flush=True)
    return {"good": 0, "bad": 1, "skip": SKIP}[step.verdict]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] != "step":
        sys.stderr.write("usage: python -m quantforge.evaluate.bisect step STATE.json (run by git "
                         "bisect run)\n")
        return 2
    try:
        return _step_main(args[1])
    except (OSError, ValueError, ToolError) as exc:
        sys.stderr.write(f"quantforge bisect step: {exc}\n")
        return SKIP


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["BisectReport", "BisectStep", "bisect"]
