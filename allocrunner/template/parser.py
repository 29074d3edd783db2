"""Parser for Go's text/template language: tokens -> immutable parse trees.

`parse` returns one tree per template name (the top-level text under its own name,
plus one per `define`/`block`). Like Go, it rejects at parse time: unknown function
names, undeclared variables, `break`/`continue` outside `range`, misplaced `else`/`end`,
empty pipelines, literals in non-first pipeline stages and duplicate non-empty
definitions. Errors read `template: NAME:LINE: message`.

Threads: none; `parse` is a pure function. Locks: none. Owner: called by the package
API (`render`, `consul_or_vault_functions`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from allocrunner._locking import confined
from allocrunner.template import lexer as lx
from allocrunner.template import nodes as nd
from allocrunner.template.errors import TemplateError
from allocrunner.template.gofmt import go_quote
from allocrunner.template.literals import parse_number, unquote_char, unquote_string

COMMAND_START = frozenset(
    {
        lx.BOOL,
        lx.CHAR,
        lx.DOT,
        lx.FIELD,
        lx.IDENT,
        lx.NUMBER,
        lx.NIL,
        lx.RAW_STRING,
        lx.STRING,
        lx.VARIABLE,
        lx.LPAREN,
    }
)
NON_EXECUTABLE = (nd.Bool, nd.Dot, nd.Nil, nd.Number, nd.String)


@dataclass(frozen=True, slots=True)
class _End:
    pos: int

    def __str__(self) -> str:
        return "{{end}}"


@dataclass(frozen=True, slots=True)
class _Else:
    pos: int
    line: int
    chained: str  # "if"/"with" for `{{else if ...}}`/`{{else with ...}}`, else ""

    def __str__(self) -> str:
        return "{{else}}"


_Marker = _End | _Else


@dataclass(frozen=True, slots=True)
class Tree:
    """One named template: its body and the source it came from (for error locations)."""

    name: str
    root: nd.ListNode
    source: str
    parse_name: str


class _Parser:
    """Not thread-safe; owned by the thread that renders. State of one parse: the token
    stream, variable scope and range depth."""

    index = confined("template render")
    last = confined("template render")
    action_line = confined("template render")
    probe = confined("template render")
    vars = confined("template render")
    range_depth = confined("template render")

    def __init__(
        self, text: str, name: str, left: str, right: str, known: Callable[[str], bool]
    ) -> None:
        self.text = text
        self.name = name
        self.known = known
        try:
            self.tokens = lx.lex(text, left, right)
        except lx.LexError as err:
            raise TemplateError(f"template: {name}:{err.line}: {err.message}") from None
        self.index = 0
        self.last: lx.Token = self.tokens[0]
        self.action_line = 0
        # A variable that opens a pipeline is probed for `:=`; Go then reports an
        # undefined one at the line of the token after it: (variable offset, that line).
        self.probe: tuple[int, int] = (-1, 0)
        self.vars: list[str] = ["$"]
        self.range_depth = 0
        self.trees: dict[str, Tree] = {}

    # --- token stream ---------------------------------------------------------------

    def next(self) -> lx.Token:
        tok = self.tokens[self.index]
        if self.index < len(self.tokens) - 1:
            self.index += 1
        self.last = tok
        if tok.kind == lx.ERROR:
            raise self._lex_error(tok)
        return tok

    def _lex_error(self, tok: lx.Token) -> TemplateError:
        extra = ""
        if self.action_line and self.action_line != tok.line:
            extra = f" in action started at {self.name}:{self.action_line}"
            if tok.value.endswith(" action"):
                extra = extra[len(" in action") :]
        return self.error(tok.value + extra)

    def backup(self) -> None:
        self.index -= 1

    def peek(self) -> lx.Token:
        return self.tokens[self.index]

    def next_non_space(self) -> lx.Token:
        tok = self.next()
        while tok.kind == lx.SPACE:
            tok = self.next()
        return tok

    def peek_non_space(self) -> lx.Token:
        tok = self.next_non_space()
        self.backup()
        return tok

    def error(self, message: str) -> TemplateError:
        return TemplateError(f"template: {self.name}:{self.last.line}: {message}")

    def unexpected(self, tok: lx.Token, context: str) -> TemplateError:
        if tok.kind == lx.EOF:
            return self.error(f"unexpected EOF in {context}")
        return self.error(f"unexpected {_describe(tok)} in {context}")

    def expect(self, kind: str, context: str) -> lx.Token:
        tok = self.next_non_space()
        if tok.kind != kind:
            raise self.unexpected(tok, context)
        return tok

    # --- templates ------------------------------------------------------------------

    def parse(self) -> dict[str, Tree]:
        nodes: list[nd.Node] = []
        while self.peek().kind != lx.EOF:
            if self.peek().kind == lx.LEFT and self._is_define():
                self._definition()
                continue
            node = self._text_or_action()
            if isinstance(node, _End | _Else):
                raise self.error(f"unexpected {node}")
            nodes.append(node)
        self._add(self.name, nd.ListNode(0, tuple(nodes)))
        return self.trees

    def _is_define(self) -> bool:
        save = self.index
        self.action_line = self.next().line
        try:
            tok = self.next_non_space()
        finally:
            self.action_line = 0
        self.index = save
        return tok.kind == lx.KEYWORD and tok.value == "define"

    def _add(self, name: str, root: nd.ListNode) -> None:
        existing = self.trees.get(name)
        if existing is not None and not nd.is_empty_tree(existing.root):
            if nd.is_empty_tree(root):
                return
            raise self.error(f'template: multiple definition of template "{name}"')
        self.trees[name] = Tree(name, root, self.text, self.name)

    def _definition(self) -> None:
        self.next()
        self.next_non_space()
        context = "define clause"
        name = self._template_name(context)
        self.expect(lx.RIGHT, context)
        saved_vars, self.vars = self.vars, ["$"]
        body, end = self._item_list()
        self.vars = saved_vars
        if not isinstance(end, _End):
            raise self.error(f"unexpected {end} in {context}")
        self._add(name, body)

    def _template_name(self, context: str) -> str:
        return self._template_name_token(context)[0]

    def _template_name_token(self, context: str) -> tuple[str, int]:
        tok = self.next_non_space()
        if tok.kind not in (lx.STRING, lx.RAW_STRING):
            raise self.unexpected(tok, context)
        return self._unquote(tok), tok.pos

    def _item_list(self) -> tuple[nd.ListNode, _Marker]:
        start = self.peek().pos
        nodes: list[nd.Node] = []
        while self.peek_non_space().kind != lx.EOF:
            node = self._text_or_action()
            if isinstance(node, _End | _Else):
                return nd.ListNode(start, tuple(nodes)), node
            nodes.append(node)
        raise self.error("unexpected EOF")

    def _text_or_action(self) -> nd.Node | _Marker:
        tok = self.next_non_space()
        if tok.kind == lx.TEXT:
            return nd.Text(tok.pos, tok.value)
        if tok.kind == lx.LEFT:
            self.action_line = tok.line
            try:
                return self._action()
            finally:
                self.action_line = 0
        raise self.unexpected(tok, "input")

    # --- actions --------------------------------------------------------------------

    def _action(self) -> nd.Node | _Marker:
        tok = self.next_non_space()
        if tok.kind == lx.KEYWORD:
            return self._keyword(tok)
        self.backup()
        pipe = self._pipeline("command", lx.RIGHT)
        return nd.Action(tok.pos, tok.line, pipe)

    def _keyword(self, tok: lx.Token) -> nd.Node | _Marker:
        word = tok.value
        if word in ("if", "with", "range"):
            return self._control(word, tok)
        if word == "end":
            self.expect(lx.RIGHT, "end")
            return _End(tok.pos)
        if word == "else":
            return self._else(tok)
        if word in ("break", "continue"):
            return self._loop_control(word, tok)
        if word == "template":
            return self._template_call(tok)
        if word == "block":
            return self._block(tok)
        raise self.error(f"unexpected <{word}> in command")

    def _loop_control(self, word: str, tok: lx.Token) -> nd.Node:
        nxt = self.next_non_space()
        if nxt.kind != lx.RIGHT:
            raise self.unexpected(nxt, f"{{{{{word}}}}}")
        if not self.range_depth:
            raise self.error(f"{{{{{word}}}}} outside {{{{range}}}}")
        return nd.Break(tok.pos, tok.line) if word == "break" else nd.Continue(tok.pos, tok.line)

    def _else(self, tok: lx.Token) -> _Else:
        peek = self.peek_non_space()
        if peek.kind == lx.KEYWORD and peek.value in ("if", "with"):
            return _Else(tok.pos, tok.line, peek.value)
        self.expect(lx.RIGHT, "else")
        return _Else(tok.pos, tok.line, "")

    def _control(self, kind: str, tok: lx.Token) -> nd.Branch:
        mark = len(self.vars)
        pipe = self._pipeline(kind, lx.RIGHT)
        if kind == "range":
            self.range_depth += 1
        body, end = self._item_list()
        if kind == "range":
            self.range_depth -= 1
        else_list: nd.ListNode | None = None
        if isinstance(end, _Else):
            else_list = self._else_branch(kind, end)
        del self.vars[mark:]
        return nd.Branch(tok.pos, tok.line, kind, pipe, body, else_list)

    def _else_branch(self, kind: str, marker: _Else) -> nd.ListNode:
        if marker.chained:
            if marker.chained != kind:
                raise self.error(f"unexpected <{marker.chained}> in {{{{else}}}} of {kind}")
            keyword = self.next_non_space()
            return nd.ListNode(marker.pos, (self._control(kind, keyword),))
        else_list, end = self._item_list()
        if not isinstance(end, _End):
            raise self.error(f"expected end; found {end}")
        return else_list

    def _template_call(self, tok: lx.Token) -> nd.TemplateCall:
        context = "template clause"
        name, pos = self._template_name_token(context)
        pipe: nd.Pipeline | None = None
        if self.next_non_space().kind != lx.RIGHT:
            self.backup()
            pipe = self._pipeline(context, lx.RIGHT)
        return nd.TemplateCall(pos, tok.line, name, pipe)

    def _block(self, tok: lx.Token) -> nd.TemplateCall:
        context = "block clause"
        name, pos = self._template_name_token(context)
        pipe = self._pipeline(context, lx.RIGHT)
        saved_vars, self.vars = self.vars, ["$"]
        body, end = self._item_list()
        self.vars = saved_vars
        if not isinstance(end, _End):
            raise self.error(f"unexpected {end} in {context}")
        self._add(name, body)
        return nd.TemplateCall(pos, tok.line, name, pipe)

    # --- pipelines ------------------------------------------------------------------

    def _pipeline(self, context: str, end: str) -> nd.Pipeline:
        start = self.peek_non_space()
        decl, is_assign = self._declarations(context)
        cmds: list[nd.Command] = []
        while True:
            tok = self.next_non_space()
            if tok.kind == end:
                break
            if tok.kind not in COMMAND_START:
                raise self.unexpected(tok, context)
            self.backup()
            cmds.append(self._command())
        pipe = nd.Pipeline(start.pos, start.line, tuple(decl), is_assign, tuple(cmds))
        self._check_pipeline(pipe, context)
        return pipe

    def _declarations(self, context: str) -> tuple[list[str], bool]:
        """Go's declaration prefix: `$x :=`, `$x =`, and in range `$i, $v :=`."""
        decl: list[str] = []
        while True:
            save = self.index
            first = self.next_non_space()
            if first.kind != lx.VARIABLE:
                self.index = save
                return decl, False
            after = self.next_non_space()
            self.probe = (first.pos, after.line)
            if after.kind in (lx.DECLARE, lx.ASSIGN):
                decl.append(first.value)
                self._declare(first.value)
                return decl, after.kind == lx.ASSIGN
            if after.kind == lx.COMMA and after.value == ",":
                decl.append(first.value)
                self._declare(first.value)
                if context == "range" and len(decl) < 2:
                    if self.peek_non_space().kind in (lx.VARIABLE, lx.RIGHT, lx.RPAREN):
                        continue
                    raise self.error("range can only initialize variables")
                raise self.error(f"too many declarations in {context}")
            self.index = save
            return decl, False

    def _declare(self, name: str) -> None:
        if "." in name:
            raise self.error(f"cannot declare {name}")
        self.vars.append(name)

    def _use_var(self, tok: lx.Token) -> None:
        name = tok.value.split(".")[0]
        if name not in self.vars:
            line = self.probe[1] if self.probe[0] == tok.pos else tok.line
            raise TemplateError(
                f"template: {self.name}:{line}: undefined variable {go_quote(name)}"
            )

    def _check_pipeline(self, pipe: nd.Pipeline, context: str) -> None:
        if not pipe.cmds:
            raise self.error(f"missing value for {context}")
        for stage, cmd in enumerate(pipe.cmds[1:], start=2):
            if isinstance(cmd.args[0], NON_EXECUTABLE):
                raise self.error(f"non executable command in pipeline stage {stage}")

    def _command(self) -> nd.Command:
        start = self.peek_non_space().pos
        args: list[nd.Operand] = []
        while True:
            self.peek_non_space()
            operand = self._operand()
            if operand is not None:
                args.append(operand)
            tok = self.next()
            if tok.kind == lx.SPACE:
                continue
            if tok.kind in (lx.RIGHT, lx.RPAREN):
                self.backup()
            elif tok.kind != lx.PIPE:
                raise self.unexpected(tok, "operand")
            break
        if not args:
            raise self.error("empty command")
        return nd.Command(start, tuple(args))

    def _operand(self) -> nd.Operand | None:
        term = self._term()
        if term is None or self.peek().kind != lx.FIELD:
            return term
        pos = self.peek().pos
        names: list[str] = []
        while self.peek().kind == lx.FIELD:
            names.append(self.next().value[1:])
        if isinstance(term, nd.Field):
            return nd.Field(pos, term.names + tuple(names))
        if isinstance(term, nd.Variable):
            return nd.Variable(pos, term.names + tuple(names))
        if isinstance(term, NON_EXECUTABLE):
            raise self.error(f"unexpected . after term {go_quote(str(term))}")
        return nd.Chain(pos, term, tuple(names))

    def _term(self) -> nd.Operand | None:
        tok = self.next_non_space()
        kind = tok.kind
        if kind == lx.IDENT:
            if not self.known(tok.value):
                raise self.error(f'function "{tok.value}" not defined')
            return nd.Identifier(tok.pos, tok.value)
        if kind == lx.DOT:
            return nd.Dot(tok.pos)
        if kind == lx.NIL:
            return nd.Nil(tok.pos)
        if kind == lx.VARIABLE:
            self._use_var(tok)
            return nd.Variable(tok.pos, (tok.value,))
        if kind == lx.FIELD:
            return nd.Field(tok.pos, (tok.value[1:],))
        if kind == lx.BOOL:
            return nd.Bool(tok.pos, tok.value == "true")
        if kind in (lx.NUMBER, lx.CHAR):
            return self._number(tok)
        if kind == lx.LPAREN:
            return self._pipeline("parenthesized pipeline", lx.RPAREN)
        if kind in (lx.STRING, lx.RAW_STRING):
            return nd.String(tok.pos, tok.value, self._unquote(tok))
        self.backup()
        return None

    def _number(self, tok: lx.Token) -> nd.Number:
        try:
            if tok.kind == lx.CHAR:
                code = ord(unquote_char(tok.value))
                return nd.Number(tok.pos, tok.value, code, float(code), is_char=True)
            int_value, float_value = parse_number(tok.value)
        except ValueError as err:
            raise self.error(str(err)) from None
        return nd.Number(tok.pos, tok.value, int_value, float_value)

    def _unquote(self, tok: lx.Token) -> str:
        if tok.kind == lx.RAW_STRING:
            return tok.value[1:-1].replace("\r", "")
        try:
            return unquote_string(tok.value)
        except ValueError:
            raise self.error("invalid syntax") from None


def _describe(tok: lx.Token) -> str:
    """Go's item String(): `<name>` for keywords, quoted values otherwise."""
    if tok.kind == lx.KEYWORD:
        return f"<{tok.value}>"
    if tok.kind in (lx.RIGHT, lx.LEFT):
        return f'"{tok.value}"'
    if tok.kind == lx.SPACE:
        return "space"
    return f'"{tok.value}"' if tok.value else tok.kind


def parse(
    text: str,
    name: str,
    *,
    left: str = "{{",
    right: str = "}}",
    known: Callable[[str], bool],
) -> dict[str, Tree]:
    """Parse template text into its named trees; `known` says which function names exist."""
    return _Parser(text, name, left, right, known).parse()
