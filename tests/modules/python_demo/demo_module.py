"""A test module written with the official CodeProject.AI Python SDK
(PyPI codeproject-ai-sdk), used by modhost's compatibility tests.

Commands:
  echo  -- replies at once with the value 'text'
  count -- a long process: counts to 'n' (default 20), one step every 'step_ms'
           milliseconds (default 50), writing "1 2 3 ..." into its 'reply';
           command_status() reports the count and the reply so far; cancel
           stops it at the next step
  crash -- prints why to stderr, then exits the process at once with status 3
"""
import os
import sys
import threading
import time

from codeproject_ai_sdk import ModuleRunner, RequestData, JSON


class DemoModule(ModuleRunner):

    def initialise(self) -> None:
        self.count = 0
        self.stop = threading.Event()

    def process(self, data: RequestData) -> JSON:
        command = data.command
        if command == "echo":
            return {"success": True, "message": data.get_value("text", "")}
        if command == "count":
            return self.long_count
        if command == "crash":
            print("crash requested: exiting with code 3", file=sys.stderr, flush=True)
            os._exit(3)
        return {"success": False, "error": f"unknown command {command}"}

    def long_count(self, data: RequestData) -> JSON:
        self.count = 0
        self.reply = ""
        self.stop.clear()
        n = data.get_int("n", 20)
        step = data.get_int("step_ms", 50) / 1000.0
        while self.count < n:
            if self.stop.is_set():
                return {"success": True, "count": self.count, "reply": self.reply,
                        "stop_reason": "cancelled"}
            time.sleep(step)
            self.count += 1
            self.reply += ("" if self.count == 1 else " ") + str(self.count)
        return {"success": True, "count": self.count, "reply": self.reply,
                "stop_reason": "completed"}

    def command_status(self) -> JSON:
        return {"success": True, "count": self.count, "reply": getattr(self, "reply", "")}

    def cancel_command_task(self) -> None:
        self.stop.set()
        self.force_shutdown = False

    def module_status(self) -> JSON:
        return {"demoCounter": self.count}


if __name__ == "__main__":
    DemoModule().start_loop()
