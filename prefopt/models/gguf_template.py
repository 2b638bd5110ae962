"""Bounds on a GGUF file's chat template, checked before its checkpoint is cached.

A chat template is code from the file's author. transformers renders it in Jinja's sandbox, which
stops attribute tricks and file access but not memory or time: ``{{ 'x' * 10**9 }}`` takes a
process to tens of GB. So each template is rendered here first, on a few ordinary conversations, in
a child process with an address-space limit and a timeout, by a sandbox that refuses oversized
string/list products, sums and powers, and any ``{% include %}`` / ``{% import %}`` /
``{% extends %}`` (a GGUF holds one self-contained template; there is nothing to load). A template
that exceeds a bound is refused in one line before anything is cached; other render errors (a
template that rejects a system message, say) are the template's own business and pass.

Run as ``python -m prefopt.models.gguf_template`` it reads ``{"templates": {...}, "variables":
{...}}`` as JSON on stdin and prints ``{"problem": null | "..."}``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Optional

MAX_CHARS = 1 << 20  # largest string or list a template may build (chars or items)
MAX_POWER_BITS = 64 * 8  # largest integer ``**`` may produce
TIME_S = 10.0  # for all conversations together, child start-up included
MEMORY_BYTES = 2 << 30  # the child's address space (a bare Python with jinja2 needs ~100 MB)

CONVERSATIONS = [
    ([{"role": "user", "content": "What is 7+5?"}], True),
    ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 7+5?"},
      {"role": "assistant", "content": "12."}, {"role": "user", "content": "And 9*3?"}], True),
    ([{"role": "user", "content": "What is 7+5?"}, {"role": "assistant", "content": "12."}], False),
]


class TemplateLimit(Exception):
    """A template went past a bound; its message says which."""


def _environment():
    import jinja2
    import jinja2.ext
    from jinja2 import nodes
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class NoLoader(jinja2.BaseLoader):
        def get_source(self, environment, template):
            raise TemplateLimit(f"it loads another template ('{template}' through include, import or extends), "
                                "which a GGUF file cannot hold")

    class Generation(jinja2.ext.Extension):
        # transformers' {% generation %} marks assistant text; here it renders its body unchanged.
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.Scope(body).set_lineno(lineno)

    def _size(x) -> int:
        return len(x) if isinstance(x, (str, list, tuple)) else 0

    class Bounded(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"*", "+", "**"})

        def call_binop(self, context, operator, left, right):
            if operator == "*":
                for seq, n in ((left, right), (right, left)):
                    if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > MAX_CHARS:
                        raise TemplateLimit(f"it builds a string or list of {len(seq) * n} items with '*' "
                                            f"(limit {MAX_CHARS})")
            elif operator == "+" and _size(left) + _size(right) > MAX_CHARS:
                raise TemplateLimit(f"it builds a string or list of {_size(left) + _size(right)} items with '+' "
                                    f"(limit {MAX_CHARS})")
            elif operator == "**" and isinstance(left, int) and isinstance(right, int) and abs(left) > 1 \
                    and right * max(abs(left).bit_length(), 1) > MAX_POWER_BITS:
                raise TemplateLimit(f"it computes {left} ** {right}, a number too large to hold")
            return super().call_binop(context, operator, left, right)

        def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 — jinja's own signature
            # str methods that pad to a width (center, ljust, zfill, ...) and Jinja filters such as
            # center or indent take their size as an argument.
            for a in (*args, *kwargs.values()):
                if isinstance(a, int) and not isinstance(a, bool) and a > MAX_CHARS:
                    raise TemplateLimit(f"it calls {getattr(__obj, '__name__', 'a function')} with {a} "
                                        f"(limit {MAX_CHARS})")
            return super().call(__context, __obj, *args, **kwargs)

    env = Bounded(trim_blocks=True, lstrip_blocks=True, loader=NoLoader(),
                  extensions=[Generation, jinja2.ext.loopcontrols])

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: "2026-01-01"
    return env


def _render_all(templates: dict, variables: dict) -> Optional[str]:
    """The first bound a template exceeds, as 'template NAME: ...', or None."""
    import jinja2

    env = _environment()
    for name, source in templates.items():
        try:
            template = env.from_string(source)
        except jinja2.TemplateSyntaxError:
            continue  # transformers reports syntax errors itself when it renders
        for messages, generation_prompt in CONVERSATIONS:
            try:
                out = template.render(messages=messages, add_generation_prompt=generation_prompt, tools=None,
                                      documents=None, **variables)
            except TemplateLimit as e:
                return f"template {name}: {e}"
            except OverflowError as e:  # the sandbox's own cap on range()
                return f"template {name}: {e}"
            except MemoryError:
                return f"template {name}: it needs more than {MEMORY_BYTES >> 30} GB to render"
            except RecursionError:
                return f"template {name}: it recurses without end"
            except Exception:  # noqa: BLE001 — the template's own errors are reported where it is used
                continue
            if len(out) > MAX_CHARS:
                return f"template {name}: it renders {len(out)} characters for a 4-message chat (limit {MAX_CHARS})"
    return None


def _limit_child() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_BYTES, MEMORY_BYTES))


def problem(templates: dict, variables: dict) -> Optional[str]:
    """Why one of ``templates`` (name -> source) exceeds a bound on size, memory or time, or None.
    ``variables`` are the special tokens a render sees (bos_token, eos_token, ...)."""
    if not templates:
        return None
    payload = json.dumps({"templates": templates, "variables": variables})
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    try:
        p = subprocess.run([sys.executable, "-m", "prefopt.models.gguf_template"], input=payload, text=True,
                           capture_output=True, timeout=TIME_S, env=env,
                           preexec_fn=_limit_child if sys.platform.startswith("linux") else None)
    except subprocess.TimeoutExpired:
        return f"rendering it took more than {TIME_S:g} s"
    try:
        return json.loads(p.stdout.strip().splitlines()[-1])["problem"]
    except (ValueError, IndexError, KeyError, TypeError):
        # The child died before it could answer: the address-space limit or a crash.
        return f"rendering it failed within {MEMORY_BYTES >> 30} GB of memory (exit status {p.returncode})"


if __name__ == "__main__":
    sys.setrecursionlimit(2000)
    request = json.load(sys.stdin)
    print(json.dumps({"problem": _render_all(request["templates"], request["variables"])}))
