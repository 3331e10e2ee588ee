"""The spec IR: canonical, deterministic, extensible; lock files and their checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

import pytest
from attrs import define
from core_app import build_registry
from core_regen_app import build_notes_registry
from core_regen_specs import JobSpec, crm_like, model
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from contractspec.core import SpecDefinitionError, SpecRegistry
from contractspec.core.diff import check_lock
from contractspec.core.ir import (
    IR_FORMAT,
    IRFormatError,
    dumps_ir,
    ir_digest,
    load_ir,
    read_lock,
    write_lock,
)

TESTS = Path(__file__).parent

_DUMP = """
import sys
sys.path.insert(0, sys.argv[1])
from core_app import build_registry
from contractspec.core.ir import dumps_ir
sys.stdout.write(dumps_ir(build_registry().to_ir()))
"""


def test_ir_is_byte_identical_across_processes() -> None:
    """Two interpreters with different hash seeds print the very same IR text."""
    outputs = []
    for seed in ("1", "987"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        proc = subprocess.run(
            [sys.executable, "-c", _DUMP, str(TESTS)],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        outputs.append(proc.stdout)
    assert outputs[0] == outputs[1]
    assert outputs[0] == dumps_ir(build_registry().to_ir())


def test_ir_shape_of_the_notes_app() -> None:
    """The IR lists kinds in order and specs sorted by name and version, with their facts."""
    ir = build_notes_registry().to_ir()
    assert ir["format"] == IR_FORMAT
    assert ir["ir_version"] == 1
    assert list(ir["specs"]) == ["entity", "event", "operation"]
    assert [s["name"] for s in ir["specs"]["operation"]] == [
        "notes.debug.explode",
        "notes.debug.whoami",
        "notes.note.archive",
        "notes.note.create",
        "notes.note.get",
        "notes.note.search",
    ]
    create = ir["specs"]["operation"][3]
    assert create["operation_kind"] == "command"
    assert create["auth"] == {
        "kind": "permissions",
        "permissions": ["notes.write"],
        "resource": None,
    }
    assert create["emits"] == ["notes.note.created@1"]
    assert create["idempotent"] is True
    assert create["errors"] == ["conflict"]
    assert create["schemas"]["input"]["required"] == ["id", "title"]
    budget = create["schemas"]["input"]["properties"]["budget"]
    assert budget["x-decimal"] == {"decimal_places": 2, "max_digits": 8, "minimum": 0}
    assert budget["anyOf"][0] == {"exclusiveMaximum": 1000000, "minimum": 0.0, "type": "number"}
    assert ir["specs"]["entity"][0]["pii"] == ["author_email"]


def test_entity_ir_records_columns_in_declaration_order() -> None:
    """Entity IR keeps storage facts per column in model order (for codegen)."""
    (note,) = build_notes_registry().to_ir()["specs"]["entity"]
    assert [c["name"] for c in note["columns"]] == [
        "id",
        "title",
        "priority",
        "budget",
        "tags",
        "author_email",
    ]
    assert note["columns"][3] == {
        "name": "budget",
        "kind": "decimal",
        "nullable": False,
        "max_length": None,
        "max_digits": 8,
        "decimal_places": 2,
        "enum_values": [],
    }
    assert note["columns"][2]["enum_values"] == ["low", "high"]
    assert note["indexes"] == [{"fields": ["priority"], "unique": False, "name": None}]
    assert (note["table_name"], note["tenant_scoped"]) == ("notes_note", True)


def test_unknown_kinds_fall_back_to_their_fields() -> None:
    """An attrs spec of another kind is described by its fields; models become schemas."""
    ir = SpecRegistry(JobSpec("t.sync", 2, model("SyncIn", {}), queue="slow")).to_ir()
    (job,) = ir["specs"]["job"]
    assert {k: v for k, v in job.items() if k != "schemas"} == {
        "kind": "job",
        "max_attempts": 3,
        "name": "t.sync",
        "queue": "slow",
        "version": 2,
    }
    assert list(job["schemas"]) == ["payload"]
    assert job["schemas"]["payload"]["title"] == "SyncIn"


@define(frozen=True)
class FlagSpec:
    """A spec kind with its own `to_ir()`."""

    kind: ClassVar[str] = "flag"
    name: str
    version: int
    variants: tuple[str, ...]

    def to_ir(self) -> dict[str, Any]:
        return {"variants": list(self.variants), "context": model("FlagContext", {})}


def test_spec_to_ir_method_is_used() -> None:
    """A spec's own `to_ir()` decides its IR; model classes in it become schemas."""
    ir = SpecRegistry(FlagSpec("t.flag", 1, ("on", "off"))).to_ir()
    (flag,) = ir["specs"]["flag"]
    assert flag["variants"] == ["on", "off"]
    assert flag["schemas"]["context"]["title"] == "FlagContext"
    assert (flag["kind"], flag["name"], flag["version"]) == ("flag", "t.flag", 1)


@define(frozen=True)
class BadSpec:
    kind: ClassVar[str] = "bad"
    name: str
    version: int

    def to_ir(self) -> list[str]:
        return ["nope"]


def test_to_ir_must_return_a_mapping() -> None:
    """A `to_ir()` returning something else than a dict raises SpecDefinitionError."""
    with pytest.raises(SpecDefinitionError, match=r"bad t\.bad@1: to_ir\(\) returned list"):
        SpecRegistry(BadSpec("t.bad", 1)).to_ir()


def test_model_without_json_schema_is_a_definition_error() -> None:
    """A model field with no JSON Schema names the model in a SpecDefinitionError."""
    from collections.abc import Callable

    from contractspec.core import define_query

    class Hook(BaseModel):
        fn: Callable[[], None]

    registry = SpecRegistry(define_query("t.hook.get", input=Hook, output=Hook))
    with pytest.raises(SpecDefinitionError, match=r"model .*Hook has no JSON Schema"):
        registry.to_ir()


def test_lock_roundtrip_and_check(tmp_path: Path) -> None:
    """A written lock reads back equal, checks up to date, and turns stale with a diff."""
    lock = tmp_path / "contractspec.lock.json"
    registry = crm_like()
    assert write_lock(registry, lock) == lock
    assert read_lock(lock) == registry.to_ir()
    status = check_lock(registry, lock)
    assert (status.up_to_date, status.status, len(status.diff)) == (True, "up-to-date", 0)
    changed = check_lock(crm_like(extra_ops=False), lock)
    assert changed.status == "stale"
    assert [c.rule for c in changed.diff.changes] == ["operation-removed-without-deprecation"]
    missing = check_lock(registry, tmp_path / "nope.json")
    assert (missing.up_to_date, missing.status) == (False, "missing")


def test_reformatted_lock_is_stale_without_changes(tmp_path: Path) -> None:
    """A lock with the same content but other formatting is stale, with an empty diff."""
    lock = tmp_path / "lock.json"
    lock.write_text(json.dumps(crm_like().to_ir()), encoding="utf-8")
    status = check_lock(crm_like(), lock)
    assert (status.status, len(status.diff)) == ("stale", 0)


def test_digest_is_stable() -> None:
    """The digest is sha256 of the canonical text, truncated to 16 hex digits."""
    import hashlib

    ir = crm_like().to_ir()
    assert ir_digest(ir) == "sha256:" + hashlib.sha256(dumps_ir(ir).encode()).hexdigest()[:16]
    assert ir_digest(ir) == ir_digest(crm_like().to_ir())


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ([], "IR: expected a JSON object, got list"),
        ({"format": "x"}, "IR.format: expected 'contractspec.ir', got 'x'"),
        ({"format": IR_FORMAT, "ir_version": 9}, "IR.ir_version: this contractspec-core reads"),
        ({"format": IR_FORMAT, "ir_version": 1, "specs": []}, "IR.specs: expected an object"),
        (
            {"format": IR_FORMAT, "ir_version": 1, "specs": {"operation": [{"kind": "event"}]}},
            "IR.specs.operation[0].kind: expected 'operation', got 'event'",
        ),
        (
            {
                "format": IR_FORMAT,
                "ir_version": 1,
                "specs": {"event": [{"kind": "event", "name": "a.b", "version": 0}]},
            },
            "IR.specs.event[0].version: expected a positive integer, got 0",
        ),
        (
            {
                "format": IR_FORMAT,
                "ir_version": 1,
                "specs": {"event": [{"kind": "event", "name": "a.b", "version": 1}]},
            },
            "IR.specs.event[0].schemas: expected an object mapping roles",
        ),
    ],
)
def test_invalid_ir_names_the_field(document: Any, message: str) -> None:
    """Malformed IR raises IRFormatError whose message starts with the offending field."""
    with pytest.raises(IRFormatError) as info:
        load_ir(document) if isinstance(document, dict) else load_ir(json.dumps(document))
    assert info.value.message.startswith(message)
    assert info.value.code == "ir_format_error"


def test_unreadable_and_invalid_json_files(tmp_path: Path) -> None:
    """Missing files and broken JSON raise IRFormatError with the path and the fix."""
    with pytest.raises(IRFormatError, match=r"cannot read IR file .*contractspec spec export"):
        load_ir(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json", encoding="utf-8")
    with pytest.raises(IRFormatError, match=r"broken\.json is not valid JSON \(line 1, column 2"):
        load_ir(broken)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)


@settings(max_examples=200, deadline=None)
@given(
    document=st.fixed_dictionaries(
        {"format": st.just(IR_FORMAT), "ir_version": st.just(1)},
        optional={"specs": json_values},
    )
)
def test_arbitrary_documents_are_rejected_cleanly(document: dict[str, Any]) -> None:
    """Random JSON is either valid IR or rejected with IRFormatError, never another exception."""
    try:
        load_ir(document)
    except IRFormatError as exc:
        message = exc.message
    else:
        message = "IR (valid)"
    assert message.startswith("IR")
