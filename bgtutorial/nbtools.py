"""Notebook housekeeping: execute the tutorials with their outputs, and check committed outputs.

``python -m bgtutorial.nbtools execute notebooks/*.ipynb`` (``make notebooks``) runs each notebook
top to bottom in *full* mode on the machine at hand (the CPU default without a GPU; CUB-200 where
a GPU and the data are there), in its own folder, and writes the outputs into the file. Each code
cell records the hash of the source it ran from (``metadata.bgtutorial.source_sha256``), so a later
edit of the cell shows up as a stale output (:func:`stale_cells`).

``python -m bgtutorial.nbtools check notebooks/*.ipynb`` lists stale cells and unclean outputs
(warnings, tracebacks, figures kept only as ``<Figure ...>`` text, stray values such as a bare
``[]``); it exits 1 when it finds any. ``strip`` removes every output. A file that is not a
notebook (not JSON, not a notebook's structure, odd ``bgtutorial`` metadata) gets one ``error:``
line, the other files are still handled, and the exit code is 2; so does a notebook that ``strip`` or
``execute`` could not write back (read-only), checked before it is run.

Execution also keeps a record of how long the whole notebook took, on which machine and when
(``metadata.bgtutorial.executed`` of the notebook), and writes that time wherever a notebook or the
README marks it (``<!-- time:NAME -->...<!-- /time -->``, NAME the notebook's file stem), so the
notebooks' "Time" lines and the README's table state the one measured figure (:func:`time_marks`;
``check`` reports a mark that disagrees with the record).
"""
from __future__ import annotations

import hashlib
import os
import re
import sys
import time
from pathlib import Path

__all__ = ["strip_notebook", "has_outputs", "source_hash", "stale_cells", "output_problems",
           "execute_notebook", "export_figure", "META_KEY", "format_record", "fill_time_marks", "time_marks",
           "execution_record", "time_problems"]

#: the cell metadata key under which execution records the hash of the source
META_KEY = "bgtutorial"

_FIGURE_TEXT = re.compile(r"^<Figure size [^>]*>$")
_STRAY = {"[]", "()", "{}", "None", "''", '""'}
#: ``<!-- time:01_baseline -->2.4 min on ...<!-- /time -->``: a measured time filled in from the record
_TIME_MARK = re.compile(r"<!-- time:(?P<name>[\w.-]+) -->(?P<text>.*?)<!-- /time -->")
_WARNING = re.compile(r"\b\w*Warning\b|IProgress not found|Traceback \(most recent call last\)")


def source_hash(source: str) -> str:
    """SHA-256 (hex, first 16 digits) of a cell's source, as executed."""
    return hashlib.sha256(source.encode("utf-8")).hexdigest()[:16]


def _read(path_or_nb):
    import nbformat

    return nbformat.read(path_or_nb, as_version=4) if isinstance(path_or_nb, (str, Path)) else path_or_nb


def strip_notebook(path: str | Path) -> bool:
    """Remove outputs, execution counts and source hashes in place; return True when the file changed."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    changed = False
    for cell in nb.cells:
        if cell.cell_type == "code":
            if cell.outputs or cell.execution_count is not None or META_KEY in cell.metadata:
                changed = True
            cell.outputs, cell.execution_count = [], None
            cell.metadata.pop(META_KEY, None)
    if changed:
        nbformat.write(nb, path)
    return changed


def has_outputs(path) -> bool:
    """True when any code cell of the notebook carries outputs."""
    nb = _read(path)
    return any(c.cell_type == "code" and c.outputs for c in nb.cells)


def stale_cells(path) -> list[str]:
    """Why the notebook's committed outputs cannot be trusted, one line per problem ([] when fine).

    A notebook with no output at all is stale as a whole; a code cell is stale when it carries
    outputs but no recorded hash, or a hash that is not its current source's (edited since).
    A cell with no output and the current hash is fine (it printed nothing).
    """
    nb = _read(path)
    name = Path(path).name if isinstance(path, (str, Path)) else "notebook"
    code = [(i, c) for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    if not any(c.outputs for _, c in code):
        return [f"{name}: no outputs at all; run `make notebooks`"]
    out = []
    for i, c in code:
        recorded = c.metadata.get(META_KEY, {}).get("source_sha256")
        if recorded is None and c.outputs:
            out.append(f"{name} cell {i}: outputs with no recorded source hash; run `make notebooks`")
        elif recorded is not None and recorded != source_hash(c.source):
            out.append(f"{name} cell {i}: source changed since its outputs were made "
                       f"(starts {c.source.strip()[:40]!r}); run `make notebooks`")
    return out


def output_problems(path) -> list[str]:
    """Outputs a reader should not see: warnings or tracebacks, errors, figures kept only as text,
    and stray values (a bare ``[]`` or ``None`` as a cell's result). One line per problem."""
    nb = _read(path)
    name = Path(path).name if isinstance(path, (str, Path)) else "notebook"
    out = []
    for i, c in enumerate(nb.cells):
        if c.cell_type != "code":
            continue
        for o in c.outputs:
            kind = o.get("output_type")
            if kind == "error":
                out.append(f"{name} cell {i}: error {o.get('ename')}: {o.get('evalue', '')[:80]}")
            elif kind == "stream":
                text = o.get("text", "")
                if o.get("name") == "stderr" and text.strip():
                    out.append(f"{name} cell {i}: stderr output {text.strip()[:80]!r}")
                elif _WARNING.search(text):
                    out.append(f"{name} cell {i}: a warning in the output {text.strip()[:80]!r}")
            elif kind in ("execute_result", "display_data"):
                data = o.get("data", {})
                text = str(data.get("text/plain", "")).strip()
                if "image/png" not in data and _FIGURE_TEXT.match(text):
                    out.append(f"{name} cell {i}: a figure kept only as text ({text}); "
                               "is MPLBACKEND=Agg set in the environment?")
                elif kind == "execute_result" and text in _STRAY:
                    out.append(f"{name} cell {i}: a stray value {text} as the cell's result "
                               "(end the line with ';' or assign it)")
                for mime in data:
                    if mime.startswith("image/") and mime != "image/png":
                        out.append(f"{name} cell {i}: a {mime} figure (PNG only)")
    return out


def execute_notebook(path: str | Path, timeout: int | None = None, kernel_name: str = "python3") -> list[str]:
    """Run a notebook top to bottom in full mode, in its own folder; write outputs and source hashes.

    The kernel sees the caller's environment, minus ``BGT_SMOKE`` (full mode) and ``MPLBACKEND``
    (with ``Agg`` the kernel keeps no figure, only ``<Figure ...>`` text), plus ``TQDM_DISABLE=1``
    (progress bars are not results). A cell that raises stops the run and nothing is written.
    Returns :func:`output_problems` of the executed notebook.
    """
    import nbformat
    from nbclient import NotebookClient

    import datetime
    import platform

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    t0 = time.perf_counter()
    saved = {k: os.environ.get(k) for k in ("BGT_SMOKE", "MPLBACKEND", "TQDM_DISABLE")}
    os.environ.pop("BGT_SMOKE", None)
    os.environ.pop("MPLBACKEND", None)
    os.environ["TQDM_DISABLE"] = "1"
    try:
        client = NotebookClient(nb, timeout=timeout, kernel_name=kernel_name,
                                resources={"metadata": {"path": str(path.parent.resolve())}})
        client.execute()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.metadata[META_KEY] = {"source_sha256": source_hash(cell.source)}
    import torch

    where = (torch.cuda.get_device_name(0) if torch.cuda.is_available()
             else f"{os.cpu_count()} CPU cores ({platform.machine()})")
    nb.metadata[META_KEY] = {"executed": {"seconds": round(time.perf_counter() - t0, 1), "machine": where,
                                          "date": datetime.date.today().isoformat()}}
    fill_time_marks(nb, {path.stem: nb.metadata[META_KEY]["executed"]})
    nbformat.write(nb, path)
    return output_problems(path)


def format_record(record: dict) -> str:
    """``{"seconds": 143.2, "machine": "2 CPU cores (x86_64)", "date": "2026-12-03"}`` -> "2.4 min on 2 CPU
    cores (x86_64), 2026-12-03": how a notebook's measured time reads in its "Time" line and the README."""
    s = float(record["seconds"])
    took = f"{s:.0f} s" if s < 90 else f"{s / 60:.1f} min"
    return f"{took} on {record['machine']}, {record['date']}"


def _fill(text: str, records: dict[str, dict]) -> str:
    return _TIME_MARK.sub(lambda m: (f"<!-- time:{m['name']} -->{format_record(records[m['name']])}<!-- /time -->"
                                     if m["name"] in records else m[0]), text)


def fill_time_marks(target, records: dict[str, dict]) -> bool:
    """Write each record's time into the marks that name it, in a notebook's markdown cells or a text file
    (the README); return True when something changed."""
    if isinstance(target, (str, Path)):
        text = Path(target).read_text(encoding="utf-8")
        new = _fill(text, records)
        if new != text:
            Path(target).write_text(new, encoding="utf-8")
        return new != text
    changed = False
    for cell in target.cells:
        if cell.cell_type == "markdown" and "<!-- time:" in cell.source:
            new = _fill(cell.source, records)
            changed |= new != cell.source
            cell.source = new
    return changed


def time_marks(text: str) -> list[tuple[str, str]]:
    """The ``(name, text)`` of every time mark in ``text``."""
    return [(m["name"], m["text"]) for m in _TIME_MARK.finditer(text)]


def execution_record(path_or_nb) -> dict | None:
    """The record :func:`execute_notebook` left in a notebook (seconds, machine, date), or ``None``."""
    return _read(path_or_nb).metadata.get(META_KEY, {}).get("executed")


def time_problems(path: str | Path, readme: str | Path | None = None) -> list[str]:
    """Time marks in the notebook (and in ``readme``, for this notebook) that disagree with its record."""
    nb = _read(path)
    name, record = Path(path).stem, execution_record(nb)
    texts = [("", c.source) for c in nb.cells if c.cell_type == "markdown"]
    if readme is not None and Path(readme).is_file():
        texts.append((f" ({Path(readme).name})", Path(readme).read_text(encoding="utf-8")))
    out = []
    for where, text in texts:
        for mark, shown in time_marks(text):
            if mark != name:
                continue
            if record is None:
                out.append(f"{Path(path).name}{where}: a time mark but no execution record; run `make notebooks`")
            elif shown != format_record(record):
                out.append(f"{Path(path).name}{where}: time mark says {shown!r}, the execution record "
                           f"{format_record(record)!r}; run `make notebooks`")
    return out


def export_figure(path: str | Path, tag: str, out: str | Path, index: int = 0) -> Path:
    """Write the ``index``-th PNG figure of the code cell tagged ``tag`` to ``out`` (for the README).

    The README shows figures of the executed notebooks; a tag (not a cell number) names the cell,
    so inserting cells does not move the picture. Raises ``ValueError`` when there is no such figure.
    """
    import base64

    nb = _read(path)
    cells = [c for c in nb.cells if c.cell_type == "code" and tag in c.metadata.get("tags", [])]
    if not cells:
        raise ValueError(f"{path}: no code cell tagged {tag!r}")
    pngs = [o["data"]["image/png"] for c in cells for o in c.outputs if "image/png" in o.get("data", {})]
    if len(pngs) <= index:
        raise ValueError(f"{path}: the cell tagged {tag!r} has {len(pngs)} PNG figure(s); run `make notebooks` first")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(base64.b64decode(pngs[index]))
    return out


def _main(argv: list[str]) -> int:
    usage = ("usage: python -m bgtutorial.nbtools {strip|check|execute} NOTEBOOK.ipynb ...\n"
             "       python -m bgtutorial.nbtools figure NOTEBOOK.ipynb TAG OUT.png")
    if len(argv) == 4 and argv[0] == "figure":
        return _figure(*argv[1:])
    if len(argv) < 2 or argv[0] not in ("strip", "check", "execute"):
        print(usage, file=sys.stderr)
        return 2
    cmd, paths = argv[0], argv[1:]
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        print(f"error: no such notebook: {', '.join(missing)}", file=sys.stderr)
        return 2
    bad, unreadable = 0, 0
    for p in paths:
        problem = _unreadable(p)
        if problem:                       # say so, go on with the other files, exit 2 at the end
            print(f"error: {p} {problem}", file=sys.stderr)
            unreadable += 1
            continue
        problem = _not_writable([p] + ([_readme_of(p)] if cmd == "execute" else [])) if cmd != "check" else None
        if problem:                       # checked before a notebook runs for minutes and cannot be saved
            print(f"error: {problem}", file=sys.stderr)
            unreadable += 1
            continue
        if cmd == "strip":
            print(("stripped " if strip_notebook(p) else "clean    ") + p)
        elif cmd == "check":
            problems = stale_cells(p) + output_problems(p) + time_problems(p, _readme_of(p))
            bad += len(problems)
            print("\n".join(problems) if problems else f"ok       {p}")
        else:
            t0 = time.perf_counter()
            print(f"executing {p} ...", flush=True)
            problems = execute_notebook(p)
            readme = _readme_of(p)
            if readme is not None and fill_time_marks(readme, {Path(p).stem: execution_record(p)}):
                print(f"  its time written into {readme}")
            size = Path(p).stat().st_size / 2**20
            print(f"  done in {time.perf_counter() - t0:.0f} s, {size:.2f} MiB")
            for line in problems:
                print("  " + line)
            bad += len(problems)
    return 2 if unreadable else 1 if bad else 0


def _readme_of(path: str | Path) -> Path | None:
    """The project's README beside the notebooks' folder (``notebooks/x.ipynb`` -> ``README.md``), if any."""
    readme = Path(path).resolve().parent.parent / "README.md"
    return readme if readme.is_file() else None


def _odd_metadata(nb) -> str | None:
    """Where the notebook's ``bgtutorial`` metadata is not what :func:`execute_notebook` writes, or ``None``."""
    if not isinstance(nb.get("metadata"), dict):
        return "the notebook's metadata is not an object"
    record = nb.metadata.get(META_KEY, {})
    executed = record.get("executed", {}) if isinstance(record, dict) else None
    if not isinstance(executed, dict) or executed and not (
            isinstance(executed.get("seconds"), (int, float)) and not isinstance(executed.get("seconds"), bool)
            and isinstance(executed.get("machine"), str) and isinstance(executed.get("date"), str)):
        return f"metadata.{META_KEY} is not {{'executed': {{'seconds', 'machine', 'date'}}}}"
    for i, cell in enumerate(nb.cells):
        meta = cell.get("metadata", {})
        entry = meta.get(META_KEY, {}) if isinstance(meta, dict) else None
        if not isinstance(entry, dict) or not isinstance(entry.get("source_sha256", ""), str):
            return f"cell {i}: its metadata.{META_KEY} is not {{'source_sha256': '<hex>'}}"
        if cell.get("cell_type") == "code" and not isinstance(cell.get("outputs", []), list):
            return f"cell {i}: its outputs are not a list"
    return None


def _not_writable(paths: list[str | Path]) -> str | None:
    """The first of ``paths`` that exists and cannot be written, as a phrase, or ``None``."""
    for p in paths:
        if p is not None and Path(p).exists() and not os.access(p, os.W_OK):
            return f"{p} is read-only: make it writable (chmod u+w {p}) first; nothing was run or changed"
    return None


def _figure(path: str, tag: str, out: str) -> int:
    """``figure``: one PNG out of a notebook, or one ``error:`` line naming what is at fault (exit 2)."""
    target = Path(out)
    try:
        blocker = next((p for p in (target.parent, *target.parent.parents) if p.exists()), Path("."))
        problem = (f"OUT {out} is a folder, not a .png file" if target.is_dir() else
                   f"OUT {out} lies under {blocker}, which is a file" if not blocker.is_dir() else
                   _not_writable([target if target.exists() else blocker]))
    except OSError as err:        # a name too long to look up
        problem = f"OUT {out[:60]}... cannot be used ({err.strerror}); choose another OUT"
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        print(export_figure(path, tag, out))
    except (ValueError, OSError, KeyError, TypeError) as err:
        print(f"error: {path}: {' '.join(str(err).split())[:200] or type(err).__name__}", file=sys.stderr)
        return 2
    return 0


def _unreadable(path: str | Path) -> str | None:
    """Why ``path`` cannot be read as a notebook (not JSON, not a notebook's structure), or ``None``."""
    import json

    import nbformat

    try:
        nb = nbformat.read(path, as_version=4)
        if not isinstance(nb.get("cells"), list) or not all(isinstance(c, dict) and "cell_type" in c for c in nb.cells):
            return "is not a notebook (no list of cells); pass .ipynb files only"
        odd = _odd_metadata(nb)
        if odd:
            return f"has odd metadata ({odd}); fix or delete that entry (or strip the notebook in Jupyter)"
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        return f"is not JSON ({type(err).__name__}: {' '.join(str(err).split())[:100]}); pass .ipynb files only"
    except Exception as err:          # nbformat's NotJSONError, its schema's ValidationError, a JSON list ...
        text = " ".join(str(err).split())[:100]
        return f"is not a notebook ({type(err).__name__}: {text}); pass .ipynb files only"
    return None


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
