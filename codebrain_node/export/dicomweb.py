"""DICOMweb destination: the series POSTed to an origin server's ``/studies`` by STOW-RS, ``batch_size`` at a time.

PS3.18 §10.5 (Store Transaction): each request is one ``multipart/related; type="application/dicom"`` body of Part 10
instances (``dicomweb-client`` builds it); the answer's Store Instances Response Module (PS3.18 §10.5.3, Table
10.5.3-1) lists each instance the server stored in the Referenced SOP Sequence (0008,1199), possibly with a Warning
Reason (0008,1196), and each it did not in the Failed SOP Sequence (0008,1198) with a Failure Reason (0008,1197).
Only an instance the response references counts as accepted and is passed to ``delivered`` (an HTTP 200 with no
response body at all means, by §10.5.3, that every instance was stored); a failed or unlisted instance makes the
attempt a :class:`DeliveryError` naming the reasons, and the dispatcher's next attempt sends only those. HTTP 409
(none stored) carries the same module; any other 4xx/5xx, a refused connection or a timeout fails the attempt.

``dicomweb-client``'s own retries are off: the dispatcher backs off between attempts and dead-letters, as for a
C-STORE destination, and an attempt never sleeps inside a request. Authentication is HTTP Basic (RFC 7617) or a
bearer token (RFC 6750) on every request; over ``https://`` the server's certificate must chain to
``tls_ca_certificates`` (else certifi's bundle) and name the URL's host (urllib3: TLS 1.2 or later). Nothing comes
from the environment (``requests`` would take proxies, a CA bundle and .netrc credentials from it): configuration
is read once at start, in ``config.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import requests
from dicomweb_client import DICOMwebClient
from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError

from codebrain_node.config import DicomWebDestinationSettings, Settings
from codebrain_node.export.base import Delivered, DeliveryError, Destination, ignore_delivery, register
from codebrain_node.tls import client_context

log = logging.getLogger(__name__)

#: Failure Reason (0008,1197) values a STOW-RS server sends (PS3.18 §10.5.3; the C-STORE statuses of PS3.4 B.2.3).
FAILURE_REASONS = {
    0x0110: "processing failure",
    0x0122: "SOP class not supported",
    0x0124: "not authorised",
    0xA700: "out of resources",
    0xA900: "data set does not match SOP class",
    0xC000: "cannot understand",
    0xC122: "transfer syntax not supported",
}


def failure_reason(code: int | None) -> str:
    """``0xA700 (out of resources)``; a code of a class (A7xx, A9xx, Cxxx) is named by its class."""
    if code is None:
        return "no reason given"
    name = FAILURE_REASONS.get(code) or FAILURE_REASONS.get(code & 0xFF00) or FAILURE_REASONS.get(code & 0xF000)
    return f"0x{code:04X}" + (f" ({name})" if name else "")


@register(DicomWebDestinationSettings)
class DicomWebDestination(Destination[DicomWebDestinationSettings]):
    def __init__(self, name: str, entry: DicomWebDestinationSettings) -> None:
        super().__init__(name)
        self.entry = entry
        self.url = entry.url

    @classmethod
    def from_settings(cls, entry: DicomWebDestinationSettings, settings: Settings) -> DicomWebDestination:
        return cls(entry.name, entry)

    def check(self) -> None:
        """The CA file must hold PEM certificates (:class:`~codebrain_node.tls.TLSFileError` names it otherwise);
        the server itself is not asked: one that is down now is retried, not a reason to stop ``serve``."""
        if self.entry.tls_ca_certificates is not None:
            client_context(ca_certificates=self.entry.tls_ca_certificates, where=f"export.destinations[{self.name}]")

    def session(self) -> requests.Session:
        """An HTTP session with this destination's credentials and trust, one per attempt (a renewed CA file is
        read again)."""
        session = requests.Session()
        # the settings are the one source: no proxy, CA bundle (REQUESTS_CA_BUNDLE would override ``verify``) or
        # .netrc credentials from the environment
        session.trust_env = False
        # PS3.18 §10.5.1 (the Store Instances request) names the response's media type; dicomweb-client sends */*,
        # which a server may answer in XML, or with no body
        session.headers["Accept"] = "application/dicom+json"
        if self.entry.auth == "basic":
            session.auth = (self.entry.username, self.entry.password.get_secret_value())
        elif self.entry.auth == "bearer":
            session.headers["Authorization"] = f"Bearer {self.entry.token.get_secret_value()}"
        if self.entry.tls_ca_certificates is not None:
            session.verify = str(self.entry.tls_ca_certificates)
        return session

    def client(self, session: requests.Session) -> DICOMwebClient:
        client = DICOMwebClient(self.url, session=session, timeout=self.entry.timeout_s)
        client.set_http_retry_params(retry=False)  # the dispatcher backs off between attempts
        return client

    def send(self, files: Sequence[Path], delivered: Delivered = ignore_delivery) -> None:
        failures: list[str] = []
        size = self.entry.batch_size
        with self.session() as session:
            statuses: list[int] = []  # the HTTP status of each answer (the client returns only its body)
            session.hooks["response"].append(lambda response, *args, **kwargs: statuses.append(response.status_code))
            client = self.client(session)
            for start in range(0, len(files), size):
                failures += self._store(client, list(files[start : start + size]), delivered, statuses)
        if failures:
            raise DeliveryError(
                f"STOW-RS {self.url}: {len(failures)} of {len(files)} instance(s) not stored: {_tally(failures)}"
            )
        log.info("sent %d instance(s) to %s by STOW-RS", len(files), self.url)

    def _store(self, client: DICOMwebClient, batch: list[Path], delivered: Delivered, statuses: list[int]) -> list[str]:
        """POST one batch; call ``delivered`` for each instance the response references, return one reason for
        each other instance. A transport or HTTP failure of the whole request raises :class:`DeliveryError`."""
        by_uid: dict[str, Path] = {}
        datasets = []
        for path in batch:
            try:
                dataset = dcmread(path)
            except (InvalidDicomError, OSError) as exc:
                raise DeliveryError(f"{path.name}: not readable as DICOM ({exc})") from exc
            by_uid[str(dataset.SOPInstanceUID)] = path
            datasets.append(dataset)
        try:
            response = client.store_instances(datasets)
        except requests.HTTPError as exc:
            response = self._failed_response(exc)
        except requests.exceptions.SSLError as exc:
            raise DeliveryError(f"STOW-RS {self.url}: TLS failed ({_root_cause(exc)})") from exc
        except requests.ConnectionError as exc:
            raise DeliveryError(f"STOW-RS {self.url}: unreachable ({_root_cause(exc)})") from exc
        except requests.Timeout as exc:
            raise DeliveryError(f"STOW-RS {self.url}: no answer within {self.entry.timeout_s:g} s") from exc
        except (requests.RequestException, ValueError) as exc:  # ValueError: a response body that is no dataset
            raise DeliveryError(f"STOW-RS {self.url}: {type(exc).__name__}: {exc}") from exc

        if statuses[-1:] == [200] and not response:  # PS3.18 §10.5.3: 200 means every instance was stored
            accepted = set(by_uid)
        else:
            accepted = {
                str(item.get("ReferencedSOPInstanceUID", "")) for item in response.get("ReferencedSOPSequence", [])
            }
        warned = [item for item in response.get("ReferencedSOPSequence", []) if "WarningReason" in item]
        if warned:
            codes = _tally([f"0x{item.WarningReason:04X}" for item in warned])
            log.warning("%s stored %d instance(s) with a warning: %s", self.url, len(warned), codes)
        failed = {
            str(item.get("ReferencedSOPInstanceUID", "")): failure_reason(item.get("FailureReason"))
            for item in response.get("FailedSOPSequence", [])
        }
        reasons: list[str] = []
        for uid, path in by_uid.items():
            if uid in accepted and uid not in failed:
                delivered(path)
            else:
                reasons.append(failed.get(uid, "not in the server's response"))
        return reasons

    def _failed_response(self, exc: requests.HTTPError) -> Dataset:
        """HTTP 409 (PS3.18 §10.5.3: no instance stored) still carries the response module, with its failure
        reasons; any other error status fails the whole request."""
        answer = exc.response
        status = answer.status_code if answer is not None else 0
        if status == 409 and answer is not None and answer.content:
            try:
                return Dataset.from_json(answer.json())
            except ValueError:
                pass
        meaning = {
            401: "authentication refused",
            403: "not permitted",
            404: "no STOW-RS service at this URL",
            413: "request too large (lower batch_size)",
            415: "media type refused",
            503: "service unavailable",
        }.get(status, answer.reason if answer is not None else "")
        raise DeliveryError(f"STOW-RS {self.url}: HTTP {status} {meaning}".rstrip()) from exc


def _tally(reasons: list[str]) -> str:
    """``0xA700 (out of resources) x2, 0xC000 (cannot understand)``: each reason once, with its count."""
    counts: dict[str, int] = {}
    for reason in reasons:
        counts[reason] = counts.get(reason, 0) + 1
    return ", ".join(reason + (f" x{count}" if count > 1 else "") for reason, count in counts.items())


def _root_cause(exc: BaseException) -> str:
    """The last of a requests/urllib3 error chain: ``[Errno 111] Connection refused``, not three wrappers."""
    while (inner := exc.__cause__ or exc.__context__) is not None:
        exc = inner
    return str(exc)
