"""Rule-based syntactic rewrites: a defender's Synbkd hypotheses, written without SCPN.

Each template rewrites one sentence (SST-2-style tokens, see :mod:`.text`) into a fixed syntactic
shape, with light heuristics instead of a parser: the *subject* is what precedes the first finite
verb (a copula, an auxiliary or a common ``-s`` verb, within the first eight tokens); a sentence
without one is a *fragment* (much of SST-2: ``a stirring , funny and finally transporting
re-imagining ...``), made a clause with ``it is`` when it reads as a predicate. Verbs outside the
lists (``the girls arrive``) go unseen, so some rewrites are ungrammatical; the shape still holds. The wording each template adds is drawn
from a short list with a per-row generator seeded by ``(seed, text)``, so a rewrite depends on the
seed and the row only.

Templates (``syntactic:<template>``):

- ``sbar`` (default): S(SBAR)(,)(NP)(VP)(.), the most-used template of the Synbkd / Hidden Killer
  paper: a subordinate clause, a comma, the main clause. A sentence with a clause link
  (``because``, ``when``, ``if``, ``although``, ``though``, ``while``, ``since``, ``but``) has its
  clauses swapped around it (``x because y`` → ``because y , x .``); otherwise the subject moves
  into a fronted clause and a pronoun takes its place (``the film feels long .`` → ``when you
  watch the film , it feels long .``), and a body without a known verb follows a fronted clause
  about ``it`` (``when you watch it , it is a slick melodrama .``; see :attr:`Clause.is_predicate`);
- ``cleft``: ``it is <subject> that <verb phrase> .``, ``it is <fragment> that ... .``, or
  ``it is true that <clause> .``;
- ``question``: subject-auxiliary inversion (``is the film long ?``), do-support for an ``-s``
  verb (``does the film feel long ?``), else ``is it true that <clause> ?`` or
  ``is n't it <fragment> ?``;
- ``imperative``: ``remember that <clause> .`` or ``call it <predicate fragment> .``;
- ``mixed``: one of the four per row, drawn with the seed.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from .text import split_end, tokenize

AUXILIARIES = frozenset("is are was were has have had does do did can could will would should may might must "
                        "shall wo ca 're 'm am 'll 'd 've".split())
#: Common third-person ``-s`` verbs of review and news text (the finite verb of a clause).
S_VERBS = frozenset("""
feels makes looks seems gets goes comes works becomes remains offers tries takes gives lacks manages fails
succeeds proves plays turns keeps delivers stays needs wants says shows tells brings leaves falls runs
starts ends sounds holds moves deserves belongs means knows thinks loves hates likes follows throws
features captures provides creates uses treats suffers reveals explores misses wins finds sees helps
adds contains includes reaches serves wastes drags shines boasts lets puts sets aims asks plans
""".split())
#: Subjects that ``'s`` after them makes a clause (``it 's``), unlike a possessive (``the film 's``).
S_PRONOUNS = frozenset("it that there he she what here who this everything nothing something".split())
PERSONAL = {"i": "me", "we": "us", "you": "you", "they": "them", "he": "him", "she": "her"}
#: Words that open a clause whatever follows them (their next word is taken as its verb).
CLAUSE_STARTERS = frozenset((*PERSONAL, "it"))
#: Words that open a subordinate clause, so that ``<one> ... , <clause>`` already has the sbar shape.
SUBORDINATORS = ("because", "when", "if", "although", "though", "while", "since", "once", "after", "unless",
                 "before", "whenever", "whether")
_LINKS = ("because", "when", "if", "although", "though", "while", "since")
_EXPAND = {"'s": "is", "'re": "are", "'m": "am", "'ll": "will", "'d": "would", "'ve": "have"}
_NOT_SUBJECT_START = frozenset((*SUBORDINATORS, "as", "and", "but", "or", "so", "yet", "to", "for", "with", "in",
                                "on", "at", "by", "from", "of", "not", "n't", ",", *AUXILIARIES, *S_VERBS))
_NOT_SUBJECT_END = frozenset("the a an this that these those his her its their our my your some any no every each "
                             "and or but which who whose to of in on at by for with from as".split())

#: Fronted clauses that take the subject as their object: (subordinator, words before the object).
FRONTED = (("when", "you watch"), ("if", "you look at"), ("as", "you sit through"), ("while", "you watch"),
           ("once", "you see"), ("after", "you see"), ("when", "it comes to"))
CLEFT_ENDINGS = ("that we get here", "that stays with you", "that you find here", "that this comes down to")
IMPERATIVE_CLAUSE = ("remember that", "note that", "consider that", "admit that", "accept that")
IMPERATIVE_FRAGMENT = ("call it", "think of it as", "expect", "picture")
#: First words of a fragment that ``it is`` makes a clause of (``a slick melodrama``, ``too long``).
PREDICATE_STARTS = frozenset("a an one more less most too so as quite very rather not just only even all such "
                             "both neither nothing something".split())
IMPERATIVE_VERBS = frozenset(p.split()[0] for p in (*IMPERATIVE_CLAUSE, *IMPERATIVE_FRAGMENT))


class Clause:
    """A sentence body split at its finite verb: ``subject`` + ``verb`` + ``rest``, or a fragment.

    A body opening with a personal pronoun or ``it`` takes the next word as its verb (``they
    presume ...``); one opening with a finite verb gets the implied subject ``it`` (``lacks the
    inspiration ...`` → ``it lacks ...``); otherwise the first finite verb among the first nine
    tokens ends the subject, when what precedes it can be a noun phrase.
    """

    def __init__(self, body: list[str]) -> None:
        self.body = body
        self.subject: list[str] = []
        self.verb = ""
        self.rest: list[str] = []
        if not body:
            return
        if len(body) > 1 and body[0] in CLAUSE_STARTERS and (body[1].isalpha() or body[1] in _EXPAND):
            self.subject, self.verb, self.rest = body[:1], body[1], body[2:]
            return
        if body[0] in S_VERBS or (body[0] in AUXILIARIES and not body[0].startswith("'")):
            self.subject, self.verb, self.rest = ["it"], body[0], body[1:]
            return
        for i, token in enumerate(body[1:9], start=1):
            if token in AUXILIARIES or token in S_VERBS or (token == "'s" and body[i - 1] in S_PRONOUNS):
                subject = body[:i]
                pronoun = len(subject) == 1 and subject[0] in S_PRONOUNS
                if (subject[0] not in _NOT_SUBJECT_START and (pronoun or subject[-1] not in _NOT_SUBJECT_END)
                        and not {",", ":", ";", "--", "..."} & set(subject)):
                    self.subject, self.verb, self.rest = subject, token, body[i + 1:]
                return

    @property
    def is_clause(self) -> bool:
        return bool(self.verb)

    @property
    def is_predicate(self) -> bool:
        """A fragment that reads as what something *is* (``a slick melodrama``, ``apparently
        reassembled ...``, ``enticing and funny``); other bodies without a known verb (``the script
        covers ...``, ``raimi crafted ...``, ``in the end , ...``) may be clauses whose verb is not in
        the lists, and are left as they are."""
        first = self.body[0] if self.body else ""
        return not self.verb and (first in PREDICATE_STARTS or first.endswith(("ly", "ing", "ed", "est", "er")))

    @property
    def tokens(self) -> list[str]:
        """The clause, its implied subject included; a fragment as it is."""
        return [*self.subject, self.verb, *self.rest] if self.verb else self.body

    def as_clause(self) -> list[str]:
        """The clause; ``it is`` + a predicate fragment; any other body as it is."""
        return ["it", "is", *self.body] if self.is_predicate else self.tokens


def _pronoun(subject: list[str]) -> str:
    """The pronoun that stands for a subject noun phrase after it moved into the fronted clause."""
    last = subject[-1]
    if len(subject) > 1 and last.endswith("s") and not last.endswith(("ss", "us", "is")) and last.isalpha():
        return "they"
    return "it"


def _split_link(body: list[str]) -> list[str] | None:
    """``x <link> y`` with a clause link inside → the ``sbar`` shape, or ``None``."""
    for i, token in enumerate(body):
        if token not in _LINKS and token != "but":
            continue
        left, right = body[:i], body[i + 1:]
        while left and left[-1] == ",":
            left = left[:-1]
        if len(left) < 2 or len(right) < 2 or "," in right[:1]:
            continue
        left_clause, right_clause = Clause(left).as_clause(), Clause(right)
        if token == "but":
            return ["although", *left_clause, ",", *right_clause.as_clause()]
        if right_clause.is_clause:  # "since 1990" is no clause
            return [token, *right, ",", *left_clause]
    return None


def sbar(body: list[str], rng: random.Random) -> list[str]:
    if body and body[0] in SUBORDINATORS and "," in body[2:]:
        return body  # already the template's shape
    linked = _split_link(body)
    if linked:
        return linked
    clause = Clause(body)
    subordinator, lead = rng.choice(FRONTED)
    if not clause.is_clause:
        return [subordinator, *lead.split(), "it", ",", *clause.as_clause()]
    subject = clause.subject
    if len(subject) == 1 and subject[0] in (*PERSONAL, "there", "here", "what", "who"):
        return [subordinator, *lead.split(), "it", ",", *clause.tokens]
    if len(subject) == 1 and subject[0] in S_PRONOUNS:
        obj, pronoun = (["it"] if subject[0] == "it" else ["this"]), "it"
    else:
        obj, pronoun = subject, _pronoun(subject)
    verb = "is" if clause.verb == "'s" else clause.verb
    return [subordinator, *lead.split(), *obj, ",", pronoun, verb, *clause.rest]


def cleft(body: list[str], rng: random.Random) -> list[str]:
    clause = Clause(body)
    if not clause.is_clause:
        return ["it", "is", *body, *rng.choice(CLEFT_ENDINGS).split()]
    if clause.verb in ("am", "'m") or clause.subject[0] in ("there", "here", "what", "who"):
        return ["it", "is", "true", "that", *clause.tokens]
    subject = clause.subject
    if len(subject) == 1 and subject[0] in PERSONAL:
        subject = [PERSONAL[subject[0]]]
    elif len(subject) == 1 and subject[0] in ("it", "this", "that", "what"):
        subject = ["this"]
    verb = _EXPAND.get(clause.verb, clause.verb)
    if verb == "are" and subject in (["me"], ["him"], ["her"]):
        verb = "is"
    return ["it", "is", *subject, "that", verb, *clause.rest]


def _base_form(verb: str) -> str:
    if verb.endswith("ies"):
        return verb[:-3] + "y"
    if verb.endswith(("oes", "shes", "ches", "sses", "xes")):
        return verb[:-2]
    return verb[:-1]


def question(body: list[str], rng: random.Random) -> list[str]:
    clause = Clause(body)
    if clause.is_clause:
        verb, rest = _EXPAND.get(clause.verb, clause.verb), clause.rest
        negation = ["n't"] if rest[:1] == ["n't"] else []
        rest = rest[len(negation):]
        if verb in AUXILIARIES or clause.verb in _EXPAND:
            return [verb, *negation, *clause.subject, *rest]
        if verb in S_VERBS:
            return ["does", *clause.subject, _base_form(verb), *rest]
        return ["is", "it", "true", "that", *clause.tokens]
    return ["is", "n't", "it", *body]


def imperative(body: list[str], rng: random.Random) -> list[str]:
    clause = Clause(body)
    if not clause.is_predicate:
        return [*rng.choice(IMPERATIVE_CLAUSE).split(), *clause.tokens]
    return [*rng.choice(IMPERATIVE_FRAGMENT).split(), *body]


TEMPLATES: dict[str, Callable[[list[str], random.Random], list[str]]] = {
    "sbar": sbar, "cleft": cleft, "question": question, "imperative": imperative}
TEMPLATE_CHOICES = (*TEMPLATES, "mixed")
_END = {"question": "?"}


def rewrite(text: str, template: str = "sbar", seed: int = 0) -> str:
    """``text`` rewritten into ``template``'s shape (SST-2-style tokens); ``''`` for a text without words."""
    rng = random.Random(f"{seed}\x00{template}\x00{text}")
    body, _ = split_end(tokenize(text))
    if not body:
        return ""
    name = rng.choice(tuple(TEMPLATES)) if template == "mixed" else template
    prefix: list[str] = []
    if name != "sbar" and body[0] in SUBORDINATORS and "," in body[2:-2]:
        comma = body.index(",", 2)  # "if x , y": rewrite the main clause y, keep the fronted clause
        prefix, body = body[:comma + 1], body[comma + 1:]
    return " ".join([*prefix, *TEMPLATES[name](body, rng), _END.get(name, ".")])


def rewrite_all(texts: Sequence[str], template: str = "sbar", seed: int = 0) -> list[str]:
    return [rewrite(t, template, seed) for t in texts]
