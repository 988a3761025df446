"""Noun-phrase frequency statistics before and after CC3M filtering (the paper's Figure 7): a CSV of every phrase,
a Markdown summary, and a PNG plot of frequency against frequency rank (matplotlib, the optional `plot` extra;
without it the plot is skipped with a message and the tables are still written).

    files, messages = write_statistics(before, after, n_before, n_after, "cc3m_work/")
"""

import csv
import statistics
from collections import Counter
from pathlib import Path

CSV_FILE, MARKDOWN_FILE, PLOT_FILE = "np_frequencies.csv", "np_statistics.md", "np_frequencies.png"


def summary_rows(counts: Counter, captions: int, min_frequency: int, max_per_phrase: int) -> list[tuple[str, str]]:
    frequencies = sorted(counts.values())
    top = counts.most_common(1)
    return [
        ("captions", f"{captions:,}"),
        ("unique noun phrases", f"{len(counts):,}"),
        (f"noun phrases with frequency >= {min_frequency}", f"{sum(f >= min_frequency for f in frequencies):,}"),
        (f"noun phrases with frequency > {max_per_phrase}", f"{sum(f > max_per_phrase for f in frequencies):,}"),
        ("median frequency", f"{statistics.median(frequencies):g}" if frequencies else "-"),
        ("most frequent noun phrase", f"{top[0][0]} ({top[0][1]:,})" if top else "-"),
    ]


def ranked_cell(common: list[tuple[str, int]], rank: int) -> str:
    return f"{common[rank][0]} ({common[rank][1]:,})" if rank < len(common) else ""


def markdown_report(before: Counter, after: Counter, captions_before: int, captions_after: int,
                    min_frequency: int, max_per_phrase: int, top: int = 10) -> str:
    rows_before = summary_rows(before, captions_before, min_frequency, max_per_phrase)
    rows_after = summary_rows(after, captions_after, min_frequency, max_per_phrase)
    lines = ["| | before filtering | after filtering |", "|---|---:|---:|"]
    lines += [f"| {name} | {b} | {a} |" for (name, b), (_, a) in zip(rows_before, rows_after)]
    lines += ["", f"Top {top} noun phrases (captions containing them):", "",
              "| rank | before filtering | after filtering |", "|---:|---|---|"]
    common_before, common_after = before.most_common(top), after.most_common(top)
    for rank in range(max(len(common_before), len(common_after))):
        lines.append(f"| {rank + 1} | {ranked_cell(common_before, rank)} | {ranked_cell(common_after, rank)} |")
    return "\n".join(lines) + "\n"


def write_csv(before: Counter, after: Counter, path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["noun_phrase", "before", "after"])
        for phrase, count in sorted(before.items(), key=lambda item: (-item[1], item[0])):
            writer.writerow([phrase, count, after.get(phrase, 0)])


def write_plot(before: Counter, after: Counter, path: Path) -> str | None:
    """Frequency against rank, log scale, before and after; returns a message when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return (f"matplotlib is not installed, so {path.name} was not drawn "
                f"(pip install 'transformers-llava[plot]'); the tables have the same numbers")
    figure, axes = plt.subplots(figsize=(7, 4))
    for counts, label in ((before, "Before"), (after, "After")):
        frequencies = sorted(counts.values(), reverse=True)
        axes.plot(range(1, len(frequencies) + 1), frequencies,
                  label=f"{label}: {len(frequencies):,} unique noun phrases")
    axes.set(xscale="log", yscale="log", xlabel="noun phrases, by frequency rank",
             ylabel="captions containing the noun phrase", title="Noun-phrase frequencies, before and after filtering")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return None


def write_statistics(before: Counter, after: Counter, captions_before: int, captions_after: int, out_dir: Path, *,
                     min_frequency: int = 3, max_per_phrase: int = 100, plot: bool = True
                     ) -> tuple[dict[str, Path], list[str]]:
    """Write the CSV, Markdown and (if asked and possible) PNG; returns ({what: path}, messages)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"frequency table (CSV)": out_dir / CSV_FILE, "summary (Markdown)": out_dir / MARKDOWN_FILE}
    messages = []
    write_csv(before, after, files["frequency table (CSV)"])
    files["summary (Markdown)"].write_text(
        markdown_report(before, after, captions_before, captions_after, min_frequency, max_per_phrase),
        encoding="utf-8")
    if plot:
        message = write_plot(before, after, out_dir / PLOT_FILE)
        if message:
            messages.append(message)
        else:
            files["plot (PNG)"] = out_dir / PLOT_FILE
    return files, messages
