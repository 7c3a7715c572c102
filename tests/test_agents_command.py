"""The command agent: fake CLI agents (small Python scripts) that edit, do nothing, hang,
leave processes behind, or touch files they should not."""
import os
import random
import shlex
import sys
import textwrap
import time
from pathlib import Path

import pytest

from agents_fixture import FIXTURE, source_id
from experiments.agents.base import Brief, Tried
from experiments.agents.command import CommandAgent

BRIEF = Brief("optimizer", "# The brief\nLower val_bpb.\n")
HISTORY = [Tried("MATRIX_LR*2", "[MATRIX_LR*2] doubled", "p0", "discarded", 0.01)]


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def wait_dead(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def script(tmp_path: Path, body: str, name: str = "agent.py") -> str:
    path = tmp_path / name
    path.write_text("import os, sys, time, subprocess\nfrom pathlib import Path\n"
                    + textwrap.dedent(body))
    return f"{shlex.quote(sys.executable)} {shlex.quote(str(path))}"


def propose(cmd: str, **kw):
    agent = CommandAgent(cmd, **kw)
    return agent.propose(FIXTURE, BRIEF, HISTORY, parent_id=source_id(FIXTURE),
                         rng=random.Random(0))


def test_agent_that_edits_correctly(tmp_path):
    seen = tmp_path / "seen.txt"
    cmd = script(tmp_path, f"""
        here = Path.cwd()
        assert os.environ["LOOPY_PROMPT"] == (here / "PROMPT.md").read_text()
        assert "Lower val_bpb" in (here / "BRIEF.md").read_text()
        assert "doubled" in (here / "HISTORY.md").read_text()
        assert os.environ["LOOPY_TOPIC"] == "optimizer"
        assert not os.access(here / "prepare.py", os.W_OK) or os.getuid() == 0
        assert "FIXED AND TRUSTED" in (here / "prepare.py").read_text()
        src = (here / "train.py").read_text()
        (here / "train.py").write_text(src.replace("MATRIX_LR = 0.02", "MATRIX_LR = 0.03"))
        (here / "DESCRIPTION.txt").write_text("raise the Muon lr to 0.03\\nmore text\\n")
        Path({str(seen)!r}).write_text(str(here))
        print("done")
    """)
    p = propose(cmd, timeout_s=30)
    assert p.ok, p.failure
    assert "MATRIX_LR = 0.03" in p.source and p.desc == "raise the Muon lr to 0.03"
    assert p.edit_key is None
    assert not Path(seen.read_text()).exists()          # the scratch dir is removed


def test_description_falls_back_to_stdout_then_the_command(tmp_path):
    edit = textwrap.dedent("""
        src = Path("train.py").read_text()
        Path("train.py").write_text(src.replace("WEIGHT_DECAY = 0.0", "WEIGHT_DECAY = 0.1"))
    """)
    p = propose(script(tmp_path, edit + "print()\nprint('Added weight decay 0.1')\n"))
    assert p.ok and p.desc == "Added weight decay 0.1"
    p = propose(script(tmp_path, edit, "quiet.py"))
    assert p.ok and p.desc == f"edit by command:{os.path.basename(sys.executable)}"


def test_brief_placeholder_gets_the_prompt(tmp_path):
    out = tmp_path / "argv.txt"
    cmd = script(tmp_path, f"""
        Path({str(out)!r}).write_text(sys.argv[1])
        src = Path("train.py").read_text()
        Path("train.py").write_text(src.replace("NS_STEPS = 5", "NS_STEPS = 4"))
    """) + " {brief}"
    p = propose(cmd)
    assert p.ok
    text = out.read_text()
    assert "ONE focused change" in text and "optimizer" in text and "DESCRIPTION.txt" in text


def test_agent_that_returns_nothing(tmp_path):
    p = propose(script(tmp_path, "print('I looked and changed nothing')\n"))
    assert p.failure and "identical" in p.failure and p.source is None
    p = propose(script(tmp_path, "sys.stderr.write('boom: no key'); sys.exit(3)\n", "err.py"))
    assert p.failure and "exited with code 3" in p.failure and "boom" in p.failure
    p = propose(script(tmp_path, "Path('train.py').unlink()\n", "rm.py"))
    assert p.failure and "missing" in p.failure


def test_agent_that_hangs_is_killed_with_its_children(tmp_path):
    pids = tmp_path / "pids.txt"
    cmd = script(tmp_path, f"""
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        Path({str(pids)!r}).write_text(f"{{os.getpid()}} {{child.pid}}")
        src = Path("train.py").read_text()
        Path("train.py").write_text(src.replace("NS_STEPS = 5", "NS_STEPS = 3"))
        time.sleep(120)
    """)
    p = propose(cmd, timeout_s=1.5)  # the script would finish after 120 s, with an edit
    assert p.failure and "timed out" in p.failure and p.source is None
    for pid in map(int, pids.read_text().split()):
        assert wait_dead(pid), f"process {pid} survived"


def test_agent_that_ignores_sigterm_is_killed(tmp_path):
    pids = tmp_path / "pids.txt"
    cmd = script(tmp_path, f"""
        import signal
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        Path({str(pids)!r}).write_text(str(os.getpid()))
        while True:
            time.sleep(0.1)
    """)
    p = propose(cmd, timeout_s=1)
    assert p.failure and "timed out" in p.failure
    assert wait_dead(int(pids.read_text()))


def test_processes_left_behind_after_a_normal_exit_are_killed(tmp_path):
    pids = tmp_path / "pids.txt"
    cmd = script(tmp_path, f"""
        daemon = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        Path({str(pids)!r}).write_text(str(daemon.pid))
        src = Path("train.py").read_text()
        Path("train.py").write_text(src.replace("NS_STEPS = 5", "NS_STEPS = 6"))
    """)
    p = propose(cmd)
    assert p.ok
    assert wait_dead(int(pids.read_text()))


def test_agent_that_changes_prepare_py(tmp_path):
    cmd = script(tmp_path, """
        os.chmod("prepare.py", 0o644)
        Path("prepare.py").write_text("VAL = 'mine'\\n")
        src = Path("train.py").read_text()
        Path("train.py").write_text(src.replace("NS_STEPS = 5", "NS_STEPS = 4"))
    """)
    p = propose(cmd)
    assert p.failure and "prepare.py" in p.failure


def test_agent_whose_train_py_needs_a_file_it_wrote(tmp_path):
    cmd = script(tmp_path, """
        Path("helpers.py").write_text("X = 1\\n")
        src = Path("train.py").read_text()
        Path("train.py").write_text("import helpers\\n" + src)
    """)
    p = propose(cmd)
    assert p.failure and "helpers" in p.failure and "only train.py travels" in p.failure


def test_other_scratch_files_are_ignored(tmp_path):
    cmd = script(tmp_path, """
        Path("notes.txt").write_text("my plan")
        os.makedirs("cache/deep", exist_ok=True)
        Path("cache/deep/x").write_text("y")
        os.chmod("cache/deep", 0o500)
        src = Path("train.py").read_text()
        Path("train.py").write_text(src.replace("NS_STEPS = 5", "NS_STEPS = 4"))
    """)
    p = propose(cmd, scratch_root=tmp_path)
    assert p.ok and "NS_STEPS = 4" in p.source
    assert not list(tmp_path.glob("loopy-agent-*"))           # removed, read-only dirs too


def test_train_py_replaced_by_a_link_is_refused(tmp_path):
    secret = tmp_path / "secret.py"
    secret.write_text(FIXTURE.replace("NS_STEPS = 5", "NS_STEPS = 4  # private"))
    for how in ("symlink", "link"):
        cmd = script(tmp_path, f"""
            os.unlink("train.py")
            os.{how}({str(secret)!r}, "train.py")
        """, f"{how}.py")
        p = propose(cmd)
        assert p.failure and "not a regular file" in p.failure


def test_agent_whose_edit_does_not_pass_the_checks(tmp_path):
    cmd = script(tmp_path, """
        src = Path("train.py").read_text()
        Path("train.py").write_text("import socket\\n" + src)
    """)
    p = propose(cmd)
    assert p.failure and "static check" in p.failure
    cmd = script(tmp_path, "Path('train.py').write_bytes(b'\\xff\\xfe garbage')\n", "bin.py")
    p = propose(cmd)
    assert p.failure and "UTF-8" in p.failure


def test_missing_command_and_bad_specs(tmp_path):
    p = propose("/nonexistent/agent-binary --flag")
    assert p.failure and "cannot start" in p.failure
    with pytest.raises(ValueError):
        CommandAgent("")
    with pytest.raises(ValueError):
        CommandAgent('claude -p "unclosed')
