"""The page every HTML report shares: its style, its script and the Content-Security-Policy that
allows those two by hash and nothing else (docs/threat-model.md #31). What goes into the page is
built in htmlfmt.py from escaped fragments only."""

from __future__ import annotations

import base64
import hashlib
import html
from collections.abc import Iterable

from inspector import __version__
from inspector.units import printable

Fragment = str  # HTML already escaped: only these are joined into the page


def text(value: object) -> Fragment:
    """Text from anywhere (a file, a path, a number) as HTML text: control characters as \\xNN, as
    the terminal shows them, then escaped (quotes too: the same text may sit in an attribute)."""
    return html.escape(printable(str(value)), quote=True)


_STYLE = """
:root{color-scheme:light dark;--fg:#1f2328;--bg:#fff;--mute:#59636e;--line:#d1d9e0;--head:#f6f8fa;
--err:#cf222e;--warn:#9a6700;--info:#0969da;--ok:#1a7f37;--old:#0969da;--new:#bf3989}
@media (prefers-color-scheme:dark){:root{--fg:#e6edf3;--bg:#0d1117;--mute:#9198a1;--line:#3d444d;--head:#151b23;
--err:#f85149;--warn:#d29922;--info:#4493f8;--ok:#3fb950;--old:#4493f8;--new:#db61a2}}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:var(--fg);background:var(--bg);margin:0 auto;padding:1rem 1.5rem;max-width:78rem}
h1{font-size:1.35rem;margin:.2rem 0 .8rem}h2{font-size:1.1rem;margin:1.6rem 0 .5rem}h3{font-size:1rem;margin:1rem 0 .4rem}
code{font:12.5px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;overflow-wrap:anywhere}
code.cmd .flag{white-space:nowrap}
code.cmd{display:inline;background:var(--head);border:1px solid var(--line);border-radius:4px;padding:0 .3em;white-space:pre-wrap;overflow-wrap:break-word}
.error{color:var(--err)}.warning{color:var(--warn)}.info{color:var(--info)}.ok,.passes{color:var(--ok)}.fails{color:var(--err)}
.verdict{font-weight:600}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:.15rem 1rem;margin:.5rem 0}
dl.facts dt{font-weight:600}dl.facts dd{margin:0;overflow-wrap:anywhere}
table{border-collapse:collapse;margin:.4rem 0 1rem;width:100%}
th,td{border:1px solid var(--line);padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:var(--head)}td.n,th.n{text-align:right;white-space:nowrap}
th button{all:unset;cursor:pointer;display:block}th button:focus-visible{outline:2px solid var(--info)}
th[aria-sort=ascending] button::after{content:" \\25b2"}th[aria-sort=descending] button::after{content:" \\25bc"}
caption{text-align:left;font-weight:600;padding:.2rem 0}
td.sev{font-weight:600;white-space:nowrap}
.fix{margin-top:.3rem}.fix b{color:var(--ok)}
button.copy{font-size:11px;margin-left:.3rem;padding:0 .4rem;cursor:pointer}
input.filter{margin:.2rem 0;padding:.2rem .4rem;width:20rem;max-width:100%}
ul.notes{padding-left:1.2rem}ul.notes li.warning{color:var(--warn)}
figure{margin:.5rem 0 1rem}figcaption{font-weight:600;margin-bottom:.2rem}
svg text{font:11px system-ui,sans-serif;fill:var(--fg)}svg .old{fill:var(--old)}svg .new{fill:var(--new)}svg .axis{stroke:var(--line)}
details{margin:.4rem 0}summary{cursor:pointer}
footer{color:var(--mute);margin-top:2rem;font-size:12px}
"""

# Sorting: a header's button orders the rows by that column (data-v when a cell has one, e.g. raw
# bytes under "1.2 MiB"), ascending then descending; Intl.Collator's numeric order puts layers.10
# after layers.9. The filter box hides the rows whose first cell lacks the text typed.
_SCRIPT = """
(() => {
  const collator = new Intl.Collator(undefined, {numeric: true, sensitivity: "base"});
  const value = (row, i) => { const c = row.cells[i]; return c ? (c.dataset.v ?? c.textContent) : ""; };
  for (const table of document.querySelectorAll("table.sortable")) {
    const heads = Array.from(table.tHead.rows[0].cells);
    heads.forEach((th, i) => {
      const button = document.createElement("button");
      button.type = "button";
      button.append(...th.childNodes);
      th.append(button);
      button.addEventListener("click", () => {
        const dir = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
        heads.forEach(h => h.removeAttribute("aria-sort"));
        th.setAttribute("aria-sort", dir > 0 ? "ascending" : "descending");
        const num = th.classList.contains("n");
        const body = table.tBodies[0];
        const rows = Array.from(body.rows);
        rows.sort((a, b) => {
          const x = value(a, i), y = value(b, i);
          return dir * (num ? (parseFloat(x) || 0) - (parseFloat(y) || 0) : collator.compare(x, y));
        });
        const fragment = document.createDocumentFragment();
        rows.forEach(r => fragment.append(r));
        body.append(fragment);
      });
    });
  }
  for (const input of document.querySelectorAll("input.filter")) {
    const table = document.getElementById(input.dataset.table);
    input.hidden = false;
    input.addEventListener("input", () => {
      const q = input.value.toLowerCase();
      for (const row of table.tBodies[0].rows) row.hidden = !row.cells[0].textContent.toLowerCase().includes(q);
    });
  }
  for (const code of document.querySelectorAll("code.cmd")) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "copy";
    button.textContent = "copy";
    button.addEventListener("click", async () => {
      try {
        await navigator.clipboard.writeText(code.textContent);
        button.textContent = "copied";
      } catch {
        // No clipboard (no permission, an old browser): select the command for Ctrl+C.
        const range = document.createRange();
        range.selectNodeContents(code);
        const selection = getSelection();
        selection.removeAllRanges();
        selection.addRange(range);
        button.textContent = "selected: press Ctrl+C";
      }
    });
    code.after(button);
  }
})();
"""


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


# default-src 'none' forbids every fetch (scripts, styles, images, fonts, frames, connections);
# only the page's own style and script run, named by hash, and SVG drawn inline needs no source.
CSP = (f"default-src 'none'; style-src {_sha256(_STYLE)}; script-src {_sha256(_SCRIPT)}; img-src data:; "
       "base-uri 'none'; form-action 'none'")


def page(title: str, body: Iterable[Fragment], command: str | None = None) -> str:
    """The one skeleton every report shares: head with the policy, style and script, then ``body``."""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{CSP}\">\n"
        "<meta name=\"referrer\" content=\"no-referrer\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        "<meta name=\"generator\" content=\"lora-inspector " + text(__version__) + "\">\n"
        f"<title>{text(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n<main>\n"
        + "\n".join(body)
        + f"\n</main>\n<footer>lora-inspector {text(__version__)}" + (f" {text(command)}" if command else "") + "</footer>\n"
        f"<script>{_SCRIPT}</script>\n</body>\n</html>\n"
    )
