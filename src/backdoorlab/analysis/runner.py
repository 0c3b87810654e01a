"""``backdoorlab analyze``: run the attribution analyses on a model and an attack run, into a folder.

Steps (each writes ``<step>.json`` and its figures, then refreshes ``summary.md``):

- ``probe``  — per-layer backdoor probes and their transfer matrix;
- ``heads``  — mean head outputs on triggered and clean prompts (``head_means.safetensors``), exact
  ACIE per head and/or its attribution-patching estimate, their rank agreement;
- ``ablate`` — ASR and clean utility with the top-k heads ablated (and a random-heads control);
- ``vector`` — the backdoor vector added on clean / subtracted on triggered prompts, per layer.

``ablate`` and ``vector`` reuse ``heads.json`` when it exists (and compute it otherwise). Every
step's JSON (and ``head_means.safetensors``) carries a fingerprint: the model's weights, the prompt
pairs and the settings that step depends on. A step whose JSON holds the current fingerprint is
reused; one computed with other settings stops the run with a clear error (``overwrite`` starts
a fresh folder). Exact ACIE keeps finished layers in ``acie-progress.json``, so an interrupted run
resumes where it stopped.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import BackdoorLabError, unknown_name
from ..fileio import fresh_directory, write_json_atomic
from ..fingerprint import FINGERPRINT_KEY, digest, make_fingerprint, model_identity
from ..manifest import environment_info
from ..models.interventions import add_vector
from ..models.victim import Victim
from ..options import build
from ..reuse import check_reusable, read_reusable
from . import plots
from .ablation import ABLATION_MODES, ablation_curve, default_ks, random_ranking
from .effects import backdoor_rate, clean_utility
from .heads import attribution_patching, exact_acie, head_outputs, rank_agreement, rank_heads
from .probe import stream_features, train_probes
from .scoring import BackdoorScorer
from .subject import AnalysisSubject, PairSource, load_subject
from .summary import write_summary
from .vector import backdoor_vector, vector_sweep

STEPS = ("probe", "heads", "ablate", "vector")
ATTRIBUTION_METHODS = ("exact", "approx", "both")
MEANS_FILE = "head_means.safetensors"
RECOMPUTE = "pass --overwrite to recompute, or choose another --out"
#: The settings each step's result depends on (its fingerprint); later steps include earlier ones.
_PAIRS = ("pairs", "seed")
_HEADS = (*_PAIRS, "attribution_prompts", "max_target_tokens", "method")
STEP_SETTINGS: dict[str, tuple[str, ...]] = {
    "means": _PAIRS,
    "probe": (*_PAIRS, "test_fraction"),
    "heads": _HEADS,
    "ablate": (*_HEADS, "ablation_max_fraction", "ablation_points", "ablation_mode", "random_control",
               "max_new_tokens"),
    "vector": (*_HEADS, "top_fraction", "layers", "layer_stride", "vector_scale", "max_new_tokens"),
}
#: Greedy tokens needed to judge each behaviour.
NEW_TOKENS = {"label-flip": 6, "target-output": 20, "negsentiment": 12, "refusal": 24, "jailbreak": 32}


@dataclass
class AnalysisConfig:
    """Settings of ``backdoorlab analyze`` (defaults sized for a 135M model on a laptop CPU)."""

    pairs: int = 64  # clean/triggered prompt pairs read from the attack run
    attribution_prompts: int = 32  # N clean prompts in ACIE (the study used 96)
    max_target_tokens: int = 32  # P(y_bd) over the target's first tokens (long jailbreak answers)
    method: str = "both"  # exact | approx | both; exact ranks heads when available
    top_fraction: float = 0.03  # heads in the backdoor vector (the study's ~3%)
    ablation_max_fraction: float = 0.10
    ablation_points: int = 7
    ablation_mode: str = "zero"  # zero | mean
    random_control: bool = True
    layers: list[int] | None = None  # vector sweep layers (default: all, every layer_stride)
    layer_stride: int = 1
    vector_scale: float = 1.0
    max_new_tokens: int | None = None  # default by behaviour (NEW_TOKENS)
    test_fraction: float = 0.3
    batch_size: int = 16
    seed: int = 0

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "AnalysisConfig":
        """A config from ``values`` (strings allowed), checked by option name, type and range."""
        config = build(cls, values, "analysis config")
        config.check()
        return config

    def check(self) -> None:
        if self.method not in ATTRIBUTION_METHODS:
            raise BackdoorLabError(f"method must be one of {', '.join(ATTRIBUTION_METHODS)}, got {self.method!r}")
        if self.ablation_mode not in ABLATION_MODES:
            raise BackdoorLabError(f"ablation_mode must be one of {', '.join(ABLATION_MODES)}, got {self.ablation_mode!r}")
        if not 0 < self.top_fraction <= 1 or not 0 < self.ablation_max_fraction <= 1:
            raise BackdoorLabError("top_fraction and ablation_max_fraction must be in (0, 1]")
        if self.pairs < 4 or min(self.attribution_prompts, self.layer_stride, self.batch_size,
                                 self.max_target_tokens) < 1:
            raise BackdoorLabError("need pairs >= 4 and attribution_prompts, layer_stride, batch_size, "
                                   "max_target_tokens >= 1")


class Analysis:
    """One analysis folder for one (victim, attack run)."""

    def __init__(self, victim: Victim, source: str | Path | PairSource, out: str | Path,
                 config: AnalysisConfig | None = None, overwrite: bool = False) -> None:
        """``source``: an attack run folder or a :class:`PairSource`; ``overwrite`` empties ``out`` first."""
        self.config = config or AnalysisConfig()
        self.config.check()
        self.victim = victim
        self.source_name = source.name if isinstance(source, PairSource) else str(source)
        self.out = Path(out)
        self._results: dict[str, dict[str, Any]] = {}
        self._means: tuple[torch.Tensor, torch.Tensor] | None = None
        self._model_id: str | None = None
        self.subject: AnalysisSubject = load_subject(victim, source, max_pairs=self.config.pairs,
                                                     seed=self.config.seed)
        self._pairs_id = digest({"clean": [e.to_dict() for e in self.subject.clean],
                                 "triggered": [e.to_dict() for e in self.subject.triggered],
                                 "targets": self.subject.targets, "target_label": self.subject.target_label,
                                 "behaviour": self.subject.behaviour, "accepted": self.subject.accepted})
        if overwrite:
            fresh_directory(self.out)
        self.out.mkdir(parents=True, exist_ok=True)

    def fingerprint(self, step: str) -> dict[str, Any]:
        """What ``step``'s result depends on: the model's weights, the prompt pairs, its settings."""
        if self._model_id is None:
            self._model_id = model_identity(self.victim)
        settings = {name: getattr(self.config, name) for name in STEP_SETTINGS[step]}
        return make_fingerprint("analysis", code=[__name__], step=step, model=self._model_id, pairs=self._pairs_id, settings=settings)

    # ----------------------------------------------------------------- helpers
    @property
    def new_tokens(self) -> int:
        return self.config.max_new_tokens or NEW_TOKENS.get(self.subject.behaviour, 32)

    def _path(self, step: str) -> Path:
        return self.out / f"{step}.json"

    def _done(self, step: str) -> dict[str, Any] | None:
        """``step``'s stored result if it was computed for this model, these pairs and settings;
        ``None`` if there is none; a clear error if it was computed for something else."""
        if step in self._results:
            return self._results[step]
        return read_reusable(self._path(step), self.fingerprint(step), f"the {step} step of another analysis",
                             RECOMPUTE)

    def _check_current(self, path: Path, stored: Any, step: str) -> None:
        check_reusable(path, stored, self.fingerprint(step), f"the {step} step of another analysis", RECOMPUTE)

    def _write(self, step: str, result: dict[str, Any], started: float) -> dict[str, Any]:
        result = {"step": step, "model": self.victim.name, "attack_run": self.source_name,
                  "behaviour": self.subject.behaviour, "pairs": len(self.subject.clean),
                  "config": asdict(self.config), **result, "seconds": round(time.time() - started, 1),
                  FINGERPRINT_KEY: self.fingerprint(step), "environment": environment_info()}
        write_json_atomic(self._path(step), result)
        write_summary(self.out)
        self._results[step] = result
        return result

    def run(self, step: str) -> dict[str, Any]:
        if step not in STEPS:
            raise unknown_name("analysis step", step, STEPS)
        return getattr(self, step)()

    # ------------------------------------------------------------------- probe
    def probe(self) -> dict[str, Any]:
        if (done := self._done("probe")) is not None:
            return done
        started = time.time()
        clean = stream_features(self.victim, self.subject.clean, batch_size=self.config.batch_size)
        triggered = stream_features(self.victim, self.subject.triggered, batch_size=self.config.batch_size)
        result = train_probes(clean, triggered, self.config.test_fraction, self.config.seed).to_dict()
        title = f"{self.victim.name}: {self.subject.name}"
        plots.probe_accuracy(self.out / "probe-accuracy.png", result["mlp_accuracy"], result["svm_accuracy"],
                             f"backdoor probe, {title}")
        plots.heatmap(self.out / "probe-transfer.png", result["transfer"], f"MLP probe transfer, {title}",
                      "test layer", "train layer", "accuracy")
        return self._write("probe", {**result, "feature": "attn_in at the readout token"}, started)

    # ------------------------------------------------------------------- heads
    def head_means(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean head outputs at the readout token over triggered and clean prompts (cached on disk)."""
        from safetensors import safe_open
        from safetensors.torch import load_file, save_file

        from ..fileio import atomic_file

        if self._means is not None:
            return self._means
        path = self.out / MEANS_FILE
        if path.is_file():
            with safe_open(str(path), framework="pt") as handle:
                stored = json.loads((handle.metadata() or {}).get(FINGERPRINT_KEY, "null"))
            self._check_current(path, stored, "means")
            saved = load_file(str(path))
            self._means = saved["triggered"], saved["clean"]
            return self._means
        bs = self.config.batch_size
        triggered = head_outputs(self.victim, self.subject.triggered, bs).mean(0)
        clean = head_outputs(self.victim, self.subject.clean, bs).mean(0)
        metadata = {FINGERPRINT_KEY: json.dumps(self.fingerprint("means"))}
        with atomic_file(path) as tmp:
            save_file({"triggered": triggered.contiguous(), "clean": clean.contiguous()}, str(tmp), metadata=metadata)
        self._means = triggered, clean
        return self._means

    def _scorer(self) -> BackdoorScorer:
        clean, _, targets = self.subject.asr_rows()
        n = self.config.attribution_prompts
        subject = self.subject
        return BackdoorScorer(self.victim, clean[:n], None if targets is None else targets[:n],
                              subject.target_label, batch_size=self.config.batch_size,
                              max_target_tokens=self.config.max_target_tokens)

    def heads(self) -> dict[str, Any]:
        if (done := self._done("heads")) is not None:
            return done
        started = time.time()
        means, _ = self.head_means()
        scorer = self._scorer()
        result: dict[str, Any] = {"attribution_prompts": len(scorer.prompts),
                                  "base_probability": float(scorer.score().mean())}
        timings = {}
        maps: dict[str, torch.Tensor] = {}
        if self.config.method in ("approx", "both"):
            t = time.time()
            maps["approx"] = attribution_patching(scorer, means)
            timings["approx_seconds"] = round(time.time() - t, 2)
        if self.config.method in ("exact", "both"):
            t = time.time()
            progress = self.out / "acie-progress.json"
            maps["exact"] = exact_acie(scorer, means, checkpoint=progress, fingerprint=self.fingerprint("heads"))
            timings["exact_seconds"] = round(time.time() - t, 2)
        ranked_by = "exact" if "exact" in maps else "approx"
        ranking = rank_heads(maps[ranked_by])
        result.update(timings, ranked_by=ranked_by, ranking=[list(h) for h in ranking],
                      **{f"acie_{k}": v.tolist() for k, v in maps.items()})
        if len(maps) == 2:
            result["agreement"] = rank_agreement(maps["exact"], maps["approx"])
            plots.scatter(self.out / "heads-exact-vs-approx.png", maps["exact"].flatten().tolist(),
                          maps["approx"].flatten().tolist(), "ACIE: exact vs attribution patching",
                          "exact ACIE", "attribution patching")
        for name, scores in maps.items():
            plots.heatmap(self.out / f"heads-{name}.png", scores.tolist(),
                          f"ACIE per head ({name}), {self.victim.name}: {self.subject.name}",
                          "head", "layer", "ACIE", diverging=True)
        return self._write("heads", result, started)

    def _ranking(self) -> list[tuple[int, int]]:
        return [tuple(h) for h in self.heads()["ranking"]]  # type: ignore[misc]

    def top_heads(self) -> list[tuple[int, int]]:
        k = max(1, round(self.victim.spec.total_heads * self.config.top_fraction))
        return self._ranking()[:k]

    # ------------------------------------------------------------------ ablate
    def ablate(self) -> dict[str, Any]:
        done = self._done("ablate")
        if done is not None and ("everywhere" in done or done.get("mode") != "zero"):
            return done
        ranking = self._ranking()
        started = time.time()
        spec = self.victim.spec
        _, clean_means = self.head_means()
        options = {"mode": self.config.ablation_mode, "clean_means": clean_means,
                   "max_new_tokens": self.new_tokens, "batch_size": self.config.batch_size}
        if done is not None:  # an earlier run without the every-position points: add just those
            result, curve = done, done["curve"]
            ks = [p["k"] for p in curve]
        else:
            ks = default_ks(spec.total_heads, self.config.ablation_max_fraction, self.config.ablation_points)
            curve = ablation_curve(self.subject, ranking, ks, **options)
            result = {"mode": self.config.ablation_mode, "curve": curve}
            if self.config.random_control:
                control = random_ranking(spec.num_layers, spec.num_heads, self.config.seed)
                result["random_control"] = ablation_curve(self.subject, control, [ks[-1]], **options)[0]
        at_3 = min(curve, key=lambda p: abs(p["fraction"] - 0.03))
        if self.config.ablation_mode == "zero":  # the weight-removal equivalent, at ~3% and at the maximum
            result["everywhere"] = ablation_curve(self.subject, ranking, sorted({at_3["k"], ks[-1]}),
                                                  everywhere=True, **options)
        base = curve[0]["asr"]
        result["headline"] = {"asr_before": base, "k_near_3pct": at_3["k"], "asr_after_near_3pct": at_3["asr"],
                              "relative_asr_drop_near_3pct": (base - at_3["asr"]) / base if base else None}
        utility = next(k for k in curve[0] if k.startswith("clean_"))
        plots.curves(self.out / "ablation.png", [p["fraction"] * 100 for p in curve],
                     {"ASR (top-k heads ablated)": [p["asr"] for p in curve]},
                     f"head ablation, {self.victim.name}: {self.subject.name}", "% of heads ablated",
                     utility=(utility.replace("_", " "), [p[utility] for p in curve]))
        return self._write("ablate", result, started)

    # ------------------------------------------------------------------ vector
    def vector(self) -> dict[str, Any]:
        done = self._done("vector")
        if done is not None and "random_control" in done:
            return done
        top = self.top_heads()
        started = time.time()
        means, _ = self.head_means()
        vector = backdoor_vector(self.victim, means, top)
        if done is not None:  # an earlier run without the control: add just that
            done["headline"] = _vector_headline(done["sweep"])
            done["random_control"] = self._vector_control(vector, done["headline"])
            return self._write("vector", done, started)
        spec = self.victim.spec
        layers = self.config.layers or list(range(0, spec.num_layers, self.config.layer_stride))
        if any(not 0 <= layer < spec.num_layers for layer in layers):
            raise BackdoorLabError(f"vector layers must be in 0..{spec.num_layers - 1}, got {layers}")
        clean, triggered, _ = self.subject.asr_rows()
        tokens, bs = self.new_tokens, self.config.batch_size
        baseline = {"asr_clean": backdoor_rate(self.subject, clean, max_new_tokens=tokens, batch_size=bs),
                    "asr_triggered": backdoor_rate(self.subject, triggered, max_new_tokens=tokens, batch_size=bs),
                    **clean_utility(self.subject, batch_size=bs)}
        sweep = vector_sweep(self.subject, vector, layers, scale=self.config.vector_scale,
                             max_new_tokens=tokens, batch_size=bs)
        utility = next(k for k in sweep[0] if k.startswith("clean_"))
        plots.curves(self.out / "vector.png", [p["layer"] for p in sweep],
                     {"ASR, clean + v": [p["asr_clean_plus_v"] for p in sweep],
                      "ASR, triggered − v": [p["asr_triggered_minus_v"] for p in sweep]},
                     f"backdoor vector ({len(top)} heads), {self.victim.name}: {self.subject.name}", "layer",
                     utility=(utility.replace("_", " "), [p[utility] for p in sweep]))
        result = {"heads": [list(h) for h in top], "vector_norm": float(vector.norm()), "baseline": baseline,
                  "sweep": sweep, "headline": _vector_headline(sweep)}
        result["random_control"] = self._vector_control(vector, result["headline"])
        return self._write("vector", result, started)

    def _vector_control(self, vector: torch.Tensor, headline: dict[str, Any]) -> dict[str, Any]:
        """The same interventions with a random vector of the same norm, at the best layers: does the
        backdoor vector's direction matter, or would any push that large do?"""
        generator = torch.Generator().manual_seed(self.config.seed)
        noise = torch.randn(vector.shape, generator=generator)
        noise = noise * (vector.norm() / noise.norm())
        clean, triggered, _ = self.subject.asr_rows()
        options = {"max_new_tokens": self.new_tokens, "batch_size": self.config.batch_size}
        on, off = headline["best_layer_on"], headline["best_layer_off"]
        return {"layer_on": on, "asr_clean_plus_random": backdoor_rate(
                    self.subject, clean, add_vector(on, noise, self.config.vector_scale), **options),
                "layer_off": off, "asr_triggered_minus_random": backdoor_rate(
                    self.subject, triggered, add_vector(off, noise, -self.config.vector_scale), **options)}


def _vector_headline(sweep: list[dict[str, Any]]) -> dict[str, Any]:
    """The best layers to switch the backdoor on and off; among equally good layers for switching
    it off, the one that keeps clean utility best (a vector that wrecks the model also "works")."""
    utility = next(k for k in sweep[0] if k.startswith("clean_"))
    sign = 1 if "perplexity" in utility else -1  # lower perplexity / higher accuracy is better
    best_on = max(sweep, key=lambda p: p["asr_clean_plus_v"])
    best_off = min(sweep, key=lambda p: (p["asr_triggered_minus_v"], sign * p[utility]))
    return {"best_layer_on": best_on["layer"], "asr_on": best_on["asr_clean_plus_v"],
            "best_layer_off": best_off["layer"], "asr_off": best_off["asr_triggered_minus_v"],
            f"{utility}_at_best_off": best_off[utility]}


def run_analysis(steps: list[str], model: str | Path | Victim, attack_run: str | Path, out: str | Path, *,
                 options: dict[str, Any] | None = None, device: str = "auto", allow_pickle: bool = False,
                 overwrite: bool = False) -> dict[str, dict[str, Any]]:
    """Load the model and run ``steps`` (names from :data:`STEPS`, or ``all``) into ``out``."""
    from ..models.loading import load_victim
    from ..pipeline import read_attack_run

    chosen = list(STEPS) if steps == ["all"] else steps
    for step in chosen:
        if step not in STEPS:
            raise unknown_name("analysis step", step, (*STEPS, "all"))
    config = AnalysisConfig.from_dict(dict(options or {}))
    if isinstance(model, Victim):
        victim = model
    else:
        _, clean, _ = read_attack_run(attack_run)
        victim = load_victim(model, label_names=clean.label_names, device=device, allow_pickle=allow_pickle)
    analysis = Analysis(victim, attack_run, out, config, overwrite=overwrite)
    return {step: analysis.run(step) for step in chosen}
