"""Loading from the Hugging Face hub or a local directory, for every transformers adapter.

* Reachability is asked once per process with one short request through huggingface_hub's
  own HTTP client (``get_session()``: the proxies of ``HTTPS_PROXY``/``HTTP_PROXY``/``NO_PROXY``
  apply, as for the downloads themselves). When the hub does not answer, loading goes
  straight to the local cache (``local_files_only``) instead of spending ~25 s in
  huggingface_hub's retry loop (5 retries measured here).
* Failures are classified by huggingface_hub's typed errors found in the exception chain
  (``LocalEntryNotFoundError``, ``RepositoryNotFoundError``, ``GatedRepoError``, ...), not by
  matching message text, and become one :class:`~visiontool.errors.ModelLoadError` line.
"""
from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from visiontool.errors import ModelLoadError, UsageError

PROBE_TIMEOUT_S = 3.0


def is_offline() -> bool:
    truthy = ("1", "true", "yes", "on")
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in truthy or \
        os.environ.get("VISIONTOOL_OFFLINE", "").strip().lower() in truthy


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def _answers(request, timeout: float) -> bool:
    """True if ``request()`` returns within ``timeout`` (run in a thread: name resolution itself
    has no timeout)."""
    box = {"ok": False}

    def probe() -> None:
        try:
            request()
            box["ok"] = True
        except Exception:  # noqa: BLE001 - DNS, refused, timeout, proxy failure: not reachable
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout * 2)
    return box["ok"]


@lru_cache(maxsize=None)
def endpoint_reachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """True if an HTTP request to ``url`` gets any answer within ``timeout``, through urllib,
    which torch.hub downloads with (the same proxy variables). Any HTTP status counts: the host
    answered. (Not the hub client's session: that one refuses every request in the offline mode
    it read at import, whatever the environment says now.)"""
    import urllib.error
    import urllib.request

    def head() -> None:
        try:
            # a new opener reads the proxy variables now (urlopen's global one kept the first call's)
            urllib.request.build_opener().open(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
        except urllib.error.HTTPError:
            pass

    return _answers(head, timeout)


def hub_reachable() -> bool:
    """True if the Hugging Face endpoint answers, through the hub client's own session (its proxy
    settings: the session the downloads will use)."""
    return _hub_answers(hub_endpoint())


@lru_cache(maxsize=None)
def _hub_answers(url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    def head() -> None:
        from huggingface_hub.utils import get_session

        get_session().head(url, timeout=timeout, follow_redirects=False)

    return _answers(head, timeout)


def hf_cache_dir() -> str:
    from visiontool.models.cache import hf_cache_dir as _dir

    return _dir()


def is_local(spec: str) -> bool:
    return Path(spec).expanduser().exists()


def source_and_kwargs(spec: str) -> tuple[str, dict]:
    """Where from_pretrained should look, and whether it may use the network."""
    local = Path(spec).expanduser()
    if local.exists():
        return str(local), {}
    if is_offline() or not hub_reachable():
        return spec, {"local_files_only": True}
    return spec, {}


def offline_hint(spec: str) -> str:
    return (f"cannot load model '{spec}': it is not in the Hugging Face cache and the hub cannot be reached; "
            f"pre-download it on a connected machine (`hf download {spec}`) and copy the cache "
            f"({hf_cache_dir()}), set HF_HUB_OFFLINE=1 to use only the cache, or pass --model PATH to a "
            "directory saved with save_pretrained")


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def classify(spec: str, exc: BaseException, local_only: bool = False) -> ModelLoadError:
    """One user-facing line for a failed load, from the typed errors in ``exc``'s chain."""
    from huggingface_hub import errors as hf_errors

    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if is_local(spec):
        return ModelLoadError(f"cannot load model from '{spec}': {first}")
    for e in _chain(exc):
        if isinstance(e, hf_errors.GatedRepoError):
            return ModelLoadError(f"cannot load model '{spec}': it is gated on the Hugging Face hub; accept its "
                                  "licence on the model page and log in with `hf auth login`")
        if isinstance(e, hf_errors.RepositoryNotFoundError):
            return ModelLoadError(f"cannot load model '{spec}': no such model on the Hugging Face hub "
                                  "(or it is private: log in with `hf auth login`)")
        if isinstance(e, hf_errors.RevisionNotFoundError):
            return ModelLoadError(f"cannot load model '{spec}': no such revision on the Hugging Face hub")
        if isinstance(e, (hf_errors.LocalEntryNotFoundError, hf_errors.OfflineModeIsEnabled)):
            return ModelLoadError(offline_hint(spec))
        if isinstance(e, hf_errors.EntryNotFoundError):
            return ModelLoadError(f"cannot load model '{spec}': the repository lacks a file it needs ({first})")
    if local_only:
        return ModelLoadError(offline_hint(spec))
    return ModelLoadError(f"cannot load model '{spec}': {first}")


@contextmanager
def quiet_transformers(local: bool):
    """transformers' unused-weight chatter and hub retry warnings are not for users; a local
    load is instant, so its progress bars go too (hub downloads keep theirs)."""
    import logging

    from transformers.utils import logging as hf_logging  # loads transformers: transformers_errors_only quiets it

    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
    if local:
        hf_logging.disable_progress_bar()
    try:
        with transformers_errors_only():
            yield
    finally:
        if local:
            hf_logging.enable_progress_bar()


@contextmanager
def transformers_errors_only():
    """transformers' logger at ERROR for the block, if transformers is loaded at all (an export
    of a torchvision model should not import it). Tracing a model for export reads every
    property of every submodule, and ``PreTrainedModel.loss_function`` of a backbone-less
    submodule (``DetrModel``) warns "`loss_type=None` was set in the config but it is
    unrecognized. Using the default loss: `ForCausalLMLoss`" -- not for users."""
    import sys

    if "transformers" not in sys.modules:
        yield
        return
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)


def from_pretrained(load: Callable[..., Any], spec: str, **kwargs: Any) -> Any:
    """``load(source, **kwargs)`` (a ``from_pretrained``) with the cache fallback and one-line errors."""
    source, net = source_and_kwargs(spec)
    with quiet_transformers(local=not net and is_local(spec)):
        try:
            return load(source, **net, **kwargs)
        except ModelLoadError:
            raise
        except Exception as exc:  # noqa: BLE001 - every load failure becomes one user-facing line
            if "ignore_mismatched_sizes" in str(exc):  # transformers points at a report it logged (silenced)
                detail = _mismatch(load, source, {**net, **kwargs})
                if detail:
                    raise ModelLoadError(f"cannot load model '{spec}': the weights do not fit the architecture of "
                                         f"its config: {detail}") from exc
            raise classify(spec, exc, local_only=bool(net.get("local_files_only"))) from exc


def _mismatch(load: Callable[..., Any], source: str, kwargs: dict) -> str | None:
    """The first tensors whose shapes differ between checkpoint and model (loading again,
    tolerantly, to read transformers' loading info)."""
    try:
        _, info = load(source, ignore_mismatched_sizes=True, output_loading_info=True, **kwargs)
        keys = sorted(info.get("mismatched_keys") or [], key=lambda k: str(k[0]))
    except Exception:  # noqa: BLE001 - no better detail to give
        return None
    if not keys:
        return None
    key, ckpt, model = keys[0]
    more = f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""
    return f"tensor '{key}' is {tuple(ckpt)} in the checkpoint but {tuple(model)} in the model{more}"


def load_config(spec: str):
    """The model's transformers config (cheap: no weights), once per process."""
    from transformers import AutoConfig

    from visiontool.models import loader

    return loader.cached(("config", spec), lambda: from_pretrained(AutoConfig.from_pretrained, spec))


def check_hf_spec(spec: str, what: str = "--model") -> None:
    """A local directory must exist and be a directory; anything else must look like a hub id."""
    import re

    if not spec or not spec.strip():
        raise UsageError(f"{what} is empty")
    p = Path(spec).expanduser()
    if p.exists():
        if not p.is_dir():
            raise UsageError(f"{what} '{spec}' is a file; expected a directory saved with save_pretrained or a "
                             "Hugging Face hub id")
        return
    looks_like_path = spec.startswith((".", "/", "~")) or spec.endswith(("/", os.sep)) or spec.count("/") > 1
    if looks_like_path or not re.match(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$", spec):
        raise UsageError(f"{what} '{spec}': no such directory (and not a Hugging Face hub id)")
