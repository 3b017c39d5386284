"""Recipe regexes as the engines read them: C++ ``std::regex`` (ECMAScript grammar, libstdc++).

Both engines' ``llama-quantize`` test every rule with ``std::regex_search(name,
std::regex(pattern))``: the default ECMAScript grammar of libstdc++, a backtracking matcher
over the name's bytes. quantforge predicts those matches in Python, so a pattern is accepted
only when it means the same in both:

* ``check`` parses the pattern with the ECMAScript grammar as libstdc++ implements it and
  refuses every construct that the two engines read differently or that only one accepts —
  POSIX classes ``[[:alpha:]]`` (a class in std::regex, a plain set in Python), ``(?>…)``,
  ``(?P…)``, lookbehind, inline flags, ``\\A``/``\\Z``/``\\N{…}``/``\\1`` …, ``{`` that does not
  start a repeat count, ``[]``/``[^]``, stacked quantifiers (``a**`` nests in std::regex, is
  an error in Python), non-ASCII characters — each with the position and the portable
  spelling;
* the accepted pattern is *translated* into the Python regex that matches exactly what
  std::regex matches (``.`` excludes ``\\r`` too, ``$`` is the very end, classes are ASCII and
  the name is matched byte for byte), so the planner's prediction is the engine's;
* the cost of the match is bounded the way libstdc++ executes it: it never merges
  alternatives (Python turns ``[a-z]|[a-f]`` into one set and ``(a?)*`` into a linear loop;
  std::regex tries both branches at every character), so ``(x|[a-z])*Z`` — instant in Python —
  takes minutes per tensor name in ``llama-quantize``. The bound counts the backtracking paths
  at one start position of a name of at most ``NAME_MAX`` bytes (GGUF tensor names are shorter
  than ggml's 64) and refuses patterns above ``MAX_WORK``; the NFA size std::regex builds
  (repeat counts copy their body) is bounded too.

This is the one regex-dialect checker: ``recipe`` (at load), ``plan`` (expansion, lint,
emission) and ``fit`` use it.
"""

from __future__ import annotations

import functools
import re
from typing import Any, NamedTuple

#: GGML_MAX_NAME is 64 with the terminating NUL: a tensor name has at most 63 bytes.
NAME_MAX = 63
#: Bound on backtracking work at one start position (``.*.*.*X`` is ~5e5, ``.*.*.*.*X`` ~3e7).
MAX_WORK = 4e6
#: Bound on the automaton std::regex builds (libstdc++ refuses 100000 states; copies per count).
MAX_STATES = 10_000
#: Repeat counts above this are refused (each count is a copy of the body in std::regex).
MAX_COUNT = 1000
#: Groups nested deeper than this are refused (recursion in both engines' compilers).
MAX_DEPTH = 50

#: A syntax-tree node (see below), a sequence of nodes, and alternatives of sequences.
Node = tuple[Any, ...]
Seq = tuple[Node, ...]
Tree = tuple[Seq, ...]

_ALL = (1 << 256) - 1
_DIGITS = frozenset(range(ord("0"), ord("9") + 1))
_WORD = frozenset([*range(ord("a"), ord("z") + 1), *range(ord("A"), ord("Z") + 1), *_DIGITS, ord("_")])
_SPACE = frozenset(map(ord, " \t\n\r\f\v"))
_CLASS_ESCAPES = {"d": _DIGITS, "w": _WORD, "s": _SPACE}
_CHAR_ESCAPES = {"f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}
_SYNTAX = set("^$\\.*+?()[]{}|")


class RegexError(ValueError):
    """A pattern the engines cannot use, or would read differently from Python; ``position`` is 0-based."""

    def __init__(self, reason: str, position: int | None = None) -> None:
        self.reason = reason
        self.position = position
        super().__init__(reason if position is None else f"{reason} (at character {position + 1})")


# --------------------------------------------------------------------------- syntax tree
#
# Nodes are tuples, cheap to build (a 10,000-rule recipe is checked in well under a second):
#   ("lit", text)                   characters that stand for themselves, in a row
#   ("set", mask, negated)          one byte: in mask (a 256-bit int), or not in it when negated
#   ("assert", kind)                "^", "$", "b" (word boundary), "B"
#   ("look", negative, alts)        (?=…) / (?!…)
#   ("group", alts)                 (…) and (?:…) alike: captures do not change what matches
#   ("repeat", node, lo, hi, lazy)  hi None = unbounded
# ``alts`` is a tuple of sequences; a sequence is a tuple of nodes.


def _mask(chars: frozenset[int] | set[int]) -> int:
    m = 0
    for c in chars:
        m |= 1 << c
    return m


_DOT = ("set", _mask({ord("\n"), ord("\r")}), True)


class _Parser:
    __slots__ = ("depth", "n", "pos", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.n = len(text)
        self.pos = 0
        self.depth = 0

    def fail(self, reason: str, at: int | None = None) -> RegexError:
        return RegexError(reason, self.pos if at is None else at)

    def parse(self) -> Tree:
        alts = self.disjunction(in_look=False)
        if self.pos < self.n:  # only an unbalanced ')' stops a disjunction early
            raise self.fail("unbalanced ')'")
        return alts

    def disjunction(self, *, in_look: bool) -> Tree:
        alts = [self.alternative(in_look=in_look)]
        while self.pos < self.n and self.text[self.pos] == "|":
            self.pos += 1
            alts.append(self.alternative(in_look=in_look))
        return tuple(alts)

    def alternative(self, *, in_look: bool) -> Seq:
        items: list[Node] = []
        text, n = self.text, self.n
        while self.pos < n:
            c = text[self.pos]
            if c in "|)":
                break
            run = _PLAIN.match(text, self.pos)
            if run is not None:
                chunk = run.group()
                end = run.end()
                if end < n and text[end] in "*+?{":
                    # the last character (or escape) belongs to the quantifier that follows
                    last = _ITEM.findall(chunk)[-1]
                    chunk = chunk[: len(chunk) - len(last)]
                if chunk:
                    self.pos += len(chunk)
                    items.append(("lit", _UNESCAPE.sub(r"\1", chunk) if "\\" in chunk else chunk))
                    continue
            start = self.pos
            node, quantifiable = self.term(in_look=in_look)
            if self.pos < n and text[self.pos] in "*+?{":
                if not quantifiable:
                    raise self.fail("a quantifier cannot follow an assertion (^, $, \\b, lookahead): "
                                    "std::regex rejects it")
                node = self.quantifier(node, start)
            items.append(node)
        return tuple(items)

    def quantifier(self, node: Node, start: int) -> Node:
        text = self.text
        c = text[self.pos]
        qpos = self.pos
        if c == "{":
            m = _BRACE.match(text, self.pos)
            if m is None:
                raise self.fail("a '{' that does not start a repeat count {n}, {n,} or {n,m} is an error in "
                                "std::regex (Python reads it literally); write \\{ for a literal brace")
            lo = int(m[1])
            hi = lo if m[2] is None else (int(m[3]) if m[3] else None)
            if lo > MAX_COUNT or (hi is not None and hi > MAX_COUNT):
                raise self.fail(f"repeat counts above {MAX_COUNT} make std::regex build one copy of the "
                                "expression per count; tensor names are shorter than 64 bytes anyway", qpos)
            if hi is not None and hi < lo:
                raise self.fail(f"repeat count {{{lo},{hi}}} runs backwards", qpos)
            self.pos = m.end()
        else:
            lo, hi = {"*": (0, None), "+": (1, None), "?": (0, 1)}[c]
            self.pos += 1
        lazy = self.pos < self.n and text[self.pos] == "?"
        if lazy:
            self.pos += 1
        if self.pos < self.n and text[self.pos] in "*+?{":
            nxt = text[self.pos]
            if nxt == "{" and _BRACE.match(text, self.pos) is None:
                raise self.fail("a '{' that does not start a repeat count is an error in std::regex; "
                                "write \\{ for a literal brace")
            raise self.fail("a quantifier follows another one: std::regex nests them (a** is (a*)*), "
                            "Python refuses them (a*+ is possessive there); use one quantifier or a group")
        return ("repeat", node, lo, hi, lazy)

    def term(self, *, in_look: bool) -> tuple[Node, bool]:
        text = self.text
        c = text[self.pos]
        if c == "^":
            if in_look:
                raise self.fail("^ inside a lookahead matches at the lookahead's start in libstdc++'s "
                                "std::regex, at the name's start in Python")
            self.pos += 1
            return ("assert", "^"), False
        if c == "$":
            self.pos += 1
            return ("assert", "$"), False
        if c == ".":
            self.pos += 1
            return _DOT, True
        if c == "(":
            return self.group(in_look=in_look)
        if c == "[":
            return self.bracket(), True
        if c == "\\":
            return self.escape(in_look=in_look)
        if c in "*+?":
            raise self.fail(f"nothing to repeat before {c!r}")
        if c == "{":
            raise self.fail("a '{' that does not follow something to repeat is an error in std::regex; "
                            "write \\{ for a literal brace")
        self.literal_check(c)
        self.pos += 1
        return ("set", 1 << ord(c), False), True

    def literal_check(self, c: str) -> None:
        o = ord(c)
        if o > 127:
            raise self.fail(f"non-ASCII character {c!r}: std::regex matches the name byte by byte, Python "
                            "character by character; tensor names are ASCII")
        if o < 32 or o == 127:
            raise self.fail(f"control character {c!r} in the pattern")

    def group(self, *, in_look: bool) -> tuple[Node, bool]:
        text = self.text
        open_at = self.pos
        self.pos += 1
        kind = "group"
        negative = False
        if text.startswith("?", self.pos):
            ext = text[self.pos + 1 : self.pos + 3]
            if ext[:1] == ":":
                self.pos += 2
            elif ext[:1] in "=!" and ext:
                kind, negative = "look", ext[0] == "!"
                self.pos += 2
            else:
                raise self.fail(_group_reason(text[self.pos + 1 : self.pos + 4]), open_at)
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.fail(f"groups nested deeper than {MAX_DEPTH}", open_at)
        alts = self.disjunction(in_look=in_look or kind == "look")
        self.depth -= 1
        if self.pos >= self.n or text[self.pos] != ")":
            raise self.fail("missing ')'", open_at)
        self.pos += 1
        if kind == "look":
            return ("look", negative, alts), False
        return ("group", alts), True

    def escape(self, *, in_look: bool) -> tuple[Node, bool]:
        text = self.text
        at = self.pos
        if self.pos + 1 >= self.n:
            raise self.fail("the pattern ends with a lone backslash")
        c = text[self.pos + 1]
        self.pos += 2
        if c in "bB":
            if in_look:
                raise self.fail("\\b inside a lookahead sees no previous character in libstdc++'s std::regex",
                                at)
            return ("assert", c), False
        if c in "dws":
            return ("set", _mask(_CLASS_ESCAPES[c]), False), True
        if c in "DWS":
            return ("set", _mask(_CLASS_ESCAPES[c.lower()]), True), True
        return ("set", 1 << self.char_escape(c, at, in_bracket=False), False), True

    def char_escape(self, c: str, at: int, *, in_bracket: bool) -> int:
        """The byte an escape (after the backslash, already consumed) stands for."""
        if c in _CHAR_ESCAPES:
            return ord(_CHAR_ESCAPES[c])
        if c in "xu":
            width = 2 if c == "x" else 4
            digits = self.text[self.pos : self.pos + width]
            if len(digits) < width or any(d not in "0123456789abcdefABCDEF" for d in digits):
                raise self.fail(f"\\{c} needs {width} hex digits", at)
            self.pos += width
            value = int(digits, 16)
            if value > 127:
                raise self.fail(f"\\{c}{digits} is not ASCII: std::regex matches bytes, Python characters", at)
            if value == 0:
                raise self.fail("NUL (\\x00) never occurs in a tensor name", at)
            return value
        if c == "0":
            raise self.fail("\\0 is NUL in std::regex, an octal escape in Python (\\01 is \\x01 there); "
                            "NUL never occurs in a tensor name", at)
        if c.isdigit():
            what = "an octal escape in Python" if in_bracket else "a back-reference"
            raise self.fail(f"\\{c} is {what}; back-references are not supported (they defeat the size "
                            "prediction and differ between the engines)", at)
        if c.isalpha():
            raise self.fail(_escape_reason(c), at)
        self.literal_check(c)
        return ord(c)

    def bracket(self) -> Node:
        text, n = self.text, self.n
        open_at = self.pos
        self.pos += 1
        negated = self.pos < n and text[self.pos] == "^"
        if negated:
            self.pos += 1
        if self.pos < n and text[self.pos] == "]":
            raise self.fail("'[]' and '[^]' are an empty set and 'any character' in std::regex, but Python "
                            "reads the ']' literally; write \\] inside the brackets", self.pos)
        chars = 0
        prev: int | None = None  # the last single character, a possible range start
        first = True
        while True:
            if self.pos >= n:
                raise self.fail("missing ']'", open_at)
            c = text[self.pos]
            at = self.pos
            if c == "]":
                self.pos += 1
                break
            if c == "[" and text[self.pos + 1 : self.pos + 2] in (":", ".", "="):
                kind = {":": "a POSIX character class", ".": "a collating symbol", "=": "an equivalence class"}[
                    text[self.pos + 1]]
                raise self.fail(f"'[{text[self.pos + 1]}' starts {kind} in std::regex but is a plain set member "
                                "in Python re; write the characters, e.g. [A-Za-z] for [[:alpha:]], [0-9] for "
                                "[[:digit:]]", at)
            if c == "-":
                last = self.pos + 1 < n and text[self.pos + 1] == "]"
                if first or last:
                    self.pos += 1
                    chars |= 1 << ord("-")
                    prev = None
                    first = False
                    continue
                if prev is None:
                    raise self.fail("a '-' after a range or a class escape reads differently in the engines; "
                                    "write \\- for a literal dash", at)
                self.pos += 1
                end = self.bracket_char(range_end=True)
                if end is None:
                    raise self.fail("a range needs a single character at both ends; write \\- for a literal dash",
                                    at)
                if end < prev:
                    raise self.fail(f"range {chr(prev)}-{chr(end)} runs backwards", at)
                for x in range(prev, end + 1):
                    chars |= 1 << x
                prev = None
                first = False
                continue
            first = False
            if c == "\\" and self.pos + 1 < n and text[self.pos + 1] in "dwsDWS":
                e = text[self.pos + 1]
                if e.isupper():
                    raise self.fail(f"\\{e} inside brackets is handled differently by libstdc++'s std::regex; "
                                    f"write a negated set such as [^0-9] for [\\D]", at)
                self.pos += 2
                chars |= _mask(_CLASS_ESCAPES[e])
                prev = None
                if self.pos < n and text[self.pos] == "-" and text[self.pos + 1 : self.pos + 2] != "]":
                    raise self.fail(f"a range cannot start at \\{e}", at)
                continue
            value = self.bracket_char(range_end=False)
            assert value is not None
            chars |= 1 << value
            prev = value
        return ("set", chars, negated)

    def bracket_char(self, *, range_end: bool) -> int | None:
        """One character inside brackets (after a '-' when ``range_end``); None for a class escape."""
        text = self.text
        if self.pos >= self.n:
            raise self.fail("missing ']'")
        c = text[self.pos]
        at = self.pos
        if c == "]" and range_end:
            return None
        if c == "\\":
            if self.pos + 1 >= self.n:
                raise self.fail("the pattern ends with a lone backslash")
            e = text[self.pos + 1]
            if e in "dwsDWS":
                return None
            self.pos += 2
            if e == "b":
                raise self.fail("\\b inside brackets is a backspace; it never occurs in a tensor name", at)
            return self.char_escape(e, at, in_bracket=True)
        if c == "-" and range_end:
            raise self.fail("a range ending in '-' reads differently in the engines; write \\- for a literal dash",
                            at)
        if c == "[" and text[self.pos + 1 : self.pos + 2] in (":", ".", "="):
            raise self.fail("POSIX bracket expressions ([:…:], [.….], [=…=]) differ between the engines", at)
        self.literal_check(c)
        self.pos += 1
        return ord(c)


_BRACE = re.compile(r"\{(\d{1,9})(,(\d{0,9}))?\}")
#: A run of characters that stand for themselves in both engines: printable ASCII that is not
#: syntax, and syntax characters escaped with a backslash (``\.``, ``\(`` …).
_PLAIN = re.compile(r"(?:[ !\"#%&',\-/0-9:;<=>@A-Z_`a-z~]|\\[.\-/()\[\]{}|*+?^$\\])+")
_ITEM = re.compile(r"\\.|.")
_UNESCAPE = re.compile(r"\\(.)")


def _group_reason(ext: str) -> str:
    if ext.startswith(">"):
        return "(?>…) is an atomic group in Python 3.11 but an error in std::regex"
    if ext.startswith(("<=", "<!")):
        return "lookbehind (?<=…)/(?<!…) is not supported by std::regex (ECMAScript)"
    if ext.startswith(("P", "<")):
        return "named groups (?P<…>) are Python-only"
    if ext.startswith("#"):
        return "comments (?#…) are Python-only"
    if ext.startswith("("):
        return "conditional groups (?(…)…) are Python-only"
    if ext[:1].isalpha() or ext.startswith("-"):
        return "inline flags such as (?i) are Python-only"
    return "'(?' must be followed by ':', '=' or '!' in std::regex (ECMAScript)"


def _escape_reason(c: str) -> str:
    known = {
        "A": r"\A and \Z are Python-only anchors (use ^ and $)",
        "Z": r"\A and \Z are Python-only anchors (use ^ and $)",
        "z": r"\z is not an escape in either engine (use $)",
        "N": r"\N{…} is a Python-only named character",
        "c": r"\cX is a control character in ECMAScript, an error in Python",
        "a": r"\a is a bell character in Python but the letter a in std::regex",
        "e": r"\e is an escape in neither engine (std::regex reads the letter e, Python refuses it)",
        "p": r"\p{…} Unicode properties exist in neither engine's dialect here",
        "P": r"\P{…} Unicode properties exist in neither engine's dialect here",
        "U": r"\U is a Python-only 8-digit escape",
        "G": r"\G is an escape in neither engine",
        "k": r"\k<…> named back-references are not supported",
    }
    return known.get(c, f"\\{c} is not an escape std::regex and Python read the same way (std::regex reads the "
                        f"letter {c}, Python refuses it); write {c} or [{c}]")


# --------------------------------------------------------------------------- translation to Python


def _py_set(mask: int, negated: bool) -> str:
    if not negated and mask and mask & (mask - 1) == 0:
        return re.escape(chr(mask.bit_length() - 1))
    parts: list[str] = []
    c = 0
    while mask >> c:
        if not (mask >> c) & 1:
            c += 1
            continue
        start = c
        while (mask >> (c + 1)) & 1:
            c += 1
        parts.append(_cls_char(start) if start == c else f"{_cls_char(start)}-{_cls_char(c)}")
        c += 1
    body = "".join(parts)
    if negated:
        return f"[^{body}]" if body else r"[\x00-\xff]"
    return f"[{body}]"


def _cls_char(c: int) -> str:
    return f"\\x{c:02x}"


def _py(alts: Tree) -> str:
    return "|".join("".join(_py_node(x) for x in seq) for seq in alts)


def _py_node(node: Node) -> str:
    kind = node[0]
    if kind == "lit":
        return re.escape(str(node[1]))
    if kind == "set":
        return _py_set(node[1], node[2])
    if kind == "assert":
        return {"^": "^", "$": r"\Z", "b": r"\b", "B": r"\B"}[node[1]]
    if kind == "look":
        return f"(?{'!' if node[1] else '='}{_py(node[2])})"
    if kind == "group":
        return f"(?:{_py(node[1])})"
    _, body, lo, hi, lazy = node
    inner = _py_node(body)
    if body[0] == "repeat":
        inner = f"(?:{inner})"
    q = {(0, None): "*", (1, None): "+", (0, 1): "?"}.get((lo, hi))
    if q is None:
        q = f"{{{lo}}}" if lo == hi else f"{{{lo},{'' if hi is None else hi}}}"
    return inner + q + ("?" if lazy else "")


# --------------------------------------------------------------------------- cost


class _Cost(NamedTuple):
    paths: float  # ways to reach the end of the node from one entry (over any name)
    work: float  # DFS steps spent inside the node per entry, all paths included
    wmin: int  # fewest bytes a match consumes
    wmax: int  # most bytes (NAME_MAX + 1: unbounded)
    first: int  # bytes a match can start with (mask); _ALL when it may consume nothing
    nullable: bool
    states: int  # NFA states std::regex builds for it
    unbounded: bool  # contains an unbounded repeat (for the nested-quantifier message)


_CAP = 1e300


def _cost_alts(alts: Tree) -> _Cost:
    return _alts_cost([_cost_seq(s) for s in alts])


def _concat(a: _Cost, b: _Cost) -> _Cost:
    """The cost of ``a`` followed by ``b`` (what ``_cost_seq`` folds over a sequence)."""
    return _Cost(min(_CAP, a.paths * b.paths), min(_CAP, a.work + a.paths * b.work), min(NAME_MAX + 1, a.wmin + b.wmin),
                 min(NAME_MAX + 1, a.wmax + b.wmax), a.first | b.first if a.nullable else a.first,
                 a.nullable and b.nullable, a.states + b.states, a.unbounded or b.unbounded)


def _alts_cost(costs: list[_Cost]) -> _Cost:
    if len(costs) == 1:
        return costs[0]
    firsts = [c.first for c in costs]
    disjoint = not any(c.nullable for c in costs)
    if disjoint:
        seen = 0
        for f in firsts:
            if seen & f:
                disjoint = False
                break
            seen |= f
    if disjoint:
        # Distinct first bytes: one branch gets past its first byte, the others fail at once.
        paths = max(c.paths for c in costs)
        work = max(c.work for c in costs) + len(costs)
    else:
        paths = min(_CAP, sum(c.paths for c in costs))
        work = min(_CAP, sum(c.work for c in costs) + len(costs))
    first = 0
    for f in firsts:
        first |= f
    return _Cost(paths, work, min(c.wmin for c in costs), max(c.wmax for c in costs), first,
                 any(c.nullable for c in costs), sum(c.states for c in costs) + 2 * len(costs),
                 any(c.unbounded for c in costs))


def _cost_seq(seq: Seq) -> _Cost:
    paths, work = 1.0, 1.0
    wmin = wmax = 0
    first = 0
    open_first = True  # every node so far may consume nothing
    states = 1
    unbounded = False
    for node in seq:
        c = _cost_node(node)
        work = min(_CAP, work + paths * c.work)
        paths = min(_CAP, paths * c.paths)
        wmin = min(NAME_MAX + 1, wmin + c.wmin)
        wmax = min(NAME_MAX + 1, wmax + c.wmax)
        if open_first:
            first |= c.first
            open_first = c.nullable
        states += c.states
        unbounded = unbounded or c.unbounded
    return _Cost(paths, work, wmin, wmax, _ALL if open_first else first, open_first, states, unbounded)


def _cost_node(node: Node) -> _Cost:
    kind = node[0]
    if kind == "lit":
        lit: str = node[1]
        return _Cost(1.0, float(len(lit)), len(lit), len(lit), 1 << ord(lit[0]), False, len(lit), False)
    if kind == "set":
        mask = node[1] ^ _ALL if node[2] else node[1]
        return _Cost(1.0, 1.0, 1, 1, mask, False, 1, False)
    if kind == "assert":
        return _Cost(1.0, 1.0, 0, 0, _ALL, True, 1, False)
    if kind == "look":
        body = _cost_alts(node[2])
        # Atomic: it succeeds once or not at all, whatever it explored inside.
        return _Cost(1.0, body.work + 1, 0, 0, _ALL, True, body.states + 2, body.unbounded)
    if kind == "group":
        body = _cost_alts(node[1])
        return _Cost(body.paths, body.work + 2, body.wmin, body.wmax, body.first, body.nullable,
                     body.states + 2, body.unbounded)
    _, sub, lo, hi, _lazy = node
    body = _cost_node(sub)
    if body.unbounded and hi is None and body.wmax > 0:
        raise RegexError("nested unbounded quantifiers (like (a+)+) can backtrack catastrophically; "
                         "simplify the regex")
    # No name is longer than NAME_MAX: a body that consumes at least one byte repeats at most that
    # often; one that can match empty is entered at most twice per position by std::regex.
    step = max(1, body.wmin)
    most = NAME_MAX // step + (1 if body.wmin == 0 else 0)
    top = most if hi is None else min(hi, most)
    least = min(lo, top)
    count = top - least + 1
    if body.paths <= 1 and body.wmin == body.wmax or body.paths <= 1 and not body.nullable:
        # One way through the body from any position: one path per number of iterations.
        paths = float(max(count, 1))
        work = min(_CAP, (top + 1) * (body.work + 1))
    else:
        per = body.paths if body.paths > 1 else 2.0  # a body that may match empty or not: two ways
        paths = min(_CAP, per ** top * (2 if per > 1 else 1))
        work = min(_CAP, paths * (body.work + 1))
    copies = max(lo, 1) + (0 if hi is None else max(0, hi - lo))
    return _Cost(paths, work, min(NAME_MAX + 1, body.wmin * lo),
                 NAME_MAX + 1 if hi is None else min(NAME_MAX + 1, body.wmax * hi),
                 body.first, lo == 0 or body.nullable, min(_CAP, copies * (body.states + 2)) if copies else 2,
                 hi is None or body.unbounded)


# --------------------------------------------------------------------------- the checked pattern


class EngineRegex:
    """A pattern accepted for the engines, with the Python regex that matches exactly like it.

    ``search(name)`` answers what ``std::regex_search(name, std::regex(pattern))`` answers.
    """

    __slots__ = ("_costs", "_python", "_rx", "_tree", "pattern", "states", "work")

    def __init__(self, pattern: str, tree: Tree, work: float, states: int) -> None:
        self.pattern = pattern
        self.work = work
        self.states = states
        self._tree = tree
        self._python: str | None = None
        self._rx: re.Pattern[str] | None = None
        self._costs: tuple[_Cost, ...] = ()

    @property
    def python(self) -> str:
        """The Python regex (``re.ASCII``) that matches a name exactly when std::regex does."""
        if self._python is None:
            self._python = _py(self._tree)
        return self._python

    def search(self, name: str) -> re.Match[str] | None:
        if self._rx is None:  # compiled on first use: loading a recipe only checks its rules
            self._rx = re.compile(self.python, re.ASCII)
        # std::regex sees bytes: a non-ASCII name is matched as its UTF-8 bytes, one per character.
        if not name.isascii():
            name = name.encode("utf-8", errors="surrogateescape").decode("latin-1")
        return self._rx.search(name)

    def __repr__(self) -> str:
        return f"EngineRegex({self.pattern!r})"


def parse(pattern: str) -> Tree:
    """The syntax tree of ``pattern`` as std::regex reads it, or ``RegexError``."""
    if not pattern:
        raise RegexError("empty regex")
    return _Parser(pattern).parse()


def _bound(cost: _Cost) -> None:
    if cost.states > MAX_STATES:
        raise RegexError(f"std::regex would build an automaton of about {cost.states} states (repeat counts copy "
                         f"their expression; at most {MAX_STATES} are accepted); use smaller counts")
    if cost.work > MAX_WORK:
        raise RegexError(
            "ambiguous repetition (like (.|..)*, (.?){30}, (a|[a-z])* or many .* in a row) can backtrack for hours "
            "on a tensor name in the engines' std::regex, which tries every alternative at every character "
            "(Python's re merges some and looks fast); simplify the regex"
        )


def analyse(pattern: str) -> tuple[Tree, float, int]:
    """(syntax tree, backtracking work bound, NFA states) of an accepted pattern, or ``RegexError``."""
    tree = parse(pattern)
    costs = [_cost_seq(seq) for seq in tree]
    cost = _alts_cost(costs)
    _bound(cost)
    return tree, cost.work, cost.states


@functools.lru_cache(maxsize=8192)
def check(pattern: str) -> EngineRegex:
    """The checked pattern (cached), or ``RegexError`` saying why the engines cannot use it as Python would."""
    tree = parse(pattern)
    costs = tuple(_cost_seq(seq) for seq in tree)
    cost = _alts_cost(list(costs))
    _bound(cost)
    rx = EngineRegex(pattern, tree, cost.work, cost.states)
    rx._costs = costs
    return rx


@functools.lru_cache(maxsize=1024)
def _prefix_cost(prefix: str) -> _Cost:
    tree = parse(prefix)
    if len(tree) != 1:
        raise RegexError("a prefix must be a single sequence")
    return _cost_seq(tree[0])


def check_prefixed(prefix: str, pattern: str) -> EngineRegex:
    """``check(prefix + pattern)`` for a prefix of one sequence (a rule's ``layers``), without parsing
    the prefix again for every rule: the engines get the two strings joined, so the prefix binds to the
    pattern's first alternative, and the cost is composed the same way. Returns the joined pattern's
    check result only when it is cached; the bound is what matters at load."""
    rx = check(pattern)
    costs = list(rx._costs)
    costs[0] = _concat(_prefix_cost(prefix), costs[0])
    _bound(_alts_cost(costs))
    return rx


def try_check(pattern: str) -> EngineRegex | None:
    try:
        return check(pattern)
    except RegexError:
        return None
