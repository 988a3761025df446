"""The LLaVA-Bench report: relative scores per category and overall, as JSON and as a Markdown table.

    from transformers_llava.evaluation.llava_bench_report import summarize, report_markdown
    summary = summarize(items, reviews, failures)
    print(report_markdown(summary, "LLaVA-13B"))

For each category (conv, detail, complex) and for all questions: the mean judge score of the reference answers
(Assistant 1) and of the candidate's (Assistant 2), and the relative score mean(candidate) / mean(reference) x 100 —
a ratio of means, as the original `summarize_gpt_review.py` computed it (it rounded both means to three decimals
first; here they are used unrounded, which can move the relative score's last decimal). Questions that were not
reviewed are counted, never scored: `failures` (the judge gave no readable scores or its requests failed) and
`unanswered` (no answer from the candidate yet).
"""

from statistics import fmean

from .llava_bench_data import CATEGORIES

LABELS = {"conv": "Conversation", "detail": "Detail description", "complex": "Complex reasoning", "all": "All"}


def summarize(items: list[dict], reviews: dict[str, dict], answers: dict[str, dict]) -> dict:
    """`{category: {n, reference, candidate, relative, failures, unanswered}}` for each category and `all`."""
    summary = {}
    for category in CATEGORIES + ("all",):
        selected = [item for item in items if category in ("all", item["category"])]
        scored = [reviews[str(item["question_id"])]["tuple"] for item in selected if str(item["question_id"]) in reviews]
        answered = [item for item in selected if str(item["question_id"]) in answers]
        reference = fmean(s[0] for s in scored) if scored else None
        candidate = fmean(s[1] for s in scored) if scored else None
        summary[category] = {
            "n": len(scored), "reference": reference, "candidate": candidate,
            "relative": candidate / reference * 100 if scored and reference else None,
            "failures": len(answered) - len(scored), "unanswered": len(selected) - len(answered),
        }
    return summary


def report_markdown(summary: dict, name: str = "candidate") -> str:
    """One row per category and `All`: relative score, both absolute means, how many were scored or failed."""
    lines = [f"| {name} | relative score | reference mean | candidate mean | scored | failures | unanswered |",
             "|---|---|---|---|---|---|---|"]
    for category, row in summary.items():
        if row["n"]:
            cells = [f"{row['relative']:.1f}", f"{row['reference']:.2f}", f"{row['candidate']:.2f}"]
        else:
            cells = ["–", "–", "–"]
        lines.append(f"| {LABELS[category]} | " + " | ".join(cells)
                     + f" | {row['n']} | {row['failures']} | {row['unanswered']} |")
    return "\n".join(lines) + "\n"
