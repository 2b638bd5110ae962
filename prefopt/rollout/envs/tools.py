"""Tools for environments: a tool is a plain Python function with type hints and a Google-style
docstring, described by transformers' JSON-schema helper (``transformers.utils.get_json_schema``), so a
TRL user's tool functions work unchanged.

Rendering (:mod:`prefopt.rollout.episodes`): where the tokenizer's chat template reads ``tools``, the
schemas go through ``apply_chat_template(..., tools=schemas)``. Otherwise (SmolLM2's ChatML template,
the testbed's) they go into the system prompt in this fallback format (Hermes / Qwen style)::

    You can call tools. To call one, reply with only
    <tool_call>{"name": "NAME", "arguments": {...}}</tool_call>
    and its result comes back in the next message. Tools (JSON schemas):
    {"type": "function", "function": {"name": "calculate", ...}}

A model calls a tool the same way under either rendering: a ``<tool_call>{json}</tool_call>`` block in
its turn. ``run_tool_call`` answers it with the tool's return value as text, or with one line of error
text when the JSON is malformed, the tool is unknown, the arguments do not fit, the tool raises or it
runs past its time limit; the run never stops for a tool. Nothing the model wrote is executed: the
arguments are JSON, passed as keyword arguments to the registered Python function.
"""

from __future__ import annotations

import json
import re
import threading
from typing import Callable, Optional

from prefopt.core.errors import UserError, first_line

_CALL = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.S)

FALLBACK_HEADER = ("You can call tools. To call one, reply with only\n"
                   '<tool_call>{"name": "NAME", "arguments": {...}}</tool_call>\n'
                   "and its result comes back in the next message. Tools (JSON schemas):")


def tool_schema(fn: Callable) -> dict:
    """transformers' JSON schema of ``fn``; a function it cannot describe is one UserError line."""
    from transformers.utils import get_json_schema

    try:
        return get_json_schema(fn)
    except Exception as e:
        raise UserError(f"tool {getattr(fn, '__name__', fn)!r} cannot be described ({first_line(e)}); accepted: a "
                        "function with type hints and a docstring whose Args: section documents every argument") from None


def template_supports_tools(tokenizer) -> bool:
    """Whether the chat template reads a ``tools`` variable (else: the system-prompt fallback)."""
    t = getattr(tokenizer, "chat_template", None) or ""
    return "tools" in (t if isinstance(t, str) else json.dumps(t))


def fallback_system_prompt(schemas: list) -> str:
    return "\n".join([FALLBACK_HEADER, *(json.dumps(s) for s in schemas)])


def with_tools_prompt(messages: list, schemas: list) -> list:
    """``messages`` with the fallback tool description first in the system message (one is added)."""
    text = fallback_system_prompt(schemas)
    if messages and messages[0].get("role") == "system":
        return [{**messages[0], "content": text + "\n\n" + messages[0]["content"]}, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


def find_tool_call(text: str) -> Optional[str]:
    """The body of the first ``<tool_call>`` block in ``text`` (an unclosed one runs to the end), or None."""
    m = _CALL.search(text)
    return None if m is None else m.group(1).strip()


def _timed(fn: Callable, kwargs: dict, timeout_s: float):
    """``fn(**kwargs)`` in a daemon thread; ('ok', value) | ('error', exception) | ('timeout', None).
    A tool past its limit is abandoned, not killed (Python cannot stop a thread); daemon threads do not
    keep the process alive."""
    box: dict = {}

    def target():
        try:
            box["ok"] = fn(**kwargs)
        except BaseException as e:  # noqa: BLE001 - a tool's failure is reported to the model as text
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout_s)
    if t.is_alive():
        return "timeout", None
    return ("ok", box["ok"]) if "ok" in box else ("error", box.get("error"))


def run_tool_call(tools: dict, call: str, timeout_s: float = 1.0) -> str:
    """The result text of the tool call ``call`` (a ``<tool_call>`` block's body: JSON with ``name``
    and ``arguments``) against ``tools`` (name → function); errors are one line starting ``error:``."""
    try:
        obj = json.loads(call)
    except json.JSONDecodeError as e:
        return f"error: the tool call is not valid JSON ({e.msg} at character {e.pos})"
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return 'error: a tool call is {"name": NAME, "arguments": {...}}'
    name, args = obj["name"], obj.get("arguments", {})
    if name not in tools:
        return f"error: unknown tool {name!r}; available: {', '.join(sorted(tools))}"
    if not isinstance(args, dict):
        return f"error: the arguments of {name} must be a JSON object"
    status, value = _timed(tools[name], args, timeout_s)
    if status == "timeout":
        return f"error: {name} did not return within {timeout_s:g} s"
    if status == "error":
        if isinstance(value, TypeError):
            return f"error: bad arguments for {name}: {first_line(value)}"
        return f"error: {name} failed: {first_line(value)}"
    return " ".join(str(value).split())  # one line of text
