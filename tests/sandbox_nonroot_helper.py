"""Run sandbox scenarios as an ordinary user (uid 65534), for tests/test_sandbox.py.

    unshare --mount --propagation private -- \
        python tests/sandbox_nonroot_helper.py <dir> <scenarios.json>

<dir>: a directory that uid 65534 can traverse (not pytest's 0700 tmp_path);
<scenarios.json>: {name: python code}, each run sandboxed as `python -c code`.

Started as root in a private mount namespace: it makes the Python installation traversable
for uid 65534 (where an ancestor such as /root is mode 0700, an empty tmpfs goes over that
ancestor and the installation is bound back at its own path; the host is untouched), drops
to uid/gid 65534, then runs the sandbox the way a non-root node does (user namespaces) and
prints one JSON object: {"plan": ..., "scenarios": {name: {"returncode", "isolation",
"tail"} or {"error"}}} or {"skip": reason}.
"""
import json
import os
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOBODY = 65534


def _traversable_for_nobody(paths: list[str], scratch: str) -> None:
    """Cover each 0700-style ancestor of `paths` with a 0755 tmpfs holding only them."""
    groups: dict[str, list[str]] = {}
    for path in paths:
        parts = path.strip("/").split("/")
        for i in range(1, len(parts)):
            ancestor = "/" + "/".join(parts[:i])
            if not os.stat(ancestor).st_mode & 0o001:
                groups.setdefault(ancestor, []).append(path)
                break
    for ancestor, inside in groups.items():
        stash = []
        for path in inside:
            keep = tempfile.mkdtemp(prefix="stash-", dir=scratch)
            subprocess.run(["mount", "--bind", path, keep], check=True)
            stash.append((keep, path))
        subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", ancestor], check=True)
        for keep, path in stash:
            os.makedirs(path, mode=0o755, exist_ok=True)
            subprocess.run(["mount", "--bind", keep, path], check=True)


def main() -> None:
    base = sys.argv[1]
    with open(sys.argv[2], encoding="utf-8") as f:
        scenarios = json.load(f)
    os.umask(0o022)
    needed = sorted({os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, REPO)})
    _traversable_for_nobody(needed, base)
    ws = os.path.join(base, "ws")
    os.makedirs(ws)
    os.chown(ws, NOBODY, NOBODY)
    os.setgroups([])
    os.setresgid(NOBODY, NOBODY, NOBODY)
    os.setresuid(NOBODY, NOBODY, NOBODY)
    sys.path.insert(0, REPO)
    from experiments.run.sandbox import SandboxError, isolation_plan, missing_isolation, run_sandboxed

    plan = isolation_plan()
    if not (plan.userns and plan.complete):
        print(json.dumps({"skip": f"no complete user-namespace plan as uid {os.getuid()}: "
                                  f"{missing_isolation(plan)}"}))
        return
    out = {"plan": {"complete": plan.complete, "userns": plan.userns, "uid": os.getuid()},
           "scenarios": {}}
    for name, code in scenarios.items():
        try:
            r = run_sandboxed([sys.executable, "-c", code], cwd=ws, wall_limit_s=60,
                              mem_limit_mb=2000)
            out["scenarios"][name] = {"returncode": r.returncode, "isolation": r.isolation,
                                      "tail": r.log_tail}
        except SandboxError as e:
            out["scenarios"][name] = {"error": str(e)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
