"""The ``python`` tool: the model's script runs statelessly in the bubblewrap sandbox (python_sandbox.py)."""

from __future__ import annotations

from openai_harmony import Message, ToolNamespaceConfig

from .base import Tool, message_text, tool_message
from .python_sandbox import PythonSandbox, SandboxLimits

# The reference implementation's description of its stateless python tool (gpt_oss/tools/python_docker), word
# for word: it is what gpt-oss is prompted with. The "docker container" is a bubblewrap sandbox here.
PYTHON_DESCRIPTION = """
Use this tool to execute STATELESS Python code in your chain of thought. The code will not be shown to the user. \
This tool should be used for internal reasoning, but not for code that is intended to be visible to the user \
(e.g. when creating plots, tables, or files).
When you send a message containing python code to python, it will be executed in a stateless docker container, \
and the stdout of that process will be returned to you. You have to use print statements to access the output.

IMPORTANT: Your python environment is not shared between calls. You will have to pass your entire code each time.
""".strip()


class PythonTool(Tool):
    """Runs each script in a fresh sandbox and answers with its stdout and stderr (see PythonSandbox).

    The constructor checks that the sandbox works and raises ``SandboxError`` (with what to do) if not.
    """

    name = "python"

    def __init__(self, sandbox: PythonSandbox | None = None, *, limits: SandboxLimits | None = None) -> None:
        if sandbox is not None and limits is not None:
            raise ValueError("pass either a sandbox or limits, not both")
        self.sandbox = sandbox or PythonSandbox(limits)
        self.sandbox.check()

    @property
    def tool_config(self) -> ToolNamespaceConfig:
        return ToolNamespaceConfig(name=self.name, description=PYTHON_DESCRIPTION, tools=[])

    def process(self, message: Message) -> list[Message]:
        result = self.sandbox.run(message_text(message))
        return [tool_message(self.name, result.to_text(self.sandbox.limits), message)]
