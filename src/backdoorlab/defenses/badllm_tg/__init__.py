"""BadLLM-TG: target identification, trigger inversion with an LLM generator, adversarial training."""

from .defense import BadLLMTG

__all__ = ['BadLLMTG']
