"""What the ``medseg`` commands print: errors in a line or two, quiet logs, one summary line per training epoch.

- :class:`UserError` is the one exception type for a mistake in what the user asked for (a name, a path, an
  argument); :func:`report_error` prints any exception as one line plus a hint, MONAI's wrappers
  ("Failed to evaluate ConfigExpression", "Failed to instantiate component", "applying transform") unwrapped to the
  user's own error.
- :func:`console` routes logging and warnings to stderr while a command runs: INFO from ``medseg`` loggers,
  WARNING and above from the others, each warning once; ``verbose`` lets everything through (MONAI's
  per-iteration ``StatsHandler`` lines).
- :class:`EpochSummary` is the bundles' training log: one line per epoch (mean loss, validation metric, time)
  under one progress bar over the epochs.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["EpochSummary", "UserError", "console", "error_message", "report_error", "wait_for_pool_threads"]

#: Exit status of a request refused before anything ran, and of a run that failed.
EXIT_USAGE, EXIT_FAILED = 2, 1
#: The messages MONAI wraps an error in; the user's error is the exception they were raised from.
_WRAPPER = re.compile(
    r"^(Failed to evaluate |Failed to instantiate component |applying transform |Caught \w+ in DataLoader worker)"
)
#: A line of a formatted traceback that names an exception: ``ValueError: message``.
_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Interrupt)): (.*)$")
#: Third-party warnings shown once per family (the message differs by file name or class number).
_WARNING_FAMILIES = (
    re.compile(r"any `\"_target_\"` value in it is resolved to an importable callable"),  # MONAI, every config parse
    re.compile(r"the (prediction|ground truth) of class \d+ is all 0"),  # MONAI surface-distance metrics
    re.compile(r"^BTCV folder lacks \d+ of the \d+ Synapse cases"),  # medseg.data.btcv fallback split
)
#: Log records that say nothing to a medseg user (medseg passes overlays and logging on purpose).
_NOISE = re.compile(r"^(Not all config files are in |Logging file is set to False|Setting logging properties)")
#: Quiet warnings are cut to one terminal line of this width.
_WIDTH = 120
#: An error ignite logs before raising it: the command reports it once, itself.
_RERAISED = re.compile(r"terminating due to exception")


class UserError(ValueError):
    """A mistake in what the user asked for: reported as one line plus ``hint``, exit status 2, nothing run."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


def _exception_chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)


def _worker_error(text: str) -> str | None:
    """The innermost non-wrapper ``Type: message`` line of a traceback that torch's DataLoader put in a message."""
    if "Original Traceback" not in text:
        return None
    found = [m for m in map(_EXCEPTION_LINE.match, text.splitlines()) if m and not _WRAPPER.match(m.group(2))]
    return f"{found[0].group(1)}: {found[0].group(2)}" if found else None


def error_message(exc: BaseException) -> str:
    """The user's own error in ``exc``: the outermost exception of its chain that is not one of MONAI's wrappers.

    ``ValueError``/``UserError`` messages are given as they are; other types are prefixed by their name
    (``FileNotFoundError: ...``), since their messages rarely say what went wrong on their own.
    """
    chosen = exc
    for link in _exception_chain(exc):
        text = str(link)
        worker = _worker_error(text)
        if worker is not None:
            return worker
        if not _WRAPPER.match(text):
            chosen = link
            break
    text = str(chosen).strip() or type(chosen).__name__
    return text if type(chosen) in (ValueError, UserError) else f"{type(chosen).__name__}: {text}"


def wait_for_pool_threads(timeout: float = 120.0) -> None:
    """Join the threads of ``multiprocessing`` thread pools still running (``CacheDataset`` caches with one).

    After an error during caching, the pool's other threads may still be inside torch; exiting the interpreter
    under them aborts the process in C++ (``terminate called without an active exception``, exit 134).
    """
    from multiprocessing.dummy import DummyProcess

    deadline = time.monotonic() + timeout
    for thread in threading.enumerate():
        if isinstance(thread, DummyProcess) and thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))


def report_error(exc: BaseException, command: str, debug: bool = False) -> int:
    """Print ``exc`` for a user (one line and a hint; the traceback too with ``debug``) and return the exit status.

    A :class:`UserError` anywhere in the chain (MONAI's config wraps one raised in a bundle's ``initialize``):
    status 2 (the request was refused before anything ran); anything else: status 1 (the run failed), with the error
    MONAI wrapped unwrapped.
    """
    wait_for_pool_threads()
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    if isinstance(exc, KeyboardInterrupt):
        print(f"medseg {command}: interrupted", file=sys.stderr)
        return 130
    print(f"medseg {command}: error: {error_message(exc)}", file=sys.stderr)
    refused = next((link for link in _exception_chain(exc) if isinstance(link, UserError)), None)  # MONAI wraps it
    hint = refused.hint if refused is not None else None
    more = "" if debug else "--debug shows the traceback"
    if hint or more:
        print("  hint: " + "; ".join(h for h in (hint, more) if h), file=sys.stderr)
    return EXIT_FAILED if refused is None else EXIT_USAGE


class _ConsoleFilter(logging.Filter):
    """Which records reach the console: medseg's INFO, everyone's WARNING, each message once, no re-raised errors."""

    def __init__(self, verbose: bool) -> None:
        super().__init__()
        self.verbose = verbose
        self.shown: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if _NOISE.match(message):
            return False
        if self.verbose:
            return True
        if record.exc_info or _RERAISED.search(message):
            return False  # the command prints the error itself, once
        if record.levelno < logging.WARNING and not (record.name == "medseg" or record.name.startswith("medseg.")):
            return False
        return _first_time(self.shown, message)


def _first_time(shown: set[str], message: str) -> bool:
    key = next((p.pattern for p in _WARNING_FAMILIES if p.search(message)), message)
    if key in shown:
        return False
    shown.add(key)
    return True


class _TqdmHandler(logging.StreamHandler):
    """A stderr handler that prints above an open tqdm bar instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # logging must not raise
            self.handleError(record)


class _ConsoleFormatter(logging.Formatter):
    def __init__(self, verbose: bool) -> None:
        super().__init__("%(asctime)s %(name)s %(levelname)s: %(message)s" if verbose else "%(message)s")
        self.verbose = verbose

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if not self.verbose and record.levelno >= logging.WARNING:
            lines = text.splitlines() or [""]
            text = f"{record.levelname.lower()}: {lines[0]}"
            if len(text) > _WIDTH or len(lines) > 1:  # one terminal line; --verbose shows it whole
                text = text[: _WIDTH - 1] + "…"
        return text


@contextlib.contextmanager
def console(verbose: bool = False) -> Iterator[None]:
    """Route logging and warnings to stderr for a command; restore the previous set-up afterwards.

    Root gets one handler (INFO from ``medseg`` loggers, WARNING from the rest, each warning once; everything
    with ``verbose``); MONAI's own stdout loggers are pointed at it; Python warnings are printed as one line each,
    once per message (once per family for the known repetitive ones, e.g. MONAI's config ``eval()`` warning).
    """
    from monai.apps.utils import get_logger

    handler = _TqdmHandler()
    handler.addFilter(_ConsoleFilter(verbose))
    handler.setFormatter(_ConsoleFormatter(verbose))
    root = logging.getLogger()
    saved_root = (root.handlers[:], root.level)
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    get_logger("monai.handlers.StatsHandler")  # created now as MONAI would, so its lines come here too
    saved: dict[logging.Logger, tuple[list[logging.Handler], int]] = {}
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger) and name.startswith("monai") and logger.handlers:
            saved[logger] = (logger.handlers[:], logger.level)
            logger.handlers[:] = [handler]
            logger.setLevel(logging.INFO)
    shown: set[str] = set()
    saved_showwarning = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        if verbose or _first_time(shown, str(message)):
            text = f"{category.__name__}: {message}"
            handler.emit(logging.LogRecord("py.warnings", logging.WARNING, filename, lineno, text, None, None))

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = saved_showwarning
        for logger, (handlers, level) in saved.items():
            logger.handlers[:] = handlers
            logger.setLevel(level)
        root.handlers[:], level = saved_root
        root.setLevel(level)


class EpochSummary:
    """One log line per training epoch: mean loss over the epoch, the validator's key metric, seconds taken.

    An Ignite handler for a MONAI trainer (list it after the ``ValidationHandler`` so the validation of the epoch
    is done). Lines go to the ``medseg.train`` logger every ``interval`` epochs (and after the last);
    ``progress`` shows one tqdm bar over the epochs (default: when stderr is a terminal)::

        epoch  40/120  loss 0.6123  val_mean_dice 0.4012 (best 0.4012, epoch 40)  0.2 s

    Args:
        validator: the evaluator the ``ValidationHandler`` runs, or ``None``.
        interval: log every ``interval`` epochs.
        output_transform: the iteration's loss from ``engine.state.output`` (MONAI's decollated list of dicts).
        progress: show the bar (``None``: when stderr is a terminal).
    """

    def __init__(
        self,
        validator: Any = None,
        interval: int = 1,
        output_transform: Callable[[Any], float] | None = None,
        progress: bool | None = None,
    ) -> None:
        if interval < 1:
            raise ValueError(f"interval must be >= 1, got {interval}")
        self.validator = validator
        self.interval = interval
        self.output_transform = output_transform or _first_loss
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.logger = logging.getLogger("medseg.train")
        self._losses: list[float] = []
        self._started = 0.0
        self._bar = None

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self._open)
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)
        engine.add_event_handler(Events.COMPLETED, self._close)

    def _open(self, engine) -> None:
        if self.progress and self._bar is None:
            from tqdm import tqdm

            done, total = engine.state.epoch, engine.state.max_epochs
            self._bar = tqdm(total=total, initial=done, desc="training", unit="epoch", file=sys.stderr, leave=True)

    def _epoch_started(self, engine) -> None:
        self._losses.clear()
        self._started = time.perf_counter()

    def _iteration_completed(self, engine) -> None:
        value = self.output_transform(engine.state.output)
        if value is not None:
            self._losses.append(float(value))

    def _epoch_completed(self, engine) -> None:
        epoch, total = engine.state.epoch, engine.state.max_epochs
        seconds = time.perf_counter() - self._started
        loss = sum(self._losses) / len(self._losses) if self._losses else float("nan")
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            self._bar.update(1)
        if epoch % self.interval and epoch != total:
            return
        width = len(str(total))
        parts = [f"epoch {epoch:>{width}}/{total}", f"loss {loss:.4f}", *self._validation(epoch), f"{seconds:.1f} s"]
        self.logger.info("  ".join(parts))

    def _validation(self, epoch: int) -> list[str]:
        state = getattr(self.validator, "state", None)
        name = getattr(state, "key_metric_name", None)
        if state is None or name is None or state.epoch != epoch or name not in state.metrics:
            return []
        best = f" (best {state.best_metric:.4f}, epoch {state.best_metric_epoch})"
        return [f"{name} {state.metrics[name]:.4f}{best}"]

    def _close(self, engine) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _first_loss(output: Any) -> float | None:
    """The loss MONAI's trainer puts in each decollated item (``from_engine(["loss"], first=True)``)."""
    if isinstance(output, list | tuple):
        output = output[0] if output else None
    if isinstance(output, dict):
        output = output.get("loss")
    return None if output is None else float(output)
