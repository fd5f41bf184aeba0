"""`assistant`: an example skill in Python that calls each kind of host
capability once: language detection, chunking, chat and completion.

Build (componentize-py 0.25.1, from this folder):

    componentize-py -d ../../../../skillhost/wit -w skill componentize app -o assistant.wasm

Input, a JSON object:

    {"text": str,                         required
     "model": str = "",
     "languages": [str] = ["eng", "deu", "fra"],
     "max_tokens": int = 8,
     "chunk_tokens": int = 16,
     "overlap": int = 4}

Output, a JSON object:

    {"language": str | null, "chunks": [str],
     "reply": str, "finish_reason": "stop" | "length" | "content-filter",
     "usage": {"prompt": int, "completion": int},
     "completion": str, "completion_finish_reason": ..., "completion_usage": {...}}

Input that is not such an object raises `Err(Error_InvalidInput(...))` naming
what is wrong.
"""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.exports.skill_handler import Error_InvalidInput, SkillMetadata
from wit_world.imports import chunking, inference, language

U32_MAX = 2**32 - 1

DEFAULTS = {
    "model": "",
    "languages": ["eng", "deu", "fra"],
    "max_tokens": 8,
    "chunk_tokens": 16,
    "overlap": 4,
}

INPUT_SCHEMA = {
    "type": "object",
    "properties": {
        "text": {"type": "string"},
        "model": {"type": "string", "default": ""},
        "languages": {
            "type": "array",
            "items": {"type": "string"},
            "default": DEFAULTS["languages"],
        },
        "max_tokens": {"type": "integer", "minimum": 0, "default": 8},
        "chunk_tokens": {"type": "integer", "minimum": 1, "default": 16},
        "overlap": {"type": "integer", "minimum": 0, "default": 4},
    },
    "required": ["text"],
}

USAGE_SCHEMA = {
    "type": "object",
    "properties": {"prompt": {"type": "integer"}, "completion": {"type": "integer"}},
    "required": ["prompt", "completion"],
}

FINISH_REASON_SCHEMA = {"enum": ["stop", "length", "content-filter"]}

OUTPUT_SCHEMA = {
    "type": "object",
    "properties": {
        "language": {"type": ["string", "null"]},
        "chunks": {"type": "array", "items": {"type": "string"}},
        "reply": {"type": "string"},
        "finish_reason": FINISH_REASON_SCHEMA,
        "usage": USAGE_SCHEMA,
        "completion": {"type": "string"},
        "completion_finish_reason": FINISH_REASON_SCHEMA,
        "completion_usage": USAGE_SCHEMA,
    },
    "required": [
        "language",
        "chunks",
        "reply",
        "finish_reason",
        "usage",
        "completion",
        "completion_finish_reason",
        "completion_usage",
    ],
}


def invalid(message: str) -> Err:
    """The error `run` raises for bad input."""
    return Err(Error_InvalidInput(message))


def parse_input(raw: bytes) -> dict:
    """The input with defaults filled in; raises `invalid` naming what is wrong."""
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as error:
        raise invalid(f"input is not JSON: {error}")
    if not isinstance(value, dict):
        raise invalid(f"input must be a JSON object, not {type(value).__name__}")
    if not isinstance(value.get("text"), str):
        raise invalid('input needs "text", a string')
    parsed = {**DEFAULTS, **value}
    if not isinstance(parsed["model"], str):
        raise invalid('"model" must be a string')
    languages = parsed["languages"]
    if not isinstance(languages, list) or not all(isinstance(l, str) for l in languages):
        raise invalid('"languages" must be a list of strings')
    for key, least in (("max_tokens", 0), ("chunk_tokens", 1), ("overlap", 0)):
        number = parsed[key]
        if isinstance(number, bool) or not isinstance(number, int):
            raise invalid(f'"{key}" must be an integer')
        if not least <= number <= U32_MAX:
            raise invalid(f'"{key}" must be between {least} and {U32_MAX}')
    return parsed


def finish_reason(reason: inference.FinishReason) -> str:
    """The WIT name of `reason`: `stop`, `length` or `content-filter`."""
    return reason.name.lower().replace("_", "-")


def usage(tokens: inference.TokenUsage) -> dict:
    return {"prompt": tokens.prompt, "completion": tokens.completion}


class SkillHandler(exports.SkillHandler):
    def run(self, input: bytes) -> bytes:
        args = parse_input(input)
        text, model, max_tokens = args["text"], args["model"], args["max_tokens"]

        [detected] = language.select_language(
            [language.SelectLanguageRequest(text=text, languages=args["languages"])]
        )
        [chunks] = chunking.chunk(
            [
                chunking.ChunkRequest(
                    text=text,
                    params=chunking.ChunkParams(
                        model=model,
                        max_tokens=args["chunk_tokens"],
                        overlap=args["overlap"],
                    ),
                )
            ]
        )
        [reply] = inference.chat(
            [
                inference.ChatRequest(
                    model=model,
                    messages=[inference.Message(role="user", content="Summarize: " + text)],
                    params=inference.ChatParams(
                        max_tokens=max_tokens,
                        temperature=0.0,
                        top_p=None,
                        frequency_penalty=None,
                        presence_penalty=None,
                        logprobs=inference.Logprobs_No(),
                    ),
                )
            ]
        )
        [completion] = inference.complete(
            [
                inference.CompletionRequest(
                    model=model,
                    prompt=text,
                    params=inference.CompletionParams(
                        max_tokens=max_tokens,
                        temperature=0.0,
                        top_k=None,
                        top_p=None,
                        stop=[],
                        return_special_tokens=False,
                        frequency_penalty=None,
                        presence_penalty=None,
                        logprobs=inference.Logprobs_No(),
                    ),
                )
            ]
        )
        output = {
            "language": detected,
            "chunks": chunks,
            "reply": reply.message.content,
            "finish_reason": finish_reason(reply.finish_reason),
            "usage": usage(reply.usage),
            "completion": completion.text,
            "completion_finish_reason": finish_reason(completion.finish_reason),
            "completion_usage": usage(completion.usage),
        }
        return json.dumps(output).encode()

    def metadata(self) -> SkillMetadata:
        return SkillMetadata(
            description="Detects the language of a text, chunks it, summarises it "
            "by chat and continues it by completion",
            input_schema=json.dumps(INPUT_SCHEMA).encode(),
            output_schema=json.dumps(OUTPUT_SCHEMA).encode(),
        )
