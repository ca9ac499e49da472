"""Payload evolution rules: people's input refuses unknown fields; Cairn's own payloads tolerate them."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from common.models import ApprovePlan, EditPlan, ResearchInput, ResearchResult, RunStatus, Usage


def test_people_input_refuses_typos() -> None:
    with pytest.raises(ValidationError, match="plan_verison"):
        ApprovePlan.model_validate({"plan_verison": 1})
    with pytest.raises(ValidationError, match="auto_aprove"):
        ResearchInput.model_validate({"question": "q", "auto_aprove": True})
    with pytest.raises(ValidationError, match="tittle"):
        EditPlan.model_validate({"plan_version": 1, "steps": [{"title": "t", "tittle": "x"}]})


def test_a_newer_writers_payload_is_readable() -> None:
    """A field added by a newer worker must not break an older reader in a rolling upgrade."""
    status = RunStatus.model_validate(
        {"phase": "done", "question": "q", "usage": {"llm_calls": 2, "added_later": 1}, "new_field": "x"}
    )
    assert status.usage == Usage(llm_calls=2)
    result = ResearchResult.model_validate({"workflow_id": "w", "question": "q", "report": "r", "extra": 1})
    assert result.report == "r"


def test_payload_converters_share_one_type_adapter_cache() -> None:
    """A payload converter built apart (the SDK's own contexts may build them) still shares Cairn's one
    cache of TypeAdapters, so a payload type's adapter is built once per process."""
    from common.plugin import TYPE_ADAPTERS, PayloadConverter

    first, second = PayloadConverter(), PayloadConverter()
    usage = Usage(llm_calls=2, input_tokens=7)
    payloads = first.to_payloads([usage])
    assert first.from_payloads(payloads, [Usage]) == [usage]
    hits = TYPE_ADAPTERS.cache_info().hits
    assert second.from_payloads(payloads, [Usage]) == [usage]
    assert TYPE_ADAPTERS.cache_info().hits == hits + 1  # the adapter the first converter built


def test_data_converter_copies_share_their_converters() -> None:
    """The SDK copies the data converter to bind a store context to every payload it visits; the
    copies reuse the converters instead of building new ones, and still convert and store."""
    from temporalio.converter import StorageDriverStoreContext, WorkflowSerializationContext

    from common.plugin import data_converter

    converter = data_converter()
    context = WorkflowSerializationContext(namespace="default", workflow_id="w")
    copy = converter.with_context(context)._with_store_context(StorageDriverStoreContext())
    assert copy.payload_converter is converter.payload_converter
    assert copy.failure_converter is converter.failure_converter
    assert copy.external_storage is not None
    assert data_converter().payload_converter is converter.payload_converter
    usage = Usage(llm_calls=3, output_tokens=5)
    assert copy.payload_converter.from_payloads(
        converter.payload_converter.to_payloads([usage]), [Usage]
    ) == [usage]
