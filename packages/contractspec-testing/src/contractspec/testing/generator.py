"""`GoldenTestGenerator`: recorded snapshots → a readable pytest module per operation (Jinja2).

```python
generator = GoldenTestGenerator(registry, registry_ref="myapp.spec:registry")
result = await generator.write("tests/golden/test_deal_create.py", snapshots, "crm.deal.create")
print(result.added, result.skipped)
```

What the generator does, per operation:

1. **Selects** the operation's snapshots (errors excluded by `exclude_errors`: authorisation
   failures cannot replay, since recorded traffic does not hold the caller's roles).
2. **De-duplicates** equivalent cases: same input *shape* (keys and value types; booleans,
   `None` and enum/`Literal` fields by value; lists by their item shapes) and same outcome (error code, or output shape). The oldest
   snapshot of each class is kept, up to `max_cases`.
3. **Masks** non-deterministic output and event paths: declared in the spec's output model and
   its events' payload models (`NONDETERMINISTIC`, `json_schema_extra={"nondeterministic": True}`),
   given in `mask=`, and **detected by replaying every case twice** with different clocks and id
   generators: paths whose values differ are masked (`...` in the expected output and events).
   Successful cases of operations that declare events keep the events the recorded call
   committed (`events=[{"type", "version", "payload"}]`) and compare them on replay.
4. **Verifies** each case replays with its recorded outcome; those that do not (they depended on
   state, or the handler changed since) are left out and listed in a comment.
5. **Renders** the module with Jinja2 (a `SandboxedEnvironment`, also for your own template):
   literals formatted as `ruff format` leaves them, valid Python whatever the names and strings.

An existing module is **merged**, never overwritten: its cases are kept verbatim (hand edits
included), new cases are appended, the mask is widened. Nothing is deleted.
"""

from __future__ import annotations

import ast
import asyncio
import enum
import os
import re
import typing
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

from attrs import define, field
from jinja2 import StrictUndefined
from jinja2.sandbox import SandboxedEnvironment
from pydantic import BaseModel

from contractspec.core import ConfigurationError, OperationSpec, SpecRegistry
from contractspec.core.sync import SyncRunner
from contractspec.core.testing import FakeClock, SequentialIds
from contractspec.testing._literal import identifier, render_literal, slug
from contractspec.testing._snapshot import Snapshot
from contractspec.testing.golden import (
    ExecutorFactory,
    GoldenCase,
    GoldenSuite,
    Replayed,
    _models_in,
    apply_mask,
    check_outcome,
    compare,
    declared_mask,
    replay_call,
)

__all__ = [
    "DEFAULT_EXCLUDED_ERRORS",
    "GeneratedSuite",
    "GoldenTestGenerator",
    "discrete_paths",
    "render_case",
    "shape",
]

#: Error codes left out by default: they cannot replay without the caller's roles and policy.
DEFAULT_EXCLUDED_ERRORS: tuple[str, ...] = ("policy_denied", "tenant_scope_required")


def shape(value: Any, discrete: frozenset[str] = frozenset(), at: str = "") -> Any:
    """The de-duplication shape of a JSON value: keys and types, booleans and `None` by value.

    Strings at the dotted paths in `discrete` (enum and `Literal` fields) count by value too;
    lists are shaped by the set of their items' shapes (so length does not matter).
    """
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return ("str", value) if at in discrete else "str"
    if isinstance(value, int | float):
        return ("num", value) if at in discrete else "num"
    if isinstance(value, Mapping):
        prefix = f"{at}." if at else ""
        return tuple(sorted((str(k), shape(v, discrete, f"{prefix}{k}")) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return ("list", tuple(sorted({repr(shape(v, discrete, at)) for v in value})))
    return type(value).__name__


def _discrete(annotation: Any) -> bool:
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return True
    if typing.get_origin(annotation) is typing.Literal:
        return True
    return any(_discrete(arg) for arg in typing.get_args(annotation))


def discrete_paths(
    model: type[BaseModel], prefix: str = "", seen: frozenset[type] = frozenset()
) -> frozenset[str]:
    """Dotted paths of enum and `Literal` fields in a model (nested models and lists included)."""
    if model in seen:
        return frozenset()
    found: set[str] = set()
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        if _discrete(info.annotation):
            found.add(path)
        for nested in _models_in(info.annotation):
            found |= discrete_paths(nested, path + ".", seen | {model})
    return frozenset(found)


def _dedup_key(
    input: Any,
    output: Any,
    error: Mapping[str, Any] | None,
    discrete: frozenset[str] = frozenset(),
    events: Sequence[Mapping[str, Any]] | None = None,
) -> Any:
    kinds = tuple(str(e.get("type")) for e in events or ())
    outcome = ("error", error.get("code")) if error is not None else ("ok", shape(output), kinds)
    return (repr(shape(input, discrete)), repr(outcome))


def _hint(value: Any) -> str:
    """A short slug from the first string (or `key-number`) in a value, for readable case ids."""
    if isinstance(value, str):
        return slug(value, 24)
    if isinstance(value, Mapping):
        for key, item in value.items():
            if isinstance(item, int | float) and not isinstance(item, bool):
                hint = slug(f"{key} {item}", 24)
            else:
                hint = _hint(item)
            if hint:
                return hint
    if isinstance(value, list | tuple):
        for item in value:
            hint = _hint(item)
            if hint:
                return hint
    return ""


def render_case(case: GoldenCase, indent: int = 4) -> str:
    """Source of one `GoldenCase(...)` call, first line unindented, for a list at `indent`."""
    inner = indent + 4
    pad = " " * inner
    items: list[tuple[str, Any]] = [
        ("id", case.id),
        ("input", case.input),
        ("output", case.output),
        ("error", None if case.error is None else dict(case.error)),
        ("org_id", case.org_id),
        ("actor_id", case.actor_id),
        ("snapshot", case.snapshot),
    ]
    if case.events is not None:
        items.append(("events", [dict(e) for e in case.events]))
    lines = [
        f"{pad}{name}={render_literal(value, inner, len(name) + 1, 1)}," for name, value in items
    ]
    return "GoldenCase(\n" + "\n".join(lines) + "\n" + " " * indent + ")"


def _doc(text: Any) -> str:
    return re.sub(r"[^A-Za-z0-9_.@:/ -]", "?", str(text))


def _comment(text: Any) -> str:
    return "".join(ch if ch.isprintable() else "?" for ch in str(text))[:160]


def _py(value: Any, indent: int = 0, prefix: int = 0) -> str:
    return render_literal(value, indent, prefix, 1)


@define
class GeneratedSuite:
    """What one generation produced.

    Attributes:
        suite: Operation, version, registry reference and mask.
        cases: Every case in the module (kept and added).
        added: Ids of the cases added by this run.
        kept: Ids of the cases already in the module.
        skipped: `(snapshot id, reason)` of recorded calls left out.
        source: The module's source text.
    """

    suite: GoldenSuite
    cases: list[GoldenCase] = field(factory=list)
    added: list[str] = field(factory=list)
    kept: list[str] = field(factory=list)
    skipped: list[tuple[str, str]] = field(factory=list)
    source: str = ""


@define
class _Existing:
    mask: tuple[str, ...]
    blocks: list[str]
    ids: list[str]
    keys: set[Any]
    cases: list[GoldenCase]


def _literal(node: ast.expr | None) -> Any:
    if node is None:
        return None
    return ast.literal_eval(node)


def _parse_existing(source: str, path: str) -> _Existing:
    """Cases (verbatim source) and mask of an existing golden module."""
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise ConfigurationError(
            f"{path} is not valid Python ({exc.msg}, line {exc.lineno}); fix it or choose another "
            "--output",
            details={"field": "output"},
        ) from None
    mask: tuple[str, ...] = ()
    blocks: list[str] = []
    ids: list[str] = []
    keys: set[Any] = set()
    cases: list[GoldenCase] = []
    for node in tree.body:
        target = None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign):
            target, value = node.target, node.value  # type: ignore[assignment]
        if not isinstance(target, ast.Name) or value is None:
            continue
        if target.id == "SUITE" and isinstance(value, ast.Call):
            for kw in value.keywords:
                if kw.arg == "mask":
                    mask = tuple(_literal(kw.value))
        if target.id == "CASES" and isinstance(value, ast.List):
            for item in value.elts:
                segment = ast.get_source_segment(source, item)
                if segment is None or not isinstance(item, ast.Call):
                    continue
                kws = {kw.arg: kw.value for kw in item.keywords if kw.arg}
                try:
                    case = GoldenCase(
                        id=str(_literal(kws.get("id"))),
                        input=_literal(kws.get("input")),
                        output=_literal(kws.get("output")),
                        error=_literal(kws.get("error")),
                        org_id=_literal(kws.get("org_id")),
                        actor_id=_literal(kws.get("actor_id")),
                        snapshot=_literal(kws.get("snapshot")),
                        events=_literal(kws.get("events")),
                    )
                except ValueError:
                    raise ConfigurationError(
                        f"{path}: a case is not made of literals and cannot be merged; keep "
                        "GoldenCase(...) arguments literal",
                        details={"field": "output"},
                    ) from None
                blocks.append(segment)
                ids.append(case.id)
                cases.append(case)
    return _Existing(mask, blocks, ids, keys, cases)


def _read_if_exists(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _strip_indices(path: str) -> str:
    return re.sub(r"\[\d+\]", "", path)


class GoldenTestGenerator:
    """Renders golden pytest modules from recorded `Snapshot`s.

    Args:
        registry: The application's registry (handlers bound) used to verify and detect masks.
        registry_ref: `MODULE:OBJECT` written into the module so the tests find the registry.
        executor_factory: `factory(registry, clock=..., ids=...)` for replays (default: memory
            ports, `AllowAll`); the same one your tests use through the
            `contractspec_executor_factory` fixture.
        mask: Extra masked paths per operation name: `{"crm.deal.create": ["output.id"]}`.
        dedup: De-duplicate equivalent cases (default `True`).
        max_cases: Most new cases added per module and run.
        detect: Replay every case twice to detect non-deterministic paths (default `True`).
        verify: Leave out cases that do not replay with their recorded outcome (default `True`).
        exclude_errors: Error codes never turned into cases (`DEFAULT_EXCLUDED_ERRORS`).
        template: Path of your own Jinja2 template (rendered in a sandbox) with the variables
            `ref`, `operation`, `version`, `registry`, `mask`, `cases` (rendered blocks),
            `skipped` and `function`, and the filters `py`, `doc` and `comment`.

    Raises:
        ConfigurationError: `registry_ref` is not `MODULE:OBJECT`, or `max_cases` < 1.
    """

    def __init__(
        self,
        registry: SpecRegistry,
        *,
        registry_ref: str,
        executor_factory: ExecutorFactory | None = None,
        mask: Mapping[str, Iterable[str]] | None = None,
        dedup: bool = True,
        max_cases: int = 50,
        detect: bool = True,
        verify: bool = True,
        exclude_errors: Iterable[str] = DEFAULT_EXCLUDED_ERRORS,
        template: str | os.PathLike[str] | None = None,
    ) -> None:
        if ":" not in registry_ref or registry_ref.startswith(":") or registry_ref.endswith(":"):
            raise ConfigurationError(
                f"registry_ref must be MODULE:OBJECT (e.g. myapp.spec:registry), got "
                f"{registry_ref!r}",
                details={"field": "registry_ref"},
            )
        if isinstance(max_cases, bool) or not isinstance(max_cases, int) or max_cases < 1:
            raise ConfigurationError(
                f"max_cases must be a positive integer, got {max_cases!r}",
                details={"field": "max_cases"},
            )
        self.registry = registry
        self.registry_ref = registry_ref
        self.executor_factory = executor_factory
        self.mask = {name: tuple(paths) for name, paths in (mask or {}).items()}
        self.dedup = dedup
        self.max_cases = max_cases
        self.detect = detect
        self.verify = verify
        self.exclude_errors = frozenset(exclude_errors)
        self._sync_runner: SyncRunner | None = None
        env = SandboxedEnvironment(
            autoescape=False,
            keep_trailing_newline=True,
            trim_blocks=True,
            lstrip_blocks=True,
            undefined=StrictUndefined,
        )
        env.filters["py"] = _py
        env.filters["doc"] = _doc
        env.filters["comment"] = _comment
        if template is None:
            text = (
                resources.files("contractspec.testing")
                .joinpath("templates/golden_module.py.j2")
                .read_text(encoding="utf-8")
            )
        else:
            text = Path(template).read_text(encoding="utf-8")
        self._template = env.from_string(text)

    # -- selection ----------------------------------------------------------------------------

    def _spec(self, operation: str, version: int | None) -> OperationSpec:
        return self.registry.get(operation, version)

    def candidates(
        self,
        snapshots: Iterable[Snapshot],
        operation: str,
        version: int | None = None,
        *,
        known_keys: set[Any] | None = None,
        known_ids: Iterable[str] = (),
    ) -> tuple[list[GoldenCase], list[tuple[str, str]]]:
        """New cases from snapshots: filtered, de-duplicated, with unique readable ids.

        Returns:
            `(cases, skipped)` where `skipped` lists `(snapshot id, reason)`.
        """
        spec = self._spec(operation, version)
        discrete = discrete_paths(spec.input)
        keys = set(known_keys or ())
        used = set(known_ids)
        suffixes: dict[str, int] = {}
        cases: list[GoldenCase] = []
        skipped: list[tuple[str, str]] = []
        for snap in snapshots:
            if snap.operation != spec.name or snap.version != spec.version:
                continue
            if snap.error is not None and snap.error.get("code") in self.exclude_errors:
                continue
            error = (
                None
                if snap.error is None
                else {"code": str(snap.error.get("code")), "type": str(snap.error.get("type"))}
            )
            # operations that declare no events cannot emit any: nothing to compare
            unknown = error is not None or snap.events is None or not spec.emits
            events = None if unknown else [dict(e) for e in snap.events or ()]
            if self.dedup:
                key = _dedup_key(snap.input, snap.output, error, discrete, events)
                if key in keys:
                    continue
                keys.add(key)
            if len(cases) >= self.max_cases:
                skipped.append((snap.id, f"over max_cases={self.max_cases}"))
                continue
            base = "-".join(
                p for p in ("ok" if error is None else error["code"], _hint(snap.input)) if p
            )
            case_id, n = base, suffixes.get(base, 1)
            while case_id in used:
                n += 1
                case_id = f"{base}-{n}"
            suffixes[base] = n
            used.add(case_id)
            cases.append(
                GoldenCase(
                    id=case_id,
                    input=snap.input,
                    output=snap.output if error is None else None,
                    error=error,
                    org_id=snap.org_id,
                    actor_id=snap.actor_id,
                    snapshot=snap.id,
                    events=events,
                )
            )
        return cases, skipped

    # -- building -----------------------------------------------------------------------------

    async def build(
        self,
        snapshots: Iterable[Snapshot],
        operation: str,
        version: int | None = None,
        *,
        existing: str | None = None,
        path: str = "<module>",
        progress: Callable[[int, int], None] | None = None,
    ) -> GeneratedSuite:
        """Build (without writing) the module for one operation.

        Args:
            snapshots: Recorded snapshots (any operations; others are ignored), oldest first.
            operation: Operation name.
            version: Operation version (default: latest registered).
            existing: Source of the module already at the destination, to merge with.
            path: Destination (for messages).
            progress: Called as `progress(done, total)` before and after each new case is
                replayed (`total` new cases), e.g. to drive a progress bar.

        Raises:
            UnknownOperationError: The operation is not registered.
            ConfigurationError: `existing` is not a golden module that can be merged.
        """
        spec = self._spec(operation, version)
        old = _parse_existing(existing, path) if existing else _Existing((), [], [], set(), [])
        discrete = discrete_paths(spec.input)
        old.keys = {_dedup_key(c.input, c.output, c.error, discrete, c.events) for c in old.cases}
        new, skipped = self.candidates(
            snapshots, spec.name, spec.version, known_keys=old.keys, known_ids=old.ids
        )
        mask = set(old.mask) | set(declared_mask(spec)) | set(self.mask.get(spec.name, ()))
        suite = GoldenSuite(spec.name, spec.version, self.registry_ref, tuple(sorted(mask)))
        if new and (self.detect or self.verify):
            twice: list[tuple[Replayed, Replayed]] = []
            if progress is not None:
                progress(0, len(new))
            for case in new:
                twice.append(await self._replay_twice(case, suite))
                if progress is not None:
                    progress(len(twice), len(new))
            if self.detect:
                for a, b in twice:
                    if a.error is None and b.error is None:
                        mask |= {_strip_indices(d.path) for d in compare(a.output, b.output)}
                        if len(a.events) == len(b.events):
                            moved = compare(a.events, b.events, "events")
                            mask |= {_strip_indices(d.path) for d in moved}
                suite = GoldenSuite(spec.name, spec.version, self.registry_ref, tuple(sorted(mask)))
            if self.verify:
                kept: list[GoldenCase] = []
                for case, (a, b) in zip(new, twice, strict=True):
                    if (a.error is None) != (b.error is None) or len(a.events) != len(b.events):
                        skipped.append(
                            (case.snapshot or case.id, "outcome differs between replays")
                        )
                        continue
                    diffs = check_outcome(case, suite, a.output, a.error, a.events)
                    if diffs:
                        skipped.append((case.snapshot or case.id, diffs[0].describe()))
                        continue
                    kept.append(case)
                new = kept
        new = [
            GoldenCase(
                id=c.id,
                input=c.input,
                output=None if c.output is None else apply_mask(c.output, suite.mask),
                error=c.error,
                org_id=c.org_id,
                actor_id=c.actor_id,
                snapshot=c.snapshot,
                events=None if c.events is None else apply_mask(c.events, suite.mask, "events"),
            )
            for c in new
        ]
        blocks = old.blocks + [render_case(c) for c in new]
        source = self._template.render(
            ref=spec.ref,
            operation=spec.name,
            version=spec.version,
            registry=self.registry_ref,
            mask=suite.mask,
            cases=blocks,
            skipped=[f"{sid}: {reason}" for sid, reason in skipped],
            function=identifier(spec.name),
        )
        return GeneratedSuite(
            suite=suite,
            cases=old.cases + new,
            added=[c.id for c in new],
            kept=list(old.ids),
            skipped=skipped,
            source=source,
        )

    async def _replay_twice(
        self, case: GoldenCase, suite: GoldenSuite
    ) -> tuple[Replayed, Replayed]:
        first = await replay_call(
            case, suite, self.registry, executor_factory=self.executor_factory,
            clock=FakeClock(datetime(2001, 2, 3, 4, 5, 6, tzinfo=UTC)),
            ids=SequentialIds("golden-a"),
        )  # fmt: skip
        second = await replay_call(
            case, suite, self.registry, executor_factory=self.executor_factory,
            clock=FakeClock(datetime(2011, 12, 13, 14, 15, 16, tzinfo=UTC)),
            ids=SequentialIds("golden-b"),
        )  # fmt: skip
        return first, second

    async def write(
        self,
        path: str | os.PathLike[str],
        snapshots: Iterable[Snapshot],
        operation: str,
        version: int | None = None,
    ) -> GeneratedSuite:
        """Build the module and write it to `path`, merging with what is there.

        The file is written atomically (a temporary file, then `os.replace`) and only when its
        content changes.
        """
        target = Path(path)
        existing = await asyncio.to_thread(_read_if_exists, target)
        result = await self.build(
            snapshots, operation, version, existing=existing, path=str(target)
        )
        if existing != result.source:
            await asyncio.to_thread(_write_atomically, target, result.source)
        return result

    def write_sync(
        self,
        path: str | os.PathLike[str],
        snapshots: Iterable[Snapshot],
        operation: str,
        version: int | None = None,
    ) -> GeneratedSuite:
        """`write` for scripts and notebooks.

        Works with or without a running event loop (Jupyter): every `write_sync` call of this
        generator runs on its own loop thread (`contractspec.core.sync.SyncRunner`), so pooled
        SQL connections its executor factory keeps stay valid from call to call.

        Raises:
            ConfigurationError: Called from a coroutine running on this generator's own sync
                loop: `await write(...)` there instead.
        """
        if self._sync_runner is None:
            self._sync_runner = SyncRunner()
            weakref.finalize(self, self._sync_runner.close)
        return self._sync_runner.run(
            self.write(path, snapshots, operation, version), what="write_sync()"
        )

    def render(
        self, suite: GoldenSuite, cases: Sequence[GoldenCase], skipped: Sequence[str] = ()
    ) -> str:
        """Render a module from cases you built yourself (no replay, no merge)."""
        return self._template.render(
            ref=f"{suite.operation}@{suite.version}",
            operation=suite.operation,
            version=suite.version,
            registry=suite.registry,
            mask=tuple(suite.mask),
            cases=[render_case(c) for c in cases],
            skipped=list(skipped),
            function=identifier(suite.operation),
        )
