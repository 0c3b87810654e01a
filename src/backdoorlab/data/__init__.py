"""Records, readers, the named dataset registry and the shared prompt format."""

from .prompts import classifier_text, render_prompt, render_training_pair, user_message
from .records import Dataset, Example
from .registry import DatasetInfo, list_datasets, load_data_file, load_dataset, resolve_data_dir

__all__ = ["Dataset", "DatasetInfo", "Example", "classifier_text", "list_datasets", "load_data_file",
           "load_dataset", "render_prompt", "render_training_pair", "resolve_data_dir", "user_message"]
