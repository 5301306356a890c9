"""The report as one self-contained HTML page: the Markdown that `tracking.report` writes, rendered by a small
converter for exactly the constructs it uses (headings, paragraphs, bullet lists, pipe tables, <details>,
fenced code, images), with every figure embedded as base64 so the page opens alone from the MLflow UI.
"""
from __future__ import annotations

import base64
import html
import re
from pathlib import Path

_IMG = re.compile(r"^!\[([^\]]*)\]\(([^)]+)\)$")
_CODE = re.compile(r"`([^`]+)`")

STYLE = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:12px;margin:1em 0}th,td{border:1px solid #ccc;padding:2px 6px;
text-align:right}th{background:#f3f3f3}img{max-width:100%;border:1px solid #eee}pre{background:#f7f7f7;
padding:.5em;overflow-x:auto;font-size:12px}code{background:#f3f3f3;padding:0 2px}"""


def _inline(text: str) -> str:
    return _CODE.sub(lambda m: f"<code>{m.group(1)}</code>", html.escape(text, quote=False))


def _image(alt: str, src: str, folder: Path) -> str:
    path = folder / src
    if not path.is_file() or "/" in src or src.startswith(".."):
        return f"<p>[missing figure {html.escape(src)}]</p>"
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<p><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></p>'


def markdown_to_html(md: str, folder: Path, title: str = "permsym report") -> str:
    out, para, i = [], [], 0
    lines = md.splitlines()

    def flush():
        if para:
            out.append("<p>" + _inline(" ".join(para)) + "</p>")
            para.clear()

    while i < len(lines):
        ln = lines[i]
        s = ln.strip()
        if not s:
            flush()
        elif s.startswith("#"):
            flush()
            level = len(s) - len(s.lstrip("#"))
            out.append(f"<h{level}>{_inline(s[level:].strip())}</h{level}>")
        elif s.startswith("```"):
            flush()
            j = i + 1
            while j < len(lines) and not lines[j].strip().startswith("```"):
                j += 1
            out.append("<pre>" + html.escape("\n".join(lines[i + 1:j])) + "</pre>")
            i = j
        elif s.startswith("|"):
            flush()
            rows = []
            while i < len(lines) and lines[i].strip().startswith("|"):
                rows.append([c.strip() for c in lines[i].strip().strip("|").split("|")])
                i += 1
            i -= 1
            body = [r for r in rows[1:] if not all(set(c) <= {"-", ":"} for c in r)]
            out.append("<table><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in rows[0]) + "</tr>"
                       + "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in body)
                       + "</table>")
        elif s.startswith("- "):
            flush()
            items = []
            while i < len(lines) and lines[i].strip().startswith("- "):
                items.append(lines[i].strip()[2:])
                i += 1
            i -= 1
            out.append("<ul>" + "".join(f"<li>{_inline(t)}</li>" for t in items) + "</ul>")
        elif s.startswith(("<details>", "</details>")):
            flush()
            out.append(s)                          # written by tracking.report itself, not user text
        elif _IMG.match(s):
            flush()
            m = _IMG.match(s)
            out.append(_image(m.group(1), m.group(2), folder))
        else:
            para.append(s)
        i += 1
    flush()
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(out) + "\n</body></html>\n")


def write_html(md_path: Path) -> Path:
    """report.md -> report.html beside it (figures embedded). Returns the .html path."""
    md_path = Path(md_path)
    text = md_path.read_text()
    first = text.splitlines()[0].lstrip("# ").strip() if text else "permsym report"
    out = md_path.with_suffix(".html")
    out.write_text(markdown_to_html(text, md_path.parent, first))
    return out
