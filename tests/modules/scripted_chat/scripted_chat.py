"""A stand-in for LlamaChat on the official CodeProject.AI Python SDK, for
browser tests that need a reply with known content (the real module's demo
model answers with random text).

It speaks LlamaChat's protocol (route text/chat, command "prompt", a long
process whose command_status carries the reply so far) and replies with the
prompt itself, streamed a few characters at a time, so a test can make the
reply contain markup. Its route declares "Implements": "chat" (modhost's
OpenAI and Ollama APIs): given `messages`, it replies with the last user
message.
"""
import json
import threading
import time

from codeproject_ai_sdk import ModuleRunner, RequestData, JSON


class ScriptedChat(ModuleRunner):

    def initialise(self) -> None:
        self.reply = ""
        self.stop = threading.Event()

    def process(self, data: RequestData) -> JSON:
        if data.command != "prompt":
            return {"success": False, "error": f"unknown command {data.command}"}
        return self.long_reply

    def long_reply(self, data: RequestData) -> JSON:
        text = data.get_value("prompt", "")
        messages = data.get_value("messages", "")
        if messages:
            # modhost's chat contract (docs/protocol.md §4.7): the reply is
            # the last user message.
            text = [m["content"] for m in json.loads(messages) if m["role"] == "user"][-1]
        self.reply = ""
        self.stop.clear()
        for i in range(0, len(text), 4):
            if self.stop.is_set():
                return self.result("cancelled")
            self.reply = text[: i + 4]
            time.sleep(0.05)
        return self.result("completed")

    def result(self, stop_reason: str) -> JSON:
        tokens = len(self.reply)
        return {"success": True, "reply": self.reply, "stop_reason": stop_reason,
                "prompt_tokens": tokens, "completion_tokens": tokens,
                "tokens_per_second": 80.0, "time_to_first_token_ms": 1.0, "inferenceMs": 50}

    def command_status(self) -> JSON:
        return {"success": True, "reply": self.reply, "completion_tokens": len(self.reply)}

    def cancel_command_task(self) -> None:
        self.stop.set()
        self.force_shutdown = False


if __name__ == "__main__":
    ScriptedChat().start_loop()
