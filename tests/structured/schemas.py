"""Five JSON schemas (nested objects, enums, arrays, numbers with ranges) and prompts that ask for them.

Strings and arrays are bounded so that any path through a schema ends well within the tests' max_tokens:
a test that fails must mean the engine broke the schema, not that a small model rambled.
"""

from __future__ import annotations

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 16},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"enum": ["admin", "user", "guest"]},
    },
    "required": ["name", "age", "role"],
    "additionalProperties": False,
}
ORDER = {
    "type": "object",
    "properties": {
        "order_id": {"type": "integer", "minimum": 1, "maximum": 9999},
        "customer": {
            "type": "object",
            "properties": {"name": {"type": "string", "maxLength": 16}, "vip": {"type": "boolean"}},
            "required": ["name", "vip"],
            "additionalProperties": False,
        },
        "items": {
            "type": "array",
            "minItems": 1,
            "maxItems": 3,
            "items": {
                "type": "object",
                "properties": {
                    "sku": {"type": "string", "pattern": "^[A-Z]{3}[0-9]{2}$"},
                    "quantity": {"type": "integer", "minimum": 1, "maximum": 10},
                },
                "required": ["sku", "quantity"],
                "additionalProperties": False,
            },
        },
    },
    "required": ["order_id", "customer", "items"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 20},
        "temperature": {"type": "number", "minimum": -50, "maximum": 60},
        "unit": {"enum": ["celsius", "fahrenheit"]},
        "conditions": {"type": "array", "maxItems": 3, "items": {"enum": ["sunny", "rain", "snow", "wind"]}},
    },
    "required": ["city", "temperature", "unit", "conditions"],
    "additionalProperties": False,
}
BOOK = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 30},
        "year": {"type": "integer", "minimum": 1450, "maximum": 2025},
        "genres": {"type": "array", "maxItems": 3, "items": {"type": "string", "maxLength": 12}},
        "rating": {"type": "number", "minimum": 0, "maximum": 5},
    },
    "required": ["title", "year", "genres", "rating"],
    "additionalProperties": False,
}
ANSWER = {
    "type": "object",
    "properties": {
        "answer": {"enum": ["yes", "no", "maybe"]},
        "confidence": {"type": "integer", "minimum": 0, "maximum": 100},
    },
    "required": ["answer", "confidence"],
    "additionalProperties": False,
}

# (schema, four questions): 20 prompts in all
CASES = [
    (PERSON, ["Describe a user of a web site.", "Who wrote Hamlet?", "Invent a guest.", "Describe an admin."]),
    (ORDER, ["Place an order for two books.", "Order three pens.", "A VIP buys a lamp.", "Order one chair."]),
    (WEATHER, ["Weather in Paris today?", "Is it snowing in Oslo?", "Weather in Cairo.", "Forecast for Lima."]),
    (BOOK, ["Describe a famous novel.", "Tell me about Dune.", "A book about cats.", "Recommend a history book."]),
    (ANSWER, ["Is the sky blue?", "Can fish fly?", "Will it rain tomorrow?", "Is Paris in France?"]),
]


def messages(question: str) -> list[dict]:
    return [
        {"role": "system", "content": "Answer with one JSON object only."},
        {"role": "user", "content": question},
    ]
