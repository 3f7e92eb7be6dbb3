"""Execute the study's notebooks in order: one terminal line per notebook and per run, short saved outputs.

``python -m desupcon reproduce`` runs ``notebooks/01``–``06`` under the active profile and writes each
executed copy to ``--out``. While a notebook runs, the terminal shows a line per run as the kernel
reports it (``[cache]``, ``[resume]``, ``[done]``) and the run's progress bar (run name, steps, ETA),
overwritten in place. The bars' carriage-return updates are folded away in the saved copies, so each
run leaves one finished bar there. A notebook that fails is saved as far as it ran, its error is
summarised in one line, and the notebooks that do not depend on it still run.

Ctrl-C interrupts the running cell the way Jupyter's stop button does (the kernel, in a session of its
own, gets the SIGINT): the run in progress prints where it resumes (``[interrupted] <run>: ...``), the
notebook is saved as far as it ran, and ``reproduce`` raises ``KeyboardInterrupt`` with one line saying
what finished, what was interrupted and the command that continues. A second Ctrl-C stops at once.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import tempfile
import time
from pathlib import Path

from desupcon.core.paths import REPOSITORY

NOTEBOOKS = ("01_teacher", "02_baselines", "03_lw_supcrd_sweeps", "04_memory_bank_ablation",
             "05_moco_v3_pretraining", "06_analysis")
# what each notebook needs from earlier ones: the students need the teacher; 05 and 06 run on their own
# (06 shows a partly trained study and names what is missing)
NEEDS = {"02_baselines": ("01_teacher",), "03_lw_supcrd_sweeps": ("01_teacher",),
         "04_memory_bank_ablation": ("01_teacher",)}
RUN_LINE = re.compile(r"^\[(cache|resume|done|interrupted)\] ")


class StudyIncomplete(RuntimeError):
    """Some notebooks failed or were skipped; the message names them and their executed copies."""


def fold_carriage_returns(text: str) -> str:
    """What a terminal would show of ``text``: each line's content after its last carriage return."""
    return "\n".join(line.rsplit("\r", 1)[-1] for line in text.split("\n"))


def _short_outputs(nb) -> None:
    """Fold progress-bar updates in every stream output of ``nb`` (in place)."""
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream":
                output["text"] = fold_carriage_returns(output["text"])


def _client_class():
    from nbclient import NotebookClient

    class TerminalEchoClient(NotebookClient):
        """Echoes the kernel's run lines and the latest progress bar to this terminal as they arrive; Ctrl-C
        interrupts the running cell (``interrupts`` counts them; a second one kills the kernel)."""

        interrupts = 0

        async def async_start_new_kernel(self, **kwargs):
            # replaces nbclient's SIGINT handler, which shuts the kernel down under the running cell
            asyncio.get_running_loop().add_signal_handler(signal.SIGINT, self.ctrl_c)
            await super().async_start_new_kernel(**kwargs)

        def ctrl_c(self):
            self.interrupts += 1
            process = getattr(getattr(self.km, "provisioner", None), "process", None)
            if process is None:  # the kernel is not started yet: nothing to keep
                asyncio.ensure_future(self._async_cleanup_kernel())
            elif self.interrupts == 1:
                print("\r\033[K[reproduce] Ctrl-C: stopping the running cell (Ctrl-C again to stop at once)", flush=True)
                os.killpg(os.getpgid(process.pid), signal.SIGINT)
            else:
                os.killpg(os.getpgid(process.pid), signal.SIGKILL)

        def output(self, outs, msg, display_id, cell_index):
            if msg.get("msg_type") == "stream":
                for piece in msg["content"]["text"].replace("\r", "\n").split("\n"):
                    if RUN_LINE.match(piece):
                        print(f"\r\033[K  {piece}", flush=True)
                    elif "%|" in piece and ("it/s" in piece or "s/it" in piece):  # a tqdm bar: run, step, ETA
                        print(f"\r\033[K  {piece.strip()[:150]}", end="", flush=True)
            return super().output(outs, msg, display_id, cell_index)

    return TerminalEchoClient


def _error_line(err) -> str:
    """One line of a notebook's failure: the exception's type and message."""
    ename, evalue = getattr(err, "ename", type(err).__name__), getattr(err, "evalue", str(err))
    return f"{ename}: {str(evalue).strip().splitlines()[-1] if str(evalue).strip() else ''}"


def _continue_line(rows: list[dict], name: str, copy: Path, selected: list[str]) -> str:
    """The one line of an interrupted study: what finished, what was interrupted, how to continue."""
    finished = [r["notebook"] for r in rows if r["status"] == "done"]
    rest = selected[selected.index(name):]
    return (f"[interrupted] reproduce: finished {', '.join(finished) or 'no notebook'}; interrupted {name} (saved as far "
            f"as it ran: {copy}); continue with: python -m desupcon reproduce --only "
            f"{' '.join(n.split('_')[0] for n in rest)} (finished runs load from the cache, an interrupted "
            f"run resumes from its last saved epoch)")


def reproduce(only=None, out: str | Path = "executed_notebooks") -> list[dict]:
    """Execute the selected notebooks (prefixes ``only``, default all) in order; return one row per notebook.

    Rows are ``{"notebook", "status" ("done", "failed", "skipped"), "seconds", "copy", "error"}``.
    Raises ``StudyIncomplete`` at the end if a notebook failed or was skipped.
    """
    import nbformat
    from nbclient.exceptions import CellExecutionError
    from traitlets.config import Config

    # local sockets, at an absolute path (the kernel runs in notebooks/): no "kernel over TCP" warning
    ipc = Config({"KernelManager": {"transport": "ipc", "ip": str(Path(tempfile.gettempdir()) / f"desupcon-kernel-{os.getpid()}")}})

    notebooks_dir = REPOSITORY / "notebooks"
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    selected = [n for n in NOTEBOOKS if not only or any(n.startswith(o) for o in only)]
    rows, failed = [], set()
    client = _client_class()
    for number, name in enumerate(selected, 1):
        copy = out / f"{name}.ipynb"
        blocked = [n for n in NEEDS.get(name, ()) if n in failed]
        if blocked:
            failed.add(name)
            rows.append(dict(notebook=name, status="skipped", seconds=0.0, copy=None,
                             error=f"needs {', '.join(blocked)}, which failed"))
            print(f"[reproduce] {number}/{len(selected)} {name}.ipynb skipped: it needs {', '.join(blocked)}")
            continue
        print(f"[reproduce] {number}/{len(selected)} {name}.ipynb ...", flush=True)
        start = time.time()
        nb = nbformat.read(notebooks_dir / f"{name}.ipynb", as_version=4)
        error = None
        running = client(nb, timeout=None, kernel_name="python3", config=ipc,
                         resources={"metadata": {"path": str(notebooks_dir)}})
        try:
            running.execute()
        except Exception as err:  # after a Ctrl-C, whatever the kernel's end raised
            if not running.interrupts and not isinstance(err, CellExecutionError):
                raise
            error = _error_line(err)
        if running.interrupts:
            _short_outputs(nb)
            nbformat.write(nb, copy)
            raise KeyboardInterrupt(_continue_line(rows, name, copy, selected))
        _short_outputs(nb)
        nbformat.write(nb, copy)
        seconds = time.time() - start
        status = "failed" if error else "done"
        if error:
            failed.add(name)
        rows.append(dict(notebook=name, status=status, seconds=seconds, copy=str(copy), error=error))
        print(f"\r\033[K[reproduce] {number}/{len(selected)} {name}.ipynb {status} in {seconds:.0f} s"
              + (f": {error}" if error else "") + f" (executed copy: {copy})", flush=True)
    if failed:
        raise StudyIncomplete(f"{len(failed)} of {len(selected)} notebooks did not finish: "
                              + "; ".join(f"{r['notebook']} {r['status']} ({r['error']})"
                                          for r in rows if r["status"] != "done"))
    return rows
