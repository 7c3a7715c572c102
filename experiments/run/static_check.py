"""Static screening of an edit before anything runs: the patch and the resulting train.py.

`check_patch(text)` accepts a unified diff of train.py only: headers `a/train.py` /
`b/train.py` (or `a/genome/train.py` / `b/genome/train.py`), optional `diff --git` and
`index` lines, at least one hunk; no other file, no rename, new, deleted or binary file,
no mode change, nothing over the size limit. It reads the diff with swarm.patch's parser
(the one that applies it), so the screen and the apply step never disagree about which
lines are headers and which are content. `normalize_patch` rewrites the headers to the
record form (`a/train.py`).

`check_source(src)` screens the whole candidate train.py: at most 128 KiB, parses, and an
AST screen that fails closed:

- imports only from an allowlist (torch, numpy, math, time, ... and `prepare`); no star
  or relative imports; no torch/numpy escape hatches (`torch.distributed`, `torch.hub`,
  `torch.utils.cpp_extension`, `torch.library`, `numpy.ctypeslib`, private `torch._C`);
- `os`, `sys`, `gc`, `resource` only through a few harmless attributes (`os.environ`,
  `os.path`, `sys.exit`, `gc.collect`, `resource.getrusage`, ...), never as bare values;
- no `eval`, `exec`, `compile`, `__import__`, `open`, `globals`, `locals`, `vars`,
  `breakpoint`, `input`, `help`; `getattr`/`setattr`/`hasattr`/`delattr` only with a
  literal, non-dunder name (and never setattr/delattr on an imported module);
- no dunder attributes except a few protocol ones (`__init__`, `__name__`, ...), so no
  `__globals__`, `__subclasses__`, `__builtins__`, `__dict__`, `__code__`; no frame or
  code objects (`gi_frame`, `f_globals`, `tb_frame`, ...);
- no file or process primitives by attribute name on any object (`.open`, `.system`,
  `.fork`, `.kill`, `.unlink`, `.read_text`, `.tofile`, `.memmap`, `.load`, ...): weights
  go out through `torch.save` into the run's out_dir only;
- no attribute assignment on imported modules or names (`torch.x = ...`,
  `F.cross_entropy = ...`, `prepare.anything = ...`, `Tensor.add = ...`) or on names
  bound to them, and no `__torch_function__` / `__torch_dispatch__` overrides.

This is a screen, not a proof: Python is too dynamic for a static check to be complete.
The sandbox (experiments/run/sandbox.py) is the wall; this screen rejects the obvious attacks
early with a precise reason ("line 12: import of 'socket' is not allowed"), and the
evaluation child re-checks at run time what matters for the score (identity of the
torch functions it relies on, causality of the model).
"""
from __future__ import annotations

import ast
import re

from swarm.patch import (MAX_PATCH_BYTES, MAX_SOURCE_BYTES, TRAIN_PATHS, FilePatch, PatchError,
                         format_patch, parse_patch)


# Module roots train.py may import. Anything else (socket, subprocess, ctypes, shutil,
# importlib, pickle, threading, multiprocessing, signal, ...) is rejected.
ALLOWED_MODULES = frozenset({
    "torch", "numpy", "math", "time", "dataclasses", "functools", "typing", "collections",
    "itertools", "contextlib", "json", "random", "enum", "abc", "operator", "copy", "re",
    "string", "statistics", "heapq", "bisect", "fractions", "decimal", "numbers",
    "warnings", "prepare", "os", "sys", "gc", "resource", "pathlib", "triton",
})
# Exact dotted modules allowed outside the roots above: the trusted prepare module when
# train.py is imported as part of the genome package.
ALLOWED_EXACT_MODULES = frozenset({"genome.prepare"})
# Modules usable only through these attributes (also as `from m import name`).
RESTRICTED_MODULES = {
    "os": frozenset({"environ", "getenv", "path", "getpid", "cpu_count", "sep", "linesep",
                     "name", "makedirs"}),
    "sys": frozenset({"exit", "stdout", "stderr", "platform", "version", "version_info",
                      "maxsize", "float_info", "byteorder", "getrecursionlimit",
                      "setrecursionlimit"}),
    "gc": frozenset({"collect", "disable", "enable", "isenabled", "freeze", "unfreeze",
                     "get_count"}),
    "resource": frozenset({"getrusage", "RUSAGE_SELF", "RUSAGE_CHILDREN"}),
}
BANNED_NAMES = frozenset({
    "eval", "exec", "compile", "__import__", "open", "globals", "locals", "vars",
    "breakpoint", "input", "help", "__builtins__", "__loader__", "__spec__", "__dict__",
})
ATTRIBUTE_FUNCS = frozenset({"getattr", "setattr", "hasattr", "delattr"})
# Dunder names that are plain protocol, not introspection gateways.
ALLOWED_DUNDER_NAMES = frozenset({"__name__", "__file__", "__doc__"})
ALLOWED_DUNDER_ATTRS = frozenset({
    "__init__", "__name__", "__qualname__", "__doc__", "__call__", "__len__", "__iter__",
    "__next__", "__enter__", "__exit__", "__getitem__", "__setitem__", "__contains__",
    "__repr__", "__str__",
})
# Attribute names rejected on any object: files, processes, dynamic loading, module
# hops (torch.os, np.ctypeslib), frames and code objects, torch escape hatches.
BANNED_ATTRS = frozenset({
    # processes and signals
    "system", "popen", "fork", "forkpty", "vfork", "posix_spawn", "posix_spawnp", "kill",
    "killpg", "setsid", "setpgid", "setuid", "setgid", "setresuid", "setresgid", "chroot",
    "execv", "execve", "execl", "execle", "execlp", "execlpe", "execvp", "execvpe",
    "spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnv", "spawnve", "spawnvp", "spawnvpe",
    # files
    "open", "fdopen", "openpty", "pipe", "dup", "dup2", "unlink", "rmdir",
    "removedirs", "rmtree", "rename", "renames", "symlink", "symlink_to", "link",
    "hardlink_to", "link_to", "chmod", "chown", "lchown", "truncate", "mknod", "mkfifo",
    "read_text", "read_bytes", "write_text", "write_bytes", "fromfile", "tofile", "memmap",
    "open_memmap", "from_file", "load", "loadtxt", "genfromtxt", "fromregex", "listdir",
    "scandir", "walk", "iterdir", "glob", "rglob",
    # dynamic loading and interpreter internals
    "load_library", "load_inline", "cpp_extension", "ctypeslib", "ctypes",
    "builtins", "import_module", "f2py", "distutils",
    # module hops through other modules' attributes
    "os", "sys", "subprocess", "socket", "importlib", "shutil", "io", "pickle", "marshal",
    "multiprocessing", "threading", "signal", "urllib", "http", "inspect", "types",
    "platform", "runpy", "pty", "select", "selectors", "asyncio", "ssl", "mmap", "fcntl",
    "posix", "tempfile", "zipfile", "tarfile", "gc", "resource",
    # torch escape hatches: network, processes, native code, dispatcher overrides
    "distributed", "hub", "library", "package", "overrides",
    "register_module_forward_hook", "register_module_forward_pre_hook",
    "register_module_full_backward_hook", "register_module_full_backward_pre_hook",
    "register_module_backward_hook", "register_module_buffer_registration_hook",
    "register_module_module_registration_hook", "register_module_parameter_registration_hook",
    # frames and code objects
    "gi_frame", "gi_code", "cr_frame", "cr_code", "ag_frame", "ag_code", "tb_frame",
    "tb_next", "f_globals", "f_locals", "f_builtins", "f_back", "f_code", "co_code",
    "func_globals",
})
# Private attributes of modules are rejected (torch._C, torch._dynamo, ...) except these.
_ALLOWED_PRIVATE = re.compile(r"_foreach_\w+|_fused_\w+")
BANNED_DEFINITIONS = frozenset({"__torch_function__", "__torch_dispatch__"})
REQUIRED_FUNCTIONS = ("build_model",)


def _is_dunder(name: str) -> bool:
    return len(name) > 4 and name.startswith("__") and name.endswith("__")


def _private(name: str) -> bool:
    """A private (single underscore) name outside the allowed torch fast paths."""
    return name.startswith("_") and not _is_dunder(name) and not _ALLOWED_PRIVATE.fullmatch(name)


def _chain(node: ast.AST) -> tuple[ast.AST, bool]:
    """(innermost base, whether a call is on the way) of a chain: (`a`, True) for `a.b(0).c`."""
    has_call = False
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Call, ast.Starred)):
        if isinstance(node, ast.Call):
            has_call = True
            node = node.func
        else:
            node = node.value
    return node, has_call


def _root(node: ast.AST) -> ast.AST:
    return _chain(node)[0]


def _dotted(node: ast.AST) -> str | None:
    """'torch.nn.functional' for a pure Name/Attribute chain, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return ".".join([node.id] + parts[::-1])
    return None


class _Screen(ast.NodeVisitor):
    """Collects (line, message) violations; `imported` maps local names to module paths."""

    def __init__(self):
        self.problems: list[tuple[int, str]] = []
        self.imported: dict[str, str] = {}  # local name -> what it was imported as
        self.tainted: set[str] = set()  # local names bound to imported objects

    def fail(self, node: ast.AST, message: str) -> None:
        self.problems.append((getattr(node, "lineno", 0), message))

    # --- imports -------------------------------------------------------------------------
    def _check_module(self, node: ast.AST, module: str) -> bool:
        parts = module.split(".")
        if module not in ALLOWED_EXACT_MODULES and parts[0] not in ALLOWED_MODULES:
            self.fail(node, f"import of {module!r} is not allowed")
            return False
        for part in parts[1:]:
            if part in BANNED_ATTRS or _private(part) or _is_dunder(part):
                self.fail(node, f"import of {module!r} is not allowed ({part!r})")
                return False
        if parts[0] in RESTRICTED_MODULES and len(parts) > 1 and not (
                parts[0] == "os" and parts[1] == "path" and len(parts) == 2):
            self.fail(node, f"import of {module!r} is not allowed")
            return False
        return True

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if not self._check_module(node, alias.name):
                continue
            if alias.asname:
                self.imported[alias.asname] = alias.name
            else:
                self.imported[alias.name.split(".")[0]] = alias.name.split(".")[0]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            self.fail(node, "relative imports are not allowed")
            return
        module = node.module or ""
        if not self._check_module(node, module):
            return
        restricted = RESTRICTED_MODULES.get(module)
        for alias in node.names:
            if alias.name == "*":
                self.fail(node, f"'from {module} import *' is not allowed")
                continue
            name = alias.name
            if restricted is not None and name not in restricted:
                self.fail(node, f"'{module}.{name}' is not allowed")
                continue
            if name in BANNED_ATTRS or name in BANNED_NAMES or _is_dunder(name) or _private(name):
                self.fail(node, f"import of '{module}.{name}' is not allowed")
                continue
            self.imported[alias.asname or name] = f"{module}.{name}"

    # --- names and attributes --------------------------------------------------------------
    def visit_Name(self, node: ast.Name) -> None:
        name = node.id
        if name in BANNED_NAMES:
            self.fail(node, f"use of {name!r} is not allowed")
        elif _is_dunder(name) and name not in ALLOWED_DUNDER_NAMES:
            self.fail(node, f"use of {name!r} is not allowed")
        elif name in ATTRIBUTE_FUNCS:
            # Reached only when not the callee of a checked call (visit_Call skips it).
            self.fail(node, f"{name} may only be called directly with a literal attribute name")
        elif self.imported.get(name) in RESTRICTED_MODULES:
            self.fail(node, f"module {name!r} may only be used through its allowed attributes")

    def visit_Attribute(self, node: ast.Attribute) -> None:
        attr = node.attr
        base = node.value
        module = self.imported.get(base.id) if isinstance(base, ast.Name) else None
        if module in RESTRICTED_MODULES:
            # `os.environ`, `sys.platform`: only the module's allowlist decides, and the
            # bare module Name below is not visited (it would be rejected as a bare value).
            if attr not in RESTRICTED_MODULES[module]:
                self.fail(node, f"'{module}.{attr}' is not allowed")
            return
        if _is_dunder(attr):
            if attr not in ALLOWED_DUNDER_ATTRS:
                self.fail(node, f"access to attribute {attr!r} is not allowed")
        elif attr in BANNED_ATTRS:
            self.fail(node, f"access to attribute {attr!r} is not allowed")
        elif _private(attr) and self._is_module_chain(node.value):
            self.fail(node, f"access to private module attribute {_dotted(node) or attr!r} "
                            f"is not allowed")
        self.generic_visit(node)

    def _is_module_chain(self, node: ast.AST) -> bool:
        root = _root(node)
        return isinstance(root, ast.Name) and root.id in self.imported

    # --- calls -------------------------------------------------------------------------
    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Name) and func.id in ATTRIBUTE_FUNCS:
            self._check_attribute_call(node, func.id)
            for arg in node.args:
                self.visit(arg)
            for kw in node.keywords:
                self.visit(kw.value)
            return
        self.generic_visit(node)

    def _check_attribute_call(self, node: ast.Call, func: str) -> None:
        if len(node.args) < 2 or node.keywords:
            self.fail(node, f"{func} needs an object and a literal attribute name")
            return
        name = node.args[1]
        if not (isinstance(name, ast.Constant) and isinstance(name.value, str)):
            self.fail(node, f"{func} with a computed attribute name is not allowed")
            return
        text = name.value
        if _is_dunder(text) or text in BANNED_ATTRS or (
                _private(text) and self._is_module_chain(node.args[0])):
            self.fail(node, f"{func}(..., {text!r}) is not allowed")
        if func in ("setattr", "delattr") and self._touches_import(node.args[0]):
            self.fail(node, f"{func} on an imported module or object is not allowed")

    # --- assignments -------------------------------------------------------------------------
    def _touches_import(self, target: ast.AST) -> bool:
        root, has_call = _chain(target)
        if has_call:  # `type(x).add = f`: the owner of the attribute is unknown
            return True
        return isinstance(root, ast.Name) and (root.id in self.imported or root.id in self.tainted)

    def _check_target(self, target: ast.AST) -> None:
        if isinstance(target, (ast.Tuple, ast.List)):
            for elt in target.elts:
                self._check_target(elt)
        elif isinstance(target, ast.Starred):
            self._check_target(target.value)
        elif isinstance(target, ast.Attribute) and self._touches_import(target.value):
            self.fail(target, f"assignment to {_dotted(target) or target.attr!r} "
                              f"(an attribute of an imported module or object) is not allowed")
        elif isinstance(target, ast.Name) and target.id in self.imported:
            # Rebinding an imported name is fine, but it no longer refers to the module.
            pass

    def _track_taint(self, targets: list[ast.AST], value: ast.AST) -> None:
        root = _root(value)
        from_import = isinstance(root, ast.Name) and (
            root.id in self.imported or root.id in self.tainted)
        from_type = (isinstance(value, ast.Call) and isinstance(value.func, ast.Name)
                     and value.func.id == "type")
        # `T = torch.Tensor` or `T = type(x)`: T is an imported object; `x = torch.zeros(3)`
        # (a call result) is a fresh value, not the module.
        is_reference = from_type or (from_import and not isinstance(value, ast.Call))
        for target in targets:
            if isinstance(target, ast.Name):
                if is_reference:
                    self.tainted.add(target.id)
                else:
                    self.tainted.discard(target.id)

    def visit_Assign(self, node: ast.Assign) -> None:
        for target in node.targets:
            self._check_target(target)
        self._track_taint(node.targets, node.value)
        self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self._check_target(node.target)
        if node.value is not None:
            self._track_taint([node.target], node.value)
        self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self._check_target(node.target)
        self.generic_visit(node)

    def visit_Delete(self, node: ast.Delete) -> None:
        for target in node.targets:
            self._check_target(target)
        self.generic_visit(node)

    def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
        self._track_taint([node.target], node.value)
        self.generic_visit(node)

    # --- definitions -------------------------------------------------------------------------
    def _check_definition(self, node) -> None:
        if node.name in BANNED_DEFINITIONS:
            self.fail(node, f"defining {node.name!r} (a torch dispatch override) is not allowed")

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._check_definition(node)
        self.generic_visit(node)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self._check_definition(node)
        self.generic_visit(node)

    def visit_Global(self, node: ast.Global) -> None:
        for name in node.names:
            if _is_dunder(name):
                self.fail(node, f"global {name!r} is not allowed")


def check_source(src: str) -> tuple[bool, str]:
    """(True, "") if train.py passes the screen, else (False, "line N: what is wrong")."""
    if not isinstance(src, str):
        return False, "train.py must be text"
    try:
        size = len(src.encode("utf-8"))
    except UnicodeEncodeError:
        return False, "train.py is not valid UTF-8 text (lone surrogates)"
    if size > MAX_SOURCE_BYTES:
        return False, f"train.py is {size} bytes, over the {MAX_SOURCE_BYTES}-byte limit"
    if "\x00" in src:
        return False, "train.py contains a NUL character"
    try:
        tree = ast.parse(src, filename="train.py")
    except SyntaxError as e:
        return False, f"line {e.lineno or 0}: syntax error: {e.msg}"
    except (ValueError, RecursionError, MemoryError) as e:
        return False, f"train.py cannot be parsed: {type(e).__name__}"
    screen = _Screen()
    # Imports first, wherever they appear, so that later uses know the imported names.
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            screen.visit(node)
    import_problems = list(screen.problems)
    screen.problems = []
    try:
        for node in tree.body:
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                screen.visit(node)
    except RecursionError:
        return False, "train.py is nested too deeply to check"
    problems = sorted(set(import_problems + screen.problems))
    defined = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    for name in REQUIRED_FUNCTIONS:
        if name not in defined:
            problems.append((0, f"train.py must define {name}(run) at module level"))
    if problems:
        line, message = problems[0]
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        where = f"line {line}: " if line else ""
        return False, f"{where}{message}{more}"
    return True, ""


# --- patches ---------------------------------------------------------------------------------

_ONLY_TRAIN = "only train.py may change"
# What each git header line the parser keeps aside (FilePatch.git_extras) would do.
_GIT_FORBIDDEN = (
    ("new file mode", "creates a new file"), ("deleted file mode", "deletes a file"),
    ("rename from", "renames a file"), ("rename to", "renames a file"),
    ("copy from", "copies a file"), ("copy to", "copies a file"),
    ("old mode", "changes a file mode"), ("new mode", "changes a file mode"),
    ("similarity index", "renames or copies a file"), ("dissimilarity index", "rewrites a file"),
    ("Binary files", "is a binary patch"), ("GIT binary patch", "is a binary patch"),
)


def _touches(path: str) -> str:
    return f"the patch touches {path[:120]!r}; {_ONLY_TRAIN}"


def _file_problem(fp: FilePatch) -> str | None:
    """Why one file section of a patch is not a plain edit of train.py, else None."""
    for path in (fp.old_path, fp.new_path):
        if path is None:
            return _touches("/dev/null")
        if path not in TRAIN_PATHS:
            return _touches(path)
    if fp.git_extras:
        what = next((w for prefix, w in _GIT_FORBIDDEN if fp.git_extras[0].startswith(prefix)),
                    "is not a plain edit")
        return f"the patch {what}; only edits of train.py are allowed"
    return None


def check_patch(patch_text: str) -> tuple[bool, str]:
    """(True, "") if the patch is a plain unified diff of train.py only, else (False, reason).

    The text is read by swarm.patch.parse_patch, the parser that applies it later."""
    if not isinstance(patch_text, str):
        return False, "patch must be text"
    try:
        size = len(patch_text.encode("utf-8"))
    except UnicodeEncodeError:
        return False, "patch is not valid UTF-8 text"
    if size > MAX_PATCH_BYTES:
        return False, f"patch is {size} bytes, over the {MAX_PATCH_BYTES}-byte limit"
    if "\x00" in patch_text:
        return False, "patch contains a NUL character (binary?)"
    try:
        files = parse_patch(patch_text)
    except PatchError as e:
        return False, _touches(e.path) if e.path is not None else str(e)
    for fp in files:
        problem = _file_problem(fp)
        if problem:
            return False, problem
    if not files:
        return False, "no file header ('--- a/train.py' / '+++ b/train.py') found"
    if len(files) > 1:
        return False, f"the patch changes {len(files)} files; {_ONLY_TRAIN}"
    return True, ""


def normalize_patch(text: str) -> str:
    """The same edit with record-form headers (`a/train.py`), as make_patch writes it.

    Call after check_patch accepted the text."""
    return format_patch([FilePatch("train.py", "train.py", fp.hunks)
                         for fp in parse_patch(text)])
