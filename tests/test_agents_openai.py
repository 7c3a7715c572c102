"""The OpenAI-compatible agent against a fake endpoint on 127.0.0.1, and reply parsing."""
import json
import random
import socket
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from agents_fixture import FIXTURE, source_id
from experiments.agents import openai_agent
from experiments.agents.base import Brief, Tried
from experiments.agents.openai_agent import OpenAIAgent, endpoint_url
from experiments.agents.replies import parse_reply
from swarm.patch import make_patch

BRIEF = Brief("optimizer", "SYSTEM BRIEF: lower val_bpb")
HISTORY = [Tried("MATRIX_LR*2", "[MATRIX_LR*2] doubled the lr", "p0", "discarded", 0.012)]
EDITED = FIXTURE.replace("MATRIX_LR = 0.02", "MATRIX_LR = 0.015")


def chat(content) -> dict:
    return {"choices": [{"message": {"role": "assistant", "content": content}}]}


def fenced(source=EDITED, desc="DESCRIPTION: lower the Muon lr to 0.015"):
    return f"Here is my change.\n\n```python\n{source}```\n\n{desc}\n"


class FakeEndpoint:
    """Answers each POST with the next scripted action (the last one repeats)."""

    def __init__(self, actions):
        self.actions = list(actions)
        self.requests = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                endpoint.requests.append((self.path, dict(self.headers), body))
                i = min(len(endpoint.requests), len(endpoint.actions)) - 1
                kind, *args = endpoint.actions[i]
                try:
                    if kind == "sleep":
                        time.sleep(args[0])
                        return
                    status, payload = args[0], args[1]
                    headers = args[2] if len(args) > 2 else {}
                    data = payload if isinstance(payload, bytes) else json.dumps(
                        payload).encode()
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self):
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def endpoint(*actions):
    with FakeEndpoint(actions) as ep:
        yield ep


def agent_for(ep, **kw):
    kw.setdefault("retries", 3)
    kw.setdefault("backoff_s", 0.01)
    kw.setdefault("timeout_s", 5)
    return OpenAIAgent(ep.url, model="test-model", **kw)


def propose(agent, parent=FIXTURE):
    return agent.propose(parent, BRIEF, HISTORY, parent_id=source_id(parent),
                         rng=random.Random(0))


# ---------------------------------------------------------------------------
# Against the fake endpoint


def test_good_fenced_answer(monkeypatch):
    monkeypatch.setenv("LOOPY_OPENAI_KEY", "sk-test-secret")
    with endpoint(("json", 200, chat(fenced()))) as ep:
        agent = agent_for(ep)
        p = propose(agent)
    assert p.ok and p.source == EDITED and p.desc == "lower the Muon lr to 0.015"
    path, headers, body = ep.requests[0]
    assert path == "/v1/chat/completions"
    assert headers["Authorization"] == "Bearer sk-test-secret"
    sent = json.loads(body)
    assert sent["model"] == "test-model"
    assert sent["messages"][0] == {"role": "system", "content": BRIEF.text}
    user = sent["messages"][1]["content"]
    assert "doubled the lr" in user and FIXTURE in user and "DESCRIPTION:" in user
    assert "sk-test-secret" not in agent.name + repr(agent)


def test_no_key_no_authorization_header(monkeypatch):
    monkeypatch.delenv("LOOPY_OPENAI_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("LOOPY_OPENAI_MODEL", "env-model")
    with endpoint(("json", 200, chat(fenced()))) as ep:
        agent = OpenAIAgent(ep.url + "/chat/completions", backoff_s=0.01)
        assert propose(agent).ok
    assert "Authorization" not in ep.requests[0][1]
    assert json.loads(ep.requests[0][2])["model"] == "env-model"


def test_whole_file_without_fence_and_diff_answers():
    diff = make_patch(FIXTURE, EDITED)
    with endpoint(("json", 200, chat(EDITED)),
                  ("json", 200, chat(f"DESCRIPTION: lower lr\n```diff\n{diff}```\n")),
                  ("json", 200, chat(diff))) as ep:
        agent = agent_for(ep)
        bare, fenced_diff, bare_diff = propose(agent), propose(agent), propose(agent)
    for p in (bare, fenced_diff, bare_diff):
        assert p.ok and p.source == EDITED, p.failure
    assert fenced_diff.desc == "lower lr"
    assert bare.desc.startswith("edit by openai:test-model")


def test_garbage_answer_fails_without_retry():
    with endpoint(("json", 200, chat("I'm sorry, I can't help with that."))) as ep:
        p = propose(agent_for(ep))
    assert p.failure and "no train.py" in p.failure and len(ep.requests) == 1


def test_server_error_then_ok_is_retried():
    with endpoint(("json", 500, {"error": "overloaded"}), ("json", 200, chat(fenced()))) as ep:
        p = propose(agent_for(ep))
    assert p.ok and len(ep.requests) == 2


def test_rate_limit_honours_retry_after(monkeypatch):
    slept = []
    monkeypatch.setattr(openai_agent, "time", SimpleNamespace(monotonic=time.monotonic,
                                                              sleep=slept.append))
    with endpoint(("json", 429, {"error": "slow down"}, {"Retry-After": "0.3"}),
                  ("json", 200, chat(fenced()))) as ep:
        p = propose(agent_for(ep))
    assert p.ok and len(ep.requests) == 2 and slept == [0.3]  # not the 0.01 s backoff


def test_malformed_answers_are_retried():
    with endpoint(("json", 200, b"{not json"), ("json", 200, {"choices": []}),
                  ("json", 200, {"error": {"message": "x"}}),
                  ("json", 200, chat([{"type": "text", "text": fenced()}]))) as ep:
        p = propose(agent_for(ep))
    assert p.ok and len(ep.requests) == 4


def test_persistent_errors_give_a_failed_proposal():
    with endpoint(("json", 503, {"error": "down"})) as ep:
        p = propose(agent_for(ep, retries=2))
    assert p.failure and "HTTP 503" in p.failure and "3 attempts" in p.failure
    assert len(ep.requests) == 3
    with endpoint(("json", 401, {"error": "bad key"})) as ep:
        p = propose(agent_for(ep))
    assert p.failure and "HTTP 401" in p.failure and len(ep.requests) == 1


def test_redirects_are_not_followed():
    with endpoint(("json", 302, b"", {"Location": "http://127.0.0.1:9/steal"})) as ep:
        p = propose(agent_for(ep))
    assert p.failure and "HTTP 302" in p.failure and len(ep.requests) == 1


def test_hanging_endpoint_times_out():
    with endpoint(("sleep", 5)) as ep:
        p = propose(agent_for(ep, timeout_s=0.3, retries=1))
    assert p.failure and "within 0.3 s" in p.failure and "2 attempts" in p.failure


def test_connection_refused():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    agent = OpenAIAgent(f"http://127.0.0.1:{port}/v1", retries=1, backoff_s=0.01)
    p = propose(agent)
    assert p.failure and "cannot reach" in p.failure


def test_oversized_answer_fails():
    with endpoint(("json", 200, chat("x" * 5000))) as ep:
        p = propose(agent_for(ep, max_reply_bytes=1000))
    assert p.failure and "too large" in p.failure


def test_endpoint_url():
    assert endpoint_url("http://localhost:8000/v1") == "http://localhost:8000/v1/chat/completions"
    assert endpoint_url("http://h/v1/") == "http://h/v1/chat/completions"
    assert endpoint_url("https://h") == "https://h/v1/chat/completions"
    assert endpoint_url("https://h/api/chat/completions") == "https://h/api/chat/completions"
    for bad in ("ftp://h/v1", "localhost:8000", "", "http://"):
        with pytest.raises(ValueError):
            endpoint_url(bad)


# ---------------------------------------------------------------------------
# Reply parsing


def test_parse_reply_shapes():
    r = parse_reply(fenced(desc="**DESCRIPTION:** lower lr"), FIXTURE)
    assert r.source == EDITED and r.desc == "lower lr"
    r = parse_reply(f"Lowered the learning rate.\n~~~py\n{EDITED}~~~\n", FIXTURE)
    assert r.source == EDITED and r.desc == "Lowered the learning rate."
    r = parse_reply(f"<think>maybe DESCRIPTION: no\n```python\nx=1\n```</think>\n"
                    f"{fenced()}", FIXTURE)
    assert r.source == EDITED and r.desc == "lower the Muon lr to 0.015"
    r = parse_reply(f"```python\nimport torch\n```\nthen\n{fenced()}", FIXTURE)
    assert r.source == EDITED                      # the largest block is the file


def test_parse_reply_lenient_diff():
    diff = make_patch(FIXTURE, EDITED).replace("@@ -", "@@ -1").replace(" +", " +1", 1)
    r = parse_reply(f"```diff\n{diff}```\nDESCRIPTION: x", FIXTURE)
    assert r.source == EDITED, r.failure
    hunk_only = "\n".join(ln for ln in make_patch(FIXTURE, EDITED).splitlines()
                          if not ln.startswith(("---", "+++")))
    r = parse_reply(f"```diff\n{hunk_only}\n```", FIXTURE)
    assert r.source == EDITED, r.failure


def test_parse_reply_refusals():
    assert parse_reply("", FIXTURE).failure == "empty reply"
    assert parse_reply(None, FIXTURE).failure == "empty reply"
    r = parse_reply("```python\nMATRIX_LR = 0.01\n```\nDESCRIPTION: lr", FIXTURE)
    assert r.source is None and "fragment" in r.failure
    big_without_build = EDITED.replace("def build_model(run):", "def make(run):")
    r = parse_reply(fenced(big_without_build), FIXTURE)
    assert r.source is None and "build_model" in r.failure
    other = make_patch("A = 1\n", "A = 2\n", path="prepare.py")
    r = parse_reply(f"```diff\n{other}```", FIXTURE)
    assert r.source is None and "prepare.py" in r.failure
    stale = make_patch(FIXTURE.replace("0.02", "0.07"), EDITED)
    r = parse_reply(f"```diff\n{stale}```", FIXTURE)
    assert r.source is None and "does not apply" in r.failure
    r = parse_reply("```bash\nrm -rf /\n```", FIXTURE)
    assert r.source is None and "no Python code block" in r.failure
