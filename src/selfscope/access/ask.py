"""``model.ask``: the model's greedy answer to a prompt, with its top first tokens.

The plainest sense there is: what the model says. It is a registered tool like the others so
that every door (CLI ``selfscope ask``, HTTP, MCP, an investigator) reaches it the same way and
every question asked of a model is recorded. The decoding loop itself is
:func:`selfscope.subject.ask.ask` (own loop, chat-template aware, KV cache).
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from selfscope.subject.ask import Answer, ask
from selfscope.tools import ToolContext, tool


class AskArgs(BaseModel):
    prompt: str = Field(min_length=1, description="The question or text to continue.")
    chat: bool | None = Field(
        None,
        description="Wrap the prompt in the model's chat template (default: when it has one).",
    )
    max_new_tokens: int = Field(40, ge=1, le=2048, description="Most tokens to generate.")
    top_k: int = Field(5, ge=1, le=100, description="First-token candidates to report.")


@tool("model.ask", AskArgs, Answer)
def model_ask(ctx: ToolContext, args: AskArgs) -> Answer:
    """The model's greedy answer to a prompt (chat template applied when the model has one,
    unless chat is false), and the top-k most probable first answer tokens."""
    return ask(
        ctx.subject,
        args.prompt,
        max_new_tokens=args.max_new_tokens,
        chat=args.chat,
        top_k=args.top_k,
    )
