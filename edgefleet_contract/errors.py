"""The one exception tree of edgefleet.

Every error a person can act on derives from :class:`EdgefleetError` and carries a
message written for that person (what was wrong and what to do), so the CLIs can
print ``str(exc)`` and exit non-zero without a traceback.  Lower layers raise
the most specific class; callers catch the family they can handle.

    EdgefleetError
    ├── ConfigError            bad configuration file or environment variable
    ├── ContractError          a payload that breaks the wire contract
    ├── IdentityError          PKI and enrollment
    │   ├── EnrollmentError    token unknown, used, expired; CSR refused
    │   └── CertificateError   unreadable, expired, wrong CA, revoked
    ├── BrokerError            managed broker could not start or stay up
    ├── LinkError              MQTT session failures the caller must see
    ├── ModelError             model packages and runtimes
    │   ├── PackageError       corrupt file, bad manifest, hash mismatch
    │   ├── RuntimeUnavailable no installed runtime can run the package
    │   ├── SelfTestFailed     outputs outside the manifest's tolerance
    │   └── InputRejected      prediction input of the wrong shape, type or size (HTTP 422)
    ├── StoreError             persistence failures
    │   └── NotFound           a named record does not exist
    ├── SelectorError          a device selector that does not parse
    ├── AuthError              authentication failed (HTTP 401)
    │   └── PermissionDenied   authenticated but not allowed (HTTP 403)
    ├── UpdateError            OTA verification, download or install failures
    │   ├── SigningError       TUF keys and metadata on the server: unreadable key,
    │   │                      wrong passphrase, a root that does not verify
    │   ├── TrustError         TUF refused the metadata or the artifact (an attack or a
    │   │                      misconfigured repository): nothing was installed
    │   ├── DownloadFailed     the artifact could not be fetched (network, server error)
    │   └── InstallError       staging, self-test, switching or probation failed
    ├── FederationError        a federated run cannot go on (quorum, bad spec)
    │   └── RunStopped         an operator stopped the run, or the server stops
    └── RolloutError           a rollout action that does not fit the rollout's state
        └── PlanError          a rollout plan or health gate that does not parse
"""

from __future__ import annotations


class EdgefleetError(Exception):
    """Base of every error edgefleet raises on purpose."""


class ConfigError(EdgefleetError):
    """Configuration is missing or invalid; the message names the field."""


class ContractError(EdgefleetError):
    """A payload does not follow the wire contract."""


class IdentityError(EdgefleetError):
    """Device identity (keys, certificates, enrollment) problems."""


class EnrollmentError(IdentityError):
    """An enrollment or renewal request was refused."""


class CertificateError(IdentityError):
    """A certificate is unreadable, expired, from another CA or revoked."""


class BrokerError(EdgefleetError):
    """The managed MQTT broker could not be configured, started or kept up."""


class LinkError(EdgefleetError):
    """The MQTT session could not do what was asked."""


class ModelError(EdgefleetError):
    """Model package or inference runtime problems."""


class PackageError(ModelError):
    """A model package is corrupt, incomplete or inconsistent."""


class RuntimeUnavailable(ModelError):
    """No installed inference runtime can run the package."""


class SelfTestFailed(ModelError):
    """The package's self-test vectors did not reproduce on this device."""


class StoreError(EdgefleetError):
    """Persistent storage failed."""


class NotFound(StoreError):
    """A named record does not exist."""


class SelectorError(EdgefleetError):
    """A device selector expression is invalid."""


class AuthError(EdgefleetError):
    """Authentication failed or is missing."""


class PermissionDenied(AuthError):
    """The caller is authenticated but its role does not allow the action."""


class UpdateError(EdgefleetError):
    """An OTA update could not be verified, fetched or installed."""


class InputRejected(ModelError):
    """Prediction input the caller got wrong (shape, dtype, NaN, size); the message says
    what was expected, so the local API answers 4xx and the CLI exits with code 4."""


class FederationError(EdgefleetError):
    """A federated training run could not go on (quorum lost, stopped, bad spec)."""


class RunStopped(FederationError):
    """An operator stopped the federated run (or the server is shutting down)."""


class SigningError(UpdateError):
    """A TUF key or metadata operation on the server or the offline machine failed."""


class TrustError(UpdateError):
    """TUF verification refused metadata or an artifact; nothing was installed."""


class DownloadFailed(UpdateError):
    """An artifact or its metadata could not be fetched; a later attempt may succeed.

    ``retryable`` is False where waiting cannot help (the server answered that the
    file is not there or not for us); the device retries the rest with backoff.
    """

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class InstallError(UpdateError):
    """Staging, self-test, switching or probation of an update failed."""


class RolloutError(EdgefleetError):
    """A rollout cannot do what was asked in its current state (HTTP 409)."""


class PlanError(RolloutError):
    """A rollout plan, artifact spec or health gate is invalid; says where (HTTP 422)."""
