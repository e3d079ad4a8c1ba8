"""Structured output: a request's guide (JSON schema, regex, grammar, choice) compiled once and enforced
per sequence by a token bitmask applied to the logits before sampling."""
