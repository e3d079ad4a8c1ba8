"""Structured output through a real tritonserver: the TensorRT-LLM inputs guided_decoding_guide_type and
guided_decoding_guide, many schemas in one batch beside plain requests, a regex, and a bad schema's 400."""

from __future__ import annotations

import json
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jsonschema
import requests

sys.path.insert(0, str(Path(__file__).parent))
from schemas import CASES, messages  # noqa: E402

TIMEOUT_S = 600  # a loaded CI machine runs the batch slowly; a hang still fails
GREEDY = {"temperature": 0.0}
PLAIN_QUESTIONS = ["What is the capital of France?", "Name a color.", "Say hello."]


def generate(server, body: dict) -> requests.Response:
    return requests.post(f"{server.http_url}/v2/models/qwen/generate", json=body, timeout=TIMEOUT_S)


def schema_body(schema: dict, question: str) -> dict:
    return {
        "messages": json.dumps(messages(question)),
        "max_tokens": 160,
        "guided_decoding_guide_type": "json_schema",
        "guided_decoding_guide": json.dumps(schema),
        **GREEDY,
    }


def plain_body(question: str) -> dict:
    return {"messages": json.dumps([{"role": "user", "content": question}]), "max_tokens": 16, **GREEDY}


def test_twenty_schema_requests_validate_and_leave_plain_neighbours_unchanged(triton_server):
    alone = [generate(triton_server, plain_body(q)).json()["output_ids"] for q in PLAIN_QUESTIONS]
    guided = [(schema, schema_body(schema, question)) for schema, questions in CASES for question in questions]
    bodies = [body for _, body in guided] + [plain_body(q) for q in PLAIN_QUESTIONS]
    with ThreadPoolExecutor(len(bodies)) as pool:  # all at once: they share the engine's batches
        replies = list(pool.map(lambda body: generate(triton_server, body), bodies))
    assert all(reply.status_code == 200 for reply in replies), [r.text for r in replies if r.status_code != 200]
    results = [reply.json() for reply in replies]
    for (schema, _), result in zip(guided, results):
        assert result["finish_reason"] == "stop", result
        jsonschema.validate(json.loads(result["text_output"]), schema)
    assert [result["output_ids"] for result in results[len(guided) :]] == alone


def test_regex_guide_streams_an_iso_date(triton_server):
    body = {
        "messages": json.dumps([{"role": "user", "content": "When did the Apollo 11 landing happen?"}]),
        "max_tokens": 24,
        "stream": True,
        "guided_decoding_guide_type": "regex",
        "guided_decoding_guide": r"\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])",
        **GREEDY,
    }
    reply = requests.post(
        f"{triton_server.http_url}/v2/models/qwen/generate_stream", json=body, stream=True, timeout=TIMEOUT_S
    )
    assert reply.status_code == 200, reply.text
    events = [json.loads(line[len(b"data: ") :]) for line in reply.iter_lines() if line.startswith(b"data: ")]
    text = "".join(event["text_output"] for event in events)
    assert re.fullmatch(r"\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])", text), text
    assert events[-1]["finish_reason"] == "stop"


def test_bad_guides_are_400s_naming_the_field_and_the_server_keeps_serving(triton_server):
    bad_schema = generate(
        triton_server,
        {
            "text_input": "hi",
            "guided_decoding_guide_type": "json_schema",
            "guided_decoding_guide": '{"type": "object", "properties": {"a": {"type": "integr"}}}',
        },
    )
    assert bad_schema.status_code == 400, bad_schema.text
    error = bad_schema.json()["error"]
    assert error.startswith("guided_decoding_guide: ") and 'Unsupported type "integr"' in error, error
    bad_type = generate(
        triton_server, {"text_input": "hi", "guided_decoding_guide_type": "yaml", "guided_decoding_guide": "a: 1"}
    )
    assert bad_type.status_code == 400 and bad_type.json()["error"].startswith("guided_decoding_guide_type: ")
    not_json = generate(
        triton_server, {"text_input": "hi", "guided_decoding_guide_type": "json_schema", "guided_decoding_guide": "{"}
    )
    assert not_json.status_code == 400 and not_json.json()["error"].startswith("guided_decoding_guide: ")
    healthy = generate(triton_server, {"text_input": "Hello", "max_tokens": 3, **GREEDY})
    assert healthy.status_code == 200 and healthy.json()["completion_tokens"] >= 1
