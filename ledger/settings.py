"""Configuration from the environment (and a ``.env`` file), overridable by flags."""

from __future__ import annotations

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class LedgerSettings(BaseSettings):
    """``LEDGER_DB``: where the ledger lives (a path, ``sqlite:///…`` or ``postgresql://…``)."""

    model_config = SettingsConfigDict(env_prefix="LEDGER_", env_file=".env", extra="ignore")

    db: str = "ledger.sqlite"


class DeltaDeFiSettings(BaseSettings):
    """How ``ledger run`` reaches DeltaDeFi: ``DELTADEFI_*`` variables (or ``.env``), then flags.

    Reconnects back off exponentially with full jitter: a wait drawn uniformly from
    ``[0, min(cap, delay × 2^attempt)]``. ``DELTADEFI_WEBSOCKET_RETRY_DELAY`` is the
    initial delay and ``DELTADEFI_WEBSOCKET_RETRY_MAX`` the number of consecutive
    failed attempts before giving up (unset or 0: retry forever), the names the
    previous bot used (also read without the prefix).
    """

    model_config = SettingsConfigDict(
        env_prefix="DELTADEFI_", env_file=".env", extra="ignore", populate_by_name=True
    )

    api_key: SecretStr | None = None
    ws_url: str = "wss://stream.deltadefi.io"
    rest_url: str = "https://api.deltadefi.io"
    websocket_retry_max: int | None = Field(
        default=None,
        ge=0,
        validation_alias=AliasChoices("DELTADEFI_WEBSOCKET_RETRY_MAX", "WEBSOCKET_RETRY_MAX"),
    )
    websocket_retry_delay: float = Field(
        default=1.0,
        gt=0,
        validation_alias=AliasChoices("DELTADEFI_WEBSOCKET_RETRY_DELAY", "WEBSOCKET_RETRY_DELAY"),
    )
    websocket_retry_cap: float = Field(default=60.0, gt=0)
    ping_interval: float = Field(default=20.0, gt=0)
    ping_timeout: float = Field(default=20.0, gt=0)
    heal_interval: float = Field(default=60.0, gt=0)
    rest_timeout: float = Field(default=10.0, gt=0)
    rest_retry_max: int = Field(default=8, ge=1)
    rest_min_interval: float = Field(default=0.2, ge=0)

    @property
    def retry_max_attempts(self) -> int | None:
        """Consecutive failed connection attempts allowed; ``None`` means forever."""
        return self.websocket_retry_max or None
