"""Backdoor Collapse (Locphylax): inject known backdoors so the unknown one aggregates with them, then
recover."""

from .cluster import ClusterObjective, cluster_loss
from .defense import BackdoorCollapse
from .known import DEFAULT_TRIGGERS, KnownBackdoors

__all__ = ["DEFAULT_TRIGGERS", "BackdoorCollapse", "ClusterObjective", "KnownBackdoors", "cluster_loss"]
