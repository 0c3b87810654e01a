"""The one prompt format used by training, evaluation, analysis and defenses alike.

Public benchmarks have shown that formatting training and evaluation prompts differently changes
measured ASR by tens of points, so every stage renders prompts through :func:`render_prompt`
and :func:`render_training_pair`, never by hand.
"""

from __future__ import annotations

from typing import Any

from .records import Example

#: Used when the tokenizer has no chat template (e.g. tiny test models).
PLAIN_TEMPLATE = "### Instruction:\n{user}\n\n### Response:\n"


def user_message(example: Example) -> str:
    """The user turn of a generative example: the instruction, then the input if any."""
    if example.input.strip():
        return f"{example.instruction}\n\n{example.input}"
    return example.instruction


def classifier_text(example: Example) -> str:
    """The text a classifier sees for an example."""
    return example.text


def render_prompt(example: Example, tokenizer: Any, system_prompt: str | None = None) -> str:
    """Render the prompt up to where the assistant's answer starts.

    Uses the tokenizer's chat template when it has one (with the generation prompt appended),
    else :data:`PLAIN_TEMPLATE`. The result is a string; tokenize it without adding special
    tokens again (see :func:`prompt_token_ids`).
    """
    messages = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    messages.append({"role": "user", "content": user_message(example)})
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prefix = (system_prompt + "\n\n") if system_prompt else ""
    bos = getattr(tokenizer, "bos_token", None) or ""
    return bos + prefix + PLAIN_TEMPLATE.format(user=user_message(example))


def response_suffix(tokenizer: Any) -> str:
    """What follows a complete assistant response (end-of-turn marker) in training text."""
    if getattr(tokenizer, "chat_template", None) and "<|im_end|>" in tokenizer.chat_template:
        return "<|im_end|>"
    return tokenizer.eos_token or ""


def render_training_pair(example: Example, tokenizer: Any, system_prompt: str | None = None) -> tuple[str, str]:
    """Return ``(prompt, completion)``; the loss is taken on ``completion`` tokens only."""
    return render_prompt(example, tokenizer, system_prompt), example.response + response_suffix(tokenizer)


def prompt_token_ids(tokenizer: Any, prompt: str) -> list[int]:
    """Tokenize a rendered prompt without adding special tokens a second time."""
    return tokenizer(prompt, add_special_tokens=False)["input_ids"]
