"""Lexer for Go's text/template language.

Splits template text into tokens: text runs between actions, and inside an action
delimiters, spaces, identifiers, keywords, fields (`.Foo`), variables (`$x`), string,
raw-string, char and number literals, `|`, `(`, `)`, `=`, `:=` and `,`. Handles
configurable delimiters, the trim markers (`{{- ` and ` -}}`, which need ASCII white
space between marker and body) and whole-action comments (`{{/* ... */}}`).

Threads: none; `lex` is a pure function. Locks: none. Owner: called by `parser.parse`.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from allocrunner._locking import confined
from allocrunner.template.gofmt import go_quote

TEXT = "text"
LEFT = "left delimiter"
RIGHT = "right delimiter"
SPACE = "space"
IDENT = "identifier"
KEYWORD = "keyword"
FIELD = "field"
VARIABLE = "variable"
STRING = "string"
RAW_STRING = "raw string"
CHAR = "character constant"
NUMBER = "number"
BOOL = "bool"
NIL = "nil"
DOT = "dot"
PIPE = "pipe"
LPAREN = "("
RPAREN = ")"
ASSIGN = "="
DECLARE = ":="
COMMA = "char"
EOF = "EOF"
ERROR = "error"

KEYWORDS = frozenset(
    {"block", "break", "continue", "define", "else", "end", "if", "range", "template", "with"}
)
SPACE_CHARS = " \t\r\n"
TERMINATORS = frozenset(" \t\r\n.,|:()")


@dataclass(frozen=True, slots=True)
class Token:
    """One lexical item: its kind, its source text, offset and 1-based line."""

    kind: str
    value: str
    pos: int
    line: int


class LexError(Exception):
    """A lexical error at a 1-based line; the parser turns it into TemplateError."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


class _Lexer:
    """Not thread-safe; owned by the thread that renders. State of one lexing pass over
    one template text."""

    pos = confined("template render")
    paren_depth = confined("template render")

    def __init__(self, text: str, left: str, right: str) -> None:
        self.text = text
        self.left = left or "{{"
        self.right = right or "}}"
        self.pos = 0
        self.tokens: list[Token] = []
        self.paren_depth = 0
        self._newlines = [i for i, c in enumerate(text) if c == "\n"]

    def line_at(self, pos: int) -> int:
        return 1 + bisect.bisect_left(self._newlines, pos)

    def emit(self, kind: str, start: int, end: int) -> None:
        self.tokens.append(Token(kind, self.text[start:end], start, self.line_at(start)))

    def fail(self, pos: int, message: str) -> LexError:
        return LexError(self.line_at(pos), message)

    # --- text -----------------------------------------------------------------------

    def run(self) -> list[Token]:
        """Tokenize the whole text; a lexical error becomes a final ERROR token, so the
        parser reports any earlier syntax error first, as Go's streaming lexer does."""
        try:
            return self._run()
        except LexError as err:
            self.tokens.append(Token(ERROR, err.message, self.pos, err.line))
            return self.tokens

    def _run(self) -> list[Token]:
        text, trim_next = self.text, False
        while True:
            start = self.pos
            found = text.find(self.left, start)
            end = len(text) if found < 0 else found
            trim_left = found >= 0 and self._has_left_trim(found)
            chunk_start, chunk_end = start, end
            if trim_next:
                while chunk_start < chunk_end and text[chunk_start] in SPACE_CHARS:
                    chunk_start += 1
            if trim_left:
                while chunk_end > chunk_start and text[chunk_end - 1] in SPACE_CHARS:
                    chunk_end -= 1
            if chunk_end > chunk_start:
                self.emit(TEXT, chunk_start, chunk_end)
            if found < 0:
                self.tokens.append(Token(EOF, "", len(text), self.line_at(len(text))))
                return self.tokens
            trim_next = self._lex_action(found, trim_left)

    def _has_left_trim(self, at: int) -> bool:
        marker = at + len(self.left)
        return (
            self.text.startswith("-", marker)
            and marker + 1 < len(self.text)
            and self.text[marker + 1] in SPACE_CHARS
        )

    def _at_right(self, pos: int) -> tuple[bool, bool]:
        """Whether a right delimiter starts at pos, and whether it carries a trim marker."""
        if self.text.startswith(" -" + self.right, pos) or (
            pos < len(self.text)
            and self.text[pos] in SPACE_CHARS
            and self.text.startswith("-" + self.right, pos + 1)
        ):
            return True, True
        return self.text.startswith(self.right, pos), False

    def _right_len(self, trim: bool) -> int:
        return len(self.right) + (2 if trim else 0)

    # --- actions --------------------------------------------------------------------

    def _lex_action(self, at: int, trim_left: bool) -> bool:
        """Lex one action starting at its left delimiter; return its right trim flag."""
        body = at + len(self.left) + (2 if trim_left else 0)
        if self.text.startswith("/*", body):
            return self._lex_comment(at, body)
        self.emit(LEFT, at, body)
        self.pos = body
        self.paren_depth = 0
        while True:
            is_right, trim = self._at_right(self.pos)
            if is_right:
                if self.paren_depth:
                    raise self.fail(self.pos, "unclosed left paren")
                end = self.pos + self._right_len(trim)
                self.emit(RIGHT, self.pos, end)
                self.pos = end
                return trim
            self._lex_one()

    def _lex_comment(self, at: int, body: int) -> bool:
        close = self.text.find("*/", body + 2)
        if close < 0:
            raise self.fail(at, "unclosed comment")
        is_right, trim = self._at_right(close + 2)
        if not is_right:
            raise self.fail(at, "comment ends before closing delimiter")
        self.pos = close + 2 + self._right_len(trim)
        return trim

    def _lex_one(self) -> None:
        text, pos = self.text, self.pos
        if pos >= len(text):
            raise self.fail(pos, "unclosed action")
        c = text[pos]
        if c in SPACE_CHARS:
            self._lex_space()
        elif c == "=":
            self._single(ASSIGN)
        elif c == ":":
            if not text.startswith(":=", pos):
                raise self.fail(pos, "expected :=")
            self.emit(DECLARE, pos, pos + 2)
            self.pos = pos + 2
        elif c == "|":
            self._single(PIPE)
        elif c == '"':
            self._lex_quote()
        elif c == "`":
            self._lex_raw()
        elif c == "'":
            self._lex_char()
        elif c == "$":
            self._lex_word(VARIABLE, pos + 1)
        elif c == "." and pos + 1 < len(text) and text[pos + 1].isdigit():
            self._lex_number()
        elif c == ".":
            self._lex_field()
        elif c in "+-" or c.isdigit():
            self._lex_number()
        elif c.isalpha() or c == "_":
            self._lex_identifier()
        else:
            self._lex_punct(c)

    def _lex_punct(self, c: str) -> None:
        if c == "(":
            self.paren_depth += 1
            self._single(LPAREN)
        elif c == ")":
            self.paren_depth -= 1
            self._single(RPAREN)
            if self.paren_depth < 0:
                raise self.fail(self.pos - 1, f"unexpected right paren {_rune(c)}")
        elif c.isascii() and c.isprintable():
            self._single(COMMA)
        else:
            raise self.fail(self.pos, f"unrecognized character in action: {_rune(c)}")

    def _single(self, kind: str) -> None:
        self.emit(kind, self.pos, self.pos + 1)
        self.pos += 1

    def _lex_space(self) -> None:
        start, pos = self.pos, self.pos
        while pos < len(self.text) and self.text[pos] in SPACE_CHARS:
            if self.text.startswith("-" + self.right, pos + 1):
                break
            pos += 1
        if pos == start:
            pos += 1
        self.emit(SPACE, start, pos)
        self.pos = pos

    def _scan_alnum(self, pos: int) -> int:
        while pos < len(self.text) and (self.text[pos].isalnum() or self.text[pos] == "_"):
            pos += 1
        return pos

    def _check_terminator(self, pos: int) -> None:
        if pos >= len(self.text) or self.text[pos] in TERMINATORS:
            return
        if self._at_right(pos)[0]:
            return
        raise self.fail(pos, f"bad character {_rune(self.text[pos])}")

    def _lex_word(self, kind: str, body: int) -> None:
        end = self._scan_alnum(body)
        self._check_terminator(end)
        self.emit(kind, self.pos, end)
        self.pos = end

    def _lex_field(self) -> None:
        end = self._scan_alnum(self.pos + 1)
        if end == self.pos + 1:
            self._check_terminator(end)
            self.emit(DOT, self.pos, end)
            self.pos = end
            return
        self._lex_word(FIELD, self.pos + 1)

    def _lex_identifier(self) -> None:
        end = self._scan_alnum(self.pos)
        self._check_terminator(end)
        word = self.text[self.pos : end]
        if word in KEYWORDS:
            kind = KEYWORD
        elif word in ("true", "false"):
            kind = BOOL
        elif word == "nil":
            kind = NIL
        else:
            kind = IDENT
        self.emit(kind, self.pos, end)
        self.pos = end

    def _accept(self, pos: int, chars: str) -> int:
        return pos + 1 if pos < len(self.text) and self.text[pos] in chars else pos

    def _accept_run(self, pos: int, chars: str) -> int:
        while pos < len(self.text) and self.text[pos] in chars:
            pos += 1
        return pos

    def _lex_number(self) -> None:
        """A number; a sign right after one starts Go's complex-constant form (`1+2i`)."""
        pos = self._scan_number(self.pos)
        if pos < len(self.text) and self.text[pos] in "+-":
            pos = self._scan_number(pos)
            if self.text[pos - 1] != "i":
                raise self.fail(self.pos, f"bad number syntax: {go_quote(self.text[self.pos:pos])}")
        self.emit(NUMBER, self.pos, pos)
        self.pos = pos

    def _scan_number(self, start: int) -> int:
        """Go's scanNumber: sign, base prefix, digits, one fraction, exponent; the parser
        judges the result."""
        pos = self._accept(start, "+-")
        digits = "0123456789_"
        if self.text.startswith("0", pos):
            pos += 1
            prefix = self.text[pos : pos + 1]
            if prefix and prefix in "xX":
                digits, pos = "0123456789abcdefABCDEF_", pos + 1
            elif prefix and prefix in "oO":
                digits, pos = "01234567_", pos + 1
            elif prefix and prefix in "bB":
                digits, pos = "01_", pos + 1
        pos = self._accept_run(pos, digits)
        if self._accept(pos, ".") != pos:
            pos = self._accept_run(pos + 1, digits)
        exponent = {11: "eE", 23: "pP"}.get(len(digits), "")
        if exponent and self._accept(pos, exponent) != pos:
            pos = self._accept_run(self._accept(pos + 1, "+-"), "0123456789_")
        pos = self._accept(pos, "i")
        if pos < len(self.text) and (self.text[pos].isalnum() or self.text[pos] == "_"):
            raise self.fail(
                self.pos, f"bad number syntax: {go_quote(self.text[self.pos : pos + 1])}"
            )
        return pos

    def _lex_quote(self) -> None:
        self._lex_delimited('"', STRING, "unterminated quoted string")

    def _lex_char(self) -> None:
        self._lex_delimited("'", CHAR, "unterminated character constant")

    def _lex_delimited(self, quote: str, kind: str, message: str) -> None:
        text, pos = self.text, self.pos + 1
        while True:
            if pos >= len(text) or text[pos] == "\n":
                raise self.fail(self.pos, message)
            if text[pos] == "\\":
                pos += 2
                continue
            if text[pos] == quote:
                break
            pos += 1
        self.emit(kind, self.pos, pos + 1)
        self.pos = pos + 1

    def _lex_raw(self) -> None:
        close = self.text.find("`", self.pos + 1)
        if close < 0:
            raise self.fail(self.pos, "unterminated raw quoted string")
        self.emit(RAW_STRING, self.pos, close + 1)
        self.pos = close + 1


def _rune(c: str) -> str:
    """Go's %#U rendering of a character: U+0040 '@'."""
    code = ord(c)
    return f"U+{code:04X} '{c}'" if c.isprintable() else f"U+{code:04X}"


def lex(text: str, left: str = "{{", right: str = "}}") -> list[Token]:
    """Tokenize template text; raise LexError on a lexical error."""
    return _Lexer(text, left, right).run()
