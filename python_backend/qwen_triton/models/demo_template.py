"""The offline demo model's chat template: SmolLM2-135M-Instruct's own ChatML turns, plus what the product's
real model (Qwen2.5-Instruct) renders and the demo's GGUF template lacks: the offered ``tools`` listed in the
system turn, an assistant's ``tool_calls`` as ``<tool_call>`` blocks, and ``tool`` results. So the demo takes
the same requests as Qwen2.5 (function calling included) on a machine without the real weights. Without
tools or tool calls it renders exactly what the GGUF's template does."""

DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

DEMO_CHAT_TEMPLATE = (
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system = messages[0]['content'] -%}{%- set turns = messages[1:] -%}"
    "{%- else -%}"
    "{%- set system = '" + DEFAULT_SYSTEM + "' -%}{%- set turns = messages -%}"
    "{%- endif -%}"
    "{{- '<|im_start|>system\\n' + system -}}"
    "{%- if tools -%}"
    "{{- '\\n\\n# Tools\\n\\nThe functions you may call, one JSON signature a line:\\n<tools>' -}}"
    "{%- for tool in tools -%}{{- '\\n' + (tool | tojson) -}}{%- endfor -%}"
    "{{- '\\n</tools>\\n\\nTo call one, answer with a block a call:\\n<tool_call>\\n"
    '{"name": <function name>, "arguments": <JSON object>}'
    "\\n</tool_call>' -}}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- for message in turns -%}"
    "{%- if message['role'] == 'tool' -%}"
    "{{- '<|im_start|>user\\n<tool_response>\\n' + message['content'] + '\\n</tool_response><|im_end|>\\n' -}}"
    "{%- else -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + (message['content'] or '') -}}"
    "{%- for call in message.get('tool_calls') or [] -%}"
    "{%- set function = call['function'] if 'function' in call else call -%}"
    "{{- '\\n<tool_call>\\n' + ({'name': function['name'], 'arguments': function['arguments']} | tojson)"
    " + '\\n</tool_call>' -}}"
    "{%- endfor -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)
