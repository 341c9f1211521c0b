"""`comptroller check-imports`: find code that imports LiteLLM or a provider SDK directly.

A call made through `openai`, `anthropic`, `google.genai`, `google.generativeai` or `litellm`
escapes routing, limits and budgets. This module walks Python files, parses each with `ast`
(the scanned code is never imported) and reports every import of a forbidden module, with
file, line and column.

Decisions (README "Keeping calls inside the control plane" shows them to users):

- What is found: `import m`, `import m.sub`, `from m import x`, `from google import genai`,
  and `__import__("m")` / `importlib.import_module("m")` with a literal string (CI002), at
  any depth (inside functions, `try` blocks, classes). Relative imports never match, except
  `import_module(".genai", "google")`, whose literal package makes it absolute.
- Imports under `if TYPE_CHECKING:` and in `.pyi` stubs are allowed: they never run, so they
  cannot make a call, and annotating with the SDK's types is legitimate.
- A file that cannot be read, or that names a forbidden module (or calls `__import__` /
  `import_module`) but cannot be parsed, is reported (CI003) and fails the check like a
  finding: a file we could not check is no proof that it is clean. A file that names none
  of them cannot import one, so it is not parsed at all: that keeps a big tree fast, and
  syntax errors there are the business of the interpreter and the linter.
- Exceptions go in the allowlist (`--allow`, `[tool.comptroller.check-imports] allow`), not
  in inline comments, so that every way around the control plane is reviewed in one place.
"""

from __future__ import annotations

import ast
import gc
import os
import re
import tomllib
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from comptroller.errors import ComptrollerError, ConfigError, UsageError

DEFAULT_FORBIDDEN: tuple[str, ...] = (
    "anthropic",
    "google.genai",
    "google.generativeai",
    "litellm",
    "openai",
)

# Directories never entered while walking, unless they are a package (hold an `__init__.py`);
# a path named on the command line is still checked.
SKIPPED_DIRS = frozenset(
    {
        ".git",
        ".hg",
        ".mypy_cache",
        ".nox",
        ".pytest_cache",
        ".ruff_cache",
        ".tox",
        ".venv",
        "__pycache__",
        "build",
        "dist-packages",
        "node_modules",
        "site-packages",
        "venv",
    }
)

CONFIG_SECTION = "tool.comptroller.check-imports"
_CONFIG_KEYS = frozenset({"allow", "forbid", "extend-forbid"})

IMPORT = "CI001"  # an import statement
DYNAMIC = "CI002"  # __import__ / importlib.import_module with a literal name
UNCHECKED = "CI003"  # a file that could not be read or parsed

_HINT = "route the call through comptroller (ControlPlane.chat_model)"
_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\Z")
_GLOB_CHARS = frozenset("/*?[")
_DYNAMIC_CALLS = frozenset({"__import__", "import_module"})
# The fields holding statements (or except handlers and match cases, which hold statements).
_BLOCK_FIELDS = ("body", "orelse", "finalbody", "handlers", "cases")


@dataclass(frozen=True)
class Finding:
    """One forbidden import, or one file that could not be checked.

    Attributes:
        path: The file, as reached from the path given (relative stays relative).
        line: 1-based line.
        column: 1-based column.
        code: CI001 import statement, CI002 dynamic import, CI003 file not checked.
        module: The forbidden module imported (`openai.types`), None for CI003.
        message: What is wrong and what to do, one line.
    """

    path: str
    line: int
    column: int
    code: str
    module: str | None
    message: str

    def render(self) -> str:
        """`path:line:col: CODE message`, the format editors and CI annotations parse."""
        return f"{self.path}:{self.line}:{self.column}: {self.code} {self.message}"

    def as_dict(self) -> dict[str, Any]:
        """The finding as a JSON-ready dict."""
        return {
            "path": self.path,
            "line": self.line,
            "column": self.column,
            "code": self.code,
            "module": self.module,
            "message": self.message,
        }


@dataclass(frozen=True)
class AllowRule:
    """A module (and its submodules) or a file glob that may import forbidden modules.

    Globs are matched against the file's path relative to `base` (the pyproject.toml's folder
    for entries there, the current folder for `--allow`); a glob without `/` matches at any
    depth, and a glob that matches a folder allows everything below it.
    """

    entry: str
    kind: Literal["module", "glob"]
    base: Path
    _regex: re.Pattern[str] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def parse(cls, entry: str, base: Path, origin: str) -> AllowRule:
        """Classify `entry` as a module path or a glob; `origin` names it in errors."""
        text = entry.strip()
        is_glob = any(char in _GLOB_CHARS for char in text) or text.endswith((".py", ".pyi"))
        if is_glob:
            if text.startswith("/"):
                # An absolute glob: matched against the whole path (relative to the root).
                return cls(text, "glob", Path("/"), _glob_regex(text.lstrip("/")))
            base = base.absolute()
            pattern = text
            while pattern.startswith(("./", "../")):  # `../src/x.py` from a config in ci/
                if pattern.startswith("../"):
                    base = base.parent
                pattern = pattern.split("/", 1)[1]
            return cls(text, "glob", base, _glob_regex(pattern))
        if not _MODULE_NAME.match(text):
            raise UsageError(
                f"{origin}: {entry!r} is neither a module (myapp.llm_gateway) nor a file "
                "glob (a path with / or *, or ending in .py)"
            )
        return cls(text, "module", base.absolute())

    def allows(self, absolute: Path, module: str | None) -> bool:
        """Whether the file at `absolute` (whose module name is `module`) is allowed."""
        if self.kind == "module":
            return module is not None and (
                module == self.entry or module.startswith(self.entry + ".")
            )
        assert self._regex is not None
        relative = os.path.relpath(absolute, self.base)
        if relative.startswith(".."):
            relative = absolute.as_posix()
        return self._regex.match(Path(relative).as_posix()) is not None


@dataclass(frozen=True)
class Policy:
    """What is forbidden and who is allowed, with where the settings came from."""

    forbidden: tuple[str, ...] = DEFAULT_FORBIDDEN
    allow: tuple[AllowRule, ...] = ()
    config_file: Path | None = None


@dataclass(frozen=True)
class Report:
    """The outcome of a check.

    Attributes:
        findings: Forbidden imports (CI001, CI002) and files not checked (CI003), file by
            file in walking order (a folder's files before its subfolders), then by line
            and column.
        files_checked: Python files examined.
        files_allowed: Python files skipped because the allowlist names them.
    """

    findings: tuple[Finding, ...]
    files_checked: int
    files_allowed: int

    @property
    def forbidden(self) -> tuple[Finding, ...]:
        """The forbidden imports only."""
        return tuple(f for f in self.findings if f.code != UNCHECKED)

    @property
    def unchecked(self) -> tuple[Finding, ...]:
        """The files that could not be read or parsed."""
        return tuple(f for f in self.findings if f.code == UNCHECKED)

    @property
    def clean(self) -> bool:
        """No forbidden import and every file checked."""
        return not self.findings

    def summary(self) -> str:
        """One line: what was found, and how much was looked at."""
        scope = f"{_count(self.files_checked, 'file')} checked"
        if self.files_allowed:
            scope += f", {self.files_allowed} allowed"
        parts = []
        if self.forbidden:
            files = len({f.path for f in self.forbidden})
            parts.append(
                f"{_count(len(self.forbidden), 'forbidden import')} in {_count(files, 'file')}"
            )
        if self.unchecked:
            parts.append(f"{_count(len(self.unchecked), 'file')} could not be checked")
        if not parts:
            return f"no forbidden imports ({scope})"
        return f"{', '.join(parts)} ({scope})"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def find_imports(
    source: bytes | str, forbidden: Sequence[str] = DEFAULT_FORBIDDEN, *, dynamic: bool = True
) -> list[tuple[int, int, str, str]]:
    """The forbidden imports in one module's source: (line, column, code, module), 1-based.

    `dynamic=False` skips looking for `__import__`/`import_module` calls, which means
    visiting every expression; a caller that knows the text names neither saves that.

    Raises:
        SyntaxError: The source is not valid Python (ValueError for a NUL byte on 3.11).
    """
    tree = ast.parse(source)
    found: list[tuple[int, int, str, str]] = []

    def check(node: ast.alias | ast.stmt | ast.expr, module: str, code: str) -> None:
        if _is_forbidden(module, forbidden):
            found.append((node.lineno, node.col_offset + 1, code, module))

    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import):
            for alias in node.names:
                check(alias, alias.name, IMPORT)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module is not None:
                if _is_forbidden(node.module, forbidden):
                    check(node, node.module, IMPORT)
                else:
                    # `from google import genai` imports the submodule google.genai.
                    for alias in node.names:
                        check(alias, f"{node.module}.{alias.name}", IMPORT)
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)  # type-only imports never run; the `else:` branch does
        elif dynamic:
            if isinstance(node, ast.Call):
                for module in _dynamic_import_names(node):
                    check(node, module, DYNAMIC)
            stack.extend(ast.iter_child_nodes(node))
        else:
            # Import statements live only in statement blocks: skip the expressions.
            for name in _BLOCK_FIELDS:
                block = getattr(node, name, None)
                if isinstance(block, list):
                    stack.extend(block)
    found.sort()
    return found


def _is_forbidden(module: str, forbidden: Sequence[str]) -> bool:
    return any(module == name or module.startswith(name + ".") for name in forbidden)


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _dynamic_import_names(call: ast.Call) -> list[str]:
    func = call.func
    name = (
        func.id
        if isinstance(func, ast.Name)
        else func.attr
        if isinstance(func, ast.Attribute)
        else None
    )
    if name not in _DYNAMIC_CALLS:
        return []
    target = _argument(call, 0, "name")
    if not (isinstance(target, ast.Constant) and isinstance(target.value, str)):
        return []
    module = target.value
    if module.startswith("."):
        package = _argument(call, 1, "package") if name == "import_module" else None
        if not (isinstance(package, ast.Constant) and isinstance(package.value, str)):
            return []  # relative to a package of the scanned code
        # `import_module(".genai", "google")` is google.genai, as importlib resolves it.
        resolved = _resolve_relative(module, package.value)
        return [resolved] if resolved is not None else []
    names = [module]
    if name == "__import__":
        level = _argument(call, 4, "level")
        if isinstance(level, ast.Constant) and isinstance(level.value, int) and level.value > 0:
            return []
        fromlist = _argument(call, 3, "fromlist")
        if isinstance(fromlist, ast.List | ast.Tuple):
            names += [
                f"{module}.{item.value}"
                for item in fromlist.elts
                if isinstance(item, ast.Constant) and isinstance(item.value, str)
            ]
    return names


def _resolve_relative(name: str, package: str) -> str | None:
    """`name` (`.genai`, `..x.y`) relative to `package`, as `importlib.util.resolve_name`
    resolves it; None when it goes above the top-level package."""
    level = len(name) - len(name.lstrip("."))
    bits = package.rsplit(".", level - 1)
    if not package or len(bits) < level:
        return None
    rest = name[level:]
    return f"{bits[0]}.{rest}" if rest else bits[0]


def _argument(call: ast.Call, position: int, keyword: str) -> ast.expr | None:
    if len(call.args) > position and not any(
        isinstance(a, ast.Starred) for a in call.args[: position + 1]
    ):
        return call.args[position]
    for kw in call.keywords:
        if kw.arg == keyword:
            return kw.value
    return None


class _Prefilter:
    """Which files can hold a finding, from their text, so that only those are parsed.

    Every form of import names the forbidden module's last segment as a whole word
    (`genai` in `from google import genai`); a dynamic import whose string hides the name
    behind escapes still names `__import__` or `import_module`. Python NFKC-normalises
    identifiers, so text that is not ASCII is normalised before searching.
    """

    def __init__(self, forbidden: Sequence[str]) -> None:
        lasts = sorted(
            {unicodedata.normalize("NFKC", name).rsplit(".", 1)[-1] for name in forbidden}
        )
        self._tokens = tuple(last.encode() for last in lasts)
        self._words = re.compile(rb"\b(?:" + b"|".join(map(re.escape, self._tokens)) + rb")\b")
        self._calls = tuple(name.encode() for name in sorted(_DYNAMIC_CALLS))

    def scan(self, data: bytes) -> tuple[bool, bool]:
        """(may import a forbidden module, may import one dynamically)."""
        if not data.isascii():
            try:
                data = unicodedata.normalize("NFKC", data.decode("utf-8")).encode()
            except UnicodeDecodeError:
                return True, True  # another encoding (a coding cookie): the parser decides
        dynamic = any(call in data for call in self._calls)
        # `in` first: cheap, and false for most files; the regex drops `langchain_openai`.
        named = any(token in data for token in self._tokens) and bool(self._words.search(data))
        return named or dynamic, dynamic


def iter_python_files(paths: Iterable[Path]) -> Iterator[Path]:
    """Each `.py` file under `paths` once, in a stable order.

    A file named directly is checked whatever its name (pre-commit passes scripts with a
    python shebang too) except `.pyi` stubs; folders are walked for `*.py`, skipping
    `SKIPPED_DIRS` below them (not a folder named directly, so a site-packages can be scanned,
    nor a package: `myapp/build/` with an `__init__.py` is the application's code).
    """
    seen: set[Path] = set()
    for path in paths:
        if not path.is_dir():
            if path.suffix != ".pyi" and path.absolute() not in seen:
                seen.add(path.absolute())
                yield Path(os.path.normpath(path))
            continue
        for folder, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not _skipped(os.path.join(folder, d), d))
            for name in sorted(files):
                if name.endswith(".py"):
                    file = Path(os.path.normpath(os.path.join(folder, name)))
                    absolute = file.absolute()
                    if absolute not in seen:
                        seen.add(absolute)
                        yield file


def _skipped(folder: str, name: str) -> bool:
    # A package of the code base (`myapp/build/__init__.py`) is code, whatever its name:
    # an environment or build output never has an `__init__.py` at its top.
    return name in SKIPPED_DIRS and not os.path.isfile(os.path.join(folder, "__init__.py"))


class _ModuleNames:
    """The dotted module name of a file, from the `__init__.py` files above it (cached)."""

    def __init__(self) -> None:
        self._packages: dict[Path, str | None] = {}

    def of(self, absolute: Path) -> str:
        stem = absolute.stem
        package = self._package(absolute.parent)
        if stem == "__init__":
            return package or absolute.parent.name
        return f"{package}.{stem}" if package else stem

    def _package(self, folder: Path) -> str | None:
        if folder in self._packages:
            return self._packages[folder]
        name: str | None = None
        if (folder / "__init__.py").is_file():
            parent = self._package(folder.parent) if folder.parent != folder else None
            name = f"{parent}.{folder.name}" if parent else folder.name
        self._packages[folder] = name
        return name


def check(paths: Sequence[Path], policy: Policy | None = None) -> Report:
    """Check every Python file under `paths` against `policy` (the default list if None)."""
    policy = policy or Policy()
    prefilter = _Prefilter(policy.forbidden)
    need_modules = any(rule.kind == "module" for rule in policy.allow)
    modules = _ModuleNames()
    findings: list[Finding] = []
    checked = allowed = 0
    # A syntax tree holds no reference cycles: reference counting frees each one, and the
    # cycle collector, woken by every few hundred new nodes, only costs time (~25 % of a parse).
    collecting = gc.isenabled()
    gc.disable()
    try:
        for file in iter_python_files(paths):
            if policy.allow:
                absolute = file.absolute()
                module = modules.of(absolute) if need_modules else None
                if any(rule.allows(absolute, module) for rule in policy.allow):
                    allowed += 1
                    continue
            checked += 1
            findings += _check_file(file, policy.forbidden, prefilter)
    finally:
        if collecting:
            gc.enable()
    return Report(tuple(findings), checked, allowed)


def _check_file(file: Path, forbidden: Sequence[str], prefilter: _Prefilter) -> list[Finding]:
    path = str(file)
    try:
        data = file.read_bytes()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        return [Finding(path, 1, 1, UNCHECKED, None, f"cannot read this file: {reason}")]
    may_import, dynamic = prefilter.scan(data)
    if not may_import:
        return []
    try:
        found = find_imports(data, forbidden, dynamic=dynamic)
    except SyntaxError as exc:
        line, column = exc.lineno or 1, exc.offset or 1
        reason = f"cannot parse this file: {exc.msg}"
        return [Finding(path, line, max(column, 1), UNCHECKED, None, reason)]
    except (ValueError, RecursionError, MemoryError) as exc:
        reason = f"cannot parse this file: {exc or type(exc).__name__}"
        return [Finding(path, 1, 1, UNCHECKED, None, reason)]
    return [
        Finding(path, line, column, code, module, _message(code, module))
        for line, column, code, module in found
    ]


def _message(code: str, module: str) -> str:
    kind = "dynamic import" if code == DYNAMIC else "import"
    return f"forbidden {kind} of '{module}': {_HINT}"


def find_config(start: Path) -> Path | None:
    """The nearest pyproject.toml at or above `start` with a check-imports section."""
    folder = start.absolute()
    if not folder.is_dir():
        folder = folder.parent
    for candidate in (folder, *folder.parents):
        pyproject = candidate / "pyproject.toml"
        if pyproject.is_file() and _section(pyproject) is not None:
            return pyproject
    return None


def _section(pyproject: Path) -> dict[str, Any] | None:
    try:
        with pyproject.open("rb") as stream:
            document = tomllib.load(stream)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{pyproject}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{pyproject}: {exc.strerror or exc}") from None
    section: Any = document.get("tool", {}).get("comptroller", {}).get("check-imports")
    if section is None:
        return None
    if not isinstance(section, dict):
        raise ConfigError(f"{pyproject}: [{CONFIG_SECTION}] must be a table")
    return section


def load_policy(
    config_file: Path | None,
    *,
    allow: Sequence[str] = (),
    forbid: Sequence[str] = (),
    cwd: Path | None = None,
) -> Policy:
    """The policy from `config_file`'s section (if any) plus command-line entries.

    In the file, `forbid` replaces the default list and `extend-forbid` adds to it; `allow`
    lists modules or globs relative to the file's folder. `allow` and `forbid` given here
    (the command line) add to those, globs relative to `cwd`.

    Raises:
        ConfigError: The file or its section is malformed (unknown key, wrong type).
        UsageError: A command-line entry is not a module name or a glob.
    """
    cwd = cwd or Path.cwd()
    forbidden = list(DEFAULT_FORBIDDEN)
    rules: list[AllowRule] = []
    if config_file is not None:
        section = _section(config_file) or {}
        where = f"{config_file} [{CONFIG_SECTION}]"
        unknown = sorted(set(section) - _CONFIG_KEYS)
        if unknown:
            known = ", ".join(sorted(_CONFIG_KEYS))
            raise ConfigError(f"{where}: unknown key {unknown[0]!r} (known: {known})")
        if "forbid" in section:
            forbidden = _module_names(
                _string_list(section["forbid"], f"{where} forbid"), f"{where} forbid", ConfigError
            )
        extend = _string_list(section.get("extend-forbid", []), f"{where} extend-forbid")
        forbidden += _module_names(extend, f"{where} extend-forbid", ConfigError)
        for entry in _string_list(section.get("allow", []), f"{where} allow"):
            try:
                rules.append(AllowRule.parse(entry, config_file.parent, f"{where} allow"))
            except UsageError as exc:
                raise ConfigError(str(exc)) from None
    forbidden += _module_names(list(forbid), "--forbid", UsageError)
    rules += [AllowRule.parse(entry, cwd, "--allow") for entry in allow]
    if not forbidden:
        raise ConfigError(f"{config_file}: [{CONFIG_SECTION}] forbid is empty: nothing to check")
    return Policy(tuple(dict.fromkeys(forbidden)), tuple(rules), config_file)


def _string_list(value: object, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConfigError(f"{where}: expected a list of strings, got {value!r}")
    return list(value)


def _module_names(names: list[str], where: str, error: type[ComptrollerError]) -> list[str]:
    for name in names:
        if not _MODULE_NAME.match(name):
            raise error(f"{where}: {name!r} is not a module name (like google.genai)")
    return names


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """A gitignore-like glob as a regex over a relative POSIX path.

    `**` spans folders, `*` and `?` stay within one, `[...]` is a character class. Without
    a `/` (other than a trailing one) the glob matches at any depth; a match on a folder
    covers the files below it.
    """
    text = pattern.rstrip("/")
    anchored = "/" in text
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if text.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif text.startswith("**", i):
            out.append(".*")
            i += 2
        elif char == "*":
            out.append("[^/]*")
            i += 1
        elif char == "?":
            out.append("[^/]")
            i += 1
        elif char == "[" and "]" in text[i + 2 :]:
            end = text.index("]", i + 2)
            body = text[i + 1 : end].replace("\\", "\\\\")
            out.append("[^" + body[1:] + "]" if body.startswith("!") else "[" + body + "]")
            i = end + 1
        else:
            out.append(re.escape(char))
            i += 1
    prefix = "" if anchored else "(?:.*/)?"
    return re.compile(prefix + "".join(out) + r"(?:/.*)?\Z")
