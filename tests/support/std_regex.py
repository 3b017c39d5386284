"""A model of libstdc++'s ``std::regex`` (ECMAScript) matcher, for measuring, not for planning.

The engines' ``llama-quantize`` call ``std::regex_search(name, std::regex(pattern))``. libstdc++
compiles the pattern into an NFA (``_Compiler``: alternatives left first, ``*``/``+``/``?`` as
repeat states, ``{n,m}`` as n copies plus m-n nested optional copies) and runs it depth first
(``_Executor<…, __dfs_mode=true>``): every alternative and every repeat count is tried in
order until the first acceptance, a repeat state is re-entered at most twice at the same
position (``_M_rep_once_more``), and ``regex_search`` restarts at every position of the name.

``search(pattern, name)`` follows that algorithm state for state over the name's bytes and
returns (matched, steps), ``steps`` being the number of ``_M_dfs`` calls — the work the real
matcher does. Tests use it to show that what ``quantforge.regex_dialect`` refuses really
explodes in the engines while Python's ``re`` stays fast, that what it accepts stays within its
bound, and that its Python translation agrees with the engine; a differential test checks the
model itself against the real ``llama-quantize``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from quantforge.regex_dialect import Node, Seq, Tree, parse

MATCH, ALT, REPEAT, BEGIN, END, WORD, LOOK, DUMMY, ACCEPT = range(9)


@dataclass
class _State:
    op: int
    next: int = -1
    alt: int = -1
    neg: bool = False  # REPEAT: lazy; WORD: \B; LOOK: negative
    mask: int = 0  # MATCH: the byte set
    negated: bool = False  # MATCH: complement of mask


@dataclass
class _Nfa:
    states: list[_State] = field(default_factory=list)

    def add(self, st: _State) -> int:
        self.states.append(st)
        return len(self.states) - 1


class _Seq:
    """libstdc++'s ``_StateSeq``: a start state and an end state whose ``next`` is still open."""

    def __init__(self, nfa: _Nfa, start: int, end: int | None = None) -> None:
        self.nfa, self.start, self.end = nfa, start, start if end is None else end

    def append(self, other: _Seq | int) -> None:
        if isinstance(other, int):
            self.nfa.states[self.end].next = other
            self.end = other
        else:
            self.nfa.states[self.end].next = other.start
            self.end = other.end


def _compile_alts(nfa: _Nfa, alts: Tree) -> _Seq:
    seq = _compile_seq(nfa, alts[0])
    for alt in alts[1:]:
        seq2 = _compile_seq(nfa, alt)
        end = nfa.add(_State(DUMMY))
        seq.append(end)
        seq2.append(end)
        # _M_insert_alt(__alt2._M_start, __alt1._M_start): next = right, alt = left (tried first)
        seq = _Seq(nfa, nfa.add(_State(ALT, next=seq2.start, alt=seq.start)), end)
    return seq


def _compile_seq(nfa: _Nfa, seq: Seq) -> _Seq:
    if not seq:
        return _Seq(nfa, nfa.add(_State(DUMMY)))
    out = _compile_node(nfa, seq[0])
    for node in seq[1:]:
        out.append(_compile_node(nfa, node))
    return out


def _compile_node(nfa: _Nfa, node: Node) -> _Seq:
    kind = node[0]
    if kind == "lit":
        out = None
        for ch in node[1]:
            one = _Seq(nfa, nfa.add(_State(MATCH, mask=1 << ord(ch))))
            if out is None:
                out = one
            else:
                out.append(one)
        assert out is not None
        return out
    if kind == "set":
        return _Seq(nfa, nfa.add(_State(MATCH, mask=node[1], negated=node[2])))
    if kind == "assert":
        a = node[1]
        if a in "bB":
            return _Seq(nfa, nfa.add(_State(WORD, neg=a == "B")))
        return _Seq(nfa, nfa.add(_State(BEGIN if a == "^" else END)))
    if kind == "look":
        sub = _compile_alts(nfa, node[2])
        sub.append(nfa.add(_State(ACCEPT)))
        return _Seq(nfa, nfa.add(_State(LOOK, alt=sub.start, neg=node[1])))
    if kind == "group":
        # capturing or not, the subexpression markers cost one step each, as in libstdc++
        begin = _Seq(nfa, nfa.add(_State(DUMMY)))
        begin.append(_compile_alts(nfa, node[1]))
        begin.append(nfa.add(_State(DUMMY)))
        return begin
    _, body, lo, hi, lazy = node

    def make() -> _Seq:
        return _compile_node(nfa, body)

    if (lo, hi) == (0, None):  # *
        e = make()
        r = _Seq(nfa, nfa.add(_State(REPEAT, alt=e.start, neg=lazy)))
        e.append(r)
        return r
    if (lo, hi) == (1, None):  # +
        e = make()
        e.append(nfa.add(_State(REPEAT, alt=e.start, neg=lazy)))
        return e
    if (lo, hi) == (0, 1):  # ?
        e = make()
        end = nfa.add(_State(DUMMY))
        r = _Seq(nfa, nfa.add(_State(REPEAT, alt=e.start, neg=lazy)), end)
        nfa.states[r.start].next = end
        e.append(end)
        return r
    out = _Seq(nfa, nfa.add(_State(DUMMY)))
    for _ in range(lo):
        out.append(make())
    if hi is None:
        tmp = make()
        s = nfa.add(_State(REPEAT, alt=tmp.start, neg=lazy))
        tmp.append(s)
        out.append(s)
        return out
    end = nfa.add(_State(DUMMY))
    for _ in range(hi - lo):
        tmp = make()
        r = nfa.add(_State(REPEAT, alt=tmp.start, next=end, neg=lazy))
        out.append(_Seq(nfa, r, tmp.end))
    out.append(end)
    return out


def compile_nfa(pattern: str) -> tuple[_Nfa, int]:
    nfa = _Nfa()
    seq = _compile_alts(nfa, parse(pattern))
    seq.append(nfa.add(_State(ACCEPT)))
    return nfa, seq.start


class _Budget(Exception):
    pass


def _is_word(c: int) -> bool:
    return 48 <= c <= 57 or 65 <= c <= 90 or 97 <= c <= 122 or c == 95


class _Executor:
    def __init__(self, nfa: _Nfa, subject: bytes, begin: int, *, prev_avail: bool, budget: int,
                 counter: list[int]) -> None:
        self.nfa, self.s, self.begin, self.end = nfa, subject, begin, len(subject)
        self.prev_avail = prev_avail
        self.cur = begin
        self.has_sol = False
        self.rep: dict[int, tuple[int, int]] = {}
        self.budget = budget
        self.counter = counter

    def run(self, start: int) -> bool:
        self.has_sol = False
        self.dfs(start)
        return self.has_sol

    def dfs(self, i: int) -> None:
        self.counter[0] += 1
        if self.counter[0] > self.budget:
            raise _Budget()
        st = self.nfa.states[i]
        op = st.op
        if op == MATCH:
            if self.cur != self.end:
                c = self.s[self.cur]
                hit = (st.mask >> c) & 1
                if hit != st.negated:
                    self.cur += 1
                    self.dfs(st.next)
                    self.cur -= 1
        elif op == ALT:
            self.dfs(st.alt)
            if not self.has_sol:
                self.dfs(st.next)
        elif op == REPEAT:
            if not st.neg:  # greedy: once more first
                self.once_more(i)
                if not self.has_sol:
                    self.dfs(st.next)
            else:
                self.dfs(st.next)
                if not self.has_sol:
                    self.once_more(i)
        elif op == DUMMY:
            self.dfs(st.next)
        elif op == BEGIN:
            if self.cur == self.begin and not self.prev_avail:
                self.dfs(st.next)
        elif op == END:
            if self.cur == self.end:
                self.dfs(st.next)
        elif op == WORD:
            left = self.cur > 0 and (self.cur != self.begin or self.prev_avail) and _is_word(self.s[self.cur - 1])
            right = self.cur != self.end and _is_word(self.s[self.cur])
            if (left != right) != st.neg:
                self.dfs(st.next)
        elif op == LOOK:
            sub = _Executor(self.nfa, self.s, self.cur, prev_avail=True, budget=self.budget, counter=self.counter)
            if sub.run(st.alt) != st.neg:
                self.dfs(st.next)
        elif op == ACCEPT:
            self.has_sol = True

    def once_more(self, i: int) -> None:
        count = self.rep.get(i, (-1, 0))
        if count[1] == 0 or count[0] != self.cur:
            self.rep[i] = (self.cur, 1)
            self.dfs(self.nfa.states[i].alt)
            self.rep[i] = count
        elif count[1] < 2:
            self.rep[i] = (self.cur, count[1] + 1)
            self.dfs(self.nfa.states[i].alt)
            self.rep[i] = count


def search(pattern: str, name: str, *, budget: int = 10_000_000) -> tuple[bool | None, int]:
    """(does ``std::regex_search`` match, ``_M_dfs`` calls); (None, steps) when over ``budget``."""
    nfa, start = compile_nfa(pattern)
    subject = name.encode("utf-8", errors="surrogateescape")
    counter = [0]
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, 100_000))
    try:
        for begin in range(len(subject) + 1):
            ex = _Executor(nfa, subject, begin, prev_avail=begin > 0, budget=budget, counter=counter)
            if ex.run(start):
                return True, counter[0]
        return False, counter[0]
    except _Budget:
        return None, counter[0]
    finally:
        sys.setrecursionlimit(old)
