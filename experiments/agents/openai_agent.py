"""A proposer backed by any OpenAI-compatible chat-completions endpoint (hosted or local:
OpenAI, vLLM, llama.cpp, Ollama, LM Studio, ...), using the standard library only.

`openai:<URL>`: the URL is the API base (`http://localhost:11434/v1`) or the full
`.../chat/completions` address. The model comes from the `model` option, else env
`LOOPY_OPENAI_MODEL`; the key from the `api_key` option, else env `LOOPY_OPENAI_KEY`, else
`OPENAI_API_KEY` (none: no Authorization header, as local servers expect). The key is never
put in names, descriptions or failure reasons, and redirects are refused so it cannot be
forwarded to another host.

A missing or malformed answer (HTTP 5xx or 429, refused connection, timeout, invalid JSON, no
choices) is retried with exponential backoff and jitter; other HTTP errors (401, 404, ...)
fail at once. What comes back is parsed by replies.parse_reply and checked by
base.validate_proposal. `propose` blocks (network and backoff sleeps): an async caller runs
it in a worker thread.
"""
from __future__ import annotations

import http.client
import json
import os
import random
import socket
import time
import urllib.error
import urllib.parse
import urllib.request

from experiments.agents.base import Brief, Proposal, Tried, clean_line, failed, \
    history_digest, validate_proposal
from experiments.agents.replies import parse_reply

DEFAULT_MODEL = "gpt-4o-mini"
_CHUNK = 1 << 16


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None      # urllib then raises HTTPError(3xx): not retried, not followed


def endpoint_url(url: str) -> str:
    """The chat-completions address for an API base; ValueError if it is no http(s) URL."""
    if not isinstance(url, str):
        raise ValueError("the endpoint must be a URL string")
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"endpoint {url[:100]!r} is not an http(s) URL")
    path = parts.path.rstrip("/")
    if not path.endswith("/chat/completions"):
        path = (path or "/v1") + "/chat/completions"
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def build_messages(parent_source: str, brief: Brief, history: list[Tried],
                   digest_limit: int = 40) -> list[dict]:
    user = (f"{history_digest(history, digest_limit)}\n"
            f"The parent train.py, the file to improve:\n\n```python\n{parent_source}```\n\n"
            f"Propose ONE focused change for the topic `{brief.topic}` that should lower "
            "val_bpb within the same budget. Reply with the complete new train.py in a single "
            "```python fenced block, then one line `DESCRIPTION: <what you changed, one "
            "line>`.")
    return [{"role": "system", "content": brief.text}, {"role": "user", "content": user}]


def _message_text(data: object) -> str | None:
    """choices[0].message.content as text (also the list-of-parts form), or None."""
    if not isinstance(data, dict):
        return None
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None
    message = choices[0].get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, list):
        content = "".join(p.get("text", "") for p in content
                          if isinstance(p, dict) and isinstance(p.get("text"), str))
    return content if isinstance(content, str) and content.strip() else None


class OpenAIAgent:
    def __init__(self, url: str, *, model: str | None = None, api_key: str | None = None,
                 timeout_s: float = 300.0, retries: int = 4, backoff_s: float = 2.0,
                 backoff_max_s: float = 60.0, temperature: float | None = 0.7,
                 max_tokens: int | None = None, digest_limit: int = 40,
                 max_reply_bytes: int = 4 << 20):
        self.endpoint = endpoint_url(url)
        self.model = model or os.environ.get("LOOPY_OPENAI_MODEL") or DEFAULT_MODEL
        self._key = (api_key or os.environ.get("LOOPY_OPENAI_KEY")
                     or os.environ.get("OPENAI_API_KEY") or None)
        self.timeout_s = float(timeout_s)
        self.retries = max(0, int(retries))
        self.backoff_s = float(backoff_s)
        self.backoff_max_s = float(backoff_max_s)
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.digest_limit = digest_limit
        self.max_reply_bytes = int(max_reply_bytes)
        host = urllib.parse.urlsplit(self.endpoint).hostname or "?"
        self.name = clean_line(f"openai:{self.model}@{host}", 200)
        self._opener = urllib.request.build_opener(_NoRedirect)

    def __repr__(self) -> str:     # never shows the key
        return f"OpenAIAgent({self.endpoint!r}, model={self.model!r})"

    # -- one request -----------------------------------------------------------------------

    def _post(self, body: bytes) -> tuple[bytes | None, str, bool, float | None]:
        """(raw reply, reason, retryable, retry-after seconds)."""
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        request = urllib.request.Request(self.endpoint, data=body, headers=headers,
                                         method="POST")
        deadline = time.monotonic() + self.timeout_s
        try:
            with self._opener.open(request, timeout=self.timeout_s) as resp:
                chunks, size = [], 0
                while True:
                    chunk = resp.read(_CHUNK)
                    if not chunk:
                        break
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > self.max_reply_bytes:
                        return None, "the reply is too large", False, None
                    if time.monotonic() > deadline:
                        return None, f"no complete answer within {self.timeout_s:g} s", \
                            True, None
                return b"".join(chunks), "", False, None
        except urllib.error.HTTPError as exc:
            code = exc.code
            retry_after = None
            try:
                retry_after = float(exc.headers.get("Retry-After", ""))
            except (TypeError, ValueError, AttributeError):
                pass
            try:
                detail = exc.read(300).decode("utf-8", "replace")
            except (OSError, http.client.HTTPException):
                detail = ""
            finally:
                exc.close()
            reason = clean_line(f"HTTP {code} from the endpoint: {detail}", 200)
            return None, reason, code == 429 or 500 <= code < 600, retry_after
        except (socket.timeout, TimeoutError):
            return None, f"no answer within {self.timeout_s:g} s", True, None
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError,
                OSError) as exc:
            why = getattr(exc, "reason", exc)
            return None, clean_line(f"cannot reach the endpoint: {why}", 200), True, None

    def _complete(self, messages: list[dict], rng: random.Random) -> tuple[str | None, str]:
        payload = {"model": self.model, "messages": messages}
        if self.temperature is not None:
            payload["temperature"] = self.temperature
        if self.max_tokens:
            payload["max_tokens"] = int(self.max_tokens)
        body = json.dumps(payload).encode("utf-8")
        reason = "no attempt made"
        for attempt in range(self.retries + 1):
            raw, reason, retryable, retry_after = self._post(body)
            if raw is not None:
                try:
                    text = _message_text(json.loads(raw.decode("utf-8")))
                except (ValueError, UnicodeDecodeError, RecursionError):
                    text, reason = None, "the endpoint's answer is not valid JSON"
                else:
                    reason = "the answer has no choices / no message"
                if text is not None:
                    return text, ""
                retryable = True
            if not retryable or attempt == self.retries:
                break
            wait = min(self.backoff_max_s, self.backoff_s * 2 ** attempt)
            wait *= 0.5 + rng.random() / 2
            if retry_after is not None and 0 <= retry_after <= self.backoff_max_s:
                wait = max(wait, retry_after)
            time.sleep(wait)
        attempts = attempt + 1
        return None, f"{reason} ({attempts} attempt{'s' if attempts > 1 else ''})"

    # -- the agent -------------------------------------------------------------------------

    def propose(self, parent_source: str, brief: Brief, history: list[Tried], *,
                parent_id: str, rng: random.Random) -> Proposal:
        if not isinstance(parent_source, str):
            return failed("no parent source")
        messages = build_messages(parent_source, brief, list(history or []), self.digest_limit)
        text, why = self._complete(messages, rng)
        if text is None:
            return failed(f"{self.name}: {why}")
        parsed = parse_reply(text, parent_source)
        if parsed.failure:
            return failed(f"{self.name}: {parsed.failure}", parsed.desc)
        return validate_proposal(parent_source, Proposal(parsed.source, parsed.desc
                                                         or f"edit by {self.name}"))
