"""Web search providers behind ``Searcher``: Tavily, Exa, Brave and SerpAPI.

Each reads its API key from the environment (or ``api_key=``) and raises ``MissingAPIKey``
naming the variable when there is none. Requests go through ``httpx`` (the ``web`` extra;
imported only when a provider is built) with a per-call timeout, and are retried with
tenacity on 429, 5xx, timeouts and connection errors, honouring ``Retry-After``. ``base_url``
points a provider elsewhere (a proxy, or a fake server in tests).

The key is never logged or put in an error: it lives in a private attribute, error messages
omit the URL, and ``api_key=`` query values are masked in httpx's request log lines.
"""

from __future__ import annotations

import email.utils
import html
import logging
import os
import random
import re
import time
from abc import abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

from loopwright.tools.errors import UserError
from loopwright.tools.search.base import MissingAPIKey, Searcher, SearchError, SearchResult
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt

_TAG = re.compile(r"<[^>]+>")
_KEY_IN_URL = re.compile(r"(api_key=)[^&\s\"']+")


class _Transient(Exception):
    """A response or failure worth retrying."""

    def __init__(self, what: str, retry_after: float | None = None) -> None:
        super().__init__(what)
        self.retry_after = retry_after


class _MaskKeys(logging.Filter):
    """Masks ``api_key=...`` in log records (httpx logs each request URL at INFO)."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        masked = _KEY_IN_URL.sub(r"\1***", msg)
        if masked != msg:
            record.msg, record.args = masked, ()
        return True


_MASK = _MaskKeys()


def retry_after_seconds(value: str | None) -> float | None:
    """``Retry-After`` as seconds: a number, or an HTTP date (seconds from now)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _plain(text: Any) -> str:
    """Provider text without HTML tags and entities (Brave bolds matches with ``<strong>``)."""
    return html.unescape(_TAG.sub("", text)) if isinstance(text, str) else ""


class WebSearcher(Searcher):
    """Shared request, retry and result plumbing; subclasses say what to send and read."""

    version = "web-1"
    env_vars: ClassVar[tuple[str, ...]]
    default_base_url: ClassVar[str]
    max_k: ClassVar[int] = 20

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        timeout: float = 20.0,
        max_attempts: int = 4,
        max_wait: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        key = api_key or next((os.environ[v] for v in self.env_vars if os.environ.get(v)), None)
        if not key:
            raise MissingAPIKey(
                f"{self.name} search needs an API key: set {' or '.join(self.env_vars)}"
            )
        try:
            import httpx
        except ImportError:
            raise UserError("web search needs httpx: pip install 'loopwright[web]'") from None
        self.__key = key
        self.base_url = (base_url or self.default_base_url).rstrip("/")
        self.max_attempts = max_attempts
        self.max_wait = max_wait
        self._sleep = sleep
        self._httpx = httpx
        self._client = httpx.Client(timeout=timeout, headers={"User-Agent": "loopwright"})
        logging.getLogger("httpx").addFilter(_MASK)  # idempotent: same filter object

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r})"

    @abstractmethod
    def _request(self, query: str, k: int, key: str) -> dict[str, Any]:
        """``httpx.Client.request`` keyword arguments (method, url, params/json, headers)."""

    @abstractmethod
    def _hits(self, data: Any) -> list[dict[str, Any]]:
        """Results from the response JSON as dicts with url, title, text, score."""

    def search(self, query: str, k: int = 5) -> list[SearchResult]:
        """Top ``k`` web results (at most the provider's per-request limit)."""
        if k < 1:
            raise ValueError("k must be at least 1")
        if not query.strip():
            return []
        data = self._send(self._request(query.strip(), min(k, self.max_k), self.__key))
        try:
            hits = self._hits(data)
        except (AttributeError, KeyError, TypeError) as exc:
            raise SearchError(
                f"{self.name} returned an unexpected response shape ({exc})"
            ) from None
        return [
            SearchResult(
                doc_id=h["url"],
                title=_plain(h.get("title")),
                text=_plain(h.get("text")),
                snippet=_plain(h.get("text"))[:300] or None,
                score=float(h["score"]) if isinstance(h.get("score"), int | float) else None,
                url=h["url"],
                source=self.name,
                rank=rank,
            )
            for rank, h in enumerate((h for h in hits if h.get("url")), 1)
            if rank <= k
        ]

    def close(self) -> None:
        """Close the HTTP client."""
        self._client.close()

    def _send(self, request: dict[str, Any]) -> Any:
        retrying = Retrying(
            stop=stop_after_attempt(self.max_attempts),
            wait=self._wait,
            retry=retry_if_exception_type(_Transient),
            sleep=self._sleep,
            reraise=True,
        )
        try:
            return retrying(self._once, request)
        except _Transient as exc:
            raise SearchError(
                f"{self.name} search failed after {self.max_attempts} attempts: {exc}"
            ) from None

    def _once(self, request: dict[str, Any]) -> Any:
        httpx = self._httpx
        try:
            r = self._client.request(**request)
        except httpx.TimeoutException:
            raise _Transient("timed out") from None
        except httpx.TransportError as exc:
            raise _Transient(f"connection failed ({type(exc).__name__})") from None
        status = r.status_code
        if status == 429 or status >= 500:
            raise _Transient(f"HTTP {status}", retry_after_seconds(r.headers.get("retry-after")))
        if status in (401, 403):
            raise UserError(
                f"{self.name} rejected the API key (HTTP {status}); "
                f"check {' or '.join(self.env_vars)}"
            )
        if status >= 400:
            body = " ".join(r.text.replace(self.__key, "***").split())[:200]
            raise SearchError(f"{self.name} search failed: HTTP {status}: {body}")
        try:
            return r.json()
        except ValueError:
            raise SearchError(f"{self.name} returned a non-JSON response") from None

    def _wait(self, state: RetryCallState) -> float:
        """``Retry-After`` when sent (capped at ``max_wait``), else backoff with jitter."""
        exc = state.outcome.exception() if state.outcome else None
        hinted = getattr(exc, "retry_after", None)
        if hinted is not None:
            return float(min(hinted, self.max_wait))
        return min(self.max_wait, 0.5 * 2 ** (state.attempt_number - 1)) * (
            0.5 + random.random() / 2
        )


class TavilySearch(WebSearcher):
    """Tavily: ``POST /search`` with a bearer key; ``results[]`` of title/url/content/score."""

    name = "tavily"
    env_vars = ("TAVILY_API_KEY",)
    default_base_url = "https://api.tavily.com"

    def _request(self, query: str, k: int, key: str) -> dict[str, Any]:
        return {
            "method": "POST",
            "url": f"{self.base_url}/search",
            "headers": {"Authorization": f"Bearer {key}"},
            "json": {"query": query, "max_results": k, "search_depth": "basic"},
        }

    def _hits(self, data: Any) -> list[dict[str, Any]]:
        return [
            {
                "url": r.get("url"),
                "title": r.get("title"),
                "text": r.get("content"),
                "score": r.get("score"),
            }
            for r in data.get("results") or []
        ]


class ExaSearch(WebSearcher):
    """Exa: ``POST /search`` with ``x-api-key``; ``results[]`` of url/title/text/score."""

    name = "exa"
    env_vars = ("EXA_API_KEY",)
    default_base_url = "https://api.exa.ai"
    max_k = 100

    def _request(self, query: str, k: int, key: str) -> dict[str, Any]:
        return {
            "method": "POST",
            "url": f"{self.base_url}/search",
            "headers": {"x-api-key": key},
            "json": {
                "query": query,
                "numResults": k,
                "contents": {"text": {"maxCharacters": 2000}},
            },
        }

    def _hits(self, data: Any) -> list[dict[str, Any]]:
        out = []
        for r in data.get("results") or []:
            text = r.get("text") or " ".join(r.get("highlights") or [])
            out.append(
                {
                    "url": r.get("url"),
                    "title": r.get("title"),
                    "text": text,
                    "score": r.get("score"),
                }
            )
        return out


class BraveSearch(WebSearcher):
    """Brave: ``GET /res/v1/web/search`` with ``X-Subscription-Token``; ``web.results[]``."""

    name = "brave"
    env_vars = ("BRAVE_API_KEY", "BRAVE_SEARCH_API_KEY")
    default_base_url = "https://api.search.brave.com"

    def _request(self, query: str, k: int, key: str) -> dict[str, Any]:
        return {
            "method": "GET",
            "url": f"{self.base_url}/res/v1/web/search",
            "headers": {"X-Subscription-Token": key, "Accept": "application/json"},
            "params": {"q": query, "count": k},
        }

    def _hits(self, data: Any) -> list[dict[str, Any]]:
        results = (data.get("web") or {}).get("results") or []
        return [
            {"url": r.get("url"), "title": r.get("title"), "text": r.get("description")}
            for r in results
        ]


class SerpAPISearch(WebSearcher):
    """SerpAPI (Google engine): ``GET /search.json?api_key=...``; ``organic_results[]``."""

    name = "serpapi"
    env_vars = ("SERPAPI_API_KEY",)
    default_base_url = "https://serpapi.com"
    max_k = 100

    def _request(self, query: str, k: int, key: str) -> dict[str, Any]:
        # SerpAPI takes the key only as a query parameter; _MaskKeys keeps it out of logs.
        return {
            "method": "GET",
            "url": f"{self.base_url}/search.json",
            "params": {"engine": "google", "q": query, "num": k, "api_key": key},
        }

    def _hits(self, data: Any) -> list[dict[str, Any]]:
        return [
            {"url": r.get("link"), "title": r.get("title"), "text": r.get("snippet")}
            for r in data.get("organic_results") or []
        ]


WEB_SEARCHERS: dict[str, type[WebSearcher]] = {
    cls.name: cls for cls in (TavilySearch, ExaSearch, BraveSearch, SerpAPISearch)
}
"""The web providers by name (also registered in ``loopwright.tools.search.SEARCHERS``)."""
