"""Safe YAML loading that remembers where every value came from.

Recipes are loaded from PyYAML's node graph rather than with ``yaml.safe_load``
so that:

* every value keeps its line and column, and validation errors can point at them;
* duplicate keys are errors instead of silently keeping the last one;
* only plain YAML types are built (no ``!!python/...`` tags, ever);
* alias bombs, deep nesting and oversized files are refused with a clear error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from quantmill.errors import RecipeError, RecipeProblem

MAX_FILE_BYTES = 1_000_000
MAX_NODES = 50_000
MAX_DEPTH = 40

Loc = tuple[int | str, ...]

_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_PLAIN_SCALAR_TAGS = {
    "tag:yaml.org,2002:str",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null",
}


@dataclass
class LocatedDocument:
    """A parsed YAML document plus the position of every value in it.

    ``positions`` maps a path such as ``("variants", "methods", 1, "bits")`` to the
    1-based (line, column) of that value (for mapping keys, of the value node).
    """

    data: Any
    file: str
    positions: dict[Loc, tuple[int, int]] = field(default_factory=dict)

    def position(self, loc: Loc) -> tuple[int | None, int | None]:
        """Best known position for ``loc``: the deepest ancestor that has one."""
        for end in range(len(loc), -1, -1):
            if loc[:end] in self.positions:
                return self.positions[loc[:end]]
        return None, None

    def problem(self, loc: Loc, message: str, hint: str | None = None) -> RecipeProblem:
        line, column = self.position(loc)
        return RecipeProblem(file=self.file, path=format_loc(loc), message=message, line=line, column=column, hint=hint)


def format_loc(loc: Loc) -> str:
    """``("a", 0, "b")`` → ``a[0].b``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


class _Builder:
    def __init__(self, file: str) -> None:
        self.file = file
        self.loader = yaml.SafeLoader("")
        self.positions: dict[Loc, tuple[int, int]] = {}
        self.problems: list[RecipeProblem] = []
        self.visited = 0

    def fail(self, node: yaml.Node, loc: Loc, message: str, hint: str | None = None) -> None:
        self.problems.append(
            RecipeProblem(
                file=self.file,
                path=format_loc(loc),
                message=message,
                line=node.start_mark.line + 1,
                column=node.start_mark.column + 1,
                hint=hint,
            )
        )

    def build(self, node: yaml.Node, loc: Loc, depth: int = 0) -> Any:
        self.visited += 1
        if self.visited > MAX_NODES:
            raise _TooLarge(node)
        if depth > MAX_DEPTH:
            self.fail(node, loc, f"nesting deeper than {MAX_DEPTH} levels", "recipes are shallow; flatten it")
            return None
        self.positions.setdefault(loc, (node.start_mark.line + 1, node.start_mark.column + 1))
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, loc, depth)
        if isinstance(node, yaml.SequenceNode):
            if node.tag != _SEQ_TAG:
                self.fail(node, loc, f"unsupported YAML tag {node.tag!r}", "remove the tag")
                return None
            return [self.build(item, loc + (i,), depth + 1) for i, item in enumerate(node.value)]
        if node.tag not in _PLAIN_SCALAR_TAGS:
            self.fail(node, loc, f"unsupported YAML tag {node.tag!r}", "only plain YAML values are allowed")
            return None
        try:
            return self.loader.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, OverflowError) as exc:
            self.fail(node, loc, f"cannot read value: {exc}")
            return None

    def _mapping(self, node: yaml.MappingNode, loc: Loc, depth: int) -> dict[str, Any] | None:
        if node.tag != _MAP_TAG:
            self.fail(node, loc, f"unsupported YAML tag {node.tag!r}", "remove the tag")
            return None
        result: dict[str, Any] = {}
        merged: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                for source in _merge_sources(value_node):
                    value = self.build(source, loc, depth + 1)
                    if isinstance(value, dict):
                        for k, v in value.items():
                            merged.setdefault(k, v)
                    else:
                        self.fail(value_node, loc, "a '<<' merge needs a mapping or a list of mappings")
                continue
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag not in _PLAIN_SCALAR_TAGS:
                self.fail(key_node, loc, "mapping keys must be plain scalars")
                continue
            key = str(key_node.value)
            if key in result:
                self.fail(key_node, loc + (key,), f"duplicate key '{key}'", "each key may appear once; remove one")
                continue
            self.positions[loc + (key,)] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            result[key] = self.build(value_node, loc + (key,), depth + 1)
        for k, v in merged.items():
            result.setdefault(k, v)
        return result


def _merge_sources(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return [node]


class _TooLarge(Exception):
    def __init__(self, node: yaml.Node) -> None:
        self.node = node


def load_yaml_text(text: str, file: str = "<string>") -> LocatedDocument:
    """Parse one YAML document from ``text``, keeping positions.

    Raises:
        RecipeError: on syntax errors, unsafe tags, duplicate keys, alias bombs.
    """
    if len(text.encode("utf-8", errors="replace")) > MAX_FILE_BYTES:
        raise RecipeError([RecipeProblem(file, "", f"file is larger than {MAX_FILE_BYTES} bytes", 1, 1)])
    try:
        loader = yaml.SafeLoader(text)
        try:
            root = loader.get_single_node()
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        message = " ".join(str(p) for p in (exc.context, exc.problem) if p) or "invalid YAML"
        line = mark.line + 1 if mark else None
        column = mark.column + 1 if mark else None
        raise RecipeError([RecipeProblem(file, "", f"YAML syntax error: {message}", line, column)]) from None
    except yaml.YAMLError as exc:  # reader errors: control characters, bad encodings
        raise RecipeError([RecipeProblem(file, "", f"not readable as YAML: {exc}", 1, 1)]) from None
    if root is None:
        raise RecipeError(
            [RecipeProblem(file, "", "the recipe is empty", 1, 1, "run 'quantmill init' for a starter recipe")]
        )
    builder = _Builder(file)
    try:
        data = builder.build(root, ())
    except _TooLarge as too_large:
        mark = too_large.node.start_mark
        raise RecipeError(
            [
                RecipeProblem(
                    file,
                    "",
                    f"the document expands to more than {MAX_NODES} values (YAML alias bomb?)",
                    mark.line + 1,
                    mark.column + 1,
                    "use fewer anchors/aliases",
                )
            ]
        ) from None
    if builder.problems:
        raise RecipeError(builder.problems)
    return LocatedDocument(data=data, file=file, positions=builder.positions)


def load_yaml_file(path: str | Path) -> LocatedDocument:
    """Read and parse a YAML file with :func:`load_yaml_text`.

    Raises:
        RecipeError: when the path is missing, a directory, not UTF-8, or not valid YAML.
    """
    path = Path(path)
    name = str(path)
    if path.is_dir():
        raise RecipeError([RecipeProblem(name, "", "is a directory, not a recipe file", hint="pass a .yaml file")])
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise RecipeError([RecipeProblem(name, "", "file not found")]) from None
    except OSError as exc:
        raise RecipeError([RecipeProblem(name, "", f"cannot read file: {exc.strerror}")]) from None
    if len(raw) > MAX_FILE_BYTES:
        raise RecipeError([RecipeProblem(name, "", f"file is larger than {MAX_FILE_BYTES} bytes", 1, 1)])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise RecipeError(
            [RecipeProblem(name, "", f"not UTF-8 text (byte {exc.start})", line, None, "save the file as UTF-8")]
        ) from None
    return load_yaml_text(text, name)
