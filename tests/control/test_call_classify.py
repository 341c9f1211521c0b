"""Outcome classification of provider attempts: what is retried, what opens a circuit."""

from __future__ import annotations

import email.utils

import httpx2
import openai
import pytest
from langchain_core.exceptions import OutputParserException

from comptroller.control import ModelRefused, TruncatedStream
from comptroller.control._classify import classify, retry_after_seconds


def status_error(
    status: int, *, headers: dict[str, str] | None = None, code: str | None = None
) -> openai.APIStatusError:
    request = httpx2.Request("POST", "https://api.example/v1/chat/completions")
    response = httpx2.Response(status, headers=headers or {}, request=request)
    body = {"error": {"message": "x", "code": code, "type": code}}
    return openai.APIStatusError("x", response=response, body=body)


@pytest.mark.parametrize(
    ("exc", "kind", "error_type"),
    [
        (status_error(429, headers={"retry-after": "3"}), "transport", "429"),
        (status_error(503), "transport", "503"),
        (status_error(402), "quota", "402"),
        (status_error(429, code="insufficient_quota"), "quota", "429"),
        (status_error(400), "other", "400"),
        (status_error(401), "other", "401"),
        (TruncatedStream("openai", "m", "usage"), "transport", "truncated_stream"),
        (OutputParserException("bad json"), "validation", "OutputParserException"),
        (ModelRefused("no"), "validation", "ModelRefused"),
        (httpx2.ConnectError("refused"), "transport", "ConnectError"),
        (httpx2.ReadTimeout("slow"), "transport", "timeout"),
        (ValueError("bug"), "other", "ValueError"),
    ],
)
def test_classification_of_provider_outcomes(
    exc: BaseException, kind: str, error_type: str
) -> None:
    found = classify(exc)
    assert (found.kind, found.error_type) == (kind, error_type)


def test_rejected_status_errors_are_known_to_cost_nothing() -> None:
    assert classify(status_error(500)).rejected
    assert not classify(httpx2.ReadTimeout("slow")).rejected


def test_retry_after_in_seconds_ms_header_and_http_date() -> None:
    assert classify(status_error(429, headers={"retry-after": "2.5"})).retry_after_s == 2.5
    assert classify(status_error(429, headers={"retry-after-ms": "1500"})).retry_after_s == 1.5
    date = email.utils.formatdate(1_000_030, usegmt=True)
    assert retry_after_seconds(date, now=1_000_000) == pytest.approx(30)
    assert retry_after_seconds("soon") is None
