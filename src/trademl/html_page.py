"""The page both HTML reports (the backtest's and the monitor's) are written as.

One style, the tiny error collector that the browser tests read (``#report-status``
counts script errors and rendered plots), plotly.js inlined once (no CDN), tables of
class ``metrics``, and an atomic write.
"""

from __future__ import annotations

import html
import os
import tempfile
from pathlib import Path

ERROR_COLLECTOR = """<script>
window.__reportErrors = [];
window.addEventListener('error', function (e) { window.__reportErrors.push('error: ' + e.message); });
window.addEventListener('unhandledrejection', function (e) { window.__reportErrors.push('rejection: ' + e.reason); });
(function () {
  var original = console.error;
  console.error = function () {
    window.__reportErrors.push('console.error: ' + Array.prototype.join.call(arguments, ' '));
    return original.apply(console, arguments);
  };
})();
window.addEventListener('load', function () {
  setTimeout(function () {
    var plots = document.querySelectorAll('.js-plotly-plot').length;
    var rendered = document.querySelectorAll('.js-plotly-plot .main-svg').length;
    var status = document.getElementById('report-status');
    status.setAttribute('data-errors', String(window.__reportErrors.length));
    status.setAttribute('data-plots', String(plots));
    status.setAttribute('data-rendered-svgs', String(rendered));
    status.textContent = 'errors: ' + window.__reportErrors.length + '; plots: ' + plots +
      (window.__reportErrors.length ? '\\n' + window.__reportErrors.join('\\n') : '');
  }, 0);
});
</script>"""

STYLE = """<style>
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px; color: #222; }
table.metrics { border-collapse: collapse; font-size: 0.85em; }
table.metrics th, table.metrics td { border-bottom: 1px solid #ddd; padding: 0.3em 0.6em; text-align: right; }
table.metrics th:first-child, table.metrics td:first-child { text-align: left; }
.note { color: #666; font-size: 0.9em; }
#report-status { color: #999; font-size: 0.75em; }
</style>"""


def figures_html(figures) -> str:
    """``[(heading, plotly figure), ...]`` as an ``<h2>`` and a div each; plotly.js is inlined
    in the first only."""
    parts = []
    for i, (heading, fig) in enumerate(figures):
        div = fig.to_html(full_html=False, include_plotlyjs=(i == 0), config={"displaylogo": False})
        parts.append(f"<h2>{html.escape(heading)}</h2>{div}")
    return "".join(parts)


def metrics_table(header, rows) -> str:
    """A ``metrics`` table: ``header`` as plain texts, ``rows`` as lists of cell HTML."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in header)
    body = "".join(f"<tr>{''.join(f'<td>{cell}</td>' for cell in row)}</tr>" for row in rows)
    return f'<table class="metrics"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def write_page(path, title: str, body: str, *, head: str = "") -> Path:
    """A self-contained page titled ``title``: the style (plus ``head``), ``body`` under the
    ``<h1>``, the status line the error collector fills; written atomically. Returns the path."""
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
{ERROR_COLLECTOR}
{STYLE}{head}</head>
<body>
<h1>{html.escape(title)}</h1>
{body}
<pre id="report-status">not loaded</pre>
</body></html>
"""
    out = Path(path)
    atomic_write_text(out, page)
    return out


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder: a reader sees
    the old page or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
