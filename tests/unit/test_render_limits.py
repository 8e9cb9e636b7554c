"""The bounds of rendering: hostile templates and `set` paths stop with RenderLimitExceeded naming
the release and the limit, promptly and in bounded memory; rendering runs off the event loop
with a time limit; ordinary states render as before."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import yaml

from helmfile_operator import rendering
from helmfile_operator.api.models import HelmfileStateSpec
from helmfile_operator.render.errors import RenderError, RenderLimitExceeded, TemplateRenderError
from helmfile_operator.render.state import RenderedState, StateMeta, render_state
from helmfile_operator.render.templates import (
    MAX_INTEGER_BITS,
    MAX_OUTPUT_CHARS,
    MAX_SEQUENCE_LENGTH,
    MAX_STATE_OUTPUT_CHARS,
    MAX_STRING_LENGTH,
    MAX_TEMPLATE_MEMORY,
    MAX_TEMPLATE_STEPS,
    MAX_VALUE_NODES,
    MAX_WORDWRAP_LENGTH,
    RenderBudget,
)
from helmfile_operator.render.values import MAX_LIST_INDEX, MAX_PATH_DEPTH, MAX_SET_LIST_ITEMS
from helmfile_operator.rendering import render_state_bounded

REPO_ROOT = Path(__file__).resolve().parents[2]
META = StateMeta(name="tenant", namespace="apps", labels={}, annotations={})
SECRET = "s3cr3t-value"
HOSTILE_INDEX = 3
WHERE = f"spec.releases[{HOSTILE_INDEX}].valuesTemplate[0]"
# Each hostile input must fail within this many seconds (most take milliseconds; the nested
# loops take about 0.3 s to reach the step limit) ...
PROMPT_SECONDS = 3.0
# ... and with at most this much memory allocated by Python (tracemalloc's peak; the memory
# limit of one template is 64 MiB).
PEAK_BYTES = 100 << 20


def spec_with(
    hostile: dict[str, Any], *, values: dict[str, Any] | None = None
) -> HelmfileStateSpec:
    """Three ordinary releases, then `hostile` at HOSTILE_INDEX."""
    releases: list[dict[str, Any]] = [
        {
            "name": f"ok{i}",
            "chart": "oci://registry.example/charts/app",
            "valuesTemplate": ["replicaCount: {{ values.replicas }}"],
        }
        for i in range(HOSTILE_INDEX)
    ]
    releases.append({"name": "hostile", "chart": "oci://registry.example/charts/app", **hostile})
    environment = {"replicas": 2, "password": SECRET, **(values or {})}
    return HelmfileStateSpec.model_validate(
        {"environments": {"default": {"values": [environment]}}, "releases": releases}
    )


def template_spec(template: str) -> HelmfileStateSpec:
    return spec_with({"valuesTemplate": [template]})


def many_outputs(count: int = 2000) -> HelmfileStateSpec:
    """`count` releases, each rendering 1 MB (just under the limit of one template)."""
    return HelmfileStateSpec.model_validate(
        {
            "releases": [
                {
                    "name": f"r{i}",
                    "chart": "oci://registry.example/charts/app",
                    "valuesTemplate": ["blob: {{ 'x' * 1000000 }}"],
                }
                for i in range(count)
            ]
        }
    )


# Template: (the limit's value named by the message, a word of the message).
HOSTILE_TEMPLATES: dict[str, tuple[str, int, str]] = {
    # The inputs that exhausted the operator.
    "center": ("x: {{ 'a'|center(2000000000) }}", MAX_STRING_LENGTH, "center"),
    "nindent": ("x: {{ 'x'|nindent(2000000000) }}", MAX_STRING_LENGTH, "nindent"),
    "printf-width": ("x: {{ '%02000000000d' % 1 }}", MAX_STRING_LENGTH, "`%`"),
    "format-width": ("x: {{ '{:>2000000000}'.format(1) }}", MAX_STRING_LENGTH, "format"),
    "join-repeated": ("x: {{ (['s']*1000000)|join }}", MAX_SEQUENCE_LENGTH, "`*`"),
    "squaring-namespace": (
        "{% set ns = namespace(x=9) %}{% for i in range(60) %}{% set ns.x = ns.x * ns.x %}"
        "{% endfor %}x: {{ ns.x }}",
        MAX_INTEGER_BITS,
        "integer",
    ),
    "squaring-macro": (
        "{% macro sq(x, n) %}{% if n %}{{ sq(x * x, n - 1) }}{% else %}{{ x }}{% endif %}"
        "{% endmacro %}x: {{ sq(9, 60) }}",
        MAX_INTEGER_BITS,
        "integer",
    ),
    "nested-loops": (
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        MAX_TEMPLATE_STEPS,
        "steps",
    ),
    "power": ("x: {{ 10 ** 1000000 }}", MAX_INTEGER_BITS, "`**`"),
    "repeat-string": ("x: {{ 'a' * 100000000 }}", MAX_STRING_LENGTH, "`*`"),
    "repeat-list": ("x: {{ [1] * 100000000 }}", MAX_SEQUENCE_LENGTH, "`*`"),
    # Other ways to the same ends.
    "password-center": (
        "x: {{ values.password|center(2000000000) }}",
        MAX_STRING_LENGTH,
        "center",
    ),
    "concat-doubling": (
        "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}"
        "{% endfor %}",
        MAX_STRING_LENGTH,
        "`~`",
    ),
    "plus-doubling": (
        "{% set ns = namespace(l=[1]) %}{% for i in range(40) %}{% set ns.l = ns.l + ns.l %}"
        "{% endfor %}",
        MAX_SEQUENCE_LENGTH,
        "`+`",
    ),
    "nested-literals": (
        "{% set ns = namespace(l=[1]) %}{% for i in range(40) %}"
        "{% set ns.l = [ns.l, ns.l, ns.l] %}{% endfor %}x: {{ ns.l == ns.l }}",
        MAX_VALUE_NODES,
        "literal",
    ),
    "nested-tuples-hashed": (
        "{% set ns = namespace(t=(1,)) %}{% for i in range(40) %}"
        "{% set ns.t = (ns.t, ns.t, ns.t) %}{% endfor %}x: {{ {ns.t: 1}|length }}",
        MAX_VALUE_NODES,
        "literal",
    ),
    "shared-string-written-out": (
        "{% set big = 'x' * 1000000 %}x: {{ [big] * 10000 }}",
        MAX_STRING_LENGTH,
        "writing out",
    ),
    "shared-string-as-text": (
        "{% set big = 'x' * 1000000 %}x: {{ ([big] * 100)|string|length }}",
        MAX_STRING_LENGTH,
        "string",
    ),
    "macro-output": (
        "{% macro m() %}{% for i in range(1000) %}{{ 'x' * 100000 }}{% endfor %}{% endmacro %}"
        "x: {{ m()|length }}",
        MAX_TEMPLATE_MEMORY,
        "bytes",
    ),
    "set-block": (
        "{% set ns = namespace(s='x' * 900000) %}{% set s %}{{ ns.s }}{{ ns.s }}{% endset %}",
        MAX_STRING_LENGTH,
        "block",
    ),
    "many-live-strings": (
        "{% set ns = namespace(l=[]) %}{% for i in range(1000) %}"
        "{% set ns.l = ns.l + ['x' * 999990 ~ i] %}{% endfor %}x: 1",
        MAX_TEMPLATE_MEMORY,
        "bytes",
    ),
    "replace": ("x: {{ ('a' * 1000)|replace('a', 'b' * 100000) }}", MAX_STRING_LENGTH, "replace"),
    "replace-method": (
        "x: {{ ('a' * 1000).replace('a', 'b' * 100000) }}",
        MAX_STRING_LENGTH,
        "replace",
    ),
    "wordwrap": ("x: {{ ('a' * 1000000)|wordwrap(1) }}", MAX_WORDWRAP_LENGTH, "wordwrap"),
    "indent": ("x: {{ ('a\\n' * 1000)|indent(100000) }}", MAX_STRING_LENGTH, "indent"),
    "truncate-end": ("x: {{ 'abc'|truncate(1, end='e' * 2000000) }}", MAX_STRING_LENGTH, "`*`"),
    "ljust": ("x: {{ 'a'.ljust(2000000000) }}", MAX_STRING_LENGTH, "ljust"),
    "zfill": ("x: {{ 'a'.zfill(2000000000) }}", MAX_STRING_LENGTH, "zfill"),
    "expandtabs": ("x: {{ ('\\t' * 1000).expandtabs(100000) }}", MAX_STRING_LENGTH, "expandtabs"),
    "join-method": ("x: {{ ''.join(['x' * 100000] * 50) }}", MAX_STRING_LENGTH, "join"),
    "translate": (
        "x: {{ ('a' * 1000).translate({97: 'b' * 10000}) }}",
        MAX_STRING_LENGTH,
        "translate",
    ),
    "to-bytes": ("x: {{ (1).to_bytes(2000000000, 'big') }}", MAX_STRING_LENGTH, "to_bytes"),
    "format-star-width": ("x: {{ '%*d' % (2000000000, 1) }}", MAX_STRING_LENGTH, "`%`"),
    "format-keyed-width": ("x: {{ '%(a(b))2000000000s' % {'a(b)': 1} }}", MAX_STRING_LENGTH, "`%`"),
    "format-nested-width": ("x: {{ '{:>{}}'.format(1, 2000000000) }}", MAX_STRING_LENGTH, "format"),
    "format-many-fields": (
        "x: {{ ('{:>900000}' * 10).format(1, 2, 3, 4, 5, 6, 7, 8, 9, 10) }}",
        MAX_STRING_LENGTH,
        "format",
    ),
    "format-map": ("x: {{ '{a:>2000000000}'.format_map({'a': 1}) }}", MAX_STRING_LENGTH, "format"),
    "format-filter": ("x: {{ '%2000000000s'|format('a') }}", MAX_STRING_LENGTH, "format"),
    "tojson-indent": ("x: {{ [[[[1]]]]|tojson(indent=900000) }}", MAX_STRING_LENGTH, "tojson"),
    "batch-fill": ("x: {{ [1]|batch(2000000000, 0)|list }}", MAX_SEQUENCE_LENGTH, "batch"),
    "slice": ("x: {{ [1]|slice(200000000)|list }}", MAX_SEQUENCE_LENGTH, "slice"),
    "range": ("x: {{ range(100000000)|list|length }}", MAX_SEQUENCE_LENGTH, "range"),
    "range-huge": ("x: {{ range(10 ** 30)|length }}", MAX_SEQUENCE_LENGTH, "range"),
    "split": ("x: {{ (',' * 500000).split(',')|length }}", MAX_SEQUENCE_LENGTH, "split"),
    "list-of-characters": ("x: {{ ('x' * 500000)|list|length }}", MAX_SEQUENCE_LENGTH, "list"),
    "serialise-huge": (
        "{% set l = [[1] * 1000] * 100 %}{% set m = [l] * 100 %}x: 1",
        MAX_VALUE_NODES,
        "values",
    ),
    "output": (
        "{% for i in range(100000) %}k{{ i }}: xxxxxxxxxxxxxxxxxxxx\n{% endfor %}",
        MAX_OUTPUT_CHARS,
        "output",
    ),
}


def _check_message(error: RenderError, field: str, limit: int, word: str) -> None:
    assert isinstance(error, RenderLimitExceeded)
    assert error.reason == "RenderLimitExceeded"
    assert error.field == field
    assert str(error).startswith(f"{field}: ")
    assert str(limit) in error.message, error.message
    assert word in error.message, error.message
    assert SECRET not in str(error)


@pytest.mark.parametrize("case", sorted(HOSTILE_TEMPLATES))
def test_hostile_template_stops_promptly(case: str) -> None:
    template, limit, word = HOSTILE_TEMPLATES[case]
    spec = template_spec(template)
    started = time.perf_counter()
    with pytest.raises(RenderLimitExceeded) as error:
        render_state(META, spec)
    assert time.perf_counter() - started < PROMPT_SECONDS
    _check_message(error.value, WHERE, limit, word)


@pytest.mark.parametrize("case", sorted(HOSTILE_TEMPLATES))
def test_hostile_template_memory_is_bounded(case: str) -> None:
    spec = template_spec(HOSTILE_TEMPLATES[case][0])
    tracemalloc.start()
    try:
        with pytest.raises(RenderLimitExceeded):
            render_state(META, spec)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < PEAK_BYTES, f"{peak / 2**20:.1f} MiB"


def test_loop_scoped_squaring_is_harmless() -> None:
    # `{% set %}` inside a loop is local to each iteration in Jinja: x is 9 * 9 every time.
    spec = template_spec(
        "{% set x = 9 %}{% for i in range(60) %}{% set x = x * x %}{% endfor %}x: {{ x }}"
    )
    started = time.perf_counter()
    rendered = render_state(META, spec)
    assert time.perf_counter() - started < 1
    assert rendered.releases[HOSTILE_INDEX].spec.values == {"x": 9}


SET_PATHS = {
    "index": ([f"k0[{MAX_LIST_INDEX * 7}]"], 0, MAX_LIST_INDEX),
    "huge-index": (["k[99999999]"], 0, MAX_LIST_INDEX),
    "depth": ([".".join(["k"] * (MAX_PATH_DEPTH + 1))], 0, MAX_PATH_DEPTH),
    "growth": ([f"k{i}[{MAX_LIST_INDEX}]" for i in range(20)], 9, MAX_SET_LIST_ITEMS),
}


@pytest.mark.parametrize("case", sorted(SET_PATHS))
def test_set_path_limits_name_the_entry(case: str) -> None:
    names, entry, limit = SET_PATHS[case]
    spec = spec_with({"set": [{"name": name, "value": SECRET} for name in names]})
    started = time.perf_counter()
    with pytest.raises(RenderLimitExceeded) as error:
        render_state(META, spec)
    assert time.perf_counter() - started < PROMPT_SECONDS
    field = f"spec.releases[{HOSTILE_INDEX}].set[{entry}].name"
    _check_message(error.value, field, limit, "set")


def test_output_of_a_state_is_bounded() -> None:
    spec = many_outputs()
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(RenderLimitExceeded) as error:
            render_state(META, spec)
        elapsed = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # Four releases of 1 MB fit in the 4 MiB of a state; the fifth does not.
    _check_message(
        error.value, "spec.releases[4].valuesTemplate[0]", MAX_STATE_OUTPUT_CHARS, "state"
    )
    assert elapsed < 10  # under tracemalloc
    assert peak < PEAK_BYTES, f"{peak / 2**20:.1f} MiB"


def test_limits_are_counted_per_template_and_per_state() -> None:
    # Each template may take almost all of its steps: the budget is per template.
    loop = "{% for i in range(900) %}{% for j in range(1000) %}{% endfor %}{% endfor %}x: 1"
    spec = HelmfileStateSpec.model_validate(
        {
            "releases": [
                {"name": f"r{i}", "chart": "oci://r.example/c/app", "valuesTemplate": [loop]}
                for i in range(2)
            ]
        }
    )
    assert [r.spec.values for r in render_state(META, spec).releases] == [{"x": 1}, {"x": 1}]
    assert RenderBudget().output_chars == 0  # nothing shared between renderings


# --- off the event loop, with a time limit ------------------------------------------------------

# About 100,000 comparisons of two distinct lists of 100,000 equal items (0.3 ms each): well
# within the step and memory limits, but 30 s of CPU.
SLOW_VALUES = {"a": list(range(100_000)), "b": list(range(100_000))}
SLOW_TEMPLATE = "{% for i in range(100000) %}{% if values.a == values.b %}{% endif %}{% endfor %}"


def slow_spec() -> HelmfileStateSpec:
    return spec_with({"valuesTemplate": [SLOW_TEMPLATE]}, values=SLOW_VALUES)


async def test_time_limit_stops_a_cpu_heavy_template_and_the_loop_keeps_running() -> None:
    gaps: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        last = time.monotonic()
        while not stop.is_set():
            await asyncio.sleep(0.02)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    ticking = asyncio.create_task(ticker())
    started = time.monotonic()
    try:
        with pytest.raises(RenderLimitExceeded) as error:
            await render_state_bounded(META, slow_spec(), [], timeout_seconds=3.0)
    finally:
        stop.set()
        await ticking
    elapsed = time.monotonic() - started
    # Generous bounds: the machine may be busy (the three ordinary releases must fit in the
    # time limit, and "promptly" is measured against it).
    assert 3.0 <= elapsed < 6.0  # the template stopped itself at its next step
    _check_message(error.value, WHERE, 3, "time limit")
    assert max(gaps) < 1.5  # the event loop was never blocked (a render would block it for 3s)


async def test_a_worker_that_does_not_stop_is_abandoned(monkeypatch: pytest.MonkeyPatch) -> None:
    finished = threading.Event()

    def stuck(*args: Any, budget: RenderBudget, **kwargs: Any) -> RenderedState:
        budget.start()
        budget.field = "spec.releases[7].valuesTemplate[1]"
        finished.wait(3)  # a C call that checks no deadline
        raise RenderLimitExceeded(budget.field, budget.time_message())

    monkeypatch.setattr(rendering, "render_state", stuck)
    monkeypatch.setattr(rendering, "RENDER_GRACE_SECONDS", 0.2)
    started = time.monotonic()
    try:
        with pytest.raises(RenderLimitExceeded) as error:
            await render_state_bounded(META, slow_spec(), [], timeout_seconds=0.3)
    finally:
        finished.set()
    assert time.monotonic() - started < 1.5
    assert error.value.field == "spec.releases[7].valuesTemplate[1]"
    assert "0.3 seconds" in error.value.message


async def test_waiting_for_a_free_worker_does_not_count(monkeypatch: pytest.MonkeyPatch) -> None:
    real = rendering.render_state

    def late(*args: Any, **kwargs: Any) -> RenderedState:
        time.sleep(0.5)  # queued behind other renderings; the clock has not started
        return real(*args, **kwargs)

    monkeypatch.setattr(rendering, "render_state", late)
    monkeypatch.setattr(rendering, "RENDER_GRACE_SECONDS", 0.1)
    rendered = await render_state_bounded(META, template_spec("x: 1"), [], timeout_seconds=0.2)
    assert rendered.releases[HOSTILE_INDEX].spec.values == {"x": 1}


async def test_cancelling_the_caller_stops_the_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    finished = threading.Event()
    real = rendering.render_state

    def recording(*args: Any, **kwargs: Any) -> RenderedState:
        try:
            return real(*args, **kwargs)
        finally:
            finished.set()

    monkeypatch.setattr(rendering, "render_state", recording)
    task = asyncio.create_task(render_state_bounded(META, slow_spec(), [], timeout_seconds=60))
    await asyncio.sleep(0.5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await asyncio.to_thread(finished.wait, 2)


def test_a_stopped_budget_stops_rendering_in_another_thread() -> None:
    budget = RenderBudget()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            render_state(META, slow_spec(), budget=budget)
        except RenderLimitExceeded as error:
            errors.append(error)

    worker = threading.Thread(target=run)
    worker.start()
    time.sleep(0.5)
    budget.stop()
    worker.join(2)
    assert not worker.is_alive()
    assert [type(e) for e in errors] == [RenderLimitExceeded]


@pytest.mark.parametrize("case", ["nested-loops", "center", "many-live-strings"])
async def test_bounded_rendering_reports_the_same_limits(case: str) -> None:
    template, limit, word = HOSTILE_TEMPLATES[case]
    with pytest.raises(RenderLimitExceeded) as error:
        await render_state_bounded(META, template_spec(template), [])
    _check_message(error.value, WHERE, limit, word)


async def test_runaway_recursion_in_a_worker_is_an_error() -> None:
    spec = template_spec("{% macro m(n) %}{{ m(n + 1) }}{% endmacro %}x: {{ m(0) }}")
    with pytest.raises(TemplateRenderError, match="RecursionError") as error:
        await render_state_bounded(META, spec, [])
    assert error.value.field == WHERE


# --- real RSS, in a process of its own ----------------------------------------------------------

# The child renders every hostile input above (and the 2000 x 1 MB state) in turn: its peak RSS
# includes the interpreter and the imports (about 80 MiB). Typically 105-165 MiB; the bound
# leaves room for the allocator's behaviour on a loaded machine (once seen: 339 MiB) and stays
# under the chart's 512 MiB limit, with at most two renders at once (Reconciler.render_slots).
MAX_RSS_BYTES = 450 << 20
_CHILD = textwrap.dedent(
    """
    import json, resource, sys
    from helmfile_operator.api.models import HelmfileStateSpec
    from helmfile_operator.render.errors import RenderLimitExceeded
    from helmfile_operator.render.state import StateMeta, render_state

    meta = StateMeta(name="tenant", namespace="apps", labels={}, annotations={})
    specs = json.load(sys.stdin)
    results = []
    for wire in specs:
        try:
            render_state(meta, HelmfileStateSpec.model_validate(wire))
            results.append("rendered")
        except RenderLimitExceeded:
            results.append("limited")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    print(json.dumps({"results": results, "peak": peak}))
    """
)


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB on Linux only")
def test_peak_rss_of_all_hostile_inputs() -> None:
    specs = [template_spec(t).model_dump(mode="json", by_alias=True, exclude_none=True)
             for t, _, _ in HOSTILE_TEMPLATES.values()]  # fmt: skip
    specs.append(many_outputs().model_dump(mode="json", by_alias=True, exclude_none=True))
    result = subprocess.run(
        [sys.executable, "-c", _CHILD],
        input=json.dumps(specs),
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    report = json.loads(result.stdout)
    assert report["results"] == ["limited"] * len(specs)
    assert report["peak"] < MAX_RSS_BYTES, f"{report['peak'] / 2**20:.0f} MiB"


# --- ordinary states are unaffected -------------------------------------------------------------


def _example(path: Path) -> tuple[StateMeta, HelmfileStateSpec]:
    body = yaml.safe_load(path.read_text())
    metadata = body["metadata"]
    meta = StateMeta(
        name=metadata["name"],
        namespace=metadata["namespace"],
        labels=metadata.get("labels") or {},
        annotations=metadata.get("annotations") or {},
    )
    return meta, HelmfileStateSpec.model_validate(body["spec"])


EXAMPLES = sorted((REPO_ROOT / "examples").glob("*/state.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.parent.name for p in EXAMPLES])
async def test_examples_render_as_before(path: Path) -> None:
    meta, spec = _example(path)
    direct = render_state(meta, spec)
    assert direct.releases
    assert await render_state_bounded(meta, spec, []) == direct


ORDINARY = {
    "list built item by item": (
        "{% set ns = namespace(items=[]) %}{% for i in range(3000) %}"
        "{% set ns.items = ns.items + [{'name': 'n' ~ i, 'port': 8000 + i}] %}{% endfor %}"
        "ports: {{ ns.items|map(attribute='port')|list|toJson }}",
        lambda values: len(values["ports"]) == 3000,
    ),
    "big values written out": (
        "config:{{ values.big|toYaml|nindent(2) }}\ncount: {{ values.big|length }}",
        lambda values: values["count"] == 5000 and values["config"]["k4999"] == "v4999",
    ),
    "long loop with loop variables": (
        "{% for x in values.items %}{% if loop.last %}last: {{ loop.index }}{% endif %}"
        "{% endfor %}",
        lambda values: values == {"last": 20000},
    ),
    "formatting and padding": (
        "a: {{ ('%05d' % 42)|quote }}\nb: {{ '{:>8}'.format('x')|quote }}\n"
        "c: {{ 'x'|center(9)|quote }}\nd: {{ ('a,b,' * 1000).split(',')|length }}\n"
        "e: {{ range(100000)|sum }}\nf: {{ [[1], [2]]|sum(start=[])|toJson }}\n"
        "g: {{ ('x' ~ values.replicas) * 3 }}\nh: {{ '%(replicas)03d' % values }}",
        lambda values: (
            values
            == {
                "a": "00042",
                "b": "       x",
                "c": "    x    ",
                "d": 2001,
                "e": 4999950000,
                "f": [1, 2],
                "g": "x2x2x2",
                "h": 2,
            }
        ),
    ),
    "text of 900 kB": (
        "blob: {{ 'y' * 900000 }}",
        lambda values: len(values["blob"]) == 900000,
    ),
}
ORDINARY_VALUES = {
    "big": {f"k{i}": f"v{i}" for i in range(5000)},
    "items": [{"name": f"i{i}"} for i in range(20000)],
}


@pytest.mark.parametrize("case", sorted(ORDINARY))
def test_ordinary_templates_are_unaffected(case: str) -> None:
    template, check = ORDINARY[case]
    spec = spec_with({"valuesTemplate": [template]}, values=ORDINARY_VALUES)
    started = time.perf_counter()
    rendered = render_state(META, spec)
    assert time.perf_counter() - started < PROMPT_SECONDS
    assert check(rendered.releases[HOSTILE_INDEX].spec.values)
