"""An OpenFeature provider over `FlagEvaluator`, so apps read flags with the standard client.

Install with `pip install 'contractspec-growth[openfeature]'`.

```python
from openfeature import api
from openfeature.evaluation_context import EvaluationContext
from contractspec.growth.openfeature import ContractSpecProvider

api.set_provider(ContractSpecProvider(flags))
client = api.get_client()
client.get_boolean_value("checkout.new-flow", False, EvaluationContext("u-9", {"org_id": "acme"}))
```

The evaluation context's `targeting_key` becomes the subject's `id`; its attributes are the
targeting attributes. Reasons follow the OpenFeature spec: `TARGETING_MATCH` (a force rule),
`SPLIT` (a rollout or experiment bucket), `DEFAULT` (no rule applied), `STATIC` (an override);
the variant is the rule id or the experiment's variation key. Unknown flags resolve to the
caller's default with `FLAG_NOT_FOUND`, and a flag of another type with `TYPE_MISMATCH`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

try:
    from openfeature.evaluation_context import EvaluationContext
    from openfeature.exception import FlagNotFoundError, TypeMismatchError
    from openfeature.flag_evaluation import FlagResolutionDetails, FlagValueType, Reason
    from openfeature.provider import AbstractProvider, Metadata
except ImportError as exc:  # pragma: no cover - exercised by the isolation session
    raise ImportError(
        "contractspec.growth.openfeature needs the OpenFeature SDK: "
        "pip install 'contractspec-growth[openfeature]'"
    ) from exc

from contractspec.growth.flags import FlagEvaluator, FlagResult

__all__ = ["ContractSpecProvider"]

_REASONS = {
    "force": Reason.TARGETING_MATCH,
    "rollout": Reason.SPLIT,
    "experiment": Reason.SPLIT,
    "default": Reason.DEFAULT,
    "override": Reason.STATIC,
}


class ContractSpecProvider(AbstractProvider):
    """OpenFeature `FeatureProvider` serving the flags of a `FlagEvaluator`.

    Args:
        flags: The evaluator holding the flags, segments and experiments.
        name: Provider name reported in metadata.
    """

    def __init__(self, flags: FlagEvaluator, *, name: str = "contractspec-growth") -> None:
        super().__init__()
        self.flags = flags
        self._metadata = Metadata(name=name)

    def get_metadata(self) -> Metadata:
        """The provider's metadata (its name)."""
        return self._metadata

    def _subject(self, context: EvaluationContext | None) -> dict[str, Any]:
        if context is None:
            return {}
        attributes: dict[str, Any] = dict(context.attributes)
        if context.targeting_key is not None:
            attributes["id"] = context.targeting_key
        return attributes

    def _resolve(
        self,
        flag_key: str,
        expected: tuple[type, ...],
        type_name: str,
        context: EvaluationContext | None,
    ) -> FlagResolutionDetails[Any]:
        if flag_key not in self.flags:
            raise FlagNotFoundError(f"unknown flag {flag_key!r}")
        result: FlagResult = self.flags.evaluate(flag_key, self._subject(context))
        value = result.value
        if not isinstance(value, expected) or (bool not in expected and isinstance(value, bool)):
            raise TypeMismatchError(
                f"flag {flag_key!r} is {self.flags.get(flag_key).value_type}, not {type_name}"
            )
        if type_name == "float" and isinstance(value, int):
            value = float(value)
        variant = result.rule_id or None
        if result.assignment is not None:
            variant = result.assignment.variation
        metadata: dict[str, bool | int | float | str] = {"source": result.source}
        if result.rule_index is not None:
            metadata["rule_index"] = result.rule_index
        return FlagResolutionDetails(
            value=value, reason=_REASONS[result.source], variant=variant, flag_metadata=metadata
        )

    def resolve_boolean_details(
        self,
        flag_key: str,
        default_value: bool,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[bool]:
        """Resolve a boolean flag."""
        return self._resolve(flag_key, (bool,), "boolean", evaluation_context)

    def resolve_string_details(
        self,
        flag_key: str,
        default_value: str,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[str]:
        """Resolve a string flag."""
        return self._resolve(flag_key, (str,), "string", evaluation_context)

    def resolve_integer_details(
        self,
        flag_key: str,
        default_value: int,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[int]:
        """Resolve an integer flag (a float value is a type mismatch)."""
        return self._resolve(flag_key, (int,), "integer", evaluation_context)

    def resolve_float_details(
        self,
        flag_key: str,
        default_value: float,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[float]:
        """Resolve a number flag as a float."""
        return self._resolve(flag_key, (float, int), "float", evaluation_context)

    def resolve_object_details(
        self,
        flag_key: str,
        default_value: Sequence[FlagValueType] | Mapping[str, FlagValueType],
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[Sequence[FlagValueType] | Mapping[str, FlagValueType]]:
        """Resolve an object (JSON dict or list) flag."""
        return self._resolve(flag_key, (dict, list, tuple), "object", evaluation_context)
