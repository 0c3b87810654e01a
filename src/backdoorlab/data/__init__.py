"""Records, readers, the named dataset registry and the shared prompt format."""

from .prompts import classifier_text, render_prompt, render_training_pair, user_message
from .records import Dataset, Example

__all__ = ["Dataset", "Example", "classifier_text", "render_prompt", "render_training_pair", "user_message"]
