"""A safe reader for MMEngine-style Python configs (`distill1.py`): parsed with `ast`, never executed.

What a config may hold, which is what the configs of MMRazor's docs and of teams that ported to it hold:

    literals (str, int, float, bool, None), lists, tuples, `{...}` and `dict(key=value, ...)`
    names assigned earlier in the file, `x['key']`, arithmetic on numbers, `+` on strings and lists, simple f-strings
    _base_ = 'base.py' | ['a.py', 'b.py']   relative paths, merged as MMEngine merges them (dicts key by key, a
                                            dict with `_delete_=True` replaces the base's one)
    _base_.model, '{{_base_.model}}', {{_base_.model}}   a value of the (merged) bases
    with read_base(): from .base import *   MMEngine's pure-Python bases: the names imported, usable by name
                                            (`from mmengine.config import read_base` is the one import allowed)
    '{{fileDirname}}', '{{fileBasename}}', '{{fileBasenameNoExtension}}', '{{fileExtname}}'   MMEngine's file vars

Anything else is refused with a `ConfigError` naming the file, the line and the construct: a call other than
`dict(...)`, any other import, a comprehension, a lambda, a function or class, `custom_imports` (it asks MMEngine to
import code). A base scoped to a package (`mmseg::_base_/...`, `from mmdet.configs... import *`) cannot be read
without that package: it is recorded in `MMConfig.unread_bases` and the file's own keys are read on.
"""
from __future__ import annotations

import ast
import operator
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.distill.config import RecipeError

BASE_KEY = "_base_"
DELETE_KEY = "_delete_"
REFUSED_KEYS = {"custom_imports": "custom_imports asks MMEngine to import code; nothing is imported here"}
_BASE_REF = re.compile(r"^\{\{\s*_base_\.([\w.]+)\s*\}\}$")
_FILE_VARS = re.compile(r"\{\{\s*(fileDirname|fileBasename|fileBasenameNoExtension|fileExtname)\s*\}\}")
_ARITHMETIC = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
               ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_CONSTRUCTS = {  # ast node → how an error names it
    ast.Import: "import", ast.ImportFrom: "import", ast.Lambda: "lambda", ast.ListComp: "list comprehension",
    ast.DictComp: "dict comprehension", ast.SetComp: "set comprehension", ast.GeneratorExp: "generator expression",
    ast.FunctionDef: "function definition", ast.AsyncFunctionDef: "function definition",
    ast.ClassDef: "class definition", ast.If: "if statement", ast.For: "for loop", ast.While: "while loop",
    ast.With: "with statement", ast.Try: "try statement", ast.IfExp: "conditional expression",
    ast.AugAssign: "augmented assignment", ast.Delete: "del statement", ast.Global: "global statement",
    ast.Set: "set literal", ast.Starred: "starred expression", ast.Compare: "comparison", ast.BoolOp: "and/or",
    ast.NamedExpr: "assignment expression", ast.Await: "await", ast.Yield: "yield",
}


class ConfigError(RecipeError):
    """A config that cannot be read safely; the message starts with `file:line:`."""


@dataclass(frozen=True)
class MMConfig:
    """A config file's keys after its `_base_` files are merged in (`_base_` and `_delete_` removed).

    Attributes:
        path: the file read.
        data: the merged keys, in the order MMEngine would hold them (bases first, then the file's own new keys).
        unread_bases: package-scoped bases (`mmseg::...`) that were named but cannot be read here.
        helpers: names of the file (or its bases) that a later assignment reads: variables such as `teacher_ckpt`
            whose value reaches the config through the keys that use them.
        lines: top-level key → `file:line` of the assignment that set it last.
    """

    path: Path
    data: dict[str, Any]
    unread_bases: tuple[str, ...] = ()
    helpers: frozenset[str] = frozenset()
    lines: dict[str, str] = field(default_factory=dict)


def read_config(path: str | Path) -> MMConfig:
    """Read an MMEngine Python config and its bases without executing anything."""
    return _read(Path(path), ())


def _read(path: Path, chain: tuple[Path, ...]) -> MMConfig:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        where = f"{chain[-1]}: base {path}" if chain else f"{path}"
        raise ConfigError(f"{where}: file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not a readable text file: {err}") from None
    try:
        tree = ast.parse(text, filename=str(path))
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to read") from None
    except SyntaxError as err:
        raise ConfigError(f"{path}:{err.lineno}: not valid Python: {err.msg}") from None
    try:
        return _FileReader(path, chain).read(tree)
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to read") from None


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` merged into `base` as MMEngine's `Config._merge_a_into_b` does (new dicts; inputs unchanged).

    A dict merges key by key into the base's dict, unless it holds `_delete_=True`: then it replaces it whole. A dict
    over a base value that is not a dict is an error (MMEngine's too); any other value replaces the base's.
    """
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict):
            value = dict(value)
            delete = value.pop(DELETE_KEY, False)
            if key in out and not delete:
                if not isinstance(out[key], dict):
                    raise ConfigError(f"{key}: a dict cannot be merged into the base's {type(out[key]).__name__} "
                                      f"(add {DELETE_KEY}=True to replace it)")
                out[key] = merge(out[key], value)
            else:
                out[key] = _strip_delete(value)
        else:
            out[key] = value
    return out


def _strip_delete(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_delete(v) for k, v in value.items() if k != DELETE_KEY}
    return value


class _FileReader:
    """One file: its `_base_` statement first (as MMEngine reads bases before the body), then every statement."""

    def __init__(self, path: Path, chain: tuple[Path, ...]):
        self.path, self.chain = path, chain
        self.names: dict[str, Any] = {}  # names assigned so far in this file
        self.base: dict[str, Any] = {}
        self.helpers: set[str] = set()
        self.lines: dict[str, str] = {}
        self.unread: list[str] = []

    def error(self, node: ast.AST | None, message: str) -> ConfigError:
        line = getattr(node, "lineno", None)
        return ConfigError(f"{self.path}{f':{line}' if line else ''}: {message}")

    def read(self, tree: ast.Module) -> MMConfig:
        for node in tree.body:
            if _assigned_name(node) == BASE_KEY:
                self._read_bases(node)
        for node in tree.body:
            self._statement(node)
        own = {k: v for k, v in self.names.items() if k != BASE_KEY and not k.startswith("__")}
        try:
            data = merge(self.base, own)
        except ConfigError as err:
            raise ConfigError(f"{self.path}: {err}") from None
        return MMConfig(self.path, data, tuple(self.unread), frozenset(self.helpers), self.lines)

    # --- bases

    def _read_bases(self, node: ast.Assign) -> None:
        value = self._expr(node.value)
        bases = [value] if isinstance(value, str) else value
        if not isinstance(bases, (list, tuple)) or not all(isinstance(b, str) for b in bases):
            raise self.error(node, f"{BASE_KEY} must be a path or a list of paths, got {value!r}")
        merged: dict[str, Any] = {}
        for base in bases:
            if "::" in base:  # a base inside an installed OpenMMLab package
                self.unread.append(base)
                continue
            base_path = self.path.parent / base
            if base_path.suffix != ".py":
                raise self.error(node, f"base {base}: only Python (.py) bases are read")
            seen = (*self.chain, self.path)
            if any(base_path.resolve() == p.resolve() for p in seen):
                raise self.error(node, f"{BASE_KEY} cycle: {' -> '.join(str(p) for p in (*seen, base_path))}")
            config = _read(base_path, seen)
            duplicate = sorted(set(merged) & set(config.data))
            if duplicate:  # MMEngine refuses a key defined by two bases
                raise self.error(node, f"key {duplicate[0]!r} is defined by more than one base")
            merged.update(config.data)
            self.unread += [f"{u} (via {base})" for u in config.unread_bases]
            self.helpers |= config.helpers
            self.lines.update(config.lines)
        self.base = merged

    def _read_base_block(self, node: ast.With) -> None:
        """MMEngine's pure-Python bases: `with read_base(): from .base import *` (or `import a, b as c`). The names
        come into this file as Python imports them: usable by name, and replaced, not merged, when reassigned."""
        for stmt in node.body:
            if not isinstance(stmt, ast.ImportFrom) or not stmt.module:
                raise self.error(stmt, "only `from .base import ...` is read inside read_base()")
            if stmt.level == 0:  # a base inside an installed package (mmdet.configs...)
                self.unread.append(stmt.module)
                continue
            parts = [*[".."] * (stmt.level - 1), *stmt.module.split(".")]
            base_path = self.path.parent.joinpath(*parts).with_suffix(".py")
            seen = (*self.chain, self.path)
            if any(base_path.resolve() == p.resolve() for p in seen):
                raise self.error(stmt, f"base cycle: {' -> '.join(str(p) for p in (*seen, base_path))}")
            config = _read(base_path, seen)
            self.unread += [f"{u} (via {stmt.module})" for u in config.unread_bases]
            self.helpers |= config.helpers
            for alias in stmt.names:
                if alias.name == "*":
                    picked = {k: v for k, v in config.data.items() if not k.startswith("_")}
                elif alias.name in config.data:
                    picked = {alias.asname or alias.name: config.data[alias.name]}
                else:
                    raise self.error(stmt, f"{base_path} defines no {alias.name!r}")
                for name, value in picked.items():
                    self.names[name] = value
                    self.lines[name] = config.lines.get(name if alias.name == "*" else alias.name, str(base_path))

    # --- statements

    def _statement(self, node: ast.stmt) -> None:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            return  # a docstring
        if isinstance(node, ast.Pass) or _is_read_base_import(node):
            return
        if _is_read_base_block(node):
            self._read_base_block(node)
            return
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets = [node.target]
        else:
            raise self.error(node, f"{_construct(node)} is not allowed in a config (only assignments are read)")
        for target in targets:
            if not isinstance(target, ast.Name):
                raise self.error(node, f"assignment to {_construct(target)} is not allowed (only `name = value`)")
            if target.id in REFUSED_KEYS:
                raise self.error(node, f"{target.id}: {REFUSED_KEYS[target.id]}")
        value = self._expr(node.value)
        for target in targets:
            self.names[target.id] = value
            self.lines[target.id] = f"{self.path}:{node.lineno}"

    # --- expressions

    def _expr(self, node: ast.expr) -> Any:
        if isinstance(node, ast.Constant):
            return self._constant(node)
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [self._expr(e) for e in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.Dict):
            return self._dict_literal(node)
        if isinstance(node, ast.Call):
            return self._call(node)
        if isinstance(node, ast.Name):
            return self._name(node)
        if isinstance(node, ast.Attribute):
            return self._base_reference(node, _attribute_path(node))
        if isinstance(node, ast.Subscript):
            return self._subscript(node)
        if isinstance(node, ast.Set):
            return self._braced_reference(node)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            value = self._expr(node.operand)
            if not _is_number(value):
                raise self.error(node, f"unary {'-' if isinstance(node.op, ast.USub) else '+'} on {value!r}")
            return -value if isinstance(node.op, ast.USub) else value
        if isinstance(node, ast.BinOp) and type(node.op) in _ARITHMETIC:
            return self._binop(node)
        if isinstance(node, ast.JoinedStr):
            return self._fstring(node)
        raise self.error(node, f"{_construct(node)} is not allowed in a config")

    def _constant(self, node: ast.Constant) -> Any:
        value = node.value
        if not isinstance(value, (str, int, float, bool)) and value is not None:
            raise self.error(node, f"constant {value!r} is not allowed")
        if isinstance(value, str):
            match = _BASE_REF.match(value)
            if match:
                return self._base_reference(node, ["_base_", *match.group(1).split(".")])
            if "{{" in value and "_base_" in value:
                raise self.error(node, f"{value!r}: a {{{{_base_.xxx}}}} reference is read only as a whole string")
            value = _FILE_VARS.sub(lambda m: self._file_var(m.group(1)), value)
        return value

    def _file_var(self, name: str) -> str:
        return {"fileDirname": str(self.path.parent), "fileBasename": self.path.name,
                "fileBasenameNoExtension": self.path.stem, "fileExtname": self.path.suffix}[name]

    def _dict_literal(self, node: ast.Dict) -> dict[str, Any]:
        out = {}
        for key, value in zip(node.keys, node.values):
            if key is None:
                raise self.error(node, "`**` unpacking in a dict is not allowed")
            k = self._expr(key)
            if not isinstance(k, (str, int)):
                raise self.error(key, f"dict key {k!r} is not a string or an integer")
            out[k] = self._expr(value)
        return out

    def _call(self, node: ast.Call) -> dict[str, Any]:
        if not (isinstance(node.func, ast.Name) and node.func.id == "dict"):
            name = ast.unparse(node.func)
            name = name if len(name) <= 40 else name[:37] + "..."
            raise self.error(node, f"call to {name}() is not allowed (only dict(...) is read)")
        if node.args:
            raise self.error(node, "dict() with positional arguments is not allowed (use dict(key=value, ...))")
        out = {}
        for keyword in node.keywords:
            if keyword.arg is None:
                raise self.error(node, "dict(**...) unpacking is not allowed")
            out[keyword.arg] = self._expr(keyword.value)
        return out

    def _name(self, node: ast.Name) -> Any:
        if node.id in self.names:
            self.helpers.add(node.id)
            return self.names[node.id]
        if node.id == BASE_KEY:
            raise self.error(node, f"{BASE_KEY} is read only as {BASE_KEY}.key")
        raise self.error(node, f"name {node.id!r} is not assigned earlier in the file")

    def _base_reference(self, node: ast.AST, path: list[str]) -> Any:
        if not path or path[0] != BASE_KEY:
            raise self.error(node, f"attribute access {'.'.join(path) or '(expression)'} is not allowed "
                                   f"(only {BASE_KEY}.key)")
        value: Any = self.base
        for i, part in enumerate(path[1:], 1):
            if not isinstance(value, dict) or part not in value:
                missing = ".".join(path[:i + 1])
                unread = f" (unread package bases: {', '.join(self.unread)})" if self.unread else ""
                raise self.error(node, f"{missing}: no such key in the bases{unread}")
            value = value[part]
        if len(path) > 1:
            self.helpers.add(path[1])
        return value

    def _braced_reference(self, node: ast.Set) -> Any:
        """`{{_base_.xxx}}` written without quotes parses as a set holding a set holding `_base_.xxx`."""
        inner = node.elts[0] if len(node.elts) == 1 else None
        if isinstance(inner, ast.Set) and len(inner.elts) == 1 and isinstance(inner.elts[0], ast.Attribute):
            return self._base_reference(node, _attribute_path(inner.elts[0]))
        raise self.error(node, "set literal is not allowed in a config")

    def _subscript(self, node: ast.Subscript) -> Any:
        container = self._expr(node.value)
        key = self._expr(node.slice)
        try:
            return container[key]
        except (KeyError, IndexError, TypeError):
            raise self.error(node, f"subscript [{key!r}] does not resolve") from None

    def _binop(self, node: ast.BinOp) -> Any:
        left, right = self._expr(node.left), self._expr(node.right)
        numbers = _is_number(left) and _is_number(right)
        joinable = isinstance(node.op, ast.Add) and type(left) is type(right) and isinstance(left, (str, list, tuple))
        if not (numbers or joinable):
            raise self.error(node, f"{type(node.op).__name__} of {left!r} and {right!r} is not allowed")
        if isinstance(node.op, ast.Pow) and (abs(right) > 64 or abs(left) > 1e6):
            raise self.error(node, "a power this large is not allowed")
        try:
            return _ARITHMETIC[type(node.op)](left, right)
        except ArithmeticError as err:
            raise self.error(node, f"arithmetic error: {err}") from None

    def _fstring(self, node: ast.JoinedStr) -> str:
        parts = []
        for value in node.values:
            if isinstance(value, ast.Constant):
                parts.append(str(value.value))
            elif isinstance(value, ast.FormattedValue) and value.conversion == -1 and value.format_spec is None:
                parts.append(str(self._expr(value.value)))
            else:
                raise self.error(node, "an f-string with a conversion or a format spec is not allowed")
        return "".join(parts)


def _is_read_base_import(node: ast.stmt) -> bool:
    """`from mmengine.config import read_base`: the one import a pure-Python config needs for its bases."""
    return (isinstance(node, ast.ImportFrom) and node.module == "mmengine.config" and node.level == 0
            and [(a.name, a.asname) for a in node.names] == [("read_base", None)])


def _is_read_base_block(node: ast.stmt) -> bool:
    if not (isinstance(node, ast.With) and len(node.items) == 1 and node.items[0].optional_vars is None):
        return False
    call = node.items[0].context_expr
    return (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "read_base"
            and not call.args and not call.keywords)


def _assigned_name(node: ast.stmt) -> str | None:
    if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
        return node.targets[0].id
    return None


def _attribute_path(node: ast.expr) -> list[str]:
    """`a.b.c` → ['a', 'b', 'c']; [] when the chain is not rooted at a name."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return []
    return [node.id, *reversed(parts)]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _construct(node: ast.AST) -> str:
    for kind, name in _CONSTRUCTS.items():
        if isinstance(node, kind):
            return name
    return type(node).__name__
