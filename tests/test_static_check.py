"""The static screen: the real genome passes; each attack is rejected with a precise reason."""
import textwrap

import pytest
from hypothesis import given, settings, strategies as st

from experiments.run.static_check import (MAX_PATCH_BYTES, MAX_SOURCE_BYTES, check_patch,
                                          check_source, normalize_patch)
from genome import base_train_source
from swarm.patch import apply_patch, make_patch, parse_patch

OK_HEAD = ("import torch\nimport torch.nn as nn\n\n"
           "def build_model(run):\n    return nn.Linear(2, 2)\n")
NOT_ALLOWED_IMPORT = "import of '{}' is not allowed"
NOT_ALLOWED_ATTR = "access to attribute '{}' is not allowed"
ASSIGNMENT = "assignment to '{}' (an attribute of an imported module or object) is not allowed"


def src(body: str) -> str:
    return OK_HEAD + textwrap.dedent(body)


def test_base_genome_passes():
    assert check_source(base_train_source()) == (True, "")


def test_ordinary_model_code_passes():
    ok, reason = check_source(src("""
        import math, time, os, sys, gc
        from dataclasses import dataclass
        from pathlib import Path
        import torch.nn.functional as F
        from prepare import make_dataloader, run_config
        os.environ["PYTORCH_ALLOC_CONF"] = "expandable_segments:True"
        gc.collect()
        class Block(nn.Module):
            def __init__(self):
                super().__init__()
                self._cache = None
                setattr(self, "extra", nn.Linear(2, 2))
            def forward(self, x):
                y = getattr(F, "gelu")(x)
                return torch._foreach_add([y], 1.0)[0]
        def main():
            run = run_config()
            path = Path(run.out_dir) / "model.pt"
            torch.save({}, path)
            print(f"{time.time():.1f}", file=sys.stderr)
            sys.exit(0 if math.isfinite(1.0) else 1)
    """))
    assert (ok, reason) == (True, "")


@pytest.mark.parametrize("body, reason", [
    # network and processes
    ("import socket\n", "line 6: import of 'socket' is not allowed"),
    ("import subprocess\n", "line 6: import of 'subprocess' is not allowed"),
    ("from multiprocessing import Process\n", "import of 'multiprocessing' is not allowed"),
    ("import ctypes\n", "import of 'ctypes' is not allowed"),
    ("import urllib.request\n", "import of 'urllib.request' is not allowed"),
    ("import importlib\n", "import of 'importlib' is not allowed"),
    ("import torch.distributed as dist\n", "import of 'torch.distributed' is not allowed"),
    ("from torch.utils import cpp_extension\n",
     NOT_ALLOWED_IMPORT.format("torch.utils.cpp_extension")),
    ("import os\nos.system('curl evil')\n", "line 7: 'os.system' is not allowed"),
    ("from os import system\n", "'os.system' is not allowed"),
    ("import os\nos.fork()\n", "'os.fork' is not allowed"),
    ("torch.os.system('x')\n", "access to attribute 'os' is not allowed"),
    ("import numpy as np\nnp.ctypeslib.load_library('x', '.')\n", "is not allowed"),
    ("import os as o\nx = o\n", "module 'o' may only be used through its allowed attributes"),
    ("import sys\nsys.modules['torch']\n", "'sys.modules' is not allowed"),
    ("from . import prepare\n", "relative imports are not allowed"),
    ("from torch import *\n", "'from torch import *' is not allowed"),
    ("from torch import _C\n", "import of 'torch._C' is not allowed"),
    # files: the validation data, the node's keys
    ("open('/home/node/data/val.bin')\n", "line 6: use of 'open' is not allowed"),
    ("import numpy as np\nnp.memmap('val.bin')\n", "access to attribute 'memmap' is not allowed"),
    ("import numpy as np\nnp.fromfile('val.bin')\n", NOT_ALLOWED_ATTR.format("fromfile")),
    ("from pathlib import Path\nPath('val.bin').read_bytes()\n",
     NOT_ALLOWED_ATTR.format("read_bytes")),
    ("torch.load('weights.pt')\n", "access to attribute 'load' is not allowed"),
    ("torch.from_file('val.bin')\n", "access to attribute 'from_file' is not allowed"),
    ("import io\n", "import of 'io' is not allowed"),
    # dynamic code and introspection
    ("eval('1')\n", "use of 'eval' is not allowed"),
    ("exec('1')\n", "use of 'exec' is not allowed"),
    ("compile('1', 'f', 'exec')\n", "use of 'compile' is not allowed"),
    ("__import__('os')\n", "use of '__import__' is not allowed"),
    ("globals()\n", "use of 'globals' is not allowed"),
    ("vars(torch)\n", "use of 'vars' is not allowed"),
    ("x = __builtins__\n", "use of '__builtins__' is not allowed"),
    ("getattr(torch, 'o' + 's')\n", "getattr with a computed attribute name is not allowed"),
    ("g = getattr\n", "getattr may only be called directly"),
    ("getattr(torch, '__dict__')\n", "getattr(..., '__dict__') is not allowed"),
    ("().__class__.__bases__[0].__subclasses__()\n", NOT_ALLOWED_ATTR.format("__bases__")),
    ("build_model.__globals__\n", "access to attribute '__globals__' is not allowed"),
    ("build_model.__code__\n", "access to attribute '__code__' is not allowed"),
    ("print.__self__\n", "access to attribute '__self__' is not allowed"),
    ("g = (i for i in []); g.gi_frame.f_globals\n", "is not allowed"),
    ("import gc\ngc.get_objects()\n", "'gc.get_objects' is not allowed"),
    ("torch._C._set_grad_enabled(True)\n", "private module attribute 'torch._C' is not allowed"),
    # monkeypatching what the evaluator uses
    ("import torch.nn.functional as F\nF.cross_entropy = lambda *a, **k: 0\n",
     "line 7: " + ASSIGNMENT.format("F.cross_entropy")),
    ("torch.Tensor.log_softmax = None\n", "assignment to 'torch.Tensor.log_softmax'"),
    ("import prepare\nprepare.evaluate_bpb = None\n", "assignment to 'prepare.evaluate_bpb'"),
    ("from torch import Tensor\nTensor.float = None\n", "assignment to 'Tensor.float'"),
    ("T = torch.Tensor\nT.float = None\n", "assignment to 'T.float'"),
    ("type(torch.zeros(1)).float = None\n", "(an attribute of an imported module or object)"),
    ("setattr(torch.nn.functional, 'cross_entropy', None)\n", "setattr on an imported module"),
    ("del torch.nn.functional.cross_entropy\n",
     ASSIGNMENT.format("torch.nn.functional.cross_entropy")),
    ("torch.nn.functional.cross_entropy += 1\n", "assignment to"),
    ("class X(torch.Tensor):\n    def __torch_function__(cls, *a):\n        pass\n",
     "defining '__torch_function__' (a torch dispatch override) is not allowed"),
    ("nn.modules.module.register_module_forward_hook(print)\n", "is not allowed"),
])
def test_attacks_are_rejected_with_a_precise_reason(body, reason):
    ok, message = check_source(src(body))
    assert not ok
    assert reason in message, message


def test_reason_counts_further_problems():
    ok, message = check_source(src("import socket\nimport subprocess\neval('1')\n"))
    assert not ok
    assert message.startswith("line 6: import of 'socket' is not allowed")
    assert "(and 2 more problem(s))" in message


def test_source_limits_and_shape():
    assert check_source("x = 1\n") == (
        False, "train.py must define build_model(run) at module level")
    ok, message = check_source("def build_model(run):\n    return (\n")
    assert not ok and message.startswith("line 2: syntax error")
    ok, message = check_source(OK_HEAD + "#" * MAX_SOURCE_BYTES)
    assert not ok and "over the 131072-byte limit" in message
    assert check_source(OK_HEAD + "x = '\x00'\n")[0] is False
    assert check_source(b"def build_model(run): pass\n") == (False, "train.py must be text")
    assert check_source("\ud800")[0] is False
    deep = "(" * 5000 + ")" * 5000
    ok, message = check_source(f"def build_model(run):\n    return {deep}\n")
    assert not ok


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_check_source_never_raises(text):
    ok, reason = check_source(text)
    assert isinstance(ok, bool) and isinstance(reason, str)
    assert ok or reason


# --- patches ---------------------------------------------------------------------------------

BASE = "a = 1\nb = 2\nc = 3\n"
NEW = "a = 1\nb = 20\nc = 3\n"


def test_patch_of_train_py_is_accepted():
    patch = make_patch(BASE, NEW)
    assert check_patch(patch) == (True, "")
    git_style = "diff --git a/genome/train.py b/genome/train.py\nindex 111..222 100644\n" + \
        make_patch(BASE, NEW, path="genome/train.py")
    assert check_patch(git_style) == (True, "")
    normalized = normalize_patch(git_style)
    assert "--- a/train.py\n+++ b/train.py\n" in normalized
    assert "genome/" not in normalized
    assert apply_patch(BASE, normalized) == NEW


def test_normalize_leaves_hunk_lines_alone():
    old = "x = 1\n-- a/genome/train.py\n"
    new = "x = 2\n-- a/genome/train.py\n"
    patch = make_patch(old, new, path="genome/train.py")
    assert apply_patch(old, normalize_patch(patch)) == new


@pytest.mark.parametrize("patch, reason", [
    (make_patch(BASE, NEW, path="prepare.py"), "only train.py may change"),
    (make_patch(BASE, NEW, path="genome/prepare.py"), "only train.py may change"),
    (make_patch(BASE, NEW, path="experiments/run/evaluate_child.py"), "only train.py may change"),
    (make_patch(BASE, NEW, path="../train.py"), "only train.py may change"),
    (make_patch(BASE, NEW) + make_patch(BASE, NEW, path="node.py"), "only train.py may change"),
    (make_patch(BASE, NEW) + make_patch(BASE, NEW), "changes 2 files"),
    ("--- /dev/null\n+++ b/train.py\n@@ -0,0 +1 @@\n+x\n", "touches '/dev/null'"),
    ("--- a/train.py\n+++ /dev/null\n@@ -1 +0,0 @@\n-x\n", "touches '/dev/null'"),
    ("diff --git a/train.py b/train.py\nnew file mode 100644\n", "creates a new file"),
    ("diff --git a/train.py b/train.py\ndeleted file mode 100644\n", "deletes a file"),
    ("diff --git a/x.py b/train.py\nrename from x.py\n", "only train.py may change"),
    ("diff --git a/train.py b/train.py\nrename from train.py\nrename to x.py\n", "renames a file"),
    ("diff --git a/train.py b/train.py\nold mode 100644\nnew mode 100755\n", "changes a file mode"),
    ("diff --git a/train.py b/train.py\nBinary files a/train.py and b/train.py differ\n", "binary"),
    ("diff --git a/train.py b/train.py\nGIT binary patch\nliteral 0\n", "binary"),
    ("", "no file header"),
    ("just some text\n", "unexpected line"),
    ("--- a/train.py\n+++ b/train.py\n", "no hunks"),
    ("--- a/train.py\n+++ b/train.py\n@@ -1,3 +1,3 @@\n a = 1\n", "shorter than its header"),
    ("--- a/train.py\n+++ b/train.py\n@@ -1 +1 @@\n-a\n+b\n+c\n", "unexpected line"),
    ("--- a/train.py\n+++ b/train.py\n@@ nonsense @@\n", "malformed hunk header"),
    ("--- a/train.py\n@@ -1 +1 @@\n-a\n+b\n", "without a '+++' header"),
    ('--- "a/train.py"\n+++ "b/train.py"\n@@ -1 +1 @@\n-a\n+b\n', "only train.py may change"),
    ("--- a/train.py\n+++ b/train.py\n@@ -1 +1 @@\n-a\n+b\x00\n", "NUL"),
    ("x" * (MAX_PATCH_BYTES + 1), "over the"),
    (None, "must be text"),
])
def test_bad_patches_are_rejected(patch, reason):
    ok, message = check_patch(patch)
    assert not ok
    assert reason in message, message


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_check_patch_never_raises(text):
    ok, reason = check_patch(text)
    assert isinstance(ok, bool) and (ok or reason)


# --- hostile diffs: the screen reads patches with the parser that applies them ----------------

PLAIN = make_patch(BASE, NEW)


@pytest.mark.parametrize("patch, reason", [
    # hunk headers that lie about their line counts
    (PLAIN.replace("@@ -1,3 +1,3 @@", "@@ -1,4 +1,4 @@"), "shorter than its header says"),
    (PLAIN.replace("@@ -1,3 +1,3 @@", "@@ -1,2 +1,2 @@"), "unexpected line"),
    (PLAIN.replace("@@ -1,3 +1,3 @@", "@@ -1,3 +1,999999999 @@"), "shorter than its header"),
    # paths that leave the genome or name it in another spelling
    (make_patch(BASE, NEW, path="../genome/train.py"), "only train.py may change"),
    (make_patch(BASE, NEW, path="genome/../train.py"), "only train.py may change"),
    (make_patch(BASE, NEW, path="/etc/passwd"), "only train.py may change"),
    (PLAIN.replace("a/train.py", "/tmp/train.py"), "only train.py may change"),
    (PLAIN.replace("b/train.py", "b/train.py\t2024-01-01").replace("a/train.py", "train.py"),
     "only train.py may change"),
    # CRLF line ends: a '\r' is part of each line, so no header is what it seems
    (PLAIN.replace("\n", "\r\n"), "malformed hunk header"),
    (PLAIN.replace("train.py\n", "train.py\r\n"), "only train.py may change"),
    # a second file in its own git section, and one after a binary section
    (PLAIN + "diff --git a/prepare.py b/prepare.py\n" + make_patch(BASE, NEW, "prepare.py"),
     "only train.py may change"),
    ("diff --git a/train.py b/train.py\nGIT binary patch\nliteral 3\nzcmV?d00001\n\n"
     "diff --git a/prepare.py b/prepare.py\n" + make_patch(BASE, NEW, "prepare.py"), "binary"),
    # ... and a file's headers after binary data belong to that file's git section
    ("diff --git a/train.py b/train.py\nGIT binary patch\nliteral 3\nzcmV?d00001\n\n"
     + make_patch(BASE, NEW, "prepare.py"), "differs from the 'diff --git' line"),
    # marker lines the apply step would not accept either
    (PLAIN + "\\ No newline at end of file\n" * 2, "stray"),
    (PLAIN[:-1], "does not end with a newline"),
    ("diff --git a/train.py b/genome/train.py\n" + PLAIN, "only train.py may change"),
])
def test_hostile_patches_are_rejected(patch, reason):
    ok, message = check_patch(patch)
    assert not ok
    assert reason in message, message


def test_header_lookalikes_inside_a_hunk_are_content():
    """Lines that look like another file's headers, inside a hunk's counted lines, are
    train.py's content for the screen exactly as for the apply step."""
    old = "a = 1\n-- a/prepare.py\n++ b/prepare.py\n"
    new = "a = 2\n-- a/prepare.py\n++ b/prepare.py\n"
    patch = make_patch(old, new)
    assert "\n --- a/prepare.py\n" not in patch and " -- a/prepare.py\n" in patch
    assert check_patch(patch) == (True, "")
    assert apply_patch(old, patch) == new


def test_normalized_patches_apply_like_the_original():
    old, new = "x = 1\ny = 2\nz = 3", "x = 1\ny = 20\nz = 3\n"
    patch = "diff --git a/genome/train.py b/genome/train.py\nindex 1..2 100644\n" + \
        make_patch(old, new, path="genome/train.py")
    assert check_patch(patch) == (True, "")
    assert normalize_patch(patch) == make_patch(old, new)
    assert apply_patch(old, normalize_patch(patch)) == new


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="-+ @,0123456789abtrain.py/\\\n", max_size=200))
def test_what_the_screen_accepts_is_one_train_py_edit(text):
    ok, _ = check_patch(text)
    if ok:
        [fp] = parse_patch(text)
        assert fp.old_path == fp.new_path and fp.old_path in ("train.py", "genome/train.py")
        assert fp.hunks and not fp.git_extras
