"""Summarise `mutmut results --all true` into the committed mutation report (issue 15).

Usage: python benchmarks/mutation_report.py RESULTS_TXT SECONDS [EQUIVALENT_MD]
Prints Markdown: per module, mutants killed / survived / other, the score over logic mutants
(mutants whose diff changes more than the text of a string literal), and every survivor. Survivors
named in EQUIVALENT_MD (default: equivalent.md next to RESULTS_TXT; lines "- `mutant`: why") are
equivalent mutants: listed with the reason and left out of the score, like string-only ones. Run
from the mutmut working directory so `mutmut show` can print each survivor's diff.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter, defaultdict
from datetime import date

# Mutant names are module.function: a prefix groups a whole package (moe_registry.planner.plan.x__plan__mutmut_1
# and moe_registry.planner.x_plan_model__mutmut_1, from planner/__init__.py, both count for moe_registry.planner;
# likewise moe_registry.selection.rules.x_evaluate__mutmut_1 and moe_registry.selection.x__held__mutmut_1).
MODULES = tuple(os.environ.get("MUTATION_MODULES", "moe_registry.selection moe_registry.schemas.capability "
                                                   "moe_registry.planner moe_registry.quant_config "
                                                   "moe_registry.engines.sglang.names").split())
KILLED = {"killed", "timeout"}  # a timeout means the mutant changed behaviour (an endless loop)


_LITERAL = re.compile(r"""(?:\b[rRbBuUfF]{1,2})?("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')""")


# A literal compared, looked up or matched is logic even when it reads like a phrase.
_COMPARED = re.compile(r"STR\s*(?:not\s+in|in|==|!=)\s|(?:==|!=)\s*STR|\.(?:startswith|endswith|removeprefix|removesuffix|"
                       r"get|index|count|split|replace)\(\s*(?:\(\s*)?STR|\[STR\]")


def _literals(line: str, in_fstring: bool = False) -> tuple[str, list[tuple[str, bool]]]:
    """(the line with each string literal replaced by STR, the literals' (text, is-message) in order).
    An f-string's {expressions} stay code; a literal inside one is message text (it is interpolated)."""
    texts: list[tuple[str, bool]] = []

    def blank(m: re.Match) -> str:
        prefix, body = m.group(0)[:-len(m.group(1))], m.group(1)[1:-1]
        if "f" not in prefix.lower():
            texts.append((body, in_fstring))
            return "STR"
        texts.append((re.sub(r"\{[^{}]*\}", "{}", body), True))
        codes = []
        for expr in re.findall(r"\{([^{}]*)\}", body):
            code, inner = _literals(expr, in_fstring=True)
            codes.append(code)
            texts.extend(inner)
        return "STR(" + "|".join(codes) + ")"

    return _LITERAL.sub(blank, line.strip()), texts


def diff_of(mutant: str) -> str:
    try:
        return subprocess.run(["mutmut", "show", mutant], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""


def string_only(diff: str) -> bool:
    """True when the mutant changes only the wording of messages: every changed line keeps its code,
    and every changed literal was a phrase (it holds a space). A changed word-like literal (a config
    key, an enum value, a backend id) is logic: it is looked up, not shown."""
    removed = [ln[1:] for ln in diff.splitlines() if ln.startswith("-") and not ln.startswith("---")]
    added = [ln[1:] for ln in diff.splitlines() if ln.startswith("+") and not ln.startswith("+++")]
    if not removed or len(removed) != len(added):
        return False
    for before, after in zip(removed, added):
        (code_b, texts_b), (code_a, texts_a) = _literals(before), _literals(after)
        if code_b != code_a or len(texts_b) != len(texts_a) or _COMPARED.search(code_b):
            return False
        if any(b != a and not (message or " " in b) for (b, message), (a, _) in zip(texts_b, texts_a)):
            return False
    return True


def equivalents(path: str) -> dict[str, str]:
    """mutant name (with or without its module prefix) -> why it cannot change behaviour."""
    out: dict[str, str] = {}
    if os.path.exists(path):
        for line in open(path, encoding="utf-8"):
            m = re.match(r"\s*[-*]\s*`([^`]+)`\s*[:\-—]*\s*(.*)$", line)
            if m:
                out[m.group(1).strip()] = m.group(2).strip()
    return out


def main() -> None:
    results_path, seconds = sys.argv[1], int(sys.argv[2])
    eq_path = sys.argv[3] if len(sys.argv) > 3 else os.path.join(os.path.dirname(results_path), "equivalent.md")
    equivalent = equivalents(eq_path)
    rows = []
    for line in open(results_path, encoding="utf-8"):
        m = re.match(r"\s*(\S+): (\S.*)$", line)
        if m and m.group(1).startswith(MODULES):
            rows.append((m.group(1), m.group(2).strip()))
    by_module: dict[str, Counter] = defaultdict(Counter)
    survivors: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
    for name, status in rows:
        module = next(mod for mod in MODULES if name.startswith(mod + "."))
        if status == "survived":
            diff = diff_of(name)
            short = name[len(module) + 1:]
            why = equivalent.get(name, equivalent.get(short))
            kind = "string-only" if string_only(diff) else f"equivalent: {why}" if why else "logic"
            survivors[module].append((name, diff, kind))
            by_module[module][f"survived ({kind.split(':')[0]})"] += 1
        else:
            by_module[module]["killed" if status in KILLED else status] += 1
    print(f"# Mutation testing of the decision core ({date.today().isoformat()}, mutmut 3.8.1, {seconds} s)\n")
    print("Logic score = killed / (killed + logic survivors). String-only survivors change only the text "
          "of a message; equivalent survivors cannot change behaviour (reason given for each, from "
          "equivalent.md). Both are listed but not scored. \"other\" is mutmut's no-tests / skipped / "
          "suspicious count.\n")
    print("| module | mutants | killed | survived (logic) | survived (equivalent) | survived (string-only) | other "
          "| logic score |")
    print("|---|---|---|---|---|---|---|---|")
    named = ("killed", "survived (logic)", "survived (string-only)", "survived (equivalent)")
    for module in MODULES:
        c = by_module[module]
        killed, logic, text, eq = (c[k] for k in named)
        other = sum(v for k, v in c.items() if k not in named)
        total = killed + logic + text + eq + other
        score = f"{100 * killed / (killed + logic):.1f} %" if killed + logic else "n/a"
        print(f"| `{module}` | {total} | {killed} | {logic} | {eq} | {text} | {other} | {score} |")
    for module in MODULES:
        if not survivors[module]:
            continue
        print(f"\n## Survivors in `{module}`\n")
        for name, diff, kind in survivors[module]:
            changed = [ln for ln in diff.splitlines() if ln[:1] in "+-" and ln[:3] not in ("+++", "---")]
            change = " / ".join(s.strip() for s in changed)[:200].replace("`", "'")
            print(f"- `{name}` ({kind}): `{change}`")


if __name__ == "__main__":
    main()
