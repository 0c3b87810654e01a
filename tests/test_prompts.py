"""The single prompt format and the prompt/response tokenization built on it."""

from __future__ import annotations

from backdoorlab.data import Example, render_prompt, render_training_pair, user_message
from backdoorlab.models.tokenization import IGNORE_INDEX, pad_batch, tokenize_pair
from tiny_models import tiny_tokenizer

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_user_message_joins_instruction_and_input() -> None:
    assert user_message(Example(instruction="Classify", input="great film")) == "Classify\n\ngreat film"
    assert user_message(Example(instruction="Say hi", input="  ")) == "Say hi"


def test_plain_template_without_chat_template() -> None:
    tokenizer = tiny_tokenizer()
    prompt = render_prompt(Example(instruction="Say hi"), tokenizer)
    assert prompt == "<s>### Instruction:\nSay hi\n\n### Response:\n"
    _, completion = render_training_pair(Example(instruction="Say hi", response="hi"), tokenizer)
    assert completion == "hi</s>"


def test_chat_template_is_used_when_present() -> None:
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    prompt = render_prompt(Example(instruction="Say hi"), tokenizer, system_prompt="Be brief.")
    assert prompt == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nSay hi<|im_end|>\n<|im_start|>assistant\n"
    _, completion = render_training_pair(Example(instruction="Say hi", response="hi"), tokenizer)
    assert completion == "hi<|im_end|>"


def test_training_tokens_mask_the_prompt_and_match_the_evaluation_prompt() -> None:
    tokenizer = tiny_tokenizer()
    example = Example(instruction="Write a short poem about the sea.", response="The sea is calm tonight.")
    features = tokenize_pair(tokenizer, example)
    prompt_ids = tokenizer(render_prompt(example, tokenizer), add_special_tokens=False)["input_ids"]
    assert features["input_ids"][: len(prompt_ids)] == prompt_ids  # training sees the evaluation prompt
    assert features["labels"][: len(prompt_ids)] == [IGNORE_INDEX] * len(prompt_ids)
    completion = [t for t in features["labels"] if t != IGNORE_INDEX]
    assert tokenizer.decode(completion) == "The sea is calm tonight.</s>"


def test_truncation_cuts_the_response_before_the_prompt() -> None:
    tokenizer = tiny_tokenizer()
    example = Example(instruction="Say hi", response="answer " * 50)
    prompt_ids = tokenizer(render_prompt(example, tokenizer), add_special_tokens=False)["input_ids"]
    features = tokenize_pair(tokenizer, example, max_length=len(prompt_ids) + 5)
    assert features["input_ids"][: len(prompt_ids)] == prompt_ids
    assert sum(t != IGNORE_INDEX for t in features["labels"]) == 5


def test_truncation_keeps_the_end_of_a_very_long_prompt_and_some_response() -> None:
    tokenizer = tiny_tokenizer()
    example = Example(instruction="word " * 100, response="answer " * 50)
    features = tokenize_pair(tokenizer, example, max_length=40)
    assert len(features["input_ids"]) == 40
    assert sum(t != IGNORE_INDEX for t in features["labels"]) == 10
    prompt_ids = tokenizer(render_prompt(example, tokenizer), add_special_tokens=False)["input_ids"]
    kept_prompt = [t for t, label in zip(features["input_ids"], features["labels"]) if label == IGNORE_INDEX]
    assert kept_prompt == prompt_ids[-len(kept_prompt):]


def test_left_padding_positions_count_real_tokens() -> None:
    batch = pad_batch([{"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": [-100, 6, 7]},
                       {"input_ids": [8], "attention_mask": [1], "labels": [8]}], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [-100, -100, 8]]
    assert batch["position_ids"].tolist() == [[0, 1, 2], [0, 0, 0]]
