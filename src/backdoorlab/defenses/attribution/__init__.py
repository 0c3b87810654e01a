"""Head ablation and the backdoor vector as defenses (backdoor attribution)."""

from .defense import BackdoorVectorDefense, HeadAblation

__all__ = ['BackdoorVectorDefense', 'HeadAblation']
